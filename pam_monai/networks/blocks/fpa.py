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

__all__ = ["FPABlock"]


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

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map ``A`` (``out_channels`` channels, values in (0, 1))."""
        return torch.sigmoid(self.squeeze(self.dilated2(self.dilated1(self.expand(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.main(x)
        return torch.addcmul(f, f, self.attention(x))  # F * A + F in one pass
