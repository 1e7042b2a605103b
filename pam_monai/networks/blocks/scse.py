"""Concurrent spatial and channel squeeze & excitation (scSE; the paper's "CSCUnet" baseline).

    Abhijit Guha Roy, Nassir Navab, Christian Wachinger, "Concurrent Spatial and Channel
    'Squeeze & Excitation' in Fully Convolutional Networks", MICCAI 2018. https://arxiv.org/abs/1803.02579

As in the authors' code (REFERENCE.md section 5), bias-free: spatial ``sigmoid(conv1x1(C->1))``
and channel ``sigmoid(conv1x1(C/8->C)(ReLU(conv1x1(C->C/8)(avgpool x))))``, summed: ``sSE * x + cSE * x``.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Pool
from torch import nn

from .convolutions import DEFAULT_ACT, check_positive, check_spatial_dims, conv_norm_act

__all__ = ["SCSE"]


class SCSE(nn.Module):
    """scSE attention (Roy et al., MICCAI 2018).

    Args:
        spatial_dims: 2 or 3.
        channels: input (and output) channels.
        reduction: channel reduction of the channel squeeze (8 in the paper's baseline).
        act: activation inside the channel excitation.

    Example::

        >>> SCSE(2, 64)(torch.randn(1, 64, 16, 16)).shape
        torch.Size([1, 64, 16, 16])
    """

    def __init__(
        self, spatial_dims: int, channels: int, reduction: int = 8, act: tuple | str = DEFAULT_ACT
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, "SCSE")
        check_positive("SCSE", channels=channels, reduction=reduction)
        hidden = max(channels // reduction, 1)
        self.spatial = conv_norm_act(spatial_dims, channels, 1, 1, norm=None, act=None)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.channel = nn.Sequential(
            conv_norm_act(spatial_dims, channels, hidden, 1, norm=None, act=act),
            conv_norm_act(spatial_dims, hidden, channels, 1, norm=None, act=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sSE * x + cSE * x == x * (sSE + cSE), one pass over x
        return x * (torch.sigmoid(self.spatial(x)) + torch.sigmoid(self.channel(self.pool(x))))
