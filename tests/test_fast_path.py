"""The fast path computes the same function as the plain path (CPU; no timing here).

- ``FastInstanceNorm`` == ``nn.InstanceNorm`` (forward and gradients, 2-D and 3-D, both kernels);
- ``FastConv2d``'s CPU routes == ``nn.Conv2d`` (dilated depthwise by taps, strided 1x1 by
  sub-sampling), in float64, and TorchScript still works;
- the up-sampling's implementations (gather, matrix products) == ``F.interpolate``, in float64,
  both memory layouts, and networks using them compute the same function;
- a network on the fast path (fast norm, channels-last, matrix-product up-sampling, taps, bf16
  autocast) agrees with the fp32 plain path within bf16 tolerance: outputs, and one training
  step's loss, gradients and weights;
- ``DeviceSliceLoader`` serves the ``DataLoader``'s batches in the same order;
- ``torch.compile`` of a small network on the CPU == eager (only with PAM_MONAI_TEST_COMPILE=1: a
  cold compile takes about a minute on 2 CPU cores).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from pam_monai.engines.fast_path import fast_network, use_fast_norm
from pam_monai.engines.loaders import DeviceSliceLoader
from pam_monai.networks import NETWORKS, FPABlock, get_network, loss_for
from pam_monai.networks.blocks import (
    FAST_NORM,
    FastConv2d,
    FastInstanceNorm2d,
    FastInstanceNorm3d,
    fast_norm_of,
)
from pam_monai.networks.blocks.fastconv import dilated_depthwise_taps
from pam_monai.networks.blocks.fpa import pointwise_conv_as_matmul
from pam_monai.networks.blocks.norm import _shifted_sums_var_mean


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------- fast instance norm
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("impl", ["group_norm", "var_mean", "shifted_sums"])
@pytest.mark.parametrize("affine", [True, False])
def test_fast_norm_equals_instance_norm(dims, impl, affine):
    torch.manual_seed(0)
    shape = (3, 5, 9, 7) if dims == 2 else (2, 4, 5, 6, 7)
    ref = (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(shape[1], affine=affine)
    fast = (FastInstanceNorm2d if dims == 2 else FastInstanceNorm3d)(shape[1], affine=affine, impl=impl)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 2.0)
            ref.bias.normal_()
        fast.load_state_dict(ref.state_dict())
    assert set(fast.state_dict()) == set(ref.state_dict())
    x = (torch.randn(shape) * 3 + 1).double()
    ref, fast = ref.double(), fast.double()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(shape, dtype=torch.float64)
    y_ref, y_fast = ref(x1), fast(x2)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
    (y_ref * g).sum().backward()
    (y_fast * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-9, atol=1e-9)
    if affine:
        torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-9, atol=1e-9)
    # first and second derivatives against finite differences, parameters included, on a tiny odd
    # input (shifted_sums detaches its shift: correct only because both statistics' gradients
    # through it cancel)
    tiny = torch.randn((2, shape[1], 3, 2, 5)[: dims + 2], dtype=torch.float64, requires_grad=True)
    params = {k: v.detach().clone().requires_grad_() for k, v in fast.named_parameters()}

    def call(t, *values):
        return torch.func.functional_call(fast, dict(zip(params, values)), (t,))

    assert torch.autograd.gradcheck(call, (tiny, *params.values()))
    assert torch.autograd.gradgradcheck(call, (tiny, *params.values()))


@pytest.mark.parametrize(
    "cls,shape", [(FastInstanceNorm2d, (2, 4, 1, 1)), (FastInstanceNorm3d, (1, 4, 1, 1, 1))]
)
@pytest.mark.parametrize("impl", ["auto", "group_norm", "var_mean", "shifted_sums"])
def test_fast_norm_refuses_a_single_spatial_element_as_instance_norm(cls, shape, impl):
    """One spatial element has variance 0: the output was the bias whatever the input, where
    ``nn.InstanceNorm`` raises. Refused alike, eager, scripted and compiled (a shape check)."""
    norm = cls(4, affine=True, impl=impl)
    x = torch.randn(shape)
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        (nn.InstanceNorm2d if cls is FastInstanceNorm2d else nn.InstanceNorm3d)(4, affine=True)(x)
    # the check is on shapes: a compiled full graph (no break) still takes two elements
    two = torch.randn(shape[:-1] + (2,))
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(norm, backend="eager", fullgraph=True)(two), norm(two))
    torch._dynamo.reset()
    message = r"FastInstanceNorm\(4\) cannot normalise a single spatial element \(input shape \["
    for run in (norm, torch.jit.script(norm), torch.compile(norm, backend="eager")):
        with pytest.raises((ValueError, torch.jit.Error), match=message):
            run(x)


def test_fast_norm_keeps_channels_last_and_bf16():
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    norm = FastInstanceNorm2d(8, affine=True, impl="var_mean")
    y = norm(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    yb = norm(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("offset", [0.0, 100.0, -3000.0])
def test_fast_norm_of_bf16_inputs_takes_shifted_sums_as_exact_as_welford(offset):
    """bf16 inputs (autocast, the GPU fast path) get their statistics from shifted sums, not
    Welford's ``var_mean``: as exact to within fp32 rounding, also far from zero mean (where plain
    sums of squares would cancel), and the same bf16 outputs to within one rounding step."""
    torch.manual_seed(0)
    x = (torch.randn(3, 6, 17, 13) * torch.rand(1, 6, 1, 1) * 4 + offset).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last)  # channels-last: not group_norm on the CPU
    norm = FastInstanceNorm2d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    ref = nn.InstanceNorm2d(6, affine=True).double()
    ref.load_state_dict(norm.state_dict())
    exact = ref(x.double())
    auto = norm(x)
    norm.impl = "shifted_sums"
    torch.testing.assert_close(norm(x), auto, rtol=0, atol=0)  # auto took shifted sums
    norm.impl = "var_mean"
    welford = norm(x)
    # both within one bf16 rounding of the exact result (|y| up to ~6: a step of 2**-5 there)
    for y in (auto, welford):
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.double(), exact, rtol=2**-8, atol=2**-8)
    assert (auto.double() - welford.double()).abs().max() <= 2**-5
    # the statistics themselves, in fp32: as close to float64 as Welford's
    dims = [2, 3]
    var64, mean64 = torch.var_mean(x.double(), dim=dims, keepdim=True, correction=0)
    var_s, mean_s = _shifted_sums_var_mean(x.float(), dims)
    var_w, mean_w = torch.var_mean(x.float(), dim=dims, keepdim=True, correction=0)
    err_s = ((var_s.double() - var64).abs() / var64).max()
    err_w = ((var_w.double() - var64).abs() / var64).max()
    assert err_s < 1e-5 and err_s <= 10 * err_w + 1e-7, (err_s, err_w)
    torch.testing.assert_close(mean_s.double(), mean64, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("where", ["centre", "corner"])
def test_shifted_sums_keep_the_variance_of_a_lone_outlier(where):
    """A 60 x 61 x 62 volume of zeros with one non-zero voxel: its variance is about 1/N of the
    voxel's square. With a single element as the shift (the centre, as first written) that element
    being the outlier made ``E[d^2] - E[d]^2`` cancel: 11% error in fp32 (72% at 155 x 120 x 120).
    The mean of a grid sample as shift keeps it at rounding level wherever the outlier is."""
    shape = (60, 61, 62)
    x = torch.zeros((1, 2) + shape)
    at = tuple(s // 2 for s in shape) if where == "centre" else (0, 0, 0)
    x[(0, slice(None)) + at] = 1.37
    var64, mean64 = torch.var_mean(x.double(), dim=[2, 3, 4], keepdim=True, correction=0)
    var, mean = _shifted_sums_var_mean(x, [2, 3, 4])
    assert ((var.double() - var64).abs() / var64).max() < 1e-5
    assert ((mean.double() - mean64).abs() / mean64).max() < 1e-5
    norm = FastInstanceNorm3d(2, affine=True)
    y = norm(x.bfloat16().contiguous(memory_format=torch.channels_last_3d))  # auto: shifted sums
    ref = nn.InstanceNorm3d(2, affine=True).double()(x.double())
    assert (y.double() - ref).abs().max() <= 2**-7 * ref.abs().max()


def test_fast_norm_option_keeps_every_network_and_its_state_dict():
    assert fast_norm_of(("instance", {"affine": True})) == FAST_NORM
    assert fast_norm_of("batch") == "batch"
    x = torch.randn(1, 4, 72, 72)
    for name in NETWORKS:
        torch.manual_seed(0)
        plain = get_network(name)
        fast = get_network(name, norm=FAST_NORM)
        assert n_params(fast) == n_params(plain), name
        assert fast.state_dict().keys() == plain.state_dict().keys(), name
        fast.load_state_dict(plain.state_dict())
        if name in ("unet", "fpa"):
            with torch.no_grad():
                torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_use_fast_norm_swaps_in_place_and_keeps_parameters():
    torch.manual_seed(0)
    net = get_network("aunet")  # affine norms in the blocks, non-affine ones in the gates
    params = list(net.parameters())
    x = torch.randn(2, 4, 40, 40)
    with torch.no_grad():
        before = net(x)
    out = fast_network(net, fast_norm=True)
    assert out is net
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in net.modules())
    assert all(a is b for a, b in zip(params, net.parameters()))
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-4)
    assert use_fast_norm(net) is net  # idempotent
    scripted = torch.jit.script(net.eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


# ----------------------------------------------------------------------------- fast CPU convolutions
@pytest.mark.parametrize("dilation", [2, 6, 9, 12])
@pytest.mark.parametrize("hw", [(5, 7), (10, 10), (23, 17), (40, 40)])
def test_tap_route_equals_dilated_depthwise_conv(dilation, hw):
    torch.manual_seed(0)
    c = 6
    conv = FastConv2d(c, c, 3, padding=dilation, dilation=dilation, groups=c, bias=True).double()
    x = torch.randn(3, c, *hw, dtype=torch.float64, requires_grad=True)
    assert conv._route(x) == "tap"
    y = conv(x)
    x_ref = x.detach().clone().requires_grad_()
    w_ref, b_ref = conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()
    y_ref = F.conv2d(x_ref, w_ref, b_ref, 1, dilation, dilation, c)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(conv.weight.grad, w_ref.grad)
    torch.testing.assert_close(conv.bias.grad, b_ref.grad)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's fallback for addcmul_
def test_tap_route_takes_torch_func_transforms():
    """``torch.func.grad`` and per-sample gradients (``vmap(grad)``) of a 2-D FPA block on the CPU:
    the tap route's autograd.Function refused every functorch transform (no setup_context), where
    ``nn.Conv2d`` takes them; the results are those of plain convolutions."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    fast = FPABlock(2, 2, 3, stride=2, dilation=2, expansion=2).double()
    assert fast.dilated1.conv._route(torch.zeros(1, 4, 5, 5, dtype=torch.float64)) == "tap"
    plain = copy.deepcopy(fast)
    for m in plain.modules():
        if isinstance(m, FastConv2d):
            m.__class__ = nn.Conv2d
    params = {k: v.detach() for k, v in fast.named_parameters()}
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64)

    def loss(net):
        return lambda p, xb: functional_call(net, p, (xb,)).square().sum()

    for transform in (grad, lambda f: vmap(grad(f), in_dims=(None, 0))):
        xs = x if transform is grad else x[:, None]  # per sample: a batch of one each
        got, want = transform(loss(fast))(params, xs), transform(loss(plain))(params, xs)
        for name in params:
            torch.testing.assert_close(got[name], want[name], msg=name)


