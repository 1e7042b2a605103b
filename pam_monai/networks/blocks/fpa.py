"""False Positive Attention (FPA), section 3.1 and Figure 2 of

    Mou-Cheng Xu, Neil P. Oxtoby, Daniel C. Alexander, Joseph Jacob,
    "Learning To Pay Attention To Mistakes", BMVC 2020. https://arxiv.org/abs/2007.15131

FPA runs an attention branch with a wide (dilated) receptive field beside the main branch and
re-weights the main branch with it: ``Y = F * A + F``. The wide receptive field biases the network
towards false positives and so away from the false negatives that dominate lesion segmentation.

Layer table (REFERENCE.md section 3, which reproduces the paper's 4.2M parameters)::

    F = double_conv(in -> out, stride)
    A = sigmoid(conv1x1(e*out -> out)(ReLU(IN(dconv_d(ReLU(IN(dconv_d(conv1x1(in -> e*out, stride)(x)))))))))
    Y = F * A + F

with ``dconv_d`` a 3x3 convolution of dilation ``d`` (depthwise by default), no norm or
activation after the first 1x1 convolution, and ``A`` of ``out`` channels (not a single map).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import ADN
from torch import nn

from .convolutions import (
    DEFAULT_ACT,
    DEFAULT_NORM,
    DoubleConv,
    check_positive,
    check_spatial_dims,
    conv_norm_act,
)

__all__ = ["FPABlock", "pointwise_conv_as_matmul", "use_contiguous_attention"]


def pointwise_conv_as_matmul(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 (1x1x1) convolution without padding, dilation or groups, computed as one
    matrix product per sample on the contiguous ``N x C x (spatial)`` layout (cuBLAS GEMMs, no layout
    transposes, whatever ``x``'s memory format; a stride sub-samples first). The weight and bias are
    the convolution's own; under autocast the product runs in its dtype, as the convolution would.

    Example::

        >>> conv = torch.nn.Conv2d(8, 16, 1, stride=2)
        >>> x = torch.randn(2, 8, 10, 10)
        >>> torch.allclose(pointwise_conv_as_matmul(conv, x), conv(x), atol=1e-6)
        True
    """
    if any(k != 1 for k in conv.kernel_size) or any(p != 0 for p in conv.padding) or conv.groups != 1:
        raise ValueError(f"pointwise_conv_as_matmul: a 1x1 convolution without padding or groups, got {conv}")
    if any(s != 1 for s in conv.stride):
        x = x[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in conv.stride)]
    n, c = x.shape[0], x.shape[1]
    y = torch.matmul(conv.weight.view(conv.out_channels, c), x.reshape(n, c, -1))
    if conv.bias is not None:
        y = y + conv.bias.to(y.dtype).view(1, -1, 1)
    return y.view((n, conv.out_channels) + tuple(x.shape[2:]))


def use_contiguous_attention(network: nn.Module, on: bool = True) -> nn.Module:
    """Set :attr:`FPABlock.contiguous_attention` on every ``FPABlock`` of ``network``; returns it."""
    for m in network.modules():
        if isinstance(m, FPABlock):
            m.contiguous_attention = bool(on)
    return network


