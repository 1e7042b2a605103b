"""2-D convolutions that are fast on the CPU too: FPA's dilated depthwise and strided 1x1 convolutions.

FPA's attention branch runs two 3x3 depthwise convolutions of dilation 6-12 over 4x-widened
tensors. On the CPU, oneDNN (PyTorch's CPU convolution backend) has fast depthwise kernels
only for dilation 1 in the backward pass (and up to 6 in the forward pass): the dilated ones
were the largest item of FPA's CPU training step in ``torch.profiler`` (a dilation-9 depthwise
convolution of 4 x 256 x 40 x 40: 8.6 ms forward, 33 ms forward + backward on one core, against
2.5 and about 6 ms at dilation 1).

A 3x3 depthwise convolution is a sum of 9 per-channel scaled shifted copies of its input, so
:class:`FastConv2d` computes it as 9 fused multiply-adds (``addcmul_``) of shifted regions, each
vectorised over batch, channels and pixels (the loop is over the 9 kernel taps, never over
channels or pixels), and skips the taps that only see zero padding (at dilation 9 on a 10 x 10
map the 8 off-centre taps each reach one row, column or pixel; on an 8 x 8 map only the centre
tap is left). Its backward pass is the same: 9 multiply-adds for the input gradient and 9
multiply-sums for the weight gradient. Same products, same sums, another order: the same function
to rounding (``tests/test_fast_path.py`` compares in float64). Measured 2.7 / 14 ms forward /
forward + backward against 8.6 / 33 ms on one core, 1.3 / 6.9 against 4.4 / 28 ms on two
(4 x 256 x 40 x 40, dilation 9; ``benchmarks/conv_cpu_bench.py``).

It also runs a strided 1x1 convolution without padding (FPA's attention-branch entry, RFNA's
``W_r1``) as a 1x1 convolution of the sub-sampled input, ``conv(x[..., ::s, ::s])``, the same
function, 10-20 % faster forward + backward than oneDNN's strided path at FPA's c2 shape.

Both routes are also taken for bf16 (CPU autocast; the taps then compute in the weight's fp32),
which avoids two faults of PyTorch 2.13's oneDNN CPU kernels on channels-last bf16 tensors seen
here: a heap corruption in the backward of a strided 1x1 convolution (``double free or
corruption``, reproduced with plain ``F.conv2d``) and, in about one FPA training step in ten,
weight gradients of 1e30 from the dilated depthwise backward.

:class:`FastConv2d` is an ``nn.Conv2d`` (same parameters, same state dict) that takes these routes
for CPU tensors: the taps in eager mode only, the sub-sampling under ``torch.compile`` too (it is plain
tensor operations, and the compiled graph's own strided 1x1 backward is oneDNN's, which corrupts the
heap for channels-last fp32 tensors as well: ``--fast true`` on the CPU crashed there). On the GPU, PyTorch's and cuDNN's grouped kernels at dilation 9
are slow too (an H200 profile: 13.4 ms of FPA's 30.5 ms step contiguous, worse in channels-last),
so the GPU fast path (:func:`use_tap_convs`, ``fast_network(taps=True)``) computes them as
:func:`dilated_depthwise_taps`, plain tensor operations that ``torch.compile`` fuses. In
TorchScript (scripted or traced) it is a plain ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastConv2d", "dilated_depthwise_taps", "make_fast_conv", "use_tap_convs"]


def _taps(h: int, w: int, d: int) -> list[tuple[int, int, tuple[slice, slice], tuple[slice, slice]]]:
    """The taps ``(ki, kj)`` of a 3x3 kernel of dilation ``d`` that reach inside an ``h x w`` image,
    with the output region each one writes (``dst``) and the input region it reads (``src``)."""
    taps = []
    for ki in range(3):
        oi = (ki - 1) * d
        if abs(oi) >= h:
            continue
        for kj in range(3):
            oj = (kj - 1) * d
            if abs(oj) >= w:
                continue
            dst = (slice(max(0, -oi), h - max(0, oi)), slice(max(0, -oj), w - max(0, oj)))
            src = (slice(max(0, oi), h - max(0, -oi)), slice(max(0, oj), w - max(0, -oj)))
            taps.append((ki, kj, dst, src))
    return taps


class _TapDepthwiseConv(torch.autograd.Function):
    """``conv2d(x, w, padding=d, dilation=d, groups=C)`` (3x3, stride 1) as a sum over its 9 taps:
    each tap is one fused multiply-add of a shifted region of ``x`` into the output, vectorised over
    batch, channels and pixels; taps that only see zero padding are skipped.

    ``setup_context`` and ``generate_vmap_rule`` (and a backward that writes no unbatched tensor)
    let ``torch.func`` transform it (``grad``, ``vmap``: per-sample gradients), as it does
    ``nn.Conv2d``; the backward is itself differentiable tensor operations (recorded only under
    ``create_graph=True``), so second-order gradients (a gradient penalty) work too."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, d: int) -> torch.Tensor:
        x = _as_computed(x, weight)
        wv = weight.view(1, -1, 3, 3)
        y = x * wv[:, :, 1:2, 1:2]
        for ki, kj, dst, src in _taps(x.shape[2], x.shape[3], d):
            if (ki, kj) != (1, 1):
                y[:, :, dst[0], dst[1]].addcmul_(x[:, :, src[0], src[1]], wv[:, :, ki : ki + 1, kj : kj + 1])
        return y

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, d = inputs
        ctx.save_for_backward(x, weight)  # the input as given: converted again in backward
        ctx.d = d

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        x = _as_computed(x, weight)  # no copy for contiguous fp32 inputs (the CPU training step's)
        grad = grad.to(x.dtype).contiguous()
        wv = weight.view(1, -1, 3, 3)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad * wv[:, :, 1:2, 1:2] if need_x else None
        grad_w = [None] * 9  # one weight gradient per tap, stacked (not written into a zeros tensor)
        for ki, kj, dst, src in _taps(x.shape[2], x.shape[3], ctx.d):
            g_dst, x_src = grad[:, :, dst[0], dst[1]], x[:, :, src[0], src[1]]
            if need_w:
                grad_w[3 * ki + kj] = (g_dst * x_src).sum((0, 2, 3)).to(weight.dtype)
            if grad_x is not None and (ki, kj) != (1, 1):
                grad_x[:, :, src[0], src[1]].addcmul_(g_dst, wv[:, :, ki : ki + 1, kj : kj + 1])
        if not need_w:
            return grad_x, None, None
        zeros = weight.new_zeros(weight.shape[0])  # taps that only see zero padding
        grad_w = torch.stack([zeros if g is None else g for g in grad_w], dim=1)
        return grad_x, grad_w.view_as(weight), None


