"""Reverse False Negative Attention (RFNA), section 3.2 and Figure 3 of

    Mou-Cheng Xu, Neil P. Oxtoby, Daniel C. Alexander, Joseph Jacob,
    "Learning To Pay Attention To Mistakes", BMVC 2020. https://arxiv.org/abs/2007.15131

RFNA is trained on REVERSED labels (1 = background) and its attention branch, placed after the
main branch, has a small effective receptive field: it down-samples the main branch's output by
``ratio`` (8 by default), works at that coarse scale and up-samples back::

    F = double_conv(in -> out, stride)(X)
    A = sigmoid(W_r4(UpSample(W_r3(W_r2(W_r1(F))))) + F)
    Y = F * A + F

``W_r1`` is a 1x1 convolution expanding to ``expansion * out`` channels, ``W_r2`` and ``W_r3``
are 3x3 (depthwise by default) convolutions each followed by norm and activation, and ``W_r4`` a
3x3 convolution back to ``out`` channels. Every one of ``W_r1..W_r3`` down-samples by 2 (stride
2), so the branch down-samples by 8; the paper's ratio ablation removes ``W_r3`` (ratio 4), then
``W_r2`` (ratio 2). The public code has no such down-sampling (REFERENCE.md section 4), so this
follows the paper. The label reversal is handled by the network and the loss: see
:mod:`pam_monai.networks.polarity`.
"""

from __future__ import annotations

import torch
from torch import nn

from .convolutions import (
    DEFAULT_ACT,
    DEFAULT_NORM,
    DoubleConv,
    check_normalisable,
    check_positive,
    check_spatial_dims,
    conv_norm_act,
    normalises_with_input_statistics,
)
from .resize import LinearResize

__all__ = ["RFNABlock"]

RATIOS = (2, 4, 8)


class RFNABlock(nn.Module):
    """Reverse False Negative Attention block (Xu et al., BMVC 2020, Figure 3).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the main branch's first convolution.
        ratio: down-sampling ratio of the attention branch: 2, 4 or 8 (paper default 8).
        depthwise: depthwise 3x3 convolutions for ``W_r2``, ``W_r3`` (paper default) or full ones.
        expansion: channel expansion of ``W_r1`` (paper: 4).
        norm: MONAI norm factory argument.
        act: MONAI activation factory argument.

    Example::

        >>> block = RFNABlock(spatial_dims=2, in_channels=32, out_channels=64, stride=2)
        >>> block(torch.randn(2, 32, 40, 40)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 2,
        ratio: int = 8,
        depthwise: bool = True,
        expansion: int = 4,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, "RFNABlock")
        if ratio not in RATIOS:
            raise ValueError(f"RFNABlock: ratio must be one of {RATIOS}, got {ratio}.")
        check_positive("RFNABlock", stride=stride, expansion=expansion)
        mid = expansion * out_channels
        groups = mid if depthwise else 1
        self.main = DoubleConv(spatial_dims, in_channels, out_channels, stride=stride, norm=norm, act=act)
        layers = [conv_norm_act(spatial_dims, out_channels, mid, 1, 2, norm=None, act=None)]  # W_r1
        for _ in range({2: 0, 4: 1, 8: 2}[ratio]):  # W_r2, W_r3
            layers.append(conv_norm_act(spatial_dims, mid, mid, 3, 2, groups=groups, norm=norm, act=act))
        self.down = nn.Sequential(*layers)
        self.project = conv_norm_act(spatial_dims, mid, out_channels, 3, norm=None, act=None)  # W_r4
        self.up = LinearResize(spatial_dims)
        self.ratio = ratio
        # W_r2 and W_r3 normalise at 1/4 and 1/8 of the block's scale (W_r1 has no norm)
        self.norm_factor = ratio if ratio > 2 and normalises_with_input_statistics(self.down) else 1

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """The attention map ``A`` computed from the main branch's output ``f``."""
        if self.norm_factor > 1:
            check_normalisable(list(f.shape[2:]), self.norm_factor, f"RFNABlock(ratio={self.ratio})")
        return torch.sigmoid(self.project(self.up(self.down(f), f)) + f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.main(x)
        return torch.addcmul(f, f, self.attention(f))
