"""FPA's ``dilated depthwise conv -> instance norm -> ReLU`` as one GPU kernel per direction (Triton).

An experiment for the GPU fast path, off by default (:func:`use_plane_kernels`). On an H100 the
attention branches of FPA's four encoder blocks took 16.8 ms of kernels per training step (batch 50)
where the U-Net's same levels took 2.1 (``benchmarks/fpa_branch_gpu.py``): inductor's reductions
over the taps' shifted loads ran far below memory speed. Both operations of this unit work on one
(sample, channel) plane at a time: the depthwise convolution reads only its own channel, and the
instance norm's statistics are the plane's. So one program per plane (the contiguous layout, see
:attr:`~pam_monai.networks.blocks.fpa.FPABlock.contiguous_attention`) can do the whole unit while
the plane (at most 80 x 80 in FPA) stays in the caches:

- forward: the plane's convolution (9 masked loads of shifted positions) into an fp32 scratch plane
  with its mean, the variance from the scratch, then ``relu(gamma * (d - mean) * rstd + beta)``
  written once (the scratch is re-read by the program that wrote it, from the caches where it fits);
- backward: the convolution again into the scratch with the norm's two plane sums (``sum g``,
  ``sum g * xhat``, with ``g`` the gradient after the ReLU), then the convolution output's gradient
  over it, then, after a barrier, the input's gradient (the 9 taps transposed) and the 9
  weight-gradient sums of the plane; the per-plane weight, gamma and beta sums are added over the
  batch by PyTorch.

Every sum is in fp32; inputs may be bf16 / fp16 (autocast) or fp32, the output has the input's
dtype. The same function as ``relu(FastInstanceNorm(conv2d(x, w, padding=d, dilation=d, groups=C)))``
to rounding (the convolution output is not rounded to bf16 before its statistics, as the unfused
path does). Registered as the custom operators ``pam_monai::plane_dconv_norm_relu`` (and its
backward), which ``torch.compile`` keeps as opaque calls (CUDA graphs included). On the CPU they run
the reference PyTorch computation; ``TRITON_INTERPRET=1`` runs the Triton kernels on CPU tensors
(the tests do, in a subprocess). Not yet measured on a GPU. No double backward (``create_graph``):
the backward operator has no gradient of its own.
"""

# no ``from __future__ import annotations`` here: torch 2.4's ``custom_op`` (the floor in setup.cfg)
# reads its functions' annotations as they are and refuses the strings it would make of them
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["plane_dconv_norm_relu", "reference_dconv_norm_relu", "use_plane_kernels", "triton_available"]

# (elements per loop step, warps) of each kernel: without register spills for sm_90 (ptxas -v of
# Triton 3.9's code: forward 64 registers, backward 80; the backward at 1024 x 4 needed 255 and
# spilled). Not yet tuned on a GPU; benchmarks/fpa_branch_gpu.py varies them (fpa_plane_*).
CONFIG = {"forward": (1024, 8), "backward": (512, 8)}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(x: torch.Tensor) -> bool:
    """The kernels for CUDA tensors (any on the CPU under Triton's interpreter); float64 (exact
    checks) always takes the reference computation."""
    if x.dtype == torch.float64 or not triton_available():
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _no_autocast(x: torch.Tensor):
    """The reference path in its own precision: autocast stays on inside a custom operator and would
    run its convolutions and statistics in bf16 (bf16 mean / rstd where the fake says fp32)."""
    return torch.autocast(x.device.type, enabled=False)


def _acc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the reference's accumulation precision: fp32, float64 kept (exact checks)."""
    return t if t.dtype == torch.float64 else t.float()


