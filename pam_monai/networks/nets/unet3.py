"""The 3-stage U-Net backbone of "Learning To Pay Attention To Mistakes" and its variants.

    Mou-Cheng Xu, Neil P. Oxtoby, Daniel C. Alexander, Joseph Jacob,
    "Learning To Pay Attention To Mistakes", BMVC 2020. https://arxiv.org/abs/2007.15131

Layer table (REFERENCE.md section 2; 3,129,248 parameters at 4 input channels, width 32)::

    c1     double_conv(in -> 32, 1)       H
    c2     double_conv(32 -> 64, 2)       H/2
    c3     double_conv(64 -> 128, 2)      H/4
    c4     double_conv(128 -> 256, 2)     H/8
    bridge double_conv(256 -> 256, 1)     H/8
    d3     double_conv(384 -> 128) on cat[up(bridge), c3]
    d2     double_conv(192 -> 64)  on cat[up(d3), c2]
    d1     double_conv(96 -> 32)   on cat[up(d2), c1]
    head   conv1x1(32 -> out), no bias

Every network of the paper is this backbone with one of three things swapped in: the encoder
block of c2, c3, c4 and the bridge (FPA, RFNA, dilated convs), an attention module after some
blocks (scSE, CBAM, global context), or an attention gate on the skips (Attention U-Net).
Up-sampling is linear to the skip's size, so inputs of any size (not only multiples of 8) work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..blocks import ATTENTIONS, DEFAULT_ACT, DEFAULT_NORM, AttentionGate, DoubleConv, FPABlock, RFNABlock
from ..blocks.attention_gate import GATE_NORM
from ..blocks.convolutions import (
    check_input_rank,
    check_normalisable,
    check_positive,
    check_spatial_dims,
    conv_norm_act,
    normalises_with_input_statistics,
)
from ..blocks.resize import LinearResize

__all__ = ["UNet3", "ENCODER_LEVELS", "ATTENTION_POSITIONS"]

LEVELS = ("c1", "c2", "c3", "c4", "bridge", "d3", "d2", "d1")
# where each encoder block kind goes (the rest of the encoder stays a plain double_conv)
ENCODER_LEVELS = {
    "conv": (),
    "dilated": ("c2", "c3", "c4"),
    "fpa": ("c2", "c3", "c4", "bridge"),
    "rfna": ("c2", "c3", "c4", "bridge"),
}
# the paper's baselines place their attention modules here (REFERENCE.md section 5)
ATTENTION_POSITIONS = {
    "scse": ("c1", "c2", "c3", "d3", "d2", "d1"),
    "cbam": ("c1", "c2", "c3", "bridge", "d3", "d2", "d1"),
    "gc": ("c1", "c2", "c3", "bridge", "d3", "d2", "d1"),
}


class _NoGate(nn.Module):
    """Stands in for an attention gate so that ``forward`` has one code path (TorchScript)."""

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x


class UNet3(nn.Module):
    """3-stage U-Net of Xu et al. (BMVC 2020) with swappable encoder blocks and attention.

    Args:
        spatial_dims: 2 (the paper) or 3.
        in_channels: input channels (4 for BRATS and ISLES, 3 for CityScapes).
        out_channels: output channels (1 logit for the paper's binary tasks).
        features: channels of c1, c2, c3 and c4 (= bridge): ``(32, 64, 128, 256)``; WUnet doubles them.
        encoder_block: ``"conv"`` (plain), ``"dilated"`` (D6/D9 U-Net), ``"fpa"`` or ``"rfna"``.
        encoder_options: keyword arguments of the encoder block, e.g. ``{"dilation": 9}``
            (``"dilated"``: ``dilation``; ``"fpa"``: see :class:`FPABlock`; ``"rfna"``: see :class:`RFNABlock`).
        attention: ``None``, ``"scse"``, ``"cbam"`` or ``"gc"``: attention module after the blocks
            of ``attention_positions``.
        attention_positions: block names among ``c1 c2 c3 c4 bridge d3 d2 d1``; ``None``: the paper's.
        skip_gate: additive attention gates on the skip connections (Attention U-Net).
        norm: MONAI norm factory argument of every block but the attention gates.
        act: MONAI activation factory argument of every block.
        output_sign: ``-1.0`` negates the head's output (RFNA: a network trained on reversed labels
            that returns foreground logits, see :mod:`pam_monai.networks.polarity`).
        gate_norm: MONAI norm factory argument of the attention gates (``skip_gate``); default
            the authors' non-affine instance norm.

    Example::

        >>> net = UNet3(spatial_dims=2, in_channels=4, out_channels=1)
        >>> net(torch.randn(2, 4, 160, 160)).shape
        torch.Size([2, 1, 160, 160])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        encoder_block: str = "conv",
        encoder_options: dict | None = None,
        attention: str | None = None,
        attention_positions: Sequence[str] | None = None,
        skip_gate: bool = False,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
        output_sign: float = 1.0,
        gate_norm: tuple | str | None = GATE_NORM,
    ) -> None:
        super().__init__()
        where = type(self).__name__
        check_spatial_dims(spatial_dims, where)
        if not hasattr(features, "__len__") or len(features) != 4:  # None too, not "has no len()"
            shown = tuple(features) if hasattr(features, "__len__") else features
            raise ValueError(f"{where}: features must give 4 widths (c1, c2, c3, c4/bridge), got {shown!r}.")
        check_positive(where, in_channels=in_channels, out_channels=out_channels)
        check_positive(where, **{f"features[{i}]": int(f) for i, f in enumerate(features)})
        if encoder_block not in ENCODER_LEVELS:
            raise ValueError(
                f"{where}: encoder_block must be one of {sorted(ENCODER_LEVELS)}, got {encoder_block!r}."
            )
        options = dict(encoder_options or {})
        if encoder_block == "conv" and options:
            # a plain encoder has no options: a silently ignored dilation would train another network
            raise ValueError(
                f"{where}: encoder_options {options} given for encoder_block 'conv', which takes none."
            )
        if attention is not None and attention not in ATTENTIONS:
            raise ValueError(
                f"{where}: attention must be None or one of {sorted(ATTENTIONS)}, got {attention!r}."
            )
        if attention is None and attention_positions:
            raise ValueError(
                f"{where}: attention_positions {tuple(attention_positions)} given without an attention module."
            )
        if attention_positions is not None:  # an empty sequence means no module, not the default
            positions = tuple(attention_positions)
        else:
            positions = ATTENTION_POSITIONS[attention] if attention else ()
        unknown = set(positions) - set(LEVELS)
        if unknown:
            raise ValueError(
                f"{where}: attention_positions: unknown block names {sorted(unknown)}; valid: {LEVELS}."
            )
        f1, f2, f3, f4 = (int(f) for f in features)
        swapped = ENCODER_LEVELS[encoder_block]

        def encoder(name: str, cin: int, cout: int, stride: int) -> nn.Module:
            if name not in swapped:
                return DoubleConv(spatial_dims, cin, cout, stride=stride, norm=norm, act=act)
            if encoder_block == "dilated":
                return DoubleConv(spatial_dims, cin, cout, stride=stride, norm=norm, act=act, **options)
            block = FPABlock if encoder_block == "fpa" else RFNABlock
            return block(spatial_dims, cin, cout, stride=stride, norm=norm, act=act, **options)

        self.c1 = encoder("c1", in_channels, f1, 1)
        self.c2 = encoder("c2", f1, f2, 2)
        self.c3 = encoder("c3", f2, f3, 2)
        self.c4 = encoder("c4", f3, f4, 2)
        self.bridge = encoder("bridge", f4, f4, 1)
        self.d3 = DoubleConv(spatial_dims, f4 + f3, f3, norm=norm, act=act)
        self.d2 = DoubleConv(spatial_dims, f3 + f2, f2, norm=norm, act=act)
        self.d1 = DoubleConv(spatial_dims, f2 + f1, f1, norm=norm, act=act)
        self.head = conv_norm_act(spatial_dims, f1, out_channels, 1, norm=None, act=None)

        widths = {"c1": f1, "c2": f2, "c3": f3, "c4": f4, "bridge": f4, "d3": f3, "d2": f2, "d1": f1}
        for name in LEVELS:
            att = (
                ATTENTIONS[attention](spatial_dims, widths[name], act=act)
                if name in positions
                else nn.Identity()
            )
            self.add_module(f"att_{name}", att)
        gate = {"norm": gate_norm, "act": act}
        self.gate3 = AttentionGate(spatial_dims, f3, f4, **gate) if skip_gate else _NoGate()
        self.gate2 = AttentionGate(spatial_dims, f2, f3, **gate) if skip_gate else _NoGate()
        self.gate1 = AttentionGate(spatial_dims, f1, f2, **gate) if skip_gate else _NoGate()

        self.spatial_dims = spatial_dims
        self.skip_first = bool(skip_gate)  # Attention U-Net concatenates [gated skip, up]
        self.up = LinearResize(spatial_dims)
        self.output_sign = float(output_sign)
        self.name = type(self).__name__
        # the largest down-sampling factor at which an instance norm normalises (the bridge's 8, or
        # more inside an encoder block: RFNA's attention branch); forward refuses an input that this
        # factor shrinks to one element, which such a norm cannot normalise
        scales = {"c1": 1, "c2": 2, "c3": 4, "c4": 8, "bridge": 8}
        factor = max(scale * int(getattr(getattr(self, n), "norm_factor", 1)) for n, scale in scales.items())
        self.min_input_factor = factor if normalises_with_input_statistics(self) else 0

    def _merge(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, up], dim=1) if self.skip_first else torch.cat([up, skip], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_rank(list(x.shape), self.spatial_dims, self.name)
        if self.min_input_factor > 0:
            check_normalisable(list(x.shape[2:]), self.min_input_factor, self.name, network_input=True)
        e1 = self.att_c1(self.c1(x))
        e2 = self.att_c2(self.c2(e1))
        e3 = self.att_c3(self.c3(e2))
        e4 = self.att_c4(self.c4(e3))
        b = self.att_bridge(self.bridge(e4))
        up = self.up(b, e3)
        y = self.att_d3(self.d3(self._merge(up, self.gate3(e3, up))))
        up = self.up(y, e2)
        y = self.att_d2(self.d2(self._merge(up, self.gate2(e2, up))))
        up = self.up(y, e1)
        y = self.att_d1(self.d1(self._merge(up, self.gate1(e1, up))))
        out = self.head(y)
        if self.output_sign != 1.0:
            out = out * self.output_sign
        return out