class FPABlock(nn.Module):
    """False Positive Attention block (Xu et al., BMVC 2020, Figure 2).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the main branch's first conv and of the attention branch's first 1x1
            conv (2 down-samples, 1 for the bridge).
        dilation: dilation of the attention branch's 3x3 convolutions (paper: 6, 9 or 12; default 9).
        depthwise: depthwise 3x3 convolutions in the attention branch (paper default) or full ones.
        expansion: channel expansion of the attention branch (paper: 2, 4, 8 for depthwise,
            1, 2 for full convolutions; default 4).
        shared: apply ONE dilated convolution twice ("repeated twice via parameter sharing", as the
            paper's text says) instead of two separate ones (the authors' code). Each application
            keeps its own norm.
        norm: MONAI norm factory argument.
        act: MONAI activation factory argument.

    ``contiguous_attention`` (attribute, default False; :func:`use_contiguous_attention`): run the
    attention branch on the contiguous (``N x C x H x W``) layout whatever the input's memory format,
    its 1x1 convolutions as matrix products (:func:`pointwise_conv_as_matmul`), and hand ``A`` back in
    the main branch's format. The same function and parameters. For the GPU's channels-last fast
    path: there the norms' statistics and the taps' sums reduce over each channel's contiguous plane
    instead of across channels-last rows (an H200 profile, 2026-11-26: FPA's reductions 6.0 ms per
    step contiguous, 9.2 channels-last), while the main branch keeps cuDNN's channels-last
    convolutions. Not in TorchScript (scripted blocks take the plain path).

    Example::

        >>> block = FPABlock(spatial_dims=2, in_channels=32, out_channels=64, stride=2)
        >>> block(torch.randn(2, 32, 40, 40)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 2,
        dilation: int = 9,
        depthwise: bool = True,
        expansion: int = 4,
        shared: bool = False,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, "FPABlock")
        check_positive("FPABlock", stride=stride, dilation=dilation, expansion=expansion)
        mid = expansion * out_channels
        groups = mid if depthwise else 1
        self.main = DoubleConv(spatial_dims, in_channels, out_channels, stride=stride, norm=norm, act=act)
        self.expand = conv_norm_act(spatial_dims, in_channels, mid, 1, stride, norm=None, act=None)
        self.dilated1 = conv_norm_act(spatial_dims, mid, mid, 3, 1, dilation, groups, norm=norm, act=act)
        if shared:
            # same convolution weights, separate norm + activation for the second application
            self.dilated2 = nn.Sequential()
            self.dilated2.add_module("conv", self.dilated1.conv)
            self.dilated2.add_module(
                "adn", ADN(ordering="NA", in_channels=mid, act=act, norm=norm, norm_dim=spatial_dims)
            )
        else:
            self.dilated2 = conv_norm_act(spatial_dims, mid, mid, 3, 1, dilation, groups, norm=norm, act=act)
        self.squeeze = conv_norm_act(spatial_dims, mid, out_channels, 1, norm=None, act=None)
        self.contiguous_attention = False  # an instance attribute, so that TorchScript finds it
        self.plane_kernels = False  # (contiguous attention with fused Triton units: plane_kernels.py)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map ``A`` (``out_channels`` channels, values in (0, 1))."""
        if (self.contiguous_attention or self.plane_kernels) and not torch.jit.is_scripting():
            return self._contiguous_attention(x)
        return torch.sigmoid(self.squeeze(self.dilated2(self.dilated1(self.expand(x)))))

    @torch.jit.unused
    def _contiguous_attention(self, x: torch.Tensor) -> torch.Tensor:
        e = pointwise_conv_as_matmul(self.expand.conv, x)  # contiguous from here on
        if self.plane_kernels:
            from .plane_kernels import plane_dconv_norm_relu

            for unit in (self.dilated1, self.dilated2):
                norm = unit.adn.N
                e = plane_dconv_norm_relu(
                    e, unit.conv.weight, norm.weight, norm.bias, unit.conv.dilation[0], norm.eps
                )
            return torch.sigmoid(pointwise_conv_as_matmul(self.squeeze.conv, e))
        return torch.sigmoid(pointwise_conv_as_matmul(self.squeeze.conv, self.dilated2(self.dilated1(e))))

    @torch.jit.unused
    def plane_kernels_apply(self) -> bool:
        """Whether this block's attention units are ``3x3 depthwise dilated conv (no bias) -> affine
        instance norm (no running statistics) -> ReLU`` in 2-D, the unit
        :mod:`~pam_monai.networks.blocks.plane_kernels` fuses."""
        for unit in (self.dilated1, self.dilated2):
            conv = getattr(unit, "conv", None)
            adn = getattr(unit, "adn", None)
            norm, act = getattr(adn, "N", None), getattr(adn, "A", None)
            if not isinstance(conv, nn.Conv2d) or conv.bias is not None or conv.kernel_size != (3, 3):
                return False
            d = conv.dilation[0]
            if conv.dilation != (d, d) or conv.padding != (d, d) or conv.stride != (1, 1):
                return False
            if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels:
                return False
            if not isinstance(act, nn.ReLU) or getattr(norm, "weight", None) is None:
                return False
            if getattr(norm, "track_running_stats", False):  # eval mode normalises with those
                return False
            if type(norm).__name__ not in ("InstanceNorm2d", "FastInstanceNorm2d"):
                return False
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.main(x)
        a = self.attention(x)
        if (self.contiguous_attention or self.plane_kernels) and not torch.jit.is_scripting():
            # A in F's memory format: the output (the next block's input) keeps F's layout
            fmt = torch.channels_last if f.dim() == 4 else torch.channels_last_3d
            if f.dim() in (4, 5) and f.is_contiguous(memory_format=fmt) and not f.is_contiguous():
                a = a.contiguous(memory_format=fmt)
        return torch.addcmul(f, f, a)  # F * A + F in one pass