def reference_dconv_norm_relu(
    x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, dilation: int, eps: float
) -> torch.Tensor:
    """The unit in plain PyTorch, fp32 inside (float64 kept): ``relu(instance_norm(dconv(x)))`` in ``x``'s dtype."""
    d = F.conv2d(_acc(x), _acc(weight), None, 1, dilation, dilation, x.shape[1])
    var, mean = torch.var_mean(d, dim=(2, 3), keepdim=True, correction=0)
    y = (d - mean) * torch.rsqrt(var + eps) * _acc(gamma).view(1, -1, 1, 1) + _acc(beta).view(1, -1, 1, 1)
    return torch.relu(y).to(x.dtype)


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _dconv(x_ptr, w_ptr, base, c, idx, H, W, dil, HW):
        """The depthwise convolution at plane positions ``idx`` (fp32, zero padding)."""
        h = idx // W
        w = idx % W
        inside = idx < HW
        acc = tl.zeros(idx.shape, tl.float32)
        for k in tl.static_range(9):
            hh = h + (k // 3 - 1) * dil
            ww = w + (k % 3 - 1) * dil
            ok = inside & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            v = tl.load(x_ptr + base + hh * W + ww, mask=ok, other=0.0).to(tl.float32)
            acc += v * tl.load(w_ptr + c * 9 + k)
        return acc

    @triton.jit
    def _fwd_kernel(
        x_ptr, w_ptr, g_ptr, b_ptr, y_ptr, d_ptr, mean_ptr, rstd_ptr, C, H, W, dil, eps, BLOCK: tl.constexpr
    ):  # fmt: skip
        pid = tl.program_id(0)
        c = pid % C
        HW = H * W
        base = pid.to(tl.int64) * HW
        offs = tl.arange(0, BLOCK)
        # the convolution once (9 shifted loads), into the fp32 scratch plane, and its mean
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, HW, BLOCK):
            idx = start + offs
            dv = _dconv(x_ptr, w_ptr, base, c, idx, H, W, dil, HW)
            tl.store(d_ptr + base + idx, dv, mask=idx < HW)
            acc += tl.where(idx < HW, dv, 0.0)
        mean = tl.sum(acc, 0) / HW
        tl.debug_barrier()
        acc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, HW, BLOCK):
            idx = start + offs
            dv = tl.load(d_ptr + base + idx, mask=idx < HW, other=0.0) - mean
            acc += tl.where(idx < HW, dv * dv, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(acc, 0) / HW + eps)
        scale = tl.load(g_ptr + c) * rstd
        shift = tl.load(b_ptr + c) - mean * scale
        for start in range(0, HW, BLOCK):
            idx = start + offs
            y = tl.load(d_ptr + base + idx, mask=idx < HW, other=0.0) * scale + shift
            tl.store(y_ptr + base + idx, tl.maximum(y, 0.0).to(y_ptr.dtype.element_ty), mask=idx < HW)
        tl.store(mean_ptr + pid, mean)
        tl.store(rstd_ptr + pid, rstd)

    @triton.jit
    def _bwd_kernel(
        x_ptr, w_ptr, g_ptr, b_ptr, mean_ptr, rstd_ptr, dy_ptr, dd_ptr, dx_ptr, dw_ptr, dg_ptr, db_ptr,
        C, H, W, dil, BLOCK: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        c = pid % C
        HW = H * W
        base = pid.to(tl.int64) * HW
        offs = tl.arange(0, BLOCK)
        mean = tl.load(mean_ptr + pid)
        rstd = tl.load(rstd_ptr + pid)
        gamma = tl.load(g_ptr + c)
        beta = tl.load(b_ptr + c)
        # the norm's plane sums of the gradient after the ReLU (g) and of g * xhat
        acc_g = tl.zeros([BLOCK], tl.float32)
        acc_gx = tl.zeros([BLOCK], tl.float32)
        for start in range(0, HW, BLOCK):
            idx = start + offs
            dv = _dconv(x_ptr, w_ptr, base, c, idx, H, W, dil, HW)
            tl.store(dd_ptr + base + idx, dv, mask=idx < HW)  # the convolution, for the next pass
            xhat = (dv - mean) * rstd
            dy = tl.load(dy_ptr + base + idx, mask=idx < HW, other=0.0).to(tl.float32)
            g = tl.where(gamma * xhat + beta > 0.0, dy, 0.0)
            acc_g += g
            acc_gx += g * xhat
        sum_g = tl.sum(acc_g, 0)
        sum_gx = tl.sum(acc_gx, 0)
        tl.store(db_ptr + pid, sum_g)
        tl.store(dg_ptr + pid, sum_gx)
        tl.debug_barrier()
        # the convolution output's gradient, over the convolution in the scratch plane
        for start in range(0, HW, BLOCK):
            idx = start + offs
            xhat = (tl.load(dd_ptr + base + idx, mask=idx < HW, other=0.0) - mean) * rstd
            dy = tl.load(dy_ptr + base + idx, mask=idx < HW, other=0.0).to(tl.float32)
            g = tl.where(gamma * xhat + beta > 0.0, dy, 0.0)
            dd = (gamma * rstd) * (g - sum_g / HW - xhat * (sum_gx / HW))
            tl.store(dd_ptr + base + idx, dd, mask=idx < HW)
        tl.debug_barrier()  # the whole scratch plane is written (one program per plane)
        # the input's gradient (taps transposed) and the plane's 9 weight-gradient sums, in 9 named
        # per-lane accumulators (Triton has no arrays of register tensors; a sum per tap and chunk
        # instead would add 9 block-wide reductions to every loop step)
        dw0 = tl.zeros([BLOCK], tl.float32)
        dw1 = tl.zeros([BLOCK], tl.float32)
        dw2 = tl.zeros([BLOCK], tl.float32)
        dw3 = tl.zeros([BLOCK], tl.float32)
        dw4 = tl.zeros([BLOCK], tl.float32)
        dw5 = tl.zeros([BLOCK], tl.float32)
        dw6 = tl.zeros([BLOCK], tl.float32)
        dw7 = tl.zeros([BLOCK], tl.float32)
        dw8 = tl.zeros([BLOCK], tl.float32)
        for start in range(0, HW, BLOCK):
            idx = start + offs
            h = idx // W
            w = idx % W
            inside = idx < HW
            dd = tl.load(dd_ptr + base + idx, mask=inside, other=0.0)
            dx = tl.zeros([BLOCK], tl.float32)
            for k in tl.static_range(9):
                oi = (k // 3 - 1) * dil
                oj = (k % 3 - 1) * dil
                wk = tl.load(w_ptr + c * 9 + k)
                # d[p] = sum_k w_k x[p + o_k]: x[q] gets w_k d'[q - o_k], and w_k gets d'[p] x[p + o_k]
                hs = h - oi
                ws = w - oj
                ok = inside & (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W)
                dx += wk * tl.load(dd_ptr + base + hs * W + ws, mask=ok, other=0.0)
                ha = h + oi
                wa = w + oj
                ok = inside & (ha >= 0) & (ha < H) & (wa >= 0) & (wa < W)
                prod = dd * tl.load(x_ptr + base + ha * W + wa, mask=ok, other=0.0).to(tl.float32)
                if k == 0:
                    dw0 += prod
                elif k == 1:
                    dw1 += prod
                elif k == 2:
                    dw2 += prod
                elif k == 3:
                    dw3 += prod
                elif k == 4:
                    dw4 += prod
                elif k == 5:
                    dw5 += prod
                elif k == 6:
                    dw6 += prod
                elif k == 7:
                    dw7 += prod
                else:
                    dw8 += prod
            tl.store(dx_ptr + base + idx, dx.to(dx_ptr.dtype.element_ty), mask=inside)
        out = dw_ptr + pid.to(tl.int64) * 9
        tl.store(out + 0, tl.sum(dw0, 0))
        tl.store(out + 1, tl.sum(dw1, 0))
        tl.store(out + 2, tl.sum(dw2, 0))
        tl.store(out + 3, tl.sum(dw3, 0))
        tl.store(out + 4, tl.sum(dw4, 0))
        tl.store(out + 5, tl.sum(dw5, 0))
        tl.store(out + 6, tl.sum(dw6, 0))
        tl.store(out + 7, tl.sum(dw7, 0))
        tl.store(out + 8, tl.sum(dw8, 0))


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4 or weight.shape != (x.shape[1], 1, 3, 3):
        raise ValueError(
            f"plane_dconv_norm_relu: an N x C x H x W input and a C x 1 x 3 x 3 depthwise weight, got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.shape[2] * x.shape[3] == 1:  # as FastInstanceNorm and nn.InstanceNorm refuse it
        raise ValueError(
            f"plane_dconv_norm_relu cannot normalise a single spatial element (input shape {list(x.shape)}): "
            "its output would be relu(beta) whatever the input; give a larger input."
        )


@torch.library.custom_op("pam_monai::plane_dconv_norm_relu", mutates_args=())
def _forward_op(
    x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, dilation: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, weight)
    n, c, h, w = x.shape
    x = x.contiguous()  # the outputs are contiguous whichever path computes them
    if not _use_triton(x):
        with _no_autocast(x):
            y = reference_dconv_norm_relu(x, weight, gamma, beta, dilation, eps)
            d = F.conv2d(_acc(x), _acc(weight), None, 1, dilation, dilation, c)
            var, mean = torch.var_mean(d, dim=(2, 3), correction=0)
            return y, mean.reshape(-1), torch.rsqrt(var + eps).reshape(-1)  # fp32 (float64 kept)
    y = torch.empty_like(x)
    scratch = torch.empty(x.shape, device=x.device, dtype=torch.float32)  # the convolution, per plane
    mean = torch.empty(n * c, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block, warps = CONFIG["forward"]
    _fwd_kernel[(n * c,)](
        x, weight.float().contiguous(), gamma.float().contiguous(), beta.float().contiguous(),
        y, scratch, mean, rstd, c, h, w, dilation, eps, BLOCK=block, num_warps=warps,
    )  # fmt: skip
    return y, mean, rstd


@_forward_op.register_fake
def _(x, weight, gamma, beta, dilation, eps):
    n, c = x.shape[0], x.shape[1]
    stats = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty(n * c, dtype=stats),
        x.new_empty(n * c, dtype=stats),
    )


@torch.library.custom_op("pam_monai::plane_dconv_norm_relu_backward", mutates_args=())
def _backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dilation: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c, h, w = x.shape
    x, dy = x.contiguous(), dy.contiguous()
    if not _use_triton(x):  # the same backward in PyTorch (autograd is off inside an operator)
        with _no_autocast(x):
            dx, dw, dg, db = _reference_backward(dy, x, weight, gamma, beta, mean, rstd, dilation)
        return dx.to(x.dtype).contiguous(), dw.to(weight.dtype), dg.to(gamma.dtype), db.to(beta.dtype)
    dd = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x)
    dw = torch.empty(n * c * 9, device=x.device, dtype=torch.float32)
    dg = torch.empty(n * c, device=x.device, dtype=torch.float32)
    db = torch.empty_like(dg)
    block, warps = CONFIG["backward"]
    _bwd_kernel[(n * c,)](
        x, weight.float().contiguous(), gamma.float().contiguous(), beta.float().contiguous(),
        mean, rstd, dy, dd, dx, dw, dg, db, c, h, w, dilation, BLOCK=block, num_warps=warps,
    )  # fmt: skip
    return (
        dx,
        dw.view(n, c, 9).sum(0).view_as(weight).to(weight.dtype),
        dg.view(n, c).sum(0).to(gamma.dtype),
        db.view(n, c).sum(0).to(beta.dtype),
    )


def _reference_backward(dy, x, weight, gamma, beta, mean, rstd, dilation):
    """The kernels' backward in PyTorch, fp32: the norm's plane sums, the convolution output's
    gradient, then the depthwise convolution's input and weight gradients."""
    n, c, h, w = x.shape
    xf, wf = _acc(x), _acc(weight)
    per_plane = (n, c, 1, 1)
    d = F.conv2d(xf, wf, None, 1, dilation, dilation, c)
    xhat = (d - mean.view(per_plane)) * rstd.view(per_plane)
    gam, bet = _acc(gamma).view(1, c, 1, 1), _acc(beta).view(1, c, 1, 1)
    g = torch.where(xhat * gam + bet > 0, _acc(dy), 0.0)  # the ReLU's gradient
    sum_g = g.sum((2, 3), keepdim=True)
    sum_gx = (g * xhat).sum((2, 3), keepdim=True)
    dd = gam * rstd.view(per_plane) * (g - sum_g / (h * w) - xhat * (sum_gx / (h * w)))
    conv = {"stride": 1, "padding": dilation, "dilation": dilation, "groups": c}
    dx = torch.nn.grad.conv2d_input(x.shape, wf, dd, **conv)
    dw = torch.nn.grad.conv2d_weight(xf, weight.shape, dd, **conv)
    return dx, dw, sum_gx.sum((0, 2, 3)), sum_g.sum((0, 2, 3))


@_backward_op.register_fake
def _(dy, x, weight, gamma, beta, mean, rstd, dilation, eps):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight),
        torch.empty_like(gamma),
        torch.empty_like(beta),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, gamma, beta, dilation, eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, gamma, beta, mean, rstd)
    ctx.dilation, ctx.eps = dilation, eps


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, gamma, beta, mean, rstd = ctx.saved_tensors
    dx, dw, dg, db = _backward_op(dy, x, weight, gamma, beta, mean, rstd, ctx.dilation, ctx.eps)
    return dx, dw, dg, db, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def plane_dconv_norm_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    dilation: int,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``relu(instance_norm(conv2d(x, weight, padding=dilation, dilation=dilation, groups=C)))`` with
    the norm's ``gamma`` / ``beta`` (see the module docstring); ``x`` is ``N x C x H x W``.

    Example::

        >>> x, w = torch.randn(2, 4, 12, 12), torch.randn(4, 1, 3, 3)
        >>> y = plane_dconv_norm_relu(x, w, torch.ones(4), torch.zeros(4), dilation=3)
        >>> y.shape, bool((y >= 0).all())
        (torch.Size([2, 4, 12, 12]), True)
    """
    return _forward_op(x, weight, gamma, beta, int(dilation), float(eps))[0]


def use_plane_kernels(network: nn.Module, on: bool = True) -> nn.Module:
    """Set ``plane_kernels`` on every FPA block of ``network`` (its contiguous attention branch then
    runs each ``dilated conv -> norm -> ReLU`` unit as :func:`plane_dconv_norm_relu`); returns it."""
    from .fpa import FPABlock

    blocks = [m for m in network.modules() if isinstance(m, FPABlock)]
    if on:
        unfit = [
            name
            for name, m in network.named_modules()
            if isinstance(m, FPABlock) and not m.plane_kernels_apply()
        ]
        if unfit:
            raise ValueError(
                f"use_plane_kernels: the FPA blocks {unfit} are not 2-D 'depthwise dilated conv -> affine "
                "instance norm -> ReLU' units (depthwise=False, another norm, one with running statistics or 3-D); "
                "leave plane_kernels off"
            )
        if blocks and not triton_available():  # the operator would quietly run its reference on a GPU
            warnings.warn(
                "use_plane_kernels: Triton is not installed (pip install triton; PyTorch's Windows builds lack it): "
                "the fused units run PyTorch's reference computation instead, slower than leaving "
                "plane_kernels off",
                stacklevel=2,
            )
    for m in blocks:
        m.plane_kernels = bool(on)
    return network
