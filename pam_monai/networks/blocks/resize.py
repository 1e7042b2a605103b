"""Linear up-sampling of a decoder level to its skip connection's size, and an atomic-free variant.

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

It is an experiment for the GPU fast path (``--modes fast+gather`` in ``python -m pam_monai
bench``), off by default: :func:`use_gather_resize` switches it on per network. In TorchScript
and by default every :class:`LinearResize` calls ``F.interpolate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .convolutions import interp_mode

__all__ = ["LinearResize", "linear_resize", "use_gather_resize"]


def _positions(n: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``align_corners=True`` from ``n`` to ``m`` samples: each output's lower input index,
    upper input index and the upper one's weight (float32), from exact integer arithmetic."""
    i = torch.arange(m, device=device)
    if n == 1 or m == 1:  # every output reads input 0 (PyTorch's scale is 0 for m == 1)
        zero = torch.zeros(m, dtype=torch.long, device=device)
        return zero, zero, torch.zeros(m, device=device)
    num = i * (n - 1)
    lo = torch.div(num, m - 1, rounding_mode="floor")
    w = (num - lo * (m - 1)).float() / (m - 1)
    return lo, torch.clamp(lo + 1, max=n - 1), w


def _transposed(n: int, m: int, device: torch.device):
    """The backward pass's gathers: for each input ``j``, the outputs whose lower index is ``j``
    (weights ``1 - w``) and those whose upper index is ``j`` (weights ``w``), ``n x k`` each."""
    if n == 1 or m == 1:
        idx = (
            torch.arange(m, device=device).view(1, m)
            if n == 1
            else torch.zeros(n, 1, dtype=torch.long, device=device)
        )
        # weight 1 (w is 0 everywhere) into input 0 only
        lower = (torch.arange(n, device=device) == 0).float().view(n, 1).expand(n, idx.shape[1])
        return idx, lower, idx, torch.zeros_like(lower)
    _, _, w = _positions(n, m, device)
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
        lo, hi, w = _positions(n, m, x.device)
        ctx.dim, ctx.n, ctx.m = dim, n, m
        w = _along(w.to(x.dtype), dim, x.ndim)
        return torch.lerp(x.index_select(dim, lo), x.index_select(dim, hi), w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dim, n, m = ctx.dim, ctx.n, ctx.m
        lower_idx, lower, upper_idx, upper = _transposed(n, m, grad.device)
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


class LinearResize(nn.Module):
    """Up-sample ``x`` to the spatial size of ``like``: bilinear (2-D) or trilinear (3-D),
    ``align_corners=True``, as the paper's code. No parameters.

    Args:
        spatial_dims: 2 or 3.

    ``gather = True`` (:func:`use_gather_resize`) computes it with :func:`linear_resize` outside
    TorchScript (an experiment for the GPU fast path); otherwise ``F.interpolate``.

    Example::

        >>> up = LinearResize(2)
        >>> up(torch.randn(1, 8, 10, 10), torch.randn(1, 4, 20, 20)).shape
        torch.Size([1, 8, 20, 20])
    """

    gather: bool = False

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.mode = interp_mode(spatial_dims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, align_corners=True"

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.interpolate(x, size=like.shape[2:], mode=self.mode, align_corners=True)
        return self._eager_forward(x, like)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.gather:
            return linear_resize(x, like.shape[2:])
        return F.interpolate(x, size=like.shape[2:], mode=self.mode, align_corners=True)


def use_gather_resize(network: nn.Module, on: bool = True) -> nn.Module:
    """Set :attr:`LinearResize.gather` on every ``LinearResize`` of ``network``; returns it."""
    for m in network.modules():
        if isinstance(m, LinearResize):
            m.gather = bool(on)
    return network
