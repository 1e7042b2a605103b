"""The networks compute REFERENCE.md's layer tables (sections 2-5: the backbone, FPA, RFNA and
the baselines' attention modules at their positions): an independent functional re-statement
(plain ``torch.nn.functional`` on the modules' own weights) must give the same output.

Parameter counts and shapes cannot see wiring mistakes such as the authors' decoder defect
(REFERENCE.md section 7: the bottleneck up-sampled and centre-cropped, so the decoder sees half
of it, zoomed and misaligned), a swapped concatenation order, a missing residual or a wrong
stride/dilation: these tests do. In 3-D too (``spatial_dims=3``: every convolution a cube of the
2-D kernel, trilinear up-sampling, pooling over all three axes), where only shapes were checked,
so a 3-D-only wiring mistake (a pool over two of the three axes, an anisotropic stride or kernel)
would have passed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pam_monai.engines.fast_path import fast_network
from pam_monai.networks import NETWORKS, get_network

SMALL = {"features": (8, 16, 16, 32)}


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of ``x`` (2 or 3 of them)."""
    return tuple(range(2, x.dim()))


def _conv(p: dict, name: str, x, stride=1, dilation=1, groups=1, pad=True, k=1):
    """A square (2-D) or cubic (3-D) ``k``-wide convolution with "same" padding along every axis
    (``k`` from the table, not from the weight: a 1x1 in place of a 3x3 must fail here too)."""
    w = p[f"{name}.conv.weight"]
    assert w.dim() == x.dim() and set(w.shape[2:]) == {k}, f"{name}: a {tuple(w.shape)} kernel, not {k}-wide"
    padding = dilation * (w.shape[-1] - 1) // 2 if pad else 0
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    return conv(x, w, p.get(f"{name}.conv.bias"), stride, padding, dilation, groups)


def _cna(p, name, x, stride=1, dilation=1, groups=1):
    """conv 3x3 -> InstanceNorm(affine) -> ReLU, REFERENCE.md section 2."""
    y = _conv(p, name, x, stride, dilation, groups, k=3)
    y = F.instance_norm(y, weight=p[f"{name}.adn.N.weight"], bias=p[f"{name}.adn.N.bias"], eps=1e-5)
    return F.relu(y)


def _double(p, name, x, stride=1, dilation=1):
    return _cna(p, f"{name}.conv2", _cna(p, f"{name}.conv1", x, stride, dilation), 1, dilation)


def _up(x, like):
    """Bilinear (3-D: trilinear), align_corners=True, to the skip's size: the WHOLE bottleneck,
    nothing cropped."""
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=like.shape[2:], mode=mode, align_corners=True)


def _fpa(p, name, x, stride, dilation=9):
    f = _double(p, f"{name}.main", x, stride)
    a = _conv(p, f"{name}.expand", x, stride)  # no norm or activation after the first 1x1
    a = _cna(p, f"{name}.dilated1", a, 1, dilation, a.shape[1])
    a = _cna(p, f"{name}.dilated2", a, 1, dilation, a.shape[1])
    a = torch.sigmoid(_conv(p, f"{name}.squeeze", a))
    return f * a + f


def _rfna(p, name, x, stride):
    f = _double(p, f"{name}.main", x, stride)
    a = _conv(p, f"{name}.down.0", f, 2)  # W_r1: 1x1 to 4C, down-sampling x2
    a = _cna(p, f"{name}.down.1", a, 2, 1, a.shape[1])  # W_r2: depthwise 3x3, x2
    a = _cna(p, f"{name}.down.2", a, 2, 1, a.shape[1])  # W_r3: depthwise 3x3, x2 (8 in all)
    a = _conv(p, f"{name}.project", _up(a, f), k=3)  # W_r4 after bilinear up-sampling back
    a = torch.sigmoid(a + f)
    return f * a + f


def _scse(p, name, x):
    """sigmoid(conv1x1(C->1)) * x + sigmoid(conv1x1(C/8->C)(ReLU(conv1x1(C->C/8)(avgpool x)))) * x."""
    pooled = x.mean(dim=_spatial(x), keepdim=True)
    channel = torch.sigmoid(_conv(p, f"{name}.channel.1", F.relu(_conv(p, f"{name}.channel.0", pooled))))
    return torch.sigmoid(_conv(p, f"{name}.spatial", x)) * x + channel * x


def _cbam(p, name, x):
    """Channel MLP shared by avg- and max-pool, then conv3x3(2->1) on [mean, max] over channels;
    output = spatial * (channel * x) + x."""

    def mlp(t):
        return _conv(p, f"{name}.mlp.1", F.relu(_conv(p, f"{name}.mlp.0", t)))

    axes = _spatial(x)
    y = torch.sigmoid(mlp(x.mean(dim=axes, keepdim=True)) + mlp(x.amax(dim=axes, keepdim=True))) * x
    stats = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], 1)
    return torch.sigmoid(_conv(p, f"{name}.spatial", stats, k=3)) * y + x


