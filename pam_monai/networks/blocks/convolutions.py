"""Convolution building blocks shared by every network of the paper.

The paper's backbone (REFERENCE.md section 2) uses bias-free 3x3 convolutions, each followed by
instance normalisation (affine) and ReLU; a block is two of them and down-samples with the stride
of its first convolution (no max-pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer
from torch import nn

from .fastconv import make_fast_conv
from .norm import FastInstanceNorm

__all__ = [
    "DEFAULT_ACT",
    "DEFAULT_NORM",
    "DoubleConv",
    "act_layer",
    "check_crop",
    "check_input_rank",
    "check_normalisable",
    "check_positive",
    "check_spatial_dims",
    "conv_norm_act",
    "normalises_with_input_statistics",
    "interp_mode",
    "resize_to",
]

DEFAULT_NORM: tuple = ("instance", {"affine": True})
DEFAULT_ACT: tuple = ("relu", {"inplace": True})


def check_spatial_dims(spatial_dims: int, where: str) -> None:
    """Refuse a ``spatial_dims`` other than 2 or 3 with a message that names the block."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"{where}: spatial_dims must be 2 or 3, got {spatial_dims!r}.")


def check_input_rank(shape: list[int], spatial_dims: int, where: str) -> None:
    """Refuse an input that is not ``N x C x`` ``spatial_dims`` axes, naming the network's rank.

    A 3-D network given a batch of 2-D slices (a bundle's input) would otherwise run its encoder
    (``Conv3d`` takes a 4-D tensor as one unbatched volume) and fail in the decoder's resize with
    "trilinear mode needs 5D input"; a 2-D network given volumes fails in ``conv2d`` alike.
    """
    rank = len(shape)
    if rank == spatial_dims + 2:
        return
    axes = "N x C x H x W" if spatial_dims == 2 else "N x C x D x H x W"
    fix = ""
    if rank == spatial_dims + 1:
        one = "image" if spatial_dims == 2 else "volume"
        fix = f": for one {one} add the batch axis (x[None])"
        if spatial_dims == 3:
            fix += ", for a batch of 2-D slices (the bundles' input) build it with spatial_dims=2"
    elif spatial_dims == 2 and rank == 5:
        fix = ": for volumes build it with spatial_dims=3, or segment them slice by slice (SliceWiseInferer)"
    raise ValueError(
        f"{where}(spatial_dims={spatial_dims}) takes {spatial_dims + 2}-D inputs ({axes}), "
        f"got a {rank}-D input of shape {shape}{fix}."
    )


