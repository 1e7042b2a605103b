"""Additive attention gate of Attention U-Net (the paper's "AUnet" baseline).

    Ozan Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018.
    https://arxiv.org/abs/1804.03999

As in the authors' code (REFERENCE.md section 5): the gating signal is the up-sampled deeper
decoder tensor (so gate and skip share a resolution), ``W_g`` and ``W_x`` are biased 1x1
convolutions to ``C/2`` channels followed by a non-affine instance norm, ``psi`` a biased 1x1
convolution to one channel, norm and sigmoid, and the gate is residual: ``psi * skip + skip``.
"""

from __future__ import annotations

import torch
from torch import nn

from .convolutions import DEFAULT_ACT, act_layer, check_positive, check_spatial_dims, conv_norm_act

__all__ = ["AttentionGate"]

GATE_NORM: tuple = ("instance", {"affine": False})


class AttentionGate(nn.Module):
    """Additive attention gate ``psi * x + x`` (Oktay et al., MIDL 2018).

    Args:
        spatial_dims: 2 or 3.
        channels: channels of the skip tensor ``x`` (the gate's inner width is ``channels // 2``).
        gate_channels: channels of the gating tensor ``g``.
        norm: MONAI norm factory argument for ``W_g``, ``W_x`` and ``psi`` (non-affine instance norm).
        act: activation of ``W_g g + W_x x``.

    Example::

        >>> gate = AttentionGate(2, channels=64, gate_channels=128)
        >>> gate(torch.randn(1, 64, 32, 32), torch.randn(1, 128, 32, 32)).shape
        torch.Size([1, 64, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        gate_channels: int,
        norm: tuple | str | None = GATE_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, "AttentionGate")
        check_positive("AttentionGate", channels=channels, gate_channels=gate_channels)
        inner = max(channels // 2, 1)
        self.w_g = conv_norm_act(spatial_dims, gate_channels, inner, 1, norm=norm, act=None, bias=True)
        self.w_x = conv_norm_act(spatial_dims, channels, inner, 1, norm=norm, act=None, bias=True)
        self.act = act_layer(act)
        self.psi = conv_norm_act(spatial_dims, inner, 1, 1, norm=norm, act="sigmoid", bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        psi = self.psi(self.act(self.w_g(g) + self.w_x(x)))
        return torch.addcmul(x, x, psi)