def _gc(p, name, x):
    """context = sum over HW (3-D: DHW) of softmax(conv1x1(C->1)(x)) * x; conv1x1(C->C/8) ->
    LayerNorm(C/8, affine) -> ReLU -> conv1x1(C/8->C); output = t * x + x."""
    ones = (1,) * len(_spatial(x))
    weights = torch.softmax(_conv(p, f"{name}.key", x).flatten(2), dim=-1)  # B x 1 x HW
    context = (x.flatten(2) * weights).sum(-1).reshape(x.shape[:2] + ones)  # B x C x 1 x 1
    t = _conv(p, f"{name}.reduce", context)
    shape = t.shape
    t = F.layer_norm(t.flatten(1), t.shape[1:2], p[f"{name}.norm.weight"], p[f"{name}.norm.bias"], eps=1e-5)
    t = _conv(p, f"{name}.expand", F.relu(t).reshape(shape))
    return t * x + x


# REFERENCE.md section 5: which module follows which block
ATTENTION = {
    "cscunet": (_scse, ("c1", "c2", "c3", "d3", "d2", "d1")),
    "cbamunet": (_cbam, ("c1", "c2", "c3", "bridge", "d3", "d2", "d1")),
    "gcnunet": (_gc, ("c1", "c2", "c3", "bridge", "d3", "d2", "d1")),
}


def _gate(p, name, x, g):
    def conv_in(n, t):
        return F.instance_norm(_conv(p, f"{name}.{n}", t), eps=1e-5)  # non-affine

    psi = torch.sigmoid(conv_in("psi", F.relu(conv_in("w_g", g) + conv_in("w_x", x))))
    return psi * x + x


