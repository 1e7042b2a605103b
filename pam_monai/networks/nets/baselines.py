"""The paper's baselines (Tables 5 and 6 of Xu et al., BMVC 2020), all on the 3-stage U-Net.

Each is :class:`UNet3` with one thing swapped in; the classes exist so that bundle configs can
name them with ``_target_`` and so that their docstrings cite the attention paper they implement.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..blocks import DEFAULT_ACT, DEFAULT_NORM
from ..blocks.attention_gate import GATE_NORM
from ..blocks.convolutions import check_positive
from .unet3 import UNet3

__all__ = ["AttentionUNet3", "CBAMUNet3", "DilatedUNet3", "GCUNet3", "SCSEUNet3"]


class DilatedUNet3(UNet3):
    """D6 / D9 U-Net (Xu et al., BMVC 2020, Table 6, https://arxiv.org/abs/2007.15131): both
    convolutions of c2, c3 and c4 dilated by ``dilation``, the bridge plain.

    Args:
        spatial_dims, in_channels, out_channels, features, norm, act: as :class:`UNet3`.
        dilation: dilation of c2, c3 and c4 (the paper's D6 and D9: 6 and 9).

    Example::

        >>> import torch
        >>> net = DilatedUNet3(spatial_dims=2, in_channels=4, out_channels=1, dilation=9)
        >>> net(torch.randn(1, 4, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        dilation: int = 6,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        check_positive("DilatedUNet3", dilation=dilation)
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            features,
            "dilated",
            {"dilation": dilation},
            norm=norm,
            act=act,
        )


class AttentionUNet3(UNet3):
    """AUnet: additive attention gates on the skips (Oktay et al., MIDL 2018,
    https://arxiv.org/abs/1804.03999; :class:`~pam_monai.networks.blocks.AttentionGate`).

    Args:
        spatial_dims, in_channels, out_channels, features, norm, act: as :class:`UNet3`.
        gate_norm: MONAI norm factory argument of the gates (default: the authors' non-affine
            instance norm, ``("instance", {"affine": False})``).

    Example::

        >>> import torch
        >>> net = AttentionUNet3(spatial_dims=2, in_channels=4, out_channels=1)
        >>> net(torch.randn(1, 4, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
        gate_norm: tuple | str | None = GATE_NORM,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            features,
            skip_gate=True,
            norm=norm,
            act=act,
            gate_norm=gate_norm,
        )


class _AttentionBaseline(UNet3):
    """:class:`UNet3` with the attention module ``attention_name`` after the blocks of
    ``attention_positions`` (default: the paper's positions for that module).

    Args:
        spatial_dims, in_channels, out_channels, features, norm, act: as :class:`UNet3`.
        attention_positions: block names among ``c1 c2 c3 c4 bridge d3 d2 d1``.
    """

    attention_name = ""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        attention_positions: Sequence[str] | None = None,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            features,
            attention=self.attention_name,
            attention_positions=attention_positions,
            norm=norm,
            act=act,
        )


class SCSEUNet3(_AttentionBaseline):
    """CSCUnet: scSE after c1-c3 and d3-d1 (Roy et al., MICCAI 2018, https://arxiv.org/abs/1803.02579).

    Example::

        >>> import torch
        >>> SCSEUNet3(spatial_dims=2, in_channels=4, out_channels=1)(torch.randn(1, 4, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """

    attention_name = "scse"


class CBAMUNet3(_AttentionBaseline):
    """CBAMUnet: CBAM after c1-c3, the bridge and d3-d1 (Woo et al., ECCV 2018,
    https://arxiv.org/abs/1807.06521).

    Example::

        >>> import torch
        >>> CBAMUNet3(spatial_dims=2, in_channels=4, out_channels=1)(torch.randn(1, 4, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """

    attention_name = "cbam"


class GCUNet3(_AttentionBaseline):
    """GCNUnet: global context blocks at CBAM's positions (Cao et al., ICCV Workshops 2019,
    https://arxiv.org/abs/1904.11492).

    Example::

        >>> import torch
        >>> GCUNet3(spatial_dims=2, in_channels=4, out_channels=1)(torch.randn(1, 4, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """

    attention_name = "gc"
