"""Inductor's CUDA (Triton) code for a network's training step, generated WITHOUT a GPU.

For inspecting what ``torch.compile`` makes of the GPU fast path between device leases: which
kernels the forward and backward graphs become, what each fuses, and inductor's own estimate of
the bytes each moves (``kernel_num_gb``; it counts every load, so shifted loads of one buffer,
e.g. FPA's taps, are counted each time although the GPU's caches serve most of them). Nothing is
timed and nothing runs on a GPU: the graphs are traced and run on the CPU, their devices are
rewritten to CUDA, and inductor's CUDA code generation runs on fake CUDA tensors with the device
queries patched to an H100 (132 SMs, sm_90).

Caveat: the graphs are traced and partitioned on the CPU, so decompositions, recomputation
choices and some memory layouts are the CPU's (e.g. a concatenation that comes out NCHW here
where a CUDA trace may keep channels-last): read kernel structure from it, take layouts and
timings from a GPU profile (``python -m pam_monai bench --profile``).

Needs ``triton`` (``pip install triton``; not a dependency of the project). It patches private
PyTorch internals: written against torch 2.13 and triton 3.9, it may need adjusting for others.

    python benchmarks/inductor_codegen.py --network fpa --batch 8 --size 160 --output /tmp/codegen

writes ``<network>_fw.py`` / ``<network>_bw.py`` (the generated modules) and prints the kernel
counts, the estimated bytes and the heaviest kernels by estimated bytes.
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import re
from pathlib import Path

import torch

from pam_monai.atomic import atomic_write_text  # imports no torch module: the patch below comes first

_H100 = collections.namedtuple(
    "Props",
    "name major minor multi_processor_count total_memory max_threads_per_multi_processor "
    "regs_per_multiprocessor warp_size gcnArchName L2_cache_size shared_memory_per_block_optin "
    "max_shared_memory_per_block_optin",
)("NVIDIA H100 80GB HBM3", 9, 0, 132, 80 * 2**30, 2048, 65536, 32, "", 50 * 2**20, 232448, 232448)


def _patch_cuda() -> None:
    # the device queries first: modules imported below bind some of them by name
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.get_device_capability = lambda d=None: (9, 0)
    cuda.get_device_properties = lambda d=None: _H100
    cuda.get_device_name = lambda d=None: _H100.name
    cuda.is_bf16_supported = lambda *a, **k: True
    cuda._lazy_init = lambda: None
    cuda.is_initialized = lambda: True
    cuda.device.__enter__ = lambda self: self
    cuda.device.__exit__ = lambda self, *a: False
    import torch._inductor.codegen.triton as codegen_triton
    import torch._inductor.fx_passes.reinplace as reinplace
    import torch.cuda.random as cuda_random
    import torch.utils._triton as utils_triton

    for mod in (cuda, cuda_random):
        mod.get_rng_state = lambda *a, **k: torch.zeros(16, dtype=torch.uint8)
        mod.set_rng_state = lambda *a, **k: None
    cuda_random.current_device = lambda: 0
    torch._C._cuda_getDevice = lambda: 0
    utils_triton.triton_hash_with_backend = lambda: "codegen-only"
    codegen_triton.triton_hash_with_backend = utils_triton.triton_hash_with_backend
    # the pass only checks shapes by a copy_, which needs a CUDA device guard on fake tensors
    reinplace._inplace_generalized_scatter = lambda inp, src, view_ops: inp


def _to_cuda(value):
    if isinstance(value, torch.device) and value.type == "cpu":
        return torch.device("cuda", 0)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cuda(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cuda(v) for k, v in value.items()}
    return value


def generate(network: str, batch: int, size: int, contiguous_attention: bool = False) -> list[dict]:
    """``[{"backward": bool, "source": str, "bytes": int}, ...]`` for the forward and backward graphs
    of the CUDA fast path's training step (bf16, channels-last, fusible norm, matmul up-sampling, taps)."""
    _patch_cuda()
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._inductor import compile_fx as cfx
    from torch._inductor.graph import GraphLowering

    from pam_monai.engines.fast_path import fast_network
    from pam_monai.networks import get_network

    results, current = [], {}

    class _Generated(Exception):
        pass

    def compile_to_module(self):  # replaces GraphLowering.compile_to_module: code, not a module
        code = self.codegen()
        src = code[0] if isinstance(code, tuple) else code
        current["source"] = getattr(src, "value", src)
        current["bytes"] = self.count_bytes()[0]
        raise _Generated

    GraphLowering.compile_to_module = compile_to_module

    def inner(gm, example_inputs, **kwargs):
        runnable = make_boxed_func(torch.fx.GraphModule(gm, copy.deepcopy(gm.graph)).forward)
        for node in gm.graph.nodes:
            node.args, node.kwargs = _to_cuda(node.args), _to_cuda(node.kwargs)
        gm.recompile()
        with torch._guards.detect_fake_mode(example_inputs):
            fake = [
                torch.empty_strided(e.shape, e.stride(), dtype=e.dtype, device="cuda")
                if isinstance(e, torch.Tensor)
                else e
                for e in example_inputs
            ]
        current.clear()
        try:
            cfx.compile_fx_inner(gm, fake, **kwargs)
        except Exception:
            if not current:
                raise
        results.append({"backward": bool(kwargs.get("is_backward")), **current})
        return runnable  # the CPU graph keeps the eager run going (the backward is traced at .backward())

    torch._inductor.config.benchmark_kernel = True  # puts kernel_num_gb into each kernel's metadata
    net = fast_network(
        get_network(network, spatial_dims=2, in_channels=4, out_channels=1),
        channels_last=True,
        fast_norm=True,
        resize="matmul",
        taps=True,
        contiguous_attention=contiguous_attention,
    )
    model = torch.compile(net, backend=functools.partial(cfx.compile_fx, inner_compile=inner))
    x = torch.randn(batch, 4, size, size).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--network", default="fpa")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--output", default="outputs/inductor_codegen")
    p.add_argument("--contiguous_attention", action="store_true", help="FPA's attention branches contiguous")
    a = p.parse_args()
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    for r in generate(a.network, a.batch, a.size, a.contiguous_attention):
        part = "bw" if r["backward"] else "fw"
        atomic_write_text(out / f"{a.network}_{part}.py", r["source"])
        kernels = re.findall(r"'kernel_name': '([^']+)'.*?'kernel_num_gb': ([0-9.e+-]+)", r["source"])
        print(
            f"{a.network} {part}: {len(kernels)} Triton kernels, {r['source'].count('extern_kernels.')} extern calls, "
            f"inductor's estimate {r['bytes'] / 1e9:.3f} GB (batch {a.batch}, {a.size}x{a.size})"
        )
        for name, gb in sorted(kernels, key=lambda k: -float(k[1]))[: a.top]:
            print(f"  {float(gb):8.4f} GB  {name}")


if __name__ == "__main__":
    main()
