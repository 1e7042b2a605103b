"""Linear up-sampling of a decoder level to its skip connection's size, and atomic-free variants.

The paper's networks up-sample with bilinear (3-D: trilinear) interpolation, ``align_corners=True``,
to the size of the skip connection (:func:`~pam_monai.networks.blocks.convolutions.resize_to`).
:class:`LinearResize` is that, as a module, so that a network can switch the implementation.

Why another implementation: under ``torch.compile`` the backward pass of ``F.interpolate`` is
decomposed into four ``index_put(accumulate=True)`` scatters per 2-D up-sampling (one per
corner), each into a fresh zero-filled buffer; on a GPU those are atomic adds over every element
of the up-sampled gradient (the U-Net's three up-samplings: 143 M elements per step at batch 50,
RFNA's ten: 307 M). :func:`linear_resize` is the same function as one 1-D linear interpolation
per axis whose backward pass is a gather too: for an input position ``j`` the outputs that read it
form one contiguous run whose start is ``ceil(j (m - 1) / (n - 1))``, so the gradient is a
fixed-width weighted sum of gathered values (at most ``ceil((m - 1) / (n - 1)) + 1`` per side),
with no scatter, no atomics and no zero-filled buffers; inductor fuses it into the passes around
it. Interpolation positions and weights come from integer arithmetic, so the backward pass is the
exact transpose of the forward pass (``torch.autograd.gradcheck`` in float64).

:func:`matmul_resize` computes it as one matrix product per axis (the interpolation matrix has
two non-zeros per row), in the tensor's own memory layout, so forward and backward are GEMMs on
tensor cores. It is the GPU fast path's up-sampling (``fast_network(resize="matmul")``, the
bundles' ``resize``): on an H200 with channels-last tensors the compiled ``F.interpolate`` backward
took 6.6 ms of the U-Net's 15.8 ms of kernels per step; as GEMMs its two largest kernels took
0.13 and 0.10 ms and no other was among the 30 largest of the step (``benchmarks/README.md``).
:func:`linear_resize` is an experiment (``--modes fast-mm+gather`` in ``python -m pam_monai
bench``), not yet measured. :func:`use_resize` sets a network's choice; in TorchScript and by
default every :class:`LinearResize` calls ``F.interpolate``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .convolutions import check_spatial_dims, interp_mode, resize_to

__all__ = ["LinearResize", "linear_resize", "matmul_resize", "use_resize"]


def _weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """The weights' dtype for data of ``dtype``: float64 for float64 (float32 weights were 1e-7
    off ``F.interpolate``'s), else float32 (bf16 / fp16 data are interpolated in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _positions(
    n: int, m: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``align_corners=True`` from ``n`` to ``m`` samples: each output's lower input index,
    upper input index and the upper one's weight (in ``dtype``), from exact integer arithmetic."""
    i = torch.arange(m, device=device)
    if n == 1 or m == 1:  # every output reads input 0 (PyTorch's scale is 0 for m == 1)
        zero = torch.zeros(m, dtype=torch.long, device=device)
        return zero, zero, torch.zeros(m, dtype=dtype, device=device)
    num = i * (n - 1)
    lo = torch.div(num, m - 1, rounding_mode="floor")
    w = (num - lo * (m - 1)).to(dtype) / (m - 1)
    return lo, torch.clamp(lo + 1, max=n - 1), w


