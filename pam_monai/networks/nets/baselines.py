"""The paper's baselines (Tables 5 and 6 of Xu et al., BMVC 2020), all on the 3-stage U-Net.

Each is :class:`UNet3` with one thing swapped in; the classes exist so that bundle configs can
name them with ``_target_`` and so that their docstrings cite the attention paper they implement.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..blocks import DEFAULT_ACT, DEFAULT_NORM
from .unet3 import UNet3

__all__ = ["AttentionUNet3", "CBAMUNet3", "DilatedUNet3", "GCUNet3", "SCSEUNet3"]


class DilatedUNet3(UNet3):
    """D6 / D9 U-Net (paper Table 6): both convs of c2, c3 and c4 dilated by ``dilation``."""

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
    """AUnet: additive attention gates on the skips (Oktay et al., MIDL 2018, arXiv:1804.03999)."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, features, skip_gate=True, norm=norm, act=act
        )


class _AttentionBaseline(UNet3):
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
    """CSCUnet: scSE after c1-c3 and d3-d1 (Roy et al., MICCAI 2018, arXiv:1803.02579)."""

    attention_name = "scse"


class CBAMUNet3(_AttentionBaseline):
    """CBAMUnet: CBAM after c1-c3, the bridge and d3-d1 (Woo et al., ECCV 2018, arXiv:1807.06521)."""

    attention_name = "cbam"


class GCUNet3(_AttentionBaseline):
    """GCNUnet: global context blocks at CBAM's positions (Cao et al., 2019, arXiv:1904.11492)."""

    attention_name = "gc"
