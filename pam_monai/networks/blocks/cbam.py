"""Convolutional Block Attention Module (the paper's "CBAMUnet" baseline).

    Sanghyun Woo, Jongchan Park, Joon-Young Lee, In So Kweon, "CBAM: Convolutional Block
    Attention Module", ECCV 2018. https://arxiv.org/abs/1807.06521

Caveat: the original CBAM uses a 7x7 spatial kernel and a plain (non-residual) output. The
paper's baseline (authors' code, REFERENCE.md section 5) uses a 3x3 spatial kernel and a
residual output ``spatial * (channel * x) + x``; these are the defaults here because they
reproduce the paper's parameter counts. Both convolutions are bias-free.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from .convolutions import DEFAULT_ACT, check_positive, check_spatial_dims, conv_norm_act

__all__ = ["CBAM"]


class CBAM(nn.Module):
    """CBAM attention (Woo et al., ECCV 2018) as in the paper's baseline.

    Args:
        spatial_dims: 2 or 3.
        channels: input (and output) channels.
        reduction: reduction of the shared channel MLP (16).
        spatial_kernel: kernel of the spatial attention convolution (3 here, 7 in the CBAM paper).
        residual: add the input back (the paper's baseline) or not (the CBAM paper).
        act: activation inside the channel MLP.

    Example::

        >>> CBAM(2, 64)(torch.randn(1, 64, 16, 16)).shape
        torch.Size([1, 64, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        reduction: int = 16,
        spatial_kernel: int = 3,
        residual: bool = True,
        act: tuple | str = DEFAULT_ACT,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, "CBAM")
        check_positive("CBAM", channels=channels, reduction=reduction)
        if spatial_kernel % 2 != 1:
            raise ValueError(f"CBAM: spatial_kernel must be odd (same padding), got {spatial_kernel!r}.")
        hidden = max(channels // reduction, 1)
        self.avg_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.max_pool = Pool[Pool.ADAPTIVEMAX, spatial_dims](1)
        self.mlp = nn.Sequential(
            conv_norm_act(spatial_dims, channels, hidden, 1, norm=None, act=act),
            conv_norm_act(spatial_dims, hidden, channels, 1, norm=None, act=None),
        )
        self.spatial = conv_norm_act(spatial_dims, 2, 1, spatial_kernel, norm=None, act=None)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.sigmoid(self.mlp(self.avg_pool(x)) + self.mlp(self.max_pool(x)))
        stats = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        s = torch.sigmoid(self.spatial(stats))
        return torch.addcmul(x, y, s) if self.residual else y * s
