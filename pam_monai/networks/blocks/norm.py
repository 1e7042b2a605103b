"""Instance normalisation that computes ``nn.InstanceNorm{2,3}d(affine=True)`` and is fast.

``nn.InstanceNorm2d`` runs ``batch_norm`` on a ``1 x (N*C) x H x W`` view of its input and returns
a VIEW of the result. The paper's blocks follow every norm with an in-place ReLU, and an in-place
operation on a view makes autograd record ``CopySlices`` / ``AsStridedBackward``: every norm then
costs two extra full copies of its tensor in the backward pass (measured on the CPU with
``torch.profiler``). On the GPU, the native kernel also ignores ``channels_last`` and cannot be
fused with the activation by ``torch.compile``.

:class:`FastInstanceNorm` computes the same function with a fresh (non-view) output:

- eager on the CPU, contiguous tensors: ``F.group_norm`` with one group per channel (the same
  statistics: per sample and channel over the spatial axes, biased variance, the same ``eps``);
- on CUDA, under ``torch.compile`` and for channels-last tensors: fp32 statistics over the
  spatial axes and ONE scale-and-shift, ``x * (w / sqrt(var + eps)) + (b - mean * w / sqrt(var + eps))``,
  in the input's dtype and memory format (bf16, channels-last). Inductor fuses it with the ReLU
  that follows into a single pass over the tensor (plus the reduction). The statistics of fp32
  inputs come from ``torch.var_mean`` (Welford's update: a division per element); those of bf16 /
  fp16 inputs (autocast: the GPU fast path) from two plain sums of the input minus a shift per
  sample and channel (``shifted_sums``: the variance does not depend on the shift, and the mean of a
  small grid sample of the data as shift keeps the cancellation in ``E[d^2] - E[d]^2`` far below
  bf16's rounding). On an H100 that made FPA's four encoder blocks' forward + backward 7% faster
  (15.6 against 16.8 ms of kernels, batch 50; ``benchmarks/fpa_branch_gpu.py``; measured with the
  centre element as shift, before the grid sample).

Its parameters are ``weight`` and ``bias`` of ``num_features`` elements, exactly as
``nn.InstanceNorm2d(affine=True)`` (which has no buffers without running statistics), so state
dicts are interchangeable and parameter counts do not change. It is registered as the MONAI norm
``"instance_fast"``: ``norm=("instance_fast", {"affine": True})`` anywhere a network takes
``norm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Norm
from torch import nn

__all__ = ["FAST_NORM", "FastInstanceNorm", "FastInstanceNorm2d", "FastInstanceNorm3d", "fast_norm_of"]

FAST_NORM: tuple = ("instance_fast", {"affine": True})
_IMPLS = ("auto", "group_norm", "var_mean", "shifted_sums")


def _compiling() -> bool:
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_compiling()


class FastInstanceNorm(nn.Module):
    """Instance normalisation (Ulyanov et al., 2016), the function of ``nn.InstanceNormNd``.

    Args:
        num_features: channels ``C`` of a ``N x C x *spatial`` input.
        eps: added to the variance (``1e-5``, as PyTorch).
        affine: learnable per-channel ``weight`` (ones) and ``bias`` (zeros); False by default, as
            ``nn.InstanceNorm`` (the paper's networks pass ``{"affine": True}``).
        impl: ``"auto"`` (``group_norm`` for contiguous CPU tensors in eager mode, else
            ``shifted_sums`` for bf16 / fp16 inputs and ``var_mean`` for the others),
            ``"group_norm"``, ``"var_mean"`` or ``"shifted_sums"``.
        momentum, track_running_stats: accepted for ``nn.InstanceNorm`` compatibility; running
            statistics are not supported (the paper's networks do not use them).

    Example::

        >>> norm = FastInstanceNorm(8, affine=True)
        >>> x = torch.randn(2, 8, 5, 5)
        >>> torch.allclose(norm(x), torch.nn.InstanceNorm2d(8, affine=True)(x), atol=1e-5)
        True
    """

    _dims = 0  # spatial axes the subclass expects (0: any)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if track_running_stats:
            raise ValueError(
                "FastInstanceNorm does not track running statistics; use nn.InstanceNorm for that."
            )
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        self.num_features = int(num_features)
        self.spatial_dims = int(self._dims)
        self.eps = float(eps)
        self.affine = bool(affine)
        self.impl = impl
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.num_features))
            self.bias = nn.Parameter(torch.zeros(self.num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, impl={self.impl}"

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim < 3 or x.shape[1] != self.num_features:
            channels = x.shape[1] if x.ndim > 1 else -1
            raise ValueError(
                f"FastInstanceNorm({self.num_features}) expects N x C x *spatial with C = {self.num_features}, "
                f"got a {x.ndim}-D input with shape[1] = {channels}"
            )
        if self.spatial_dims > 0 and x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"FastInstanceNorm{self.spatial_dims}d expects a {self.spatial_dims + 2}-D input, got {x.ndim}-D"
            )
        # one spatial element: variance 0, so the output would be the bias whatever the input;
        # nn.InstanceNorm refuses it too (a shape check: no data-dependent branch when compiled)
        size = 1  # a loop, not math.prod: TorchScript compiles this method and has no math.prod
        for s in x.shape[2:]:
            size *= s
        if size == 1:
            raise ValueError(
                f"FastInstanceNorm({self.num_features}) cannot normalise a single spatial element "
                f"(input shape {list(x.shape)}): its output would be the bias whatever the input; "
                "give a larger input (or a smaller down-sampling factor), as nn.InstanceNorm requires."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        use_group_norm = self.impl == "group_norm"
        if self.impl == "auto":
            # group_norm only for contiguous CPU tensors: its channels-last CPU kernel lost three
            # digits of the gradient (relative error 4e-4 against 1e-6) in an RFNA training step
            use_group_norm = not (x.is_cuda or _compiling() or not x.is_contiguous())
        if use_group_norm:
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        dims = list(range(2, x.ndim))
        exact = x.dtype == torch.float32 or x.dtype == torch.float64
        xs = x if exact else x.float()  # statistics of bf16 / fp16 inputs in fp32
        if self.impl == "shifted_sums" or (self.impl == "auto" and not exact):
            var, mean = _shifted_sums_var_mean(xs, dims)
        else:
            var, mean = torch.var_mean(xs, dim=dims, keepdim=True, correction=0)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:
            shape = [1, self.num_features] + [1] * len(dims)
            scale = scale * self.weight.to(scale.dtype).view(shape)
            shift = self.bias.to(scale.dtype).view(shape) - mean * scale
        else:
            shift = -mean * scale
        # one scale-and-shift pass in x's memory format (fused with what follows when compiled)
        y = torch.addcmul(shift, xs, scale)
        return y if exact else y.to(x.dtype)


def _shifted_sums_var_mean(x: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.var_mean(x, dims, keepdim=True, correction=0)`` from two plain sums of ``x - k``: one
    pass without Welford's per-element division. ``k`` is the mean of a grid of at most 8 elements per
    spatial axis of each sample and channel, close enough to the mean that ``E[d^2] - E[d]^2`` loses
    little to cancellation (a single element as shift lost 11% of the variance of a 60 x 61 x 62
    volume of zeros with one non-zero voxel at that element). The shift is detached: neither statistic depends
    on it (their gradients through it cancel exactly)."""
    k = x.detach()
    for d in dims:  # index_select, not a tuple of slices: TorchScript compiles this too
        step = max(1, x.shape[d] // 8)
        k = k.index_select(d, torch.arange(step // 2, x.shape[d], step, device=x.device))
    k = k.mean(dims, keepdim=True)
    dx = x - k
    m1 = dx.mean(dims, keepdim=True)
    var = ((dx * dx).mean(dims, keepdim=True) - m1 * m1).clamp_min(0)
    return var, k + m1


class FastInstanceNorm1d(FastInstanceNorm):
    _dims = 1


class FastInstanceNorm2d(FastInstanceNorm):
    _dims = 2


class FastInstanceNorm3d(FastInstanceNorm):
    _dims = 3


def _factory(dim: int) -> type[FastInstanceNorm]:
    """Fast instance normalisation (the function of ``nn.InstanceNorm{dim}d``; see pam_monai.networks.blocks.norm)."""
    return (FastInstanceNorm1d, FastInstanceNorm2d, FastInstanceNorm3d)[dim - 1]


if "INSTANCE_FAST" not in Norm.names:
    Norm.add_factory_callable("instance_fast", _factory)


def fast_norm_of(norm: tuple | str | None) -> tuple | str | None:
    """The ``"instance_fast"`` equivalent of an ``"instance"`` norm argument (others unchanged).

    Example::

        >>> fast_norm_of(("instance", {"affine": True}))
        ('instance_fast', {'affine': True})
    """
    if norm is None:
        return None
    name, args = (norm, {}) if isinstance(norm, str) else (norm[0], dict(norm[1]) if len(norm) > 1 else {})
    if str(name).lower() != "instance":
        return norm
    if args.get("track_running_stats", False):
        return norm
    return ("instance_fast", args)
