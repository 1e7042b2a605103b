"""One parameterised test suite over every registered network (segmentation_models_pytorch style)."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pytest
import torch
from monai.losses import DiceLoss

import pam_monai.networks
from pam_monai.networks import NETWORKS, FPABlock, RFNABlock, as_foreground, get_network, loss_for
from pam_monai.networks.blocks import (
    ATTENTIONS,
    CBAM,
    FAST_NORM,
    SCSE,
    AttentionGate,
    DoubleConv,
    GlobalContext,
    LinearResize,
)
from pam_monai.networks.nets import RFNAUNet, UNet3

# narrow widths keep the CPU suite fast; 16 keeps the global-context bottleneck (C/8) above one
# channel, where LayerNorm would be degenerate
SMALL = {"features": (16, 16, 32, 32)}
# RFNA's branch down-samples the bridge 8x more: 72 keeps its coarsest map above one element
SHAPES = {2: (2, 3, 72, 72), 3: (1, 3, 72, 40, 8)}
ODD = {2: (2, 3, 75, 83), 3: (1, 3, 67, 45, 11)}
CASES = [(name, dims) for name in NETWORKS for dims in (2, 3)]


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", list(NETWORKS))
def test_parameter_count_matches_paper(name):
    net = get_network(name, spatial_dims=2, in_channels=4, out_channels=1)
    expected = NETWORKS[name].paper_params
    if name == "rfna":
        # documented in the README: the paper's Figure 3 as drawn, W_r4 a full 3x3 conv 4C -> C
        expected = 9_253_280
    assert abs(n_params(net) - expected) <= 0.01 * expected, (name, n_params(net), expected)


def test_readme_parameter_counts_are_the_networks():
    """The README's network table (and its RFNA section) states exact parameter counts: they must
    be what get_network builds, so a changed block cannot leave them stale."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (`[^|]+`) \| [^|]+ \| ([\d,]+) \| [\d.]+M \|$", readme, re.M)
    stated = {
        name: int(count.replace(",", "")) for names, count in rows for name in re.findall(r"`(\w+)`", names)
    }
    assert sorted(stated) == sorted(NETWORKS), "README's network table does not list every network"
    for name, count in stated.items():
        assert n_params(get_network(name, spatial_dims=2, in_channels=4, out_channels=1)) == count, name
    for expansion in (2, 1):
        net = get_network("rfna", spatial_dims=2, in_channels=4, out_channels=1, expansion=expansion)
        assert f"`expansion={expansion}`: {n_params(net):,}" in readme
    # FPA's default is depthwise against the paper's section 4.3 text: the full-conv counts say why
    full = [n_params(get_network("fpa", depthwise=False, expansion=e)) for e in (1, 2, 4)]
    assert (
        "`depthwise=false, expansion=1`: {:,}, `expansion=2`: {:,}, `expansion=4`: {:,}".format(*full)
        in readme
    )


# the paper's printed "Param (M)" column (Tables 5 and 6, BRATS), which the README's "paper" column quotes
PAPER_PARAMS_M = {
    "unet": "3.13",
    "wunet": "12.51",
    "d6unet": "3.13",
    "d9unet": "3.13",
    "aunet": "3.16",
    "cscunet": "3.14",
    "gcnunet": "3.15",
    "cbamunet": "3.14",
    "rfna": "5.63",
    "fpa": "4.2",
}
PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "paying-attention-to-mistakes.txt"