def reference_forward(net: torch.nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    p = dict(net.named_parameters())
    dil = {"unet": 1, "d6unet": 6, "d9unet": 9}.get(kind, 1)
    module, positions = ATTENTION.get(kind, (None, ()))

    def att(name, t):
        return module(p, f"att_{name}", t) if name in positions else t

    def enc(name, t, stride):
        if kind == "fpa" and name != "c1":
            return _fpa(p, name, t, stride)
        if kind == "rfna" and name != "c1":
            return _rfna(p, name, t, stride)
        return att(name, _double(p, name, t, stride, dil if name in ("c2", "c3", "c4") else 1))

    e1 = enc("c1", x, 1)
    e2 = enc("c2", e1, 2)
    e3 = enc("c3", e2, 2)
    e4 = enc("c4", e3, 2)
    y = enc("bridge", e4, 1)
    for level, skip in (("3", e3), ("2", e2), ("1", e1)):
        up = _up(y, skip)
        if kind == "aunet":  # gated skip first, gating = the up-sampled deeper decoder tensor
            merged = torch.cat([_gate(p, f"gate{level}", skip, up), up], 1)
        else:  # [up-sampled, skip]
            merged = torch.cat([up, skip], 1)
        y = att(f"d{level}", _double(p, f"d{level}", merged))
    out = _conv(p, "head", y)
    return -out if kind == "rfna" else out  # RFNA returns foreground logits (negated head)


@pytest.mark.parametrize("kind", ["unet", "d6unet", "d9unet", "fpa", "rfna", "aunet", *ATTENTION])
def test_network_computes_the_reference_layer_table(kind):
    torch.manual_seed(0)
    # the global-context bottleneck C/8 must be >= 3 wide to be C/8 (module docstring): wider here
    widths = {"features": (24, 32, 32, 48)} if kind in ATTENTION else SMALL
    net = get_network(kind, spatial_dims=2, in_channels=3, out_channels=1, **widths).eval()
    with torch.no_grad():
        for prm in net.parameters():  # non-trivial affine norms and biases
            prm.add_(0.1 * torch.randn_like(prm))
        x = torch.randn(2, 3, 72, 80)
        torch.testing.assert_close(net(x), reference_forward(net, kind, x), rtol=1e-4, atol=1e-4)


# 3-D: RFNA's attention branch down-samples the bridge 64x, so one axis is longer than 64; every
# axis another size, so that swapped or dropped axes change the output
SHAPE_3D = (1, 3, 12, 18, 66)
# the global-context bottleneck C/8 must be >= 3 wide to be C/8: wider for the attention baselines
WIDTHS_3D = {"features": (4, 8, 8, 16)}
WIDTHS_3D_GC = {"features": (24, 24, 32, 32)}


def _perturbed_3d(kind: str, **options) -> torch.nn.Module:
    """A small 3-D network (float64) whose norms and biases are non-trivial (random offsets)."""
    torch.manual_seed(0)
    widths = WIDTHS_3D_GC if kind in ATTENTION else WIDTHS_3D
    net = get_network(kind, spatial_dims=3, in_channels=3, out_channels=1, **widths, **options)
    net = net.double().eval()
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    return net


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_3d_network_computes_the_reference_layer_table(kind):
    """Every registered network in 3-D is its 2-D layer table with cubic kernels, trilinear
    up-sampling and pooling over D, H and W (float64: a wrong eps or axis shows at 1e-10)."""
    net = _perturbed_3d(kind)
    x = torch.randn(SHAPE_3D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_forward(net, kind, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "resize,impl", [("gather", "var_mean"), ("matmul", "shifted_sums"), ("matmul", "auto")]
)
@pytest.mark.parametrize("kind", ["unet", "fpa", "rfna", "aunet", *ATTENTION])
def test_3d_fast_network_computes_the_reference_layer_table(kind, resize, impl):
    """The fast path's 3-D routes (FastInstanceNorm3d's statistics, the gather and matmul trilinear
    resizes, FPA's contiguous attention branch, channels-last-3d) compute the table too:
    test_fast_path compares them with the plain network, which shares any wiring mistake. The CPU's
    ``auto`` norm takes ``F.group_norm`` here (float64 convolutions come out contiguous), so the
    GPU's statistics routes (``var_mean``, ``shifted_sums``) are named: statistics over D and H
    only passed the auto route."""
    options = {} if impl == "auto" else {"norm": ("instance_fast", {"affine": True, "impl": impl})}
    net = _perturbed_3d(kind, **options)
    fast = fast_network(
        copy.deepcopy(net), channels_last=True, fast_norm=True, resize=resize, contiguous_attention=True
    )
    x = torch.randn(SHAPE_3D, dtype=torch.float64)
    with torch.no_grad():
        y = fast(x.contiguous(memory_format=torch.channels_last_3d))
        torch.testing.assert_close(y, reference_forward(net, kind, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_3d_layers_are_the_2d_layers_with_cubic_kernels(kind):
    """A 3-D network has the 2-D network's parameters, each convolution's k x k kernel a k x k x k
    one (the re-statement derives padding from the kernel, so an anisotropic 3x3x1 kernel that kept
    its output size would pass it; 2-D kernels are pinned by REFERENCE.md's parameter counts)."""
    widths = WIDTHS_3D_GC if kind in ATTENTION else WIDTHS_3D
    flat = get_network(kind, spatial_dims=2, in_channels=3, out_channels=1, **widths)
    cube = get_network(kind, spatial_dims=3, in_channels=3, out_channels=1, **widths)
    shapes = {n: tuple(q.shape) for n, q in flat.named_parameters()}
    expected = {n: s + s[-1:] if len(s) == 4 else s for n, s in shapes.items()}
    assert {n: tuple(q.shape) for n, q in cube.named_parameters()} == expected


def test_the_decoder_sees_the_whole_bottleneck():
    """A change in a corner of the bottleneck reaches the output at that corner (the authors'
    centre-cropping decoder drops the bottleneck's border)."""
    torch.manual_seed(0)
    net = get_network("unet", spatial_dims=2, in_channels=3, out_channels=1, **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)

    def bump(module, args, out):
        out = out.clone()
        out[..., 0, 0] += 5.0
        return out

    with torch.no_grad():
        base = net(x)
        handle = net.bridge.register_forward_hook(bump)
        try:
            bumped = net(x)
        finally:
            handle.remove()
    diff = (bumped - base).abs()[0, 0]
    assert diff[:8, :8].max() > 1e-3, "a bottleneck corner must reach the output's corner"


# REFERENCE.md's exact parameter counts (2-D, 4 input channels, one output): the paper's tables
# give them to 0.01M only, and test_networks.py checks against the registry within 1 %
REFERENCE_PARAMS = {
    "unet": 3_129_248,
    "wunet": 12_506_944,
    "d6unet": 3_129_248,
    "d9unet": 3_129_248,
    "aunet": 3_161_843,
    "cscunet": 3_140_448,
    "cbamunet": 3_142_942,
    "gcnunet": 3_157_264,
    "fpa": 4_231_584,
}
REFERENCE_LAYERS = {  # section 2's table, in=4
    "c1": 10_496,
    "c2": 55_552,
    "c3": 221_696,
    "c4": 885_760,
    "bridge": 1_180_672,
    "d3": 590_336,
    "d2": 147_712,
    "d1": 36_992,
    "head": 32,
}


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", list(REFERENCE_PARAMS))
def test_exact_parameter_counts_of_reference_md(kind):
    """Sections 2, 3 and 5 give exact counts; a 3-channel input (CityScapes) has 9 x width fewer."""
    assert _n(get_network(kind, spatial_dims=2, in_channels=4, out_channels=1)) == REFERENCE_PARAMS[kind]
    width = 64 if kind == "wunet" else 32
    fewer = REFERENCE_PARAMS[kind] - _n(get_network(kind, spatial_dims=2, in_channels=3, out_channels=1))
    assert fewer == 9 * width


def test_backbone_layer_table_and_fpa_attention_budget():
    net = get_network("unet", spatial_dims=2, in_channels=4, out_channels=1)
    assert {name: _n(getattr(net, name)) for name in REFERENCE_LAYERS} == REFERENCE_LAYERS
    fpa = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1)
    blocks = [getattr(fpa, name) for name in ("c2", "c3", "c4", "bridge")]
    assert sum(_n(b) - _n(b.main) for b in blocks) == 1_102_336  # section 3, width 32


# --- the ablations of paper Table 6 and REFERENCE.md sections 3-4 ------------------------------


def _fpa_variant(p, name, x, stride, dilation, shared, depthwise):
    """FPA with its ablation knobs: ``shared`` applies dilated1's convolution twice, each
    application with its own norm (dilated2's) and ReLU."""
    f = _double(p, f"{name}.main", x, stride)
    a = _conv(p, f"{name}.expand", x, stride)
    groups = a.shape[1] if depthwise else 1
    a = _cna(p, f"{name}.dilated1", a, 1, dilation, groups)
    second = _conv(p, f"{name}.dilated1" if shared else f"{name}.dilated2", a, 1, dilation, groups, k=3)
    norm = f"{name}.dilated2.adn.N"
    a = F.relu(F.instance_norm(second, weight=p[f"{norm}.weight"], bias=p[f"{norm}.bias"], eps=1e-5))
    a = torch.sigmoid(_conv(p, f"{name}.squeeze", a))
    return f * a + f


def _rfna_variant(p, name, x, stride, ratio, depthwise):
    """RFNA's ratio ablation: W_r1 (x2), then W_r2 (x4) and W_r3 (x8) as the ratio asks."""
    f = _double(p, f"{name}.main", x, stride)
    a = _conv(p, f"{name}.down.0", f, 2)
    for i in range(1, {2: 1, 4: 2, 8: 3}[ratio]):
        a = _cna(p, f"{name}.down.{i}", a, 2, 1, a.shape[1] if depthwise else 1)
    a = torch.sigmoid(_conv(p, f"{name}.project", _up(a, f), k=3) + f)
    return f * a + f


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    "kind,options",
    [
        ("fpa", {"dilation": 6}),
        ("fpa", {"dilation": 12, "shared": True}),
        ("fpa", {"depthwise": False, "expansion": 2}),
        ("rfna", {"ratio": 4}),
        ("rfna", {"ratio": 2, "depthwise": False}),
    ],
)
def test_ablation_variants_compute_the_reference_formula(kind, options, dims):
    """The default rows alone would not see an ablation knob that is ignored or mis-wired (the
    second dilated convolution keeping dilation 9, the shared convolution's second norm and ReLU in
    the wrong order, a ratio that keeps one down-sampling too many); in 3-D too (float64 there)."""
    if dims == 2:
        torch.manual_seed(0)
        net = get_network(kind, spatial_dims=2, in_channels=3, out_channels=1, **SMALL, **options).eval()
        with torch.no_grad():
            for prm in net.parameters():
                prm.add_(0.1 * torch.randn_like(prm))
        x, tol = torch.randn(2, 3, 72, 80), 1e-4
    else:
        net = _perturbed_3d(kind, **options)
        x, tol = torch.randn(SHAPE_3D, dtype=torch.float64), 1e-10
    fpa = {"dilation": 9, "shared": False, "depthwise": True, **options}
    rfna = {"ratio": 8, "depthwise": True, **options}
    with torch.no_grad():
        p = dict(net.named_parameters())

        def enc(name, t, stride):
            if name == "c1":
                return _double(p, name, t, stride)
            if kind == "fpa":
                return _fpa_variant(p, name, t, stride, fpa["dilation"], fpa["shared"], fpa["depthwise"])
            return _rfna_variant(p, name, t, stride, rfna["ratio"], rfna["depthwise"])

        e1 = enc("c1", x, 1)
        e2 = enc("c2", e1, 2)
        e3 = enc("c3", e2, 2)
        y = enc("bridge", enc("c4", e3, 2), 1)
        for level, skip in (("3", e3), ("2", e2), ("1", e1)):
            y = _double(p, f"d{level}", torch.cat([_up(y, skip), skip], 1))
        out = _conv(p, "head", y)
        torch.testing.assert_close(net(x), -out if kind == "rfna" else out, rtol=tol, atol=tol)
