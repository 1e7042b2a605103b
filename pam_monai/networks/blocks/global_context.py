"""Global context block (the paper's "GCNUnet" baseline).

    Yue Cao, Jiarui Xu, Stephen Lin, Fangyun Wei, Han Hu, "GCNet: Non-local Networks Meet
    Squeeze-Excitation Networks and Beyond", ICCV Workshops 2019. https://arxiv.org/abs/1904.11492

Context = sum over positions of ``softmax(conv1x1(C->1)(x)) * x``; transform
``conv1x1(C->C/8) -> LayerNorm -> ReLU -> conv1x1(C/8->C)``; output ``t * x + x`` (multiplicative
fusion, residual, as in the authors' code; REFERENCE.md section 5). Caveat: the authors' code
normalises the 1x1 context with an instance norm, which is degenerate (constant output, or an
error on current PyTorch); this uses LayerNorm over the ``C/8`` context as the GCNet paper does,
with the same parameter count. All convolutions are bias-free.

The bottleneck is at least 3 channels wide: a LayerNorm over ``n`` values keeps ``n - 2``
degrees of freedom, so over one value it always outputs its bias and over two only a sign (zero
gradient almost everywhere). With ``C // reduction`` of 1 or 2 (8 or 16 channels: a small U-Net's
first stages) the block would ignore its context and ``reduce`` would get no gradient. The
paper's widths (32 and up) give ``C/8 >= 4``: its parameter counts are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .convolutions import DEFAULT_ACT, act_layer, check_positive, check_spatial_dims, conv_norm_act

__all__ = ["GlobalContext"]

# a LayerNorm over 1 value is constant, over 2 a sign: 3 is the least that passes a gradient on
MIN_HIDDEN = 3


class GlobalContext(nn.Module):
    """Global context attention (Cao et al., 2019) with multiplicative fusion.

    Args:
        spatial_dims: 2 or 3.
        channels: input (and output) channels.
        reduction: reduction of the transform bottleneck (8); the bottleneck is
            ``max(channels // reduction, 3)`` channels (a LayerNorm over fewer is degenerate).
        act: activation inside the transform (``None``: none).

    Example::

        >>> GlobalContext(2, 64)(torch.randn(1, 64, 16, 16)).shape
        torch.Size([1, 64, 16, 16])
    """

    def __init__(
        self, spatial_dims: int, channels: int, reduction: int = 8, act: tuple | str | None = DEFAULT_ACT
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, "GlobalContext")
        check_positive("GlobalContext", channels=channels, reduction=reduction)
        hidden = max(channels // reduction, MIN_HIDDEN)
        self.spatial_dims = spatial_dims
        self.key = conv_norm_act(spatial_dims, channels, 1, 1, norm=None, act=None)
        self.reduce = conv_norm_act(spatial_dims, channels, hidden, 1, norm=None, act=None)
        self.norm = nn.LayerNorm(hidden)
        self.act = act_layer(act)
        self.expand = conv_norm_act(spatial_dims, hidden, channels, 1, norm=None, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        weights = torch.softmax(self.key(x).reshape(b, 1, -1), dim=-1)  # B x 1 x N
        context = torch.bmm(x.reshape(b, c, -1), weights.transpose(1, 2))  # B x C x 1
        context = context.reshape([b, c] + [1] * self.spatial_dims)
        t = self.reduce(context)
        t = self.norm(t.reshape(b, -1)).reshape(t.shape)
        t = self.expand(self.act(t))
        return torch.addcmul(x, x, t)