def check_positive(where: str, **values: int) -> None:
    """Refuse (with a message that names the block and the argument) any value below 1."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{where}: {name} must be >= 1, got {value!r}.")


def act_layer(act: tuple | str | None) -> nn.Module:
    """MONAI's ``get_act_layer(act)``, and ``nn.Identity()`` for ``act=None`` (no activation), which
    ``get_act_layer`` cannot unpack."""
    return nn.Identity() if act is None else get_act_layer(act)


def conv_norm_act(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    norm: tuple | str | None = DEFAULT_NORM,
    act: tuple | str | None = DEFAULT_ACT,
    bias: bool = False,
) -> Convolution:
    """A bias-free ``conv -> norm -> act`` with "same" padding (``padding = dilation * (k - 1) / 2``).

    ``norm=None`` and ``act=None`` give a plain convolution (still wrapped by MONAI's
    ``Convolution`` so that state-dict keys are uniform).
    """
    conv_only = norm is None and act is None
    block = Convolution(
        spatial_dims,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=kernel_size,
        act=act,
        norm=norm,
        dilation=dilation,
        groups=groups,
        bias=bias,
        conv_only=conv_only,
    )
    if spatial_dims == 2 and ((dilation > 1 and groups > 1) or (kernel_size == 1 and stride > 1)):
        make_fast_conv(block.conv)  # a fast CPU route for these two kinds; same parameters and function
    return block


class DoubleConv(nn.Sequential):
    """``conv(in -> out, stride) -> conv(out -> out)``, each followed by norm and activation.

    This is the ``double_conv`` of the 3-stage U-Net in "Learning To Pay Attention To Mistakes"
    (Xu et al., BMVC 2020, https://arxiv.org/abs/2007.15131); ``dilation`` gives the D6/D9 U-Net
    variants of the paper's Table 6.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (2 down-samples).
        dilation: dilation of both convolutions.
        norm: MONAI norm factory argument, e.g. ``("instance", {"affine": True})``.
        act: MONAI activation factory argument, e.g. ``("relu", {"inplace": True})``.

    Example::

        >>> block = DoubleConv(2, 4, 32, stride=2)
        >>> block(torch.zeros(1, 4, 64, 64)).shape
        torch.Size([1, 32, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        check_spatial_dims(spatial_dims, type(self).__name__)
        check_positive(type(self).__name__, stride=stride, dilation=dilation)
        super().__init__()
        self.add_module(
            "conv1",
            conv_norm_act(spatial_dims, in_channels, out_channels, 3, stride, dilation, norm=norm, act=act),
        )
        self.add_module(
            "conv2",
            conv_norm_act(spatial_dims, out_channels, out_channels, 3, 1, dilation, norm=norm, act=act),
        )


def interp_mode(spatial_dims: int) -> str:
    """The linear interpolation mode of a dimensionality (bilinear in 2D, trilinear in 3D)."""
    return "bilinear" if spatial_dims == 2 else "trilinear"


def resize_to(x: torch.Tensor, like: torch.Tensor, mode: str) -> torch.Tensor:
    """Linearly up-sample ``x`` to the spatial size of ``like`` (``align_corners=True``, as the paper's code).

    Interpolating to the target's size rather than by a fixed factor keeps every encoder level
    aligned with its skip connection for input sizes that are not multiples of 8.
    """
    return F.interpolate(x, size=like.shape[2:], mode=mode, align_corners=True)


# PyTorch's instance norms, named (their common base, ``_InstanceNorm``, is private to PyTorch)
_INSTANCE_NORMS = (
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
)


def normalises_with_input_statistics(module: nn.Module) -> bool:
    """Whether ``module`` holds an instance norm that normalises with its input's own statistics
    (no running statistics): in training and in evaluation alike, it cannot normalise one element.

    :class:`~.norm.FastInstanceNorm` (``norm=FAST_NORM``) never tracks running statistics; it
    raises nothing on one element but returns its bias there, so it counts too."""
    return any(
        isinstance(m, FastInstanceNorm) or (isinstance(m, _INSTANCE_NORMS) and not m.track_running_stats)
        for m in module.modules()
    )


def check_normalisable(shape: list[int], factor: int, where: str, network_input: bool = False) -> None:
    """Refuse, with a clear message, an input that ``factor``-fold down-sampling shrinks to one element.

    Instance normalisation cannot normalise a single spatial element (PyTorch raises a cryptic
    error deep inside the network, in evaluation too); this names the network or block and the
    minimum size of its input instead, and for a 2-D network's input (``network_input``) the bundles'
    ``--crop_size`` that makes it large enough.
    """
    n = 1
    for s in shape:
        n *= (s + factor - 1) // factor
    if n <= 1:
        # a bundle's network sees its crop, not the images: name the override that makes it larger
        # (bundle crops are 2-D: a 3-D network is for own training loops, which no override reaches)
        larger = [(factor + 16) // 16 * 16] + shape[1:]
        crop = network_input and len(shape) == 2
        fix = f' (a bundle\'s input is its crop: e.g. --crop_size "{larger}")' if crop else ""
        raise ValueError(
            f"{where}: an input of spatial size {shape} is down-sampled {factor}x to a single element, which instance "
            f"normalisation cannot normalise; use inputs larger than {factor} along at least one axis{fix}."
        )


def check_crop(network: nn.Module, crop_size: Sequence[int] | None, where: str) -> None:
    """Refuse, before any training, a crop (a bundle's input size) that ``network`` down-samples to
    one element (its ``min_input_factor``: RFNA 64x), naming the ``--crop_size`` that fits."""
    factor = getattr(network, "min_input_factor", 0)
    if factor and crop_size is not None:
        check_normalisable(list(crop_size), factor, where, network_input=True)