def _as_computed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` as the taps compute it: contiguous, bf16 / fp16 inputs (autocast) in the weight's precision."""
    return x.to(torch.promote_types(x.dtype, weight.dtype)).contiguous()


def dilated_depthwise_taps(x: torch.Tensor, weight: torch.Tensor, d: int) -> torch.Tensor:
    """``conv2d(x, weight, padding=d, dilation=d, groups=C)`` (3x3, stride 1) as a sum of its taps,
    in plain differentiable tensor operations (zero padding, 9 shifted slices, multiply-adds).

    The form for ``torch.compile``: inductor fuses the forward into one element-wise kernel and the
    backward into element-wise and reduction kernels, instead of cuDNN's grouped convolution
    (depthwise kernels, the backward ones above all, are often far from memory speed). The weight is
    cast to ``x``'s dtype, as autocast casts a convolution's.

    A bf16 / fp16 ``x`` is summed in fp32 and rounded once, as a convolution kernel accumulates.
    Compiled, inductor fuses the taps into one kernel that computes in fp32 by itself (CUDA and
    CPU; an explicit upcast there made the CUDA code store fp32 copies: 30 % more bytes in
    ``benchmarks/inductor_codegen.py``). Eager, each operation would round its result (more than
    half the outputs of a bf16 sum off by one unit or more), so there the sum is cast explicitly.
    """
    h, w = x.shape[-2], x.shape[-1]
    dtype = x.dtype
    if dtype in (torch.bfloat16, torch.float16) and not torch.compiler.is_compiling():
        x = x.float()
    xp = F.pad(x, (d, d, d, d))
    wv = weight.to(dtype).to(x.dtype).view(1, -1, 3, 3)  # the weight autocast would use
    y = x * wv[:, :, 1:2, 1:2]
    for ki, kj, _dst, _src in _taps(h, w, d):
        if (ki, kj) != (1, 1):
            y = y + xp[:, :, ki * d : ki * d + h, kj * d : kj * d + w] * wv[:, :, ki : ki + 1, kj : kj + 1]
    return y.to(dtype)


class FastConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with fast CPU routes for dilated depthwise 3x3 and strided 1x1 convolutions
    (see the module docstring); identical parameters, state dict and function.

    ``taps = True`` (:func:`use_tap_convs`) also computes a dilated depthwise convolution as a sum of
    taps (:func:`dilated_depthwise_taps`) on CUDA and under ``torch.compile``, where it is otherwise
    a grouped convolution: the GPU fast path's choice (``fast_network(taps=True)``, the bundles'
    ``tap_convs``), off by default for the module.

    Example::

        >>> conv = FastConv2d(64, 64, 3, padding=9, dilation=9, groups=64, bias=False)
        >>> x = torch.randn(2, 64, 40, 40)
        >>> torch.allclose(conv(x), torch.nn.functional.conv2d(x, conv.weight, None, 1, 9, 9, 64), atol=1e-5)
        True
    """

    taps = False  # no annotation: TorchScript cannot resolve one under __future__ annotations

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(input, self.weight, self.bias)
        return self._eager_forward(input)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # torch.jit.trace (ckpt_export --use_trace, ONNX export) records the plain convolution:
            # an autograd Function cannot be exported, and which taps run depends on the traced size
            return self._conv_forward(x, self.weight, self.bias)
        route = self._route(x)
        if route == "tap":
            y = _TapDepthwiseConv.apply(x, self.weight, self.dilation[0])
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        if route == "subsample":
            s0, s1 = self.stride
            return F.conv2d(x[:, :, ::s0, ::s1], self.weight, self.bias, 1, 0, 1, self.groups)
        if self.taps and x.dim() == 4 and self._dilated_depthwise():
            y = dilated_depthwise_taps(x, self.weight, self.dilation[0])
            return y if self.bias is None else y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _dilated_depthwise(self) -> bool:
        d = self.dilation[0]
        return (
            d > 1
            and self.dilation[1] == d
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.padding == (d, d)
            and self.padding_mode == "zeros"
            and self.groups == self.in_channels == self.out_channels
        )

    @torch.jit.unused
    def _route(self, x: torch.Tensor) -> str:
        if x.device.type != "cpu" or x.dim() != 4 or self.padding_mode != "zeros":
            return ""
        if (
            self.kernel_size == (1, 1)
            and self.stride != (1, 1)
            and self.padding == (0, 0)
            and self.dilation == (1, 1)
        ):
            # also under torch.compile (plain tensor operations): the compiled graph's strided 1x1
            # convolution backward is oneDNN's, which corrupts the heap for channels-last fp32
            # tensors too (4 x 8 x 80 x 80 -> 64 channels, PyTorch 2.13: 'double free or corruption')
            return "subsample"
        if self._dilated_depthwise() and not torch.compiler.is_compiling():
            return "tap"
        return ""


def make_fast_conv(conv: nn.Module) -> nn.Module:
    """Turn a 2-D ``nn.Conv2d`` into a :class:`FastConv2d` in place (the same object, parameters
    and initialisation; only ``forward`` differs). Other modules are returned unchanged."""
    if type(conv) is nn.Conv2d:
        conv.__class__ = FastConv2d
    return conv


def use_tap_convs(network: nn.Module, on: bool = True) -> nn.Module:
    """Set :attr:`FastConv2d.taps` on every ``FastConv2d`` of ``network`` (see the class); returns it."""
    for m in network.modules():
        if isinstance(m, FastConv2d):
            m.taps = bool(on)
    return network