def test_readme_paper_column_quotes_the_paper():
    """The README's "paper" column gives the paper's own figures (a rounded count of ours there
    hid that GCNUnet's 3,157,264 is 3.16M where the paper prints 3.15M); the paper text, where
    present, confirms the figures (rows of Tables 5 and 6 end with the count; only they hold "<le-2")."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (`[^|]+`) \| [^|]+ \| [\d,]+ \| ([\d.]+)M \|$", readme, re.M)
    quoted = {name: paper for names, paper in rows for name in re.findall(r"`(\w+)`", names)}
    assert quoted == PAPER_PARAMS_M
    if PAPER.is_file():
        printed = {
            line.split()[0].lower(): line.split()[-1]
            for line in PAPER.read_text().splitlines()
            if "<le-2" in line
        }
        assert printed == PAPER_PARAMS_M
    # where a count of ours does not round to the paper's figure, the README says so
    for name, paper in PAPER_PARAMS_M.items():
        count = n_params(get_network(name, spatial_dims=2, in_channels=4, out_channels=1))
        digits = len(paper.split(".")[1])
        if name != "rfna" and f"{count / 1e6:.{digits}f}" != paper:
            assert f"`{name}`: {count:,} is {count / 1e6:.{digits}f}M, the paper prints {paper}M" in readme
    encoder_only = get_network("gcnunet", attention_positions=("c1", "c2", "c3", "bridge"))
    assert f"(c1, c2, c3, the bridge) it would have {n_params(encoder_only):,} (3.15M)" in readme


@pytest.mark.parametrize("name,dims", CASES)
def test_shape_backward_reaches_every_parameter(name, dims):
    torch.manual_seed(0)
    # leaky ReLU: a ReLU that happens to be dead at init would zero a gradient that does reach
    leaky = ("leakyrelu", {"negative_slope": 0.1})
    net = get_network(name, spatial_dims=dims, in_channels=3, out_channels=2, act=leaky, **SMALL)
    x = torch.randn(*SHAPES[dims])
    y = net(x)
    assert y.shape == (x.shape[0], 2, *x.shape[2:])
    (y * torch.randn_like(y)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient reaches {missing}"
    # a bias followed by instance norm is cancelled by the mean subtraction (Attention U-Net's
    # W_g / W_x / psi): its gradient is exactly zero by construction; every other one must move
    dead = [
        n
        for n, p in net.named_parameters()
        if not torch.any(p.grad != 0) and not (n.endswith("conv.bias") and ".gate" in f".{n}")
    ]
    assert not dead, f"{name}: zero gradient for {dead}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name,dims", CASES)
def test_odd_input_sizes_are_handled(name, dims):
    net = get_network(name, spatial_dims=dims, in_channels=3, out_channels=1, **SMALL)
    x = torch.randn(*ODD[dims])
    y = net(x)
    assert y.shape == (x.shape[0], 1, *x.shape[2:])
    y.mean().backward()


@pytest.mark.parametrize("name,dims", CASES)
def test_torchscript_and_eval_determinism(name, dims):
    torch.manual_seed(1)
    net = get_network(name, spatial_dims=dims, in_channels=3, out_channels=1, **SMALL).eval()
    x = torch.randn(*SHAPES[dims])
    with torch.no_grad():
        a, b = net(x), net(x)
        scripted = torch.jit.script(net)
        c = scripted(x)
    assert torch.equal(a, b), "eval mode must be deterministic"
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_traced_torchscript_saves_and_takes_other_sizes(name):
    """``monai.bundle ckpt_export --use_trace True`` (and ONNX export) trace the bundle's network:
    the traced module must save, load and compute the eager function at another size too."""
    import io

    torch.manual_seed(2)
    net = get_network(name, spatial_dims=2, in_channels=3, out_channels=1, **SMALL).eval()
    x, other = torch.randn(1, 3, 72, 72), torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.trace(net, x), buffer)
        buffer.seek(0)
        traced = torch.jit.load(buffer)
        for t in (x, other):
            torch.testing.assert_close(traced(t), net(t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_too_small_input_is_refused_with_a_clear_message(mode):
    """Instance norm cannot normalise one element, in evaluation too: the network names its own
    minimum input size (RFNA's attention branch goes 8x deeper than the bridge) before PyTorch's
    message from deep inside."""
    net = get_network("rfna", spatial_dims=2, in_channels=3, out_channels=1, **SMALL).train(mode == "train")
    with pytest.raises(ValueError, match=r"RFNAUNet.*\[64, 64\] is down-sampled 64x to a single element"):
        net(torch.randn(2, 3, 64, 64))
    # a bundle's network sees its crop: the message names the override that fits (RFNA on own 64x48 images)
    with pytest.raises(ValueError, match=r'crop: e.g. --crop_size "\[80, 48\]"\)\.$'):
        net(torch.randn(2, 3, 64, 48))
    assert net(torch.randn(1, 3, 65, 17)).shape == (1, 1, 65, 17)
    net = get_network("unet", spatial_dims=2, in_channels=3, out_channels=1, **SMALL).train(mode == "train")
    with pytest.raises(ValueError, match=r"UNet3.*\[7, 7\] is down-sampled 8x to a single element"):
        net(torch.randn(2, 3, 7, 7))
    assert net(torch.randn(1, 3, 9, 3)).shape == (1, 1, 9, 3)
    # a 3-D network is no bundle's (their crops are 2-D): no --crop_size, which would not reach it
    net = get_network("rfna", spatial_dims=3, in_channels=3, out_channels=1, **SMALL).train(mode == "train")
    with pytest.raises(ValueError, match=r"RFNAUNet.*\[24, 28, 20\] is down-sampled 64x.* one axis\.$"):
        net(torch.randn(1, 3, 24, 28, 20))
    block = RFNABlock(2, 3, 8, stride=1, ratio=8).train(mode == "train")
    with pytest.raises(ValueError, match=r"RFNABlock\(ratio=8\).*\[8, 8\] is down-sampled 8x.*axis\.$"):
        block(torch.randn(1, 3, 8, 8))  # a block's input is no crop: no --crop_size
    assert RFNABlock(2, 3, 8, stride=1, ratio=2).train(mode == "train")(torch.randn(1, 3, 2, 2)).shape == (
        1,
        8,
        2,
        2,
    )


@pytest.mark.parametrize("ratio,factor", [(2, 8), (4, 32), (8, 64)])
def test_rfna_names_the_minimum_input_of_each_ratio(ratio, factor):
    """RFNA's attention branch normalises below its block's scale (W_r2 at 1/4, W_r3 at 1/8; W_r1
    has no norm): the smallest input is 8x (ratio 2, the bridge), 32x or 64x. Each ratio refuses
    what it shrinks to one element by name (else PyTorch's message from deep inside, and a bundle's
    crop not refused before training), and takes one voxel more."""
    net = get_network("rfna", spatial_dims=2, in_channels=3, out_channels=1, ratio=ratio, **SMALL).eval()
    assert net.min_input_factor == factor
    with pytest.raises(ValueError, match=rf"RFNAUNet.*\[{factor}, {factor}\] is down-sampled {factor}x"):
        net(torch.randn(1, 3, factor, factor))
    with torch.no_grad():
        assert net(torch.randn(1, 3, factor + 1, factor + 1)).shape == (1, 1, factor + 1, factor + 1)


# an input of another rank than the network's, and what the refusal must say to do
WRONG_RANK = {
    3: [
        ((2, 3, 72, 40), r"add the batch axis \(x\[None\]\), for a batch of 2-D slices .* spatial_dims=2\.$")
    ],
    2: [
        ((3, 72, 72), r"for one image add the batch axis \(x\[None\]\)\.$"),
        ((1, 3, 72, 72, 8), r"for volumes build it with spatial_dims=3, or segment them slice by slice"),
    ],
}


@pytest.mark.parametrize("name,dims", CASES)
def test_input_of_another_rank_is_refused_naming_the_network_s(name, dims):
    """A 3-D network given a batch of 2-D slices (a bundle's input with ``spatial_dims`` set to 3)
    ran its encoder, ``Conv3d`` taking the 4-D batch as one unbatched volume, and failed in the
    decoder with "trilinear mode needs 5D input"; a 2-D one given volumes in ``conv2d``. Both now
    name the network, its rank and the fix, eager and scripted."""
    net = get_network(name, spatial_dims=dims, in_channels=3, out_channels=1, **SMALL).eval()
    cls = type(net).__name__
    for run in (net, torch.jit.script(net)):
        for shape, fix in WRONG_RANK[dims]:
            with pytest.raises(
                (ValueError, torch.jit.Error), match=rf"{cls}\(spatial_dims={dims}\) takes {dims + 2}-D"
            ):
                run(torch.randn(*shape))
            with pytest.raises((ValueError, torch.jit.Error), match=fix):
                net(torch.randn(*shape))


@pytest.mark.parametrize("name", ["unet", "rfna"])
def test_fast_instance_norm_refuses_what_instance_norm_refuses(name):
    """``norm=FAST_NORM`` (the documented fast ``"instance"``) normalises with the input's own
    statistics too, but its one-element output is silently its bias (no PyTorch error): the network
    must refuse the same inputs, and name the same minimum, as with ``"instance"``."""
    plain = get_network(name, spatial_dims=2, in_channels=3, out_channels=1, **SMALL)
    fast = get_network(name, spatial_dims=2, in_channels=3, out_channels=1, norm=FAST_NORM, **SMALL)
    assert fast.min_input_factor == plain.min_input_factor > 0
    size = plain.min_input_factor
    with pytest.raises(ValueError, match=rf"\[{size}, {size}\] is down-sampled {size}x to a single element"):
        fast(torch.randn(1, 3, size, size))
    block = RFNABlock(2, 3, 8, stride=1, ratio=8, norm=FAST_NORM)
    with pytest.raises(ValueError, match=r"RFNABlock\(ratio=8\).*\[8, 8\] is down-sampled 8x"):
        block(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_act_none_builds_every_network(name):
    """``act=None`` (no activation; the signatures' ``tuple | str | None``, MONAI's convention) was
    refused with "cannot unpack non-iterable NoneType" by the attention gate and the global context."""
    net = get_network(name, spatial_dims=2, in_channels=3, out_channels=1, act=None, **SMALL)
    assert net(torch.randn(1, 3, 72, 72)).shape == (1, 1, 72, 72)
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())


def test_act_none_in_the_gate_and_the_global_context():
    x, g = torch.randn(1, 8, 5, 5, 5), torch.randn(1, 16, 5, 5, 5)
    assert AttentionGate(3, 8, 16, act=None)(x, g).shape == x.shape
    assert GlobalContext(3, 16, act=None)(g).shape == g.shape


@pytest.mark.parametrize("channels", [8, 15, 16, 24, 64])
def test_global_context_uses_its_context_at_small_widths(channels):
    """With ``channels // 8`` of 1 or 2 the bottleneck's LayerNorm was over one value (it outputs
    its bias: every input got the same scaling) or two (a sign: zero gradient), so ``reduce``
    did not learn (gcnunet at ``features[0] < 32``). The scaling must depend on the input and
    ``reduce`` get a gradient at any width."""
    torch.manual_seed(0)
    block = GlobalContext(2, channels)
    with torch.no_grad():  # a non-trivial LayerNorm affine, so a constant output is not just 0
        block.norm.weight.normal_()
        block.norm.bias.normal_()
    x = torch.randn(2, channels, 6, 6) + 1.0
    y = block(x)
    scale = (y - x) / x  # the per-sample, per-channel t of y = x * t + x
    assert not torch.allclose(scale[0], scale[1], atol=1e-4), "the block ignores its context"
    (y * torch.randn_like(y)).sum().backward()
    assert block.reduce.conv.weight.grad.abs().max() > 1e-2


def test_networks_with_running_statistics_take_any_size():
    """With batch norm (running statistics) a 1x1 bottleneck is fine in evaluation: no refusal."""
    net = get_network("unet", spatial_dims=2, in_channels=3, out_channels=1, norm="batch", **SMALL).eval()
    assert net.min_input_factor == 0
    with torch.no_grad():
        assert net(torch.randn(1, 3, 7, 7)).shape == (1, 1, 7, 7)


def test_unknown_network_and_bad_option():
    with pytest.raises(ValueError, match="Unknown network 'nope'.*fpa"):
        get_network("nope")
    with pytest.raises(TypeError, match="bad option for FPAUNet"):
        get_network("fpa", ratio=4)


def test_unknown_option_lists_the_options_the_network_takes():
    """A misspelt or misplaced option (``ratio`` is RFNA's, not FPA's) must say what to pass instead."""
    takes = r"FPAUNet takes: features, dilation, depthwise, expansion, shared, norm, act\.$"
    with pytest.raises(
        TypeError, match=rf"get_network\('fpa'\): bad option for FPAUNet: unknown \['ratio'\]; {takes}"
    ):
        get_network("fpa", ratio=4)
    with pytest.raises(
        TypeError, match=r"unknown \['dilatoin'\]; DilatedUNet3 takes: features, dilation, norm"
    ):
        get_network("d6unet", options={"dilatoin": 9})


BAD_VALUES = [
    # MONAI's factories refused these naming neither the network nor the option
    (
        "fpa",
        {"norm": "nonorm"},
        ValueError,
        r"get_network\('fpa'\): bad option for FPAUNet: norm='nonorm': Unsupported option 'NONORM'",
    ),
    (
        "aunet",
        {"gate_norm": "x"},
        ValueError,
        r"bad option for AttentionUNet3: gate_norm='x': Unsupported option",
    ),
    (
        "unet",
        {"act": "nope"},
        ValueError,
        r"get_network\('unet'\): bad option for UNet3: act='nope': Unsupported option",
    ),
    (
        "fpa",
        {"norm": ("instance", {"bad": 1})},
        TypeError,
        r"bad option for FPAUNet: norm=\('instance', \{'bad': 1\}\): ",
    ),
    # was "bad option for FPAUNet: object of type 'NoneType' has no len()"
    (
        "fpa",
        {"features": None},
        ValueError,
        r"get_network\('fpa'\): FPAUNet: features must give 4 widths .*got None\.$",
    ),
    # no factory refuses it alone: every option given is named, none is blamed
    (
        "fpa",
        {"dilation": "a"},
        TypeError,
        r"get_network\('fpa'\): FPAUNet could not be built with dilation='a': '<'",
    ),
]


@pytest.mark.parametrize("name,options,error,message", BAD_VALUES)
def test_bad_option_values_name_the_network_and_the_value(name, options, error, message):
    with pytest.raises(error, match=message):
        get_network(name, options=options)


def test_a_deep_error_is_not_reported_as_a_bad_option(monkeypatch):
    """A TypeError from a bug inside a block is not the user's option: it keeps its type and
    cause and names the options given without blaming them."""
    from pam_monai.networks.nets import unet3

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(unet3, "DoubleConv", broken)
    with pytest.raises(TypeError) as info:
        get_network("unet", features=(8, 16, 16, 32))
    assert str(info.value).startswith(
        "get_network('unet'): UNet3 could not be built with features=(8, 16, 16, 32): a bug (check these"
    )
    assert "bad option" not in str(info.value)
    assert str(info.value.__cause__) == "a bug"


BAD_ARGUMENTS = [
    # (constructor, message): every block and network names itself and the bad argument
    (lambda: CBAM(4, 64), r"CBAM: spatial_dims must be 2 or 3, got 4"),
    (lambda: CBAM(2, 64, reduction=0), r"CBAM: reduction must be >= 1, got 0"),
    (lambda: CBAM(2, 64, spatial_kernel=4), r"CBAM: spatial_kernel must be odd"),
    (lambda: SCSE(1, 64), r"SCSE: spatial_dims must be 2 or 3, got 1"),
    (lambda: SCSE(2, 64, reduction=0), r"SCSE: reduction must be >= 1, got 0"),
    (lambda: GlobalContext(4, 64), r"GlobalContext: spatial_dims must be 2 or 3, got 4"),
    (lambda: GlobalContext(2, 64, reduction=0), r"GlobalContext: reduction must be >= 1, got 0"),
    (lambda: AttentionGate(4, 64, 128), r"AttentionGate: spatial_dims must be 2 or 3, got 4"),
    (lambda: AttentionGate(2, 0, 128), r"AttentionGate: channels must be >= 1, got 0"),
    (lambda: LinearResize(1), r"LinearResize: spatial_dims must be 2 or 3, got 1"),
    (lambda: DoubleConv(2, 4, 8, dilation=0), r"DoubleConv: dilation must be >= 1, got 0"),
    (lambda: FPABlock(4, 32, 64), r"FPABlock: spatial_dims must be 2 or 3, got 4"),
    (lambda: FPABlock(2, 32, 64, stride=0), r"FPABlock: stride must be >= 1, got 0"),
    (lambda: RFNABlock(1, 32, 64), r"RFNABlock: spatial_dims must be 2 or 3, got 1"),
    (lambda: get_network("d6unet", dilation=0), r"DilatedUNet3: dilation must be >= 1, got 0"),
    (lambda: get_network("unet", spatial_dims=4), r"UNet3: spatial_dims must be 2 or 3, got 4"),
    (lambda: get_network("unet", features=(0, 64, 128, 256)), r"UNet3: features\[0\] must be >= 1"),
    (lambda: UNet3(encoder_options={"dilation": 6}), r"UNet3: encoder_options .* 'conv', which takes none"),
    (lambda: UNet3(attention_positions=("c1",)), r"UNet3: attention_positions \('c1',\) given without"),
    (lambda: UNet3(attention="cbam", attention_positions=("c9",)), r"UNet3: attention_positions: unknown"),
]


@pytest.mark.parametrize("build,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_a_value_error_naming_the_block(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("name,dims", [(name, dims) for name in ATTENTIONS for dims in (2, 3)])
def test_every_registered_attention_module(name, dims):
    """The ``ATTENTIONS`` contract: ``(spatial_dims, channels, act=...)``, shape-preserving, every
    parameter trained, TorchScript-able; a newly registered module is tested here automatically."""
    torch.manual_seed(0)
    module = ATTENTIONS[name](dims, 16, act=("leakyrelu", {"negative_slope": 0.1}))
    x = torch.randn((2, 16, 9, 7, 5)[: dims + 2], requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    scripted = torch.jit.script(module.eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), module(x))


def test_attention_gates_take_their_norm_as_an_argument():
    """The gates' norm is a factory argument like every other block's (default: the authors'
    non-affine instance norm), not hard-coded."""

    def gate_norms(net):
        return {
            type(m).__name__
            for g in (net.gate1, net.gate2, net.gate3)
            for m in g.modules()
            if "Norm" in type(m).__name__
        }

    default = get_network("aunet", **SMALL)
    assert gate_norms(default) == {"InstanceNorm2d"}
    assert not default.gate1.w_x.adn.N.affine
    assert gate_norms(get_network("aunet", gate_norm="batch", **SMALL)) == {"BatchNorm2d"}
    assert gate_norms(
        get_network("aunet", spatial_dims=3, gate_norm=("group", {"num_groups": 1}), **SMALL)
    ) == {"GroupNorm"}


def test_attention_positions_none_is_the_paper_s_and_empty_is_none():
    def placed(net):
        return [
            n
            for n in ("c1", "c2", "c3", "c4", "bridge", "d3", "d2", "d1")
            if not isinstance(getattr(net, f"att_{n}"), torch.nn.Identity)
        ]

    assert placed(get_network("cbamunet", **SMALL)) == ["c1", "c2", "c3", "bridge", "d3", "d2", "d1"]
    assert placed(get_network("cbamunet", attention_positions=["d1"], **SMALL)) == ["d1"]
    assert placed(get_network("cbamunet", attention_positions=[], **SMALL)) == []


# --- the ablation knobs (paper Figure 7) -----------------------------------------------------


def attention_params(block: torch.nn.Module) -> int:
    return n_params(block) - n_params(block.main)


@pytest.mark.parametrize("dilation", [6, 9, 12])
@pytest.mark.parametrize("depthwise,expansion", [(True, 2), (True, 4), (True, 8), (False, 1), (False, 2)])
def test_fpa_ablation_knobs(dilation, depthwise, expansion):
    cin, cout = 8, 16
    block = FPABlock(2, cin, cout, stride=2, dilation=dilation, depthwise=depthwise, expansion=expansion)
    mid = expansion * cout
    per_conv = 9 * mid if depthwise else 9 * mid * mid
    expected = cin * mid + 2 * (per_conv + 2 * mid) + mid * cout
    assert attention_params(block) == expected
    assert block.dilated1.conv.dilation == (dilation, dilation)
    y = block(torch.randn(1, cin, 30, 30))
    assert y.shape == (1, cout, 15, 15)


def test_fpa_default_branch_formula_and_shared_option():
    block = FPABlock(2, 32, 64)
    assert attention_params(block) == 4 * 32 * 64 + 88 * 64 + 4 * 64 * 64  # REFERENCE.md section 3
    shared = FPABlock(2, 32, 64, shared=True)
    assert shared.dilated2.conv is shared.dilated1.conv
    assert attention_params(block) - attention_params(shared) == 9 * 4 * 64  # one conv fewer
    shared(torch.randn(1, 32, 20, 20)).sum().backward()
    assert shared.dilated1.conv.weight.grad is not None


@pytest.mark.parametrize("ratio,n_down", [(2, 1), (4, 2), (8, 3)])
@pytest.mark.parametrize("depthwise", [True, False])
def test_rfna_ratio_ablation(ratio, n_down, depthwise):
    block = RFNABlock(2, 8, 16, stride=1, ratio=ratio, depthwise=depthwise)
    assert len(block.down) == n_down  # W_r1 (+ W_r2 (+ W_r3)), each down-sampling by 2
    x = torch.randn(1, 8, 40, 40)
    feats = block.down(block.main(x))
    assert feats.shape[-1] == 40 // ratio
    assert block(x).shape == (1, 16, 40, 40)
    with pytest.raises(ValueError, match="ratio"):
        RFNABlock(2, 8, 16, ratio=16)


def test_attention_branches_change_the_output():
    """Y = F * A + F: the attention branch must matter (not silently bypassed)."""
    torch.manual_seed(0)
    for block in (FPABlock(2, 4, 8), RFNABlock(2, 4, 8)):
        block.eval()
        x = torch.randn(1, 4, 32, 32)
        with torch.no_grad():
            f = block.main(x)
            y = block(x)
        assert not torch.allclose(y, f)
        ratio = torch.where(f.abs() > 1e-3, y / f, torch.ones_like(f))
        assert ratio.min() >= 1 - 1e-4 and ratio.max() <= 2 + 1e-4


# --- RFNA's reversed labels ------------------------------------------------------------------


def toy_batch(n: int, size: int, generator: torch.Generator):
    """Bright discs (foreground ~15% of the image) on a noisy background."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, labels = [], []
    for _ in range(n):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=generator)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 5) ** 2).float()
        images.append(mask * 2.0 + 0.3 * torch.randn(size, size, generator=generator))
        labels.append(mask)
    return torch.stack(images)[:, None], torch.stack(labels)[:, None]