def test_tap_route_has_second_order_gradients():
    """A gradient penalty (``create_graph=True``) through a 2-D FPA block on the CPU raised "trying to
    differentiate twice a function that was marked with @once_differentiable" (nn.Conv2d has them)."""
    from pam_monai.networks.blocks.fastconv import _TapDepthwiseConv

    torch.manual_seed(0)
    for d, hw in ((2, (6, 6)), (9, (10, 10))):  # at 10 x 10 and dilation 9 taps are skipped
        x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
        w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda x, w, d=d: _TapDepthwiseConv.apply(x, w, d), (x, w))
    fast = FPABlock(2, 2, 3, stride=2, dilation=2, expansion=2).double()
    plain = copy.deepcopy(fast)
    for m in plain.modules():
        if isinstance(m, FastConv2d):
            m.__class__ = nn.Conv2d
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    penalties = []
    for net in (fast, plain):
        (g,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
        g.square().sum().backward()
        penalties.append([p.grad.clone() for p in net.parameters()])
    for got, want in zip(*penalties):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dilation,hw", [(2, (5, 7)), (9, (10, 10)), (9, (8, 8)), (6, (23, 17))])
def test_functional_taps_equal_dilated_depthwise_conv(dilation, hw):
    """The form that FastConv2d.taps uses on CUDA and under torch.compile."""
    torch.manual_seed(0)
    c = 5
    x = torch.randn(2, c, *hw, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    y = dilated_depthwise_taps(x, w, dilation)
    y_ref = F.conv2d(x, w, None, 1, dilation, dilation, c)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(y_ref, (x, w), g))
    assert dilated_depthwise_taps(x.bfloat16(), w, dilation).dtype == torch.bfloat16  # as autocast would


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_taps_are_summed_in_fp32_and_rounded_once(compiled):
    """As a convolution kernel accumulates (inductor's fused kernel does by itself): eager, each
    bf16 operation would round, 9 roundings leaving most outputs a unit or more off."""
    torch.manual_seed(0)
    c, d = 16, 6
    x = torch.randn(2, c, 20, 20).bfloat16()
    w = torch.randn(c, 1, 3, 3)
    # eager uses autocast's bf16 weight; inductor drops the weight's bf16 round trip (fp32 weight)
    weight = w.double() if compiled else w.bfloat16().double()
    exact = F.conv2d(x.double(), weight, None, 1, d, d, c)
    taps = torch.compile(dilated_depthwise_taps, dynamic=False) if compiled else dilated_depthwise_taps
    y = taps(x, w, d)
    assert y.dtype == torch.bfloat16
    off = (y.double() != exact.bfloat16().double()).float().mean().item()
    assert off < 0.01, f"{off:.1%} of the outputs are not the rounded exact sum"


@pytest.mark.parametrize("stride,hw", [(2, (9, 8)), (2, (10, 10)), (3, (11, 7))])
def test_subsample_route_equals_strided_pointwise_conv(stride, hw):
    torch.manual_seed(0)
    conv = FastConv2d(5, 7, 1, stride=stride, bias=False).double()
    x = torch.randn(2, 5, *hw, dtype=torch.float64, requires_grad=True)
    assert conv._route(x) == "subsample"
    y = conv(x)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = F.conv2d(x_ref, conv.weight, None, stride)
    torch.testing.assert_close(y, y_ref)
    y.backward(torch.ones_like(y))
    y_ref.backward(torch.ones_like(y_ref))
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_subsample_route_is_also_taken_under_compile(monkeypatch):
    """Under torch.compile a strided 1x1 convolution is still computed on the sub-sampled input:
    the compiled graph's own strided 1x1 backward (oneDNN) corrupts the heap for channels-last fp32
    CPU tensors (``--fast true`` on the CPU: a segmentation fault in the cityscapes bundle's first
    step). The taps stay eager-only."""
    pointwise = FastConv2d(8, 16, 1, stride=2, bias=False)
    dilated = FastConv2d(6, 6, 3, padding=9, dilation=9, groups=6, bias=False)
    x8 = torch.randn(1, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    x6 = torch.randn(1, 6, 10, 10)
    assert pointwise._route(x8) == "subsample" and dilated._route(x6) == "tap"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert pointwise._route(x8) == "subsample"
    assert dilated._route(x6) == ""


@pytest.mark.skipif(
    os.environ.get("PAM_MONAI_TEST_COMPILE") != "1",
    reason="torch.compile on 2 CPU cores; set PAM_MONAI_TEST_COMPILE=1",
)
def test_compiled_strided_pointwise_conv_in_channels_last_runs_its_backward():
    """In a subprocess: the fault it guards against kills the process (double free or corruption)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from pam_monai.networks.blocks.fastconv import FastConv2d\n"
        "conv = FastConv2d(8, 64, 1, stride=2, bias=False).to(memory_format=torch.channels_last)\n"
        "x = torch.randn(4, 8, 80, 80).contiguous(memory_format=torch.channels_last).requires_grad_()\n"
        "c = torch.compile(conv, dynamic=False)\n"
        "for _ in range(3):\n"
        "    y = c(x)\n"
        "    gx, gw = torch.autograd.grad(y, (x, conv.weight), torch.ones_like(y))\n"
        "ref = torch.nn.functional.conv2d(x.detach().contiguous(), conv.weight.detach(), None, 2)\n"
        "assert torch.allclose(y, ref, atol=1e-5)\n"
        "gw_ref = torch.einsum('nchw->c', x.detach()[:, :, ::2, ::2]).view(1, 8, 1, 1).expand(64, 8, 1, 1)\n"
        "assert torch.allclose(gw, gw_ref, rtol=1e-4, atol=1e-3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_fast_routes_keep_the_network_function_and_torchscript():
    torch.manual_seed(0)
    net = get_network("fpa").double()
    fast_convs = [m for m in net.modules() if isinstance(m, FastConv2d)]
    assert len(fast_convs) == 11  # 3 strided 1x1 + 8 dilated depthwise
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if isinstance(m, FastConv2d):
            m.__class__ = nn.Conv2d
    x = torch.randn(2, 4, 83, 77, dtype=torch.float64)
    y, y_ref = net(x), plain(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for (name, p), q in zip(net.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=name)
    scripted = torch.jit.script(net.float().eval())
    xf = x.float()[:1]
    torch.testing.assert_close(scripted(xf), net(xf), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the whole fast path
def _step(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One training step as the bundles do it; returns (loss, gradients, updated weights)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = loss_for(net, DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = net(x)
    loss = loss_fn(out.float(), y)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    opt.step()
    return float(loss.detach()), grads, torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("name", ["fpa", "rfna"])
def test_fast_path_agrees_with_the_plain_fp32_path(name):
    torch.manual_seed(0)
    size = 72  # RFNA needs more than 64 pixels on one axis
    plain = get_network(name, features=(8, 16, 16, 32))
    # the GPU fast path's structure (compilation aside): channels-last, fusible norm, up-sampling
    # as matrix products (bf16 weights under autocast), dilated convolutions as taps
    options = {"channels_last": True, "fast_norm": True, "resize": "matmul", "taps": True}
    fast = fast_network(copy.deepcopy(plain), **options)
    fast_bf16 = fast_network(copy.deepcopy(plain), **options)
    plain_bf16 = copy.deepcopy(plain)  # bf16 autocast alone: what "bf16 tolerance" means
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, size, size, generator=g)
    y = (torch.rand(2, 1, size, size, generator=g) > 0.8).float()
    x_cl = x.contiguous(memory_format=torch.channels_last)

    # outputs (eval mode, no gradients)
    for net in (plain, fast, fast_bf16):
        net.eval()
    with torch.no_grad():
        ref = plain(x)
        torch.testing.assert_close(fast(x_cl), ref, rtol=1e-4, atol=1e-4)  # fast norm + channels-last, fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast_bf16(x_cl).float()
    assert (out - ref).norm() / ref.norm() < 0.05
    assert ((out > 0) == (ref > 0)).float().mean() > 0.97

    # one training step
    for net in (plain, fast, fast_bf16, plain_bf16):
        net.train()
    loss_ref, g_ref, w_ref = _step(plain, x, y, amp=False)
    loss_fast, g_fast, w_fast = _step(fast, x_cl, y, amp=False)
    assert abs(loss_fast - loss_ref) < 1e-5
    assert (g_fast - g_ref).norm() / g_ref.norm() < 1e-4  # the same function: fp32 rounding only
    # Adam's first step is about lr * sign(grad), which amplifies rounding where a gradient is ~0
    assert ((w_fast - w_ref).abs() < 1e-5).float().mean() > 0.99
    assert (w_fast - w_ref).abs().max() <= 2 * 1e-3 + 1e-6

    loss_b, g_b, w_b = _step(fast_bf16, x_cl, y, amp=True)
    loss_p, g_p, w_p = _step(plain_bf16, x, y, amp=True)
    assert abs(loss_b - loss_ref) < 5e-3
    # gradients at initialisation are small and bf16 moves them noticeably (cosine about 0.95 for
    # FPA with plain autocast); the fast path must not move them further than plain autocast does
    cos_b, cos_p = (F.cosine_similarity(gr, g_ref, dim=0).item() for gr in (g_b, g_p))
    assert cos_b > 0.9 and cos_b > cos_p - 0.02, (cos_b, cos_p)
    # AdamW's first step moves each weight by about lr * sign(grad): the weights agree where the
    # gradient signs do, and none can differ by more than two steps
    assert (w_b - w_ref).abs().max() <= 2 * 1e-3 + 1e-6
    agree_b, agree_p = (((w - w_ref).abs() < 1e-5).float().mean().item() for w in (w_b, w_p))
    assert agree_b > 0.7 and agree_b > agree_p - 0.03, (agree_b, agree_p)


def _assert_same_gradients(y, net, y_ref, net_ref, rtol: float, atol: float) -> None:
    """The parameter gradients of ``y`` (in ``net``) and ``y_ref`` (in ``net_ref``) for one random
    output gradient agree."""
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, list(net.parameters()), g)
    grads_ref = torch.autograd.grad(y_ref, list(net_ref.parameters()), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["unet", "fpa", "rfna"])
def test_channels_last_fast_network_in_3d(name):
    """fast_network(channels_last=True) of a 3-D network: channels_last_3d weights (Module.to with
    torch.channels_last refused the 5-D weights: 'required rank 4 tensor'), the same function."""
    torch.manual_seed(0)
    net = get_network(name, spatial_dims=3, in_channels=2, options={"features": [2, 4, 4, 8]}).double()
    fast = fast_network(copy.deepcopy(net), channels_last=True, fast_norm=True, resize="matmul", taps=True)
    weights = [p for p in fast.parameters() if p.dim() == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    assert fast.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(1, 2, 66, 9, 7, dtype=torch.float64)  # RFNA: more than 64 along one axis
    y_ref = net(x)
    y = fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    _assert_same_gradients(y, fast, y_ref, net, rtol=1e-9, atol=1e-10)
    flat = fast_network(get_network("unet", options={"features": [2, 4, 4, 8]}), channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in flat.parameters() if p.dim() == 4)


def test_fast_network_with_taps_can_be_scripted():
    """A network on the GPU fast path (``taps``, ``contiguous_attention`` set on its modules) goes
    through TorchScript: the class attributes had string annotations under ``from __future__ import
    annotations`` that TorchScript could not resolve ('Unknown type annotation: 'bool'') once an
    instance set them. Scripted, the blocks take their plain paths."""
    torch.manual_seed(0)
    net = get_network("fpa", features=(4, 8, 8, 8)).eval()
    fast = fast_network(copy.deepcopy(net), taps=True, contiguous_attention=True)
    scripted = torch.jit.script(fast)
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_as_matmul_is_the_convolution(dims, stride, bias):
    torch.manual_seed(0)
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(6, 5, 1, stride=stride, bias=bias).double()
    x = torch.randn((2, 6) + (9, 7, 5)[:dims], dtype=torch.float64)
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    for inp in (x, x.contiguous(memory_format=fmt)):
        inp = inp.clone().requires_grad_()
        y, y_ref = pointwise_conv_as_matmul(conv, inp), conv(inp)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y_ref)
        got = torch.autograd.grad(y, [inp, *conv.parameters()], g)
        ref = torch.autograd.grad(y_ref, [inp, *conv.parameters()], g)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="a 1x1 convolution without padding or groups"):
        pointwise_conv_as_matmul(nn.Conv2d(4, 4, 3), torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("dims", [2, 3])
def test_contiguous_attention_is_the_same_fpa_block(dims):
    """FPA's attention branch on the contiguous layout (its 1x1 convolutions as matrix products)
    computes the same block, and hands its output back in the input's memory format."""
    torch.manual_seed(0)
    net = get_network("fpa", spatial_dims=dims, in_channels=2, features=(4, 8, 8, 8)).double()
    fast = fast_network(copy.deepcopy(net), channels_last=True, fast_norm=True, taps=True)
    nchw = fast_network(
        copy.deepcopy(net), channels_last=True, fast_norm=True, taps=True, contiguous_attention=True
    )
    blocks = [m for m in nchw.modules() if isinstance(m, FPABlock)]
    assert len(blocks) == 4 and all(b.contiguous_attention for b in blocks)
    assert not any(getattr(m, "contiguous_attention", False) for m in fast.modules())
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    shape = (2, 2, 24, 24) if dims == 2 else (1, 2, 16, 12, 8)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    y, y_ref = nchw(x), fast(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    _assert_same_gradients(y, nchw, y_ref, fast, rtol=1e-9, atol=1e-10)
    block_in = torch.randn((2, 4) + shape[2:], dtype=torch.float64).contiguous(memory_format=fmt)
    # whatever the input's layout, the block's output has the plain fast path's (channels-last in 2-D)
    for inp in (block_in, block_in.contiguous()):
        assert nchw.c2(inp).stride() == fast.c2(inp).stride()
    if dims == 2:
        assert nchw.c2(block_in).is_contiguous(memory_format=fmt) and not nchw.c2(block_in).is_contiguous()
    # bf16 autocast: the products run in bf16 as the convolutions do
    nchw32, fast32 = copy.deepcopy(nchw).float(), copy.deepcopy(fast).float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = nchw32.c2(block_in.float()), fast32.c2(block_in.float())
    assert a.dtype == b.dtype == torch.bfloat16
    assert (a.float() - b.float()).norm() / b.float().norm() < 0.02
    # TorchScript takes the plain path (the attribute is read, the contiguous route is unused)
    scripted = torch.jit.script(nchw32)
    torch.testing.assert_close(scripted(x.float()), fast32(x.float()), rtol=1e-4, atol=1e-4)


def test_plane_kernels_compute_the_same_fpa_network():
    """FPA with its attention units as the fused plane operator (here its CPU path, the reference
    computation behind the custom operator and its autograd) is the same network; compiled too."""
    torch.manual_seed(0)
    net = get_network("fpa", features=(4, 8, 8, 8)).double()  # float64: exact comparisons
    fast = fast_network(copy.deepcopy(net), channels_last=True, fast_norm=True, taps=True)
    plane = fast_network(
        copy.deepcopy(net), channels_last=True, fast_norm=True, taps=True, plane_kernels=True
    )
    assert all(m.plane_kernels for m in plane.modules() if isinstance(m, FPABlock))
    x = torch.randn(2, 4, 40, 40, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y, y_ref = plane(x), fast(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    _assert_same_gradients(y, plane, y_ref, fast, rtol=1e-8, atol=1e-10)
    torch._dynamo.reset()
    compiled = torch.compile(plane, backend="aot_eager", fullgraph=True)  # the operators trace
    y_c, y_ref = compiled(x), fast(x)
    torch.testing.assert_close(y_c, y_ref, rtol=1e-10, atol=1e-10)
    _assert_same_gradients(y_c, plane, y_ref, fast, rtol=1e-8, atol=1e-10)
    torch._dynamo.reset()
    from pam_monai.networks.blocks.plane_kernels import plane_dconv_norm_relu

    with pytest.raises(ValueError, match="cannot normalise a single spatial element"):
        plane_dconv_norm_relu(
            torch.randn(2, 3, 1, 1), torch.randn(3, 1, 3, 3), torch.ones(3), torch.zeros(3), 1
        )
    with pytest.raises(ValueError, match=r"use_plane_kernels: the FPA blocks \['c2', 'c3', 'c4', 'bridge'\]"):
        fast_network(get_network("fpa", features=(4, 8, 8, 8), depthwise=False), plane_kernels=True)


def test_plane_kernels_refuse_instance_norms_with_running_statistics():
    """An instance norm that tracks running statistics normalises with them in eval mode (and
    updates them in training), which the plane operator does not: such blocks were accepted and
    computed another function in eval. Refused, as ``use_fast_norm`` leaves such norms alone."""
    norm = ("instance", {"affine": True, "track_running_stats": True})
    net = get_network("fpa", features=(4, 8, 8, 8), norm=norm)
    with pytest.raises(ValueError, match=r"use_plane_kernels: the FPA blocks \['c2', .*running statistics"):
        fast_network(net, plane_kernels=True)
    assert not any(getattr(m, "plane_kernels", False) for m in net.modules())


def test_plane_kernels_switched_on_without_triton_say_so(monkeypatch):
    """Without Triton the plane operator runs its PyTorch reference, on a GPU too, slower than the
    plain fast path: switching the kernels on then warns, naming Triton; with Triton it does not."""
    import warnings

    from pam_monai.networks.blocks import plane_kernels

    for available in (False, True):
        monkeypatch.setattr(plane_kernels, "triton_available", lambda available=available: available)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plane_kernels.use_plane_kernels(get_network("fpa", features=(4, 8, 8, 8)))
        said = [str(w.message) for w in caught if "Triton is not installed" in str(w.message)]
        assert bool(said) == (not available), said


def test_plane_operators_annotations_are_objects_for_torch_2_4():
    """torch 2.4's ``custom_op`` (the floor in setup.cfg) takes the operators' annotations as they
    are: with ``from __future__ import annotations`` they were strings, which it refused, so the
    module (the plane kernels, its doctest) failed to import there; newer torch resolves them."""
    import inspect

    from pam_monai.networks.blocks import plane_kernels

    for op in (plane_kernels._forward_op, plane_kernels._backward_op):
        sig = inspect.signature(op._init_fn)
        annotations = [p.annotation for p in sig.parameters.values()] + [sig.return_annotation]
        assert not any(isinstance(a, str) for a in annotations), (op, sig)


def test_plane_kernels_reference_path_ignores_autocast():
    """The operator's reference path (CPU; CUDA without Triton) under bf16 autocast: autocast stays
    on inside a custom operator, so its convolutions and statistics ran in bf16 (mean and rstd bf16
    where the fake implementation, and so ``torch.compile``, says fp32; errors 6x those of the fp32
    computation). Now the same fp32 computation, outputs and gradients, with autocast on or off."""
    from pam_monai.networks.blocks import plane_kernels as pk

    torch.manual_seed(0)
    x = (torch.randn(2, 4, 20, 20) * 3 + 20).bfloat16()
    w, gamma, beta = torch.randn(4, 1, 3, 3) * 0.3, torch.rand(4) + 0.5, torch.randn(4) * 0.1
    results = []
    for autocast in (False, True):
        leaves = [t.clone().requires_grad_() for t in (x, w, gamma, beta)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, mean, rstd = pk._forward_op(*leaves, 3, 1e-5)
            assert mean.dtype == rstd.dtype == torch.float32, autocast
            grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
        results.append((y, mean, rstd, *grads))
    for plain, autocast in zip(*results):
        torch.testing.assert_close(autocast, plain, rtol=0, atol=0)


def test_plane_kernels_compile_for_hopper_without_spilling(tmp_path):
    """The kernels compile for an H100 (sm_90) with Triton's own toolchain, no GPU needed: what the
    interpreter does not check (types, the static tap loop); at the configured block sizes without
    register spills (the backward at 1024 elements x 4 warps spilled, 255 registers)."""
    pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from pam_monai.networks.blocks import plane_kernels as pk

    ptr = {"x_ptr": "*bf16", "w_ptr": "*fp32", "g_ptr": "*fp32", "b_ptr": "*fp32"}
    dims = {"C": "i32", "H": "i32", "W": "i32", "dil": "i32"}
    signatures = {
        "forward": (pk._fwd_kernel, {**ptr, "y_ptr": "*bf16", "d_ptr": "*fp32", "mean_ptr": "*fp32",
                                     "rstd_ptr": "*fp32", **dims, "eps": "fp32", "BLOCK": "constexpr"}),
        "backward": (pk._bwd_kernel, {**ptr, "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "dy_ptr": "*bf16",
                                      "dd_ptr": "*fp32", "dx_ptr": "*bf16", "dw_ptr": "*fp32", "dg_ptr": "*fp32",
                                      "db_ptr": "*fp32", **dims, "BLOCK": "constexpr"}),
    }  # fmt: skip
    import re
    import subprocess

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    for name, (kernel, signature) in signatures.items():
        block, warps = pk.CONFIG[name]
        source = _ast_source(ASTSource, kernel, signature, block)
        compiled = compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert "bar.sync" in compiled.asm["ptx"], name  # the barrier between the passes over a plane
        cubin = tmp_path / f"{name}.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [cuobjdump, "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        )
        regs, stack, local = (
            int(v) for v in re.search(r"REG:(\d+) STACK:(\d+) .*LOCAL:(\d+)", usage.stdout).groups()
        )
        assert stack == 0 and local == 0 and regs < 255, (name, usage.stdout)


def _ast_source(ast_source, kernel, signature: dict, block: int):
    """Triton's compile input for ``kernel`` with ``BLOCK`` fixed. Triton 3.0 (the one torch 2.4,
    the floor, ships) has no ``constexprs``: its signature leaves the constants out and both are
    keyed by the argument's position."""
    import inspect

    if "constexprs" in inspect.signature(ast_source.__init__).parameters:
        return ast_source(fn=kernel, signature=signature, constexprs={"BLOCK": block})
    names = list(signature)
    assert names == kernel.arg_names, (names, kernel.arg_names)
    typed = {i: kind for i, kind in enumerate(signature.values()) if kind != "constexpr"}
    return ast_source(fn=kernel, signature=typed, constants={names.index("BLOCK"): block})


def test_plane_kernels_triton_code_matches_the_reference_in_the_interpreter():
    """The Triton kernels themselves (forward; backward with its scratch plane and barrier), run by
    Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1`` must be set before Triton loads,
    hence a subprocess): the function and gradients of the reference, fp32 and bf16. The same
    script checks the compiled kernels on a GPU (``benchmarks/gpu_check.sh``)."""
    pytest.importorskip("triton")
    run = _plane_kernels_check(dict(os.environ, TRITON_INTERPRET="1"), timeout=600)
    assert run.returncode == 0 and "plane kernels ok" in run.stdout, run.stdout + run.stderr
    assert "[Triton]" in run.stdout and "[reference]" not in run.stdout, run.stdout


def _plane_kernels_check(env: dict, timeout: int):
    """``benchmarks/plane_kernels_check.py --device cpu --require_triton`` in a subprocess."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "plane_kernels_check.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--require_triton"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_plane_kernels_check_fails_when_the_reference_path_ran_instead_of_triton():
    """The check compares the operator with its reference, which its fallback path (no Triton, or a
    CPU tensor without the interpreter) *is*: it said "plane kernels ok" having checked nothing, and
    gpu_check.sh then timed the fallback as the plane kernels. Now a required kernel run (on CUDA
    always) that took the reference path fails, naming the cause."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the CPU: the reference path
    run = _plane_kernels_check(env, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "plane kernels ok" not in run.stdout and "[reference]" in run.stdout, run.stdout
    fallback = "plane kernels: NOT RUN: 5 case(s) took the operator's reference PyTorch path"
    assert fallback in run.stdout, run.stdout


@pytest.mark.skipif(
    os.environ.get("PAM_MONAI_TEST_COMPILE") != "1",
    reason="a cold torch.compile takes about a minute on 2 CPU cores; set PAM_MONAI_TEST_COMPILE=1",
)
@pytest.mark.parametrize(
    "taps,resize,cl",
    [
        (False, "interpolate", False),
        (True, "interpolate", False),
        (False, "gather", False),
        (True, "matmul", True),
        (True, "matmul", "nchwatt"),
        (True, "matmul", "plane"),
    ],
)
def test_compiled_fast_network_matches_eager(taps, resize, cl):
    torch.manual_seed(0)
    net = fast_network(
        get_network("fpa", features=(4, 8, 8, 8)),
        fast_norm=True,
        channels_last=bool(cl),
        resize=resize,
        taps=taps,
        contiguous_attention=cl == "nchwatt",
        plane_kernels=cl == "plane",
    )
    compiled = torch.compile(net)
    exact = copy.deepcopy(net).double()  # the float64 reference both fp32 runs are measured against
    x = torch.randn(2, 4, 40, 40)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y, y_ref = compiled(x), net(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, list(net.parameters()), g)
    eager = torch.autograd.grad(y_ref, list(net.parameters()), g)
    exact_grads = torch.autograd.grad(exact(x.double()), list(exact.parameters()), g.double())
    _assert_as_close_as_eager(grads, eager, exact_grads)


def _assert_as_close_as_eager(grads, eager, exact, factor: float = 4.0) -> None:
    """Each compiled fp32 gradient is off the float64 one (``exact``) by at most ``factor`` times
    eager fp32's own error, plus 8 steps of fp32's resolution of the network's largest gradient.

    Compiled and eager sum in other orders, so a fixed tolerance on their difference flags fp32
    rounding (torch 2.4.1: one element 2.8e-4 off eager, which was itself 1.6e-4 off float64).
    The floor is for gradients that cancel to almost nothing (``c2.dilated1``'s norm weight: 3.6e-4,
    its neighbours' 3): their rounding error is that of their summands, not of the sum. Checked by
    scaling the compiled taps' weight gradient: off by 1e-4 it fails (the former atol 1e-4 / rtol
    1e-3 passed it off by 1e-3). 8 steps: the six variants on torch 2.13 needed up to 2.2
    (``True-interpolate-False``: a depthwise weight's gradient summed over every pixel); a gradient
    of the size of the largest one off by 1e-4 relative is about 800 steps off."""
    floor = 8 * torch.finfo(torch.float32).eps * max(ref.abs().max() for ref in exact)
    for i, (a, b, ref) in enumerate(zip(grads, eager, exact, strict=True)):
        err, eager_err = ((t.double() - ref).abs().max() for t in (a, b))
        scale = ref.abs().max()
        assert err <= factor * eager_err + floor, (
            f"gradient {i} {tuple(ref.shape)} (largest element {scale:.2e}): {err:.2e} off float64, "
            f"eager fp32 {eager_err:.2e}, allowed {factor:g}x that + {floor:.2e}"
        )


# ----------------------------------------------------------------------------- device-resident loader
class _Samples(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((2, 3, 3), float(i)), "label": torch.full((1, 3, 3), float(i % 2))}


def test_device_slice_loader_serves_each_sample_once_per_epoch():
    loader = DeviceSliceLoader(_Samples(23), batch_size=5, device="cpu", chunk=4, seed=3)
    assert len(loader) == 5
    seen = []
    for batch in loader:
        assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.float32
        assert batch["image"].shape[1:] == (2, 3, 3)
        ids = batch["image"][:, 0, 0, 0].long()
        torch.testing.assert_close(batch["label"][:, 0, 0, 0], (ids % 2).float())
        seen += ids.tolist()
    assert sorted(seen) == list(range(23))
    second = torch.cat([b["image"][:, 0, 0, 0] for b in loader]).long().tolist()
    assert second != seen  # a new order each epoch
    loader.set_epoch(0)
    assert torch.cat([b["image"][:, 0, 0, 0] for b in loader]).long().tolist() == seen  # resumable
    dropped = DeviceSliceLoader(_Samples(23), batch_size=5, drop_last=True, shuffle=False)
    assert len(dropped) == 4
    assert torch.cat([b["image"][:, 0, 0, 0] for b in dropped]).long().tolist() == list(range(20))


@pytest.mark.parametrize("replicas", [1, 3])
def test_device_loader_serves_the_dataloaders_batches_with_the_same_sampler(replicas):
    """One sampler, two loaders: the same batches epoch after epoch, on every rank (torchrun)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from pam_monai.engines.loaders import LoaderEpoch, slice_loader

    data = _Samples(23)
    for rank in range(replicas):
        samplers = [DistributedSampler(data, num_replicas=replicas, rank=rank, seed=5) for _ in range(2)]
        plain = DataLoader(data, batch_size=4, sampler=samplers[0], shuffle=False)
        device = slice_loader(data, 4, device="cpu", device_data=True, sampler=samplers[1])
        assert isinstance(device, DeviceSliceLoader) and len(device) == len(plain) == math.ceil(
            len(samplers[0]) / 4
        )
        epochs = []
        for epoch in (1, 2, 1):
            samplers[0].set_epoch(epoch)  # what MONAI's workflow does for a DataLoader ...
            engine = SimpleNamespace(state=SimpleNamespace(epoch=epoch))
            LoaderEpoch(device)(engine)  # ... and LoaderEpoch for the device loader
            got = [(b["image"], b["label"]) for b in device]
            want = [(b["image"], b["label"]) for b in plain]
            assert len(got) == len(want)
            for (gi, gl), (wi, wl) in zip(got, want):
                torch.testing.assert_close(gi, wi, rtol=0, atol=0)
                torch.testing.assert_close(gl, wl, rtol=0, atol=0)
            epochs.append(torch.cat([g[0][:, 0, 0, 0] for g in got]).tolist())
        assert epochs[0] != epochs[1] and epochs[0] == epochs[2]


@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize("device_data", [False, True])
def test_slice_loader_drops_an_incomplete_last_batch_on_every_rank(replicas, device_data):
    """``drop_last`` (the bundles' default when compiled: one batch shape, one compiled graph) is
    honoured by both loaders, on each rank's shard of a ``DistributedSampler``, and ``len()`` (the
    trainer's optimiser steps per epoch) is what the loader yields; a shard of fewer samples than
    one batch keeps them as its one batch rather than train on nothing."""
    from torch.utils.data import DistributedSampler

    from pam_monai.engines.loaders import slice_loader

    data = _Samples(23)
    for batch_size in (4, 9):
        for rank in range(replicas):
            sampler = DistributedSampler(data, num_replicas=replicas, rank=rank, seed=5)
            shard = len(sampler)  # 23, or 8 per rank of 3
            loader = slice_loader(data, batch_size, "cpu", device_data, sampler=sampler, drop_last="true")
            for epoch in (1, 2):
                sampler.set_epoch(epoch)
                sizes = [len(b["image"]) for b in loader]
                want = [batch_size] * (shard // batch_size) or [shard]
                assert sizes == want and len(loader) == len(want), (batch_size, rank, shard)
            kept = slice_loader(data, batch_size, "cpu", device_data, sampler=sampler, drop_last="false")
            assert len(kept) == math.ceil(shard / batch_size)


def test_slice_loader_choices_and_the_handler_leaves_dataloaders_alone():
    from ignite.engine import Engine, Events
    from torch.utils.data import DataLoader

    from pam_monai.engines.loaders import LoaderEpoch, device_data_bytes, slice_loader

    data = _Samples(7)
    assert isinstance(slice_loader(data, 2, "cpu", device_data="auto"), DataLoader)  # auto: GPUs only
    assert isinstance(slice_loader(data, 2, "cpu", device_data="false"), DataLoader)
    loader = slice_loader(data, 2, "cpu", device_data="true")
    assert isinstance(loader, DeviceSliceLoader)
    assert loader.images.dtype == torch.float32  # a dataset without cache_dtype keeps float32
    assert device_data_bytes(data) == loader.nbytes == 7 * (2 * 9 * 4 + 9)
    with pytest.raises(ValueError, match="not a boolean"):
        slice_loader(data, 2, "cpu", device_data="sometimes")
    engine = Engine(lambda e, b: None)
    LoaderEpoch(DataLoader(data)).attach(engine)
    assert not engine.has_event_handler(LoaderEpoch.__call__, Events.EPOCH_STARTED)
    handler = LoaderEpoch(loader)
    handler.attach(engine)
    assert engine.has_event_handler(handler, Events.EPOCH_STARTED)


RESIZES = [
    ((2, 3, 5, 7), (9, 13)),
    ((1, 2, 20, 20), (40, 40)),  # the U-Net's factor 2
    ((1, 2, 3, 3), (20, 20)),  # RFNA's large factors
    ((1, 1, 1, 4), (5, 9)),  # a single input row
    ((1, 1, 4, 6), (1, 3)),  # a single output row
    ((1, 2, 9, 8), (4, 5)),  # down-sampling
    ((1, 2, 3, 4, 5), (6, 7, 11)),  # trilinear
]


@pytest.mark.parametrize("shape,size", RESIZES)
@pytest.mark.parametrize(
    "impl,layout", [("gather", "contiguous"), ("matmul", "contiguous"), ("matmul", "channels_last")]
)
def test_resize_implementations_are_interpolate_with_an_exactly_transposed_backward(
    shape, size, impl, layout
):
    from pam_monai.networks.blocks.resize import linear_resize, matmul_resize

    resize = {"gather": linear_resize, "matmul": matmul_resize}[impl]
    x = torch.randn(*shape, dtype=torch.float64)
    fmt = torch.contiguous_format
    if layout == "channels_last":
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    x = x.contiguous(memory_format=fmt).requires_grad_(True)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    ref = F.interpolate(x, size=size, mode=mode, align_corners=True)
    out = resize(x, size)
    g = torch.randn_like(ref)
    # float64 to float64's rounding: the gather's weights were float32 (1e-7 off F.interpolate's)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0], rtol=0, atol=1e-12
    )
    assert torch.autograd.gradcheck(lambda t: resize(t, size), (x,))
    if impl == "matmul":  # no copy into another layout: the result is stored as the input is
        assert out.is_contiguous(memory_format=fmt)
    # bf16 (the fast path; matmul: bf16 weights and intermediate, errors of bf16's order), under
    # autocast, which must not change the dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = resize(x.detach().float().bfloat16(), size)
    assert half.dtype == torch.bfloat16
    tol = 1e-2 if impl == "gather" else 2e-2
    torch.testing.assert_close(half.float(), ref.detach().float(), rtol=tol, atol=tol)
    assert resize(x.detach().float(), size).dtype == torch.float32


def test_resize_implementations_are_checked():
    from pam_monai.networks.blocks.resize import LinearResize, use_resize

    with pytest.raises(ValueError, match="one of"):
        use_resize(LinearResize(2), "nearest")


def test_matmul_resize_trains_after_a_prediction_in_inference_mode(monkeypatch):
    """The interpolation matrices are cached per size for the process: one first made under
    ``torch.inference_mode`` (a prediction) was an inference tensor, which autograd cannot save, so
    every later training step at that size failed (a notebook that predicted, then fine-tuned)."""
    from pam_monai.networks.blocks import resize as resize_module

    monkeypatch.setattr(resize_module, "_MATRICES", {})  # sizes first met in this test
    x = torch.randn(1, 2, 5, 6)
    with torch.inference_mode():
        resize_module.matmul_resize(x, (10, 12))
    x.requires_grad_(True)
    resize_module.matmul_resize(x, (10, 12)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("impl", ["gather", "matmul"])
@pytest.mark.parametrize("name", ["unet", "fpa", "rfna"])
def test_networks_with_another_resize_compute_the_same_function(name, impl):
    from pam_monai.networks.blocks.resize import LinearResize, use_resize

    torch.manual_seed(0)
    net = get_network(
        name, spatial_dims=2, in_channels=4, out_channels=1, options={"features": [8, 16, 32, 64]}
    )
    other = use_resize(copy.deepcopy(net), impl)
    assert any(isinstance(m, LinearResize) and m.impl == impl for m in other.modules())
    x = torch.randn(2, 4, 72, 72)  # RFNA's deepest attention branch needs 9 x 9 at 1/8
    outs, grads = [], []
    for model in (net, other):
        model.zero_grad()
        y = model(x)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert net.state_dict().keys() == other.state_dict().keys()


def test_samples_that_do_not_fit_on_the_device_are_refused_with_their_size(monkeypatch):
    import pam_monai.engines.loaders as loaders

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loaders, "DeviceSliceLoader", out_of_memory)
    with pytest.raises(
        RuntimeError, match=r"7 training samples \(0.00 GB\) do not fit on cpu; use device_data=auto"
    ):
        loaders.slice_loader(_Samples(7), 2, "cpu", device_data=True)


def test_samples_that_do_not_fit_are_refused_on_torch_without_the_top_level_out_of_memory_error(monkeypatch):
    """torch.OutOfMemoryError is torch 2.5's name: on torch 2.4 (setup.cfg's floor) the except
    clause that named it raised AttributeError in place of the out-of-memory message."""
    import pam_monai.engines.loaders as loaders

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loaders, "DeviceSliceLoader", out_of_memory)
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)  # as on torch 2.4
    with pytest.raises(RuntimeError, match=r"7 training samples \(0.00 GB\) do not fit on cpu"):
        loaders.slice_loader(_Samples(7), 2, "cpu", device_data=True)


# --- whole-volume inference with freed memory kept in the process (CPU) -----------------------


def test_bundle_evaluation_keeps_freed_memory_on_the_cpu_only():
    """evaluate.json runs its evaluator through run_keeping_memory: whole volumes, as inference."""
    import json
    from pathlib import Path

    from pam_monai.engines import memory

    seen = []

    class Engine:
        def run(self):
            seen.append(memory._depth)
            return "done"

    assert memory.run_keeping_memory(Engine(), "cpu") == "done"
    memory.run_keeping_memory(Engine(), "cuda:0")
    expected = [1 if memory._LIBC is not None else 0, 0]
    assert seen == expected and memory._depth == 0
    for config in Path(__file__).parents[1].glob("bundles/*/configs/evaluate.json"):
        assert "run_keeping_memory(@validate#evaluator, @device)" in json.dumps(
            json.loads(config.read_text())
        )


def test_validation_during_training_keeps_freed_memory_on_the_cpu_only():
    """train.json's evaluator (whole validation volumes) runs within reuse_freed_memory on the CPU;
    the block ends with each run."""
    import json
    from pathlib import Path

    from ignite.engine import Engine

    from pam_monai.engines import memory

    on = 1 if memory._LIBC is not None else 0
    for device, expected in (("cpu", on), ("cuda:0", 0)):
        seen: list[int] = []
        engine = Engine(lambda e, b, seen=seen: seen.append(memory._depth))
        memory.KeepFreedMemory(device).attach(engine)
        engine.run([0, 1], max_epochs=1)
        assert seen == [expected, expected] and memory._depth == 0

    handler = memory.KeepFreedMemory("cpu")
    handler._enter()
    handler._enter()  # a run after one that raised (no COMPLETED) closes the block left open
    handler._exit()
    assert memory._depth == 0
    for config in Path(__file__).parents[1].glob("bundles/*/configs/train.json"):
        handlers = json.loads(config.read_text())["validate"]["handlers"]
        assert {"_target_": "pam_monai.engines.memory.KeepFreedMemory", "device": "@device"} in handlers


def test_after_reusing_freed_memory_the_process_is_not_slower_than_before():
    """Any mallopt turns glibc's dynamic thresholds off for good: left at their 128 KiB starting
    values, every later tensor above 128 KiB would be a fresh mmap (a page fault per 4 KiB; a CPU
    training step after an inference 1.6-2.2x slower). 4 MiB blocks must come from the heap again."""
    import resource

    from pam_monai.engines import memory

    if memory._LIBC is None:
        pytest.skip("not glibc")
    with memory.reuse_freed_memory(True) as on:
        assert on
    torch.empty(1 << 20).fill_(1.0)  # the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        torch.empty(1 << 20).fill_(1.0)  # 4 MiB, freed at once
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 50 * 1024 // 4, f"{faults} page faults for 50 freed-and-reused 4 MiB blocks"


def test_reuse_freed_memory_gives_the_same_logits():
    """``reuse_freed_memory`` changes where tensors live, not what is computed: FPA's logits are
    bit-identical inside and outside the block, nested blocks keep it on until the outermost ends,
    and a disabled block is a no-op."""
    from pam_monai.engines import memory

    torch.manual_seed(0)
    net = get_network(
        "fpa", spatial_dims=2, in_channels=4, out_channels=1, options={"features": [8, 16, 32, 64]}
    )
    x = torch.randn(6, 4, 48, 48)
    with torch.no_grad():
        plain = net.eval()(x)
        with memory.reuse_freed_memory() as on:
            with memory.reuse_freed_memory() as inner:
                assert inner == on
            assert memory._depth == (1 if on else 0)
            kept = [net(x) for _ in range(2)]
        assert memory._depth == 0
        with memory.reuse_freed_memory(False) as off:
            assert off is False and memory._depth == 0
    if memory._LIBC is not None:
        assert on is True
    for y in kept:
        assert torch.equal(y, plain)


def _predict_twice(root, tmp_path, options=None):
    import nibabel as nib
    import numpy as np

    from pam_monai.engines import CasePredictor, find_inference_cases

    items = find_inference_cases("brats", root)
    out = {}
    for reuse in (False, True):
        torch.manual_seed(0)
        net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=options or {})
        d = tmp_path / f"reuse_{reuse}"
        CasePredictor(net, items, "brats", str(d), save_probabilities=True, reuse_memory=reuse).run()
        out[reuse] = {f.name: np.asarray(nib.load(str(f)).dataobj) for f in sorted(d.glob("*.nii.gz"))}
    assert out[False].keys() == out[True].keys() and len(out[True]) == 2 * len(items)
    for name, array in out[False].items():
        assert array.dtype == out[True][name].dtype
        np.testing.assert_array_equal(
            out[True][name], array, err_msg=name
        )  # masks and probabilities, bit for bit
    return out


def test_case_predictor_reuse_memory_same_masks(tmp_path):
    """CasePredictor's memory reuse on the CPU (the default) writes the very masks and
    probabilities of the C library's defaults (synthetic BRATS cases)."""
    from pam_monai.data.commands import synth

    root = tmp_path / "brats"
    synth("brats", root, cases=2, seed=1, slices=6)
    _predict_twice(root, tmp_path, {"features": [8, 16, 32, 64]})


def test_case_predictor_reuse_memory_same_masks_real_brats(shared_data, tmp_path):
    """The same on a real BraTS 2018 case (240 x 240 x 155, all 155 slices; a quarter-width FPA
    keeps the test short): not one voxel of the mask, not one bit of the probabilities changes."""
    import shutil

    root = tmp_path / "brats"
    shutil.copytree(shared_data / "brats2018" / "Brats18_2013_2_1", root / "Brats18_2013_2_1")
    out = _predict_twice(root, tmp_path, {"features": [8, 16, 32, 64]})
    mask = out[True]["Brats18_2013_2_1_seg.nii.gz"]
    assert mask.shape == (240, 240, 155) and 0 < mask.sum() < 160 * 160 * 155


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA stream to leave running")
def test_batched_flip_does_not_wait_for_the_gpu():
    """The flip's per-step choice goes to the GPU from pinned memory: from pageable memory the
    driver may synchronise with the stream to stage the copy, idling the host every step."""
    from pam_monai.bench.pipeline import flip_wait

    returned, waited = flip_wait()
    assert returned < 0.1 < waited, (returned, waited)


@pytest.mark.parametrize("others", [[], ["metrics"], ["metrics", "stats"]])
def test_validation_that_raises_ends_the_kept_memory_block(others):
    """KeepFreedMemory ended its block at COMPLETED or TERMINATE only: after a validation that
    raised, freed memory stayed in the process until the handler was collected (the experiment
    runner's next run under --keep_going). The error still reaches the caller, whatever other
    handlers (CaseMetrics, MONAI's StatsHandler, which re-raises) are attached before it."""
    from ignite.engine import Engine
    from monai.handlers import StatsHandler

    from pam_monai.engines import CaseMetrics, memory

    def fail(engine, batch):
        raise RuntimeError("validation failed")

    engine = Engine(fail)
    made = {"metrics": CaseMetrics, "stats": lambda: StatsHandler(iteration_log=False)}
    for name in others:
        made[name]().attach(engine)
    memory.KeepFreedMemory("cpu").attach(engine)
    with pytest.raises(RuntimeError, match="validation failed"):
        engine.run([0], max_epochs=1)
    assert memory._depth == 0