def _transposed(n: int, m: int, device: torch.device, dtype: torch.dtype = torch.float32):
    """The backward pass's gathers: for each input ``j``, the outputs whose lower index is ``j``
    (weights ``1 - w``, in ``dtype``) and those whose upper index is ``j`` (weights ``w``),
    ``n x k`` each."""
    if n == 1 or m == 1:
        idx = (
            torch.arange(m, device=device).view(1, m)
            if n == 1
            else torch.zeros(n, 1, dtype=torch.long, device=device)
        )
        # weight 1 (w is 0 everywhere) into input 0 only
        lower = (torch.arange(n, device=device) == 0).to(dtype).view(n, 1).expand(n, idx.shape[1])
        return idx, lower, idx, torch.zeros_like(lower)
    _, _, w = _positions(n, m, device, dtype)
    j = torch.arange(n + 1, device=device)
    start = torch.div(j * (m - 1) + (n - 2), n - 1, rounding_mode="floor").clamp(max=m)  # ceil(j (m-1)/(n-1))
    count = start[1:] - start[:-1]  # outputs whose lower index is j
    k = -(-(m - 1) // (n - 1)) + 1  # the most such outputs for any j
    steps = torch.arange(k, device=device)
    lower_idx = (start[:-1, None] + steps).clamp(max=m - 1)
    lower = torch.where(steps < count[:, None], 1.0 - w[lower_idx], 0.0)
    # the outputs whose upper index is j are those whose lower index is j - 1 (none for j = 0)
    upper_idx = torch.cat([lower_idx[:1], lower_idx[:-1]])
    upper_ok = torch.cat([torch.zeros_like(count[:1]), count[:-1]])
    upper = torch.where(steps < upper_ok[:, None], w[upper_idx], 0.0)
    return lower_idx, lower, upper_idx, upper


def _along(t: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """A table with positions in its first axis (and slots in its second, if any), shaped to
    broadcast along axes ``dim`` (and ``dim + 1``) of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[dim : dim + t.ndim] = list(t.shape)
    return t.reshape(shape)


class _Lerp1d(torch.autograd.Function):
    """Linear interpolation (``align_corners=True``) of axis ``dim`` to ``m`` samples; gather-only backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, m: int) -> torch.Tensor:
        n = x.shape[dim]
        lo, hi, w = _positions(n, m, x.device, _weight_dtype(x.dtype))
        ctx.dim, ctx.n, ctx.m = dim, n, m
        w = _along(w.to(x.dtype), dim, x.ndim)
        return torch.lerp(x.index_select(dim, lo), x.index_select(dim, hi), w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dim, n, m = ctx.dim, ctx.n, ctx.m
        lower_idx, lower, upper_idx, upper = _transposed(n, m, grad.device, _weight_dtype(grad.dtype))
        k = lower_idx.shape[1]
        shape = list(grad.shape)
        shape[dim : dim + 1] = [n, k]

        def gathered(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            values = grad.index_select(dim, idx.reshape(-1)).reshape(shape)
            return (values * _along(weight.to(grad.dtype), dim, grad.ndim + 1)).sum(dim + 1)

        return gathered(lower_idx, lower) + gathered(upper_idx, upper), None, None


def linear_resize(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear" / "trilinear", align_corners=True)``, one axis at a
    time, with a gather-only backward pass (see the module docstring).

    bf16 / fp16 inputs are interpolated in float32 and rounded once at the end, as PyTorch does.

    Args:
        x: ``N x C x *spatial`` (any number of spatial axes).
        size: the output's spatial size.

    Returns:
        The resized tensor, in ``x``'s dtype.

    Example:
        >>> import torch.nn.functional as F
        >>> x = torch.randn(2, 3, 5, 7)
        >>> ref = F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=True)
        >>> torch.allclose(linear_resize(x, (9, 13)), ref, atol=1e-6)
        True
    """
    y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    for axis, m in enumerate(size):
        dim = axis + 2
        if y.shape[dim] != m:
            y = _Lerp1d.apply(y, dim, int(m))
    return y.to(x.dtype)


_MATRICES: dict = {}


def _matrix_values(n: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # output i sits at p = i (n - 1) / (m - 1) and reads input j with weight max(0, 1 - |p - j|),
    # here in integers: max(0, (m - 1) - |i (n - 1) - j (m - 1)|) / (m - 1), exact
    if m == 1:  # PyTorch's scale is 0: the one output reads input 0
        return (torch.arange(n, device=device) == 0).to(dtype).view(1, n)
    i = torch.arange(m, device=device).view(m, 1)
    j = torch.arange(n, device=device).view(1, n)
    num = ((m - 1) - (i * (n - 1) - j * (m - 1)).abs()).clamp(min=0)
    return (num.double() / (m - 1)).to(dtype)


def _matrix(n: int, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``m x n`` matrix of a 1-D linear interpolation (``align_corners=True``) from ``n`` to
    ``m`` samples (at most two non-zeros per row, the weights of :func:`_positions`).

    Eagerly cached per size (made outside inference mode, so that training can use it after a
    prediction); under ``torch.compile`` a few index operations of the graph that
    inductor computes on the device (no host-to-device copy, no cache in the traced code)."""
    if torch.compiler.is_compiling():
        return _matrix_values(n, m, dtype, device)
    key = (n, m, dtype, str(device))
    mat = _MATRICES.get(key)
    if mat is None:
        if len(_MATRICES) > 64:
            _MATRICES.clear()
        # a normal tensor even under torch.inference_mode: a cached inference tensor could not
        # be saved for the backward of any later training step at this size
        with torch.inference_mode(False):
            mat = _MATRICES[key] = _matrix_values(n, m, dtype, device)
    return mat


def _matmul_axis(x: torch.Tensor, dim: int, m: int) -> torch.Tensor:
    """Interpolate axis ``dim`` of ``x`` to ``m`` samples as one (batched) matrix product in
    ``x``'s memory layout: the axes stored before ``dim`` are the batch, those after it the columns,
    so no operand is copied and the result keeps ``x``'s memory format (channels-last too)."""
    n = x.shape[dim]
    mat = _matrix(n, m, x.dtype, x.device)
    # axes in memory order (outermost first); ties (size-1 axes) keep their logical order
    order = sorted(range(x.ndim), key=lambda a: (-x.stride(a), a))
    xp = x.permute(order)
    if not xp.is_contiguous():  # not a dense layout: one copy, then as contiguous
        xp = xp.contiguous()
    q = order.index(dim)
    shape = list(xp.shape)
    before, after = math.prod(shape[:q]), math.prod(shape[q + 1 :])
    if after == 1:  # the axis is the innermost one: one plain matrix product
        y = xp.reshape(before, n) @ mat.t()
    else:
        y = torch.matmul(mat, xp.reshape(before, n, after))
    shape[q] = m
    inverse = [order.index(a) for a in range(x.ndim)]
    return y.view(shape).permute(inverse)


def matmul_resize(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear" / "trilinear", align_corners=True)`` as one matrix
    product per axis (the interpolation matrices have two non-zeros per row): forward and backward
    are dense GEMMs on tensor cores, with no scatter, no atomics and no gathers, in the input's
    memory layout (channels-last stays channels-last). For the GPU fast path.

    It computes in ``x``'s dtype, outside autocast: exact to float32 rounding for float32 inputs;
    for bf16 inputs the weights and the intermediate are bf16 too, an error of the order of bf16's
    rounding (``2^-8`` relative), the tolerance of the bf16 fast path.

    Example:
        >>> import torch.nn.functional as F
        >>> x = torch.randn(2, 3, 5, 7)
        >>> ref = F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=True)
        >>> torch.allclose(matmul_resize(x, (9, 13)), ref, atol=1e-5)
        True
    """
    with torch.autocast(x.device.type, enabled=False):
        y = x
        for axis, m in enumerate(size):
            dim = axis + 2
            if y.shape[dim] != m:
                y = _matmul_axis(y, dim, int(m))
    return y


class LinearResize(nn.Module):
    """Up-sample ``x`` to the spatial size of ``like``: bilinear (2-D) or trilinear (3-D),
    ``align_corners=True``, as the paper's code. No parameters.

    Args:
        spatial_dims: 2 or 3.

    ``impl`` (set with :func:`use_resize`) chooses the implementation outside TorchScript:
    ``"interpolate"`` (:func:`~pam_monai.networks.blocks.convolutions.resize_to`, i.e.
    ``F.interpolate``; the default), ``"gather"`` (:func:`linear_resize`) or ``"matmul"``
    (:func:`matmul_resize`: the GPU fast path with channels-last). TorchScript always interpolates.

    Example::

        >>> up = LinearResize(2)
        >>> up(torch.randn(1, 8, 10, 10), torch.randn(1, 4, 20, 20)).shape
        torch.Size([1, 8, 20, 20])
    """

    impl: str = "interpolate"
    IMPLS = ("interpolate", "gather", "matmul")

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, "LinearResize")
        self.mode = interp_mode(spatial_dims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, align_corners=True, impl={self.impl!r}"

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return resize_to(x, like, self.mode)
        return self._eager_forward(x, like)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        resize = {"gather": linear_resize, "matmul": matmul_resize}.get(self.impl)
        return resize_to(x, like, self.mode) if resize is None else resize(x, like.shape[2:])


def use_resize(network: nn.Module, impl: str = "interpolate") -> nn.Module:
    """Set :attr:`LinearResize.impl` on every ``LinearResize`` of ``network``; returns it."""
    if impl not in LinearResize.IMPLS:
        raise ValueError(f"resize implementation must be one of {LinearResize.IMPLS}, got {impl!r}")
    for m in network.modules():
        if isinstance(m, LinearResize):
            m.impl = impl
    return network