def test_rfna_trains_on_reversed_labels_and_infers_foreground():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = RFNAUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 8, 16, 32))
    base = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    loss_fn = loss_for(net, base)
    assert loss_fn is not base  # RFNA gets the reversed-label loss, plain nets do not
    assert loss_for(get_network("unet"), base) is base
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(40):
        x, y = toy_batch(4, 72, g)
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    # the loss really is the paper's: Dice of the reversed probabilities against reversed labels
    x, y = toy_batch(4, 72, g)
    out = net(x)
    torch.testing.assert_close(loss_fn(out, y), base(-out, 1 - y))
    net.eval()
    with torch.no_grad():
        mask = (torch.sigmoid(net(x)) > 0.5).float()
    inter = (mask * y).sum()
    iou = inter / (mask.sum() + y.sum() - inter)
    assert iou > 0.6, f"RFNA's inference path must return the foreground, IoU {iou:.3f}"
    # the raw head predicts the reversed labels: background where its sigmoid > 0.5
    raw = RFNAUNet(
        spatial_dims=2, in_channels=1, out_channels=1, features=(4, 8, 16, 32), foreground_output=False
    )
    raw.load_state_dict(net.state_dict())
    raw.eval()
    with torch.no_grad():
        raw_logits = raw(x)
        torch.testing.assert_close(as_foreground(raw)(x), net(x))
    torch.testing.assert_close(raw_logits, -net(x))
    reversed_mask = (torch.sigmoid(raw_logits) > 0.5).float()
    background = 1 - y
    inter = (reversed_mask * background).sum()
    assert inter / (reversed_mask.sum() + background.sum() - inter) > 0.8  # it marks the background


# --- docs --------------------------------------------------------------------------------------
# every module of the package (a new one too): each must carry >>> examples that run
NETWORK_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(pam_monai.networks.__path__, "pam_monai.networks.") if not m.ispkg
)


@pytest.mark.parametrize("module", NETWORK_MODULES)
def test_docstring_examples_run(module):
    """Every module has ``>>>`` examples, and they run as written with only the module's own imports."""
    import doctest
    import importlib

    mod = importlib.import_module(module)
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0
