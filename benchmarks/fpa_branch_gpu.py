"""FPA's encoder blocks (c2, c3, c4, bridge) on the GPU: variants of the attention branch, one process.

The H100 profile of 2026-11-27 put 10.9 of FPA's 23.7 ms of kernels per step (batch 50) in
inductor's reductions: the instance norms' statistics and their backward, the taps' weight
gradients. This script times the forward + backward of FPA's four encoder blocks (the attention
branches and their main branches; the rest of the network is the U-Net's) compiled as the fast path
compiles them (bf16 autocast, channels-last, fusible norm, taps), beside the same four levels of the
plain U-Net, for variants of the attention branch's pieces:

- ``fpa``: the fast path as it is (the norms' statistics of bf16 inputs as shifted sums);
- ``fpa_welford``: the norms' statistics from ``torch.var_mean`` (Welford: a division per element),
  the fast path before 2026-11-27 (first H100 run of this script: 16.8 ms of kernels against 15.6
  with shifted sums, batch 50);
- ``fpa_nchw``: the attention branches on the contiguous layout, 1x1 convolutions as matrix
  products (``fast_network(contiguous_attention=True)``), the main branches channels-last;
- ``fpa_plane``: ``fpa_nchw`` with each ``dilated conv -> norm -> ReLU`` unit as one Triton kernel
  per direction (``pam_monai.networks.blocks.plane_kernels``);
- ``fpa_plane_small`` / ``fpa_plane_large``: the same with smaller / larger blocks per program step;
- ``fpa_normfn``: the norm as an autograd Function with the textbook backward;
- ``fpa_cdt`` / ``fpa_mk`` / ``fpa_aggr``: inductor's coordinate-descent tuning / multi-kernel
  reductions / aggressive fusion;
- ``unet``: the U-Net's same levels (plain double convolutions), the reference.

(Measured and dropped on 2026-11-27: each tap as a zero-padded slice of the input, masked loads
instead of slices of one padded copy: c2 8.27 against 7.56 ms.)

``--levels c2`` times one level (a quarter of the compile time: about 80 s for all four on the
H100). Run from the repository root with the package importable, e.g.

    python benchmarks/fpa_branch_gpu.py --batch 50 --output /tmp/fpa_branch.json
    python benchmarks/fpa_branch_gpu.py --levels c2 --variants fpa,fpa_plane --device cpu --batch 2 --size 48 --profile 0

Each variant compiles afresh (``torch._dynamo.reset()``); the results are written after each. With
``--profile N`` (default 2) each variant's largest kernels are listed with their time per step and
their bandwidth by inductor's own byte estimate (``benchmark_kernel``; every load counted, so the
taps' shifted loads make it an upper bound): which kernels run far below the card's memory speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

# inductor's generated modules (with each kernel's estimated bytes) go to a fresh folder, read below
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fpa_branch_inductor_"))

import torch  # noqa: E402  (after the cache folder is chosen)

from pam_monai.atomic import atomic_write_text  # noqa: E402
from pam_monai.bench.timing import run_times_ms  # noqa: E402
from pam_monai.engines.fast_path import fast_network  # noqa: E402
from pam_monai.networks import get_network  # noqa: E402
from pam_monai.networks.blocks import norm as normmod  # noqa: E402

LEVELS = ("c2", "c3", "c4", "bridge")


class _InstanceNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = list(range(2, x.ndim))
        xs = x.float()
        var, mean = torch.var_mean(xs, dim=dims, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + eps)
        shape = [1, -1] + [1] * len(dims)
        y = (xs - mean) * (rstd * weight.float().view(shape)) + bias.float().view(shape)
        ctx.save_for_backward(x, mean, rstd, weight)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, mean, rstd, weight = ctx.saved_tensors
        dims = list(range(2, x.ndim))
        shape = [1, -1] + [1] * len(dims)
        g = gy.float()
        xhat = (x.float() - mean) * rstd
        dbias = g.sum([0] + dims)
        dweight = (g * xhat).sum([0] + dims)
        gx = g * weight.float().view(shape)
        m1 = gx.mean(dims, keepdim=True)
        m2 = (gx * xhat).mean(dims, keepdim=True)
        dx = rstd * (gx - m1 - xhat * m2)
        return dx.to(x.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype), None


def norm_fn(self, x: torch.Tensor) -> torch.Tensor:
    return _InstanceNormFn.apply(x, self.weight, self.bias, self.eps)


VARIANTS = {
    "unet": {"network": "unet"},
    "fpa": {},
    "fpa_welford": {"norm_impl": "var_mean"},
    "fpa_nchw": {"contiguous_attention": True},
    "fpa_plane": {"plane_kernels": True},
    "fpa_plane_small": {"plane_kernels": True, "plane_config": {"forward": (512, 4), "backward": (256, 4)}},
    "fpa_plane_large": {"plane_kernels": True, "plane_config": {"forward": (2048, 8), "backward": (1024, 8)}},
    "fpa_cdt": {"inductor": {"coordinate_descent_tuning": True}},
    "fpa_normfn": {"norm": norm_fn},
    "fpa_mk": {"inductor": {"triton.multi_kernel": 1}},
    "fpa_aggr": {"inductor": {"aggressive_fusion": True}},
}


@contextlib.contextmanager
def patched(spec: dict):
    from pam_monai.networks.blocks import plane_kernels

    old_config = dict(plane_kernels.CONFIG)
    plane_kernels.CONFIG.update(spec.get("plane_config", {}))
    old_norm = normmod.FastInstanceNorm.forward
    if "norm" in spec:

        def forward(self, x, _impl=spec["norm"]):
            self._check(x)
            return _impl(self, x)

        normmod.FastInstanceNorm.forward = forward
    try:
        with torch._inductor.config.patch(spec.get("inductor", {})):
            yield
    finally:
        normmod.FastInstanceNorm.forward = old_norm
        plane_kernels.CONFIG.clear()
        plane_kernels.CONFIG.update(old_config)


_KERNEL_GB = re.compile(r"'kernel_name': '([^']+)'.*?'kernel_num_gb': ([0-9.e+-]+)", re.S)


def kernel_gigabytes(folder: str | Path, since: float = 0.0) -> dict[str, float]:
    """``{kernel name: inductor's estimate of the GB it moves per call}`` from the generated modules
    under ``folder`` written after ``since`` (``benchmark_kernel`` puts ``kernel_num_gb`` into each
    Triton kernel's metadata; every load is counted, so shifted loads of one buffer count each time).
    A name generated twice with different estimates maps to the larger."""
    found: dict[str, float] = {}
    for path in Path(folder).rglob("*.py"):
        if path.stat().st_mtime < since:
            continue
        for name, gb in _KERNEL_GB.findall(path.read_text(encoding="utf-8", errors="replace")):
            found[name] = max(found.get(name, 0.0), float(gb))
    return found


def with_bandwidth(rows: list[dict], gigabytes: dict[str, float]) -> list[dict]:
    """Profile rows (``name``, ``ms`` per step, ``calls`` per step) with ``gb`` (per step, inductor's
    estimate) and ``tb_per_s`` where the kernel's estimate is known."""
    out = []
    for r in rows:
        r = dict(r)
        if r["name"] in gigabytes and r["ms"] > 0:
            r["gb"] = round(gigabytes[r["name"]] * r["calls"], 4)
            r["tb_per_s"] = round(r["gb"] / r["ms"], 3)  # GB per ms = TB/s
        out.append(r)
    return out


def encoder(
    network: str,
    device: str,
    levels: list[str],
    norm_impl: str | None = None,
    contiguous_attention: bool = False,
    plane_kernels: bool = False,
) -> torch.nn.Module:
    net = get_network(network, spatial_dims=2, in_channels=4, out_channels=1).to(device)
    net = fast_network(
        net,
        channels_last=True,
        fast_norm=True,
        resize="matmul",
        taps=True,
        contiguous_attention=contiguous_attention,
        plane_kernels=plane_kernels,
    )
    if norm_impl:
        for m in net.modules():
            if isinstance(m, normmod.FastInstanceNorm):
                m.impl = norm_impl
    return torch.nn.Sequential(*(getattr(net, n) for n in levels))


def run_variant(name: str, spec: dict, args) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    dev = args.device
    levels = args.levels.split(",")
    if list(levels) != list(LEVELS[LEVELS.index(levels[0]) : LEVELS.index(levels[0]) + len(levels)]):
        raise SystemExit(f"--levels must be consecutive levels of {LEVELS}, got {args.levels}")
    stack = encoder(
        spec.get("network", "fpa"),
        dev,
        levels,
        spec.get("norm_impl"),
        spec.get("contiguous_attention", False),
        spec.get("plane_kernels", False),
    )
    # the first level's input: the previous level's output (c2: c1's, 32 channels at the input size)
    channels, size = {"c2": (32, 1), "c3": (64, 2), "c4": (128, 4), "bridge": (256, 8)}[levels[0]]
    x = torch.randn(
        args.batch, channels, args.size // size, args.size // size, device=dev, dtype=torch.bfloat16
    )
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    amp = torch.autocast(dev, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    started = time.time()
    with patched(spec), torch._inductor.config.patch(benchmark_kernel=True):
        model = torch.compile(stack)

        def step():
            stack.zero_grad(set_to_none=True)
            x.grad = None
            with amp:
                y = model(x)
            y.float().square().mean().backward()

        t0 = time.perf_counter()
        step()
        sync()
        compile_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            step()
        sync()
        times = run_times_ms(step, args.steps, dev)
        result = {
            "variant": name,
            "ms": statistics.median(times),
            "min_ms": min(times),
            "compile_s": round(compile_s, 1),
            "batch": args.batch,
        }
        if dev == "cuda" and args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.profile):
                    step()
                sync()
            rows = [
                (e.key, e.self_device_time_total / 1e3 / args.profile, e.count // args.profile)
                for e in prof.key_averages()
                if e.self_device_time_total > 0
            ]
            rows.sort(key=lambda r: -r[1])
            result["kernel_ms"] = sum(r[1] for r in rows)
            top = [{"name": k, "ms": round(ms, 4), "calls": c} for k, ms, c in rows[: args.top]]
            result["top"] = with_bandwidth(
                top, kernel_gigabytes(os.environ["TORCHINDUCTOR_CACHE_DIR"], started)
            )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--size", type=int, default=160, help="the network's input size (c2 gets half)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile", type=int, default=2)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--levels", default=",".join(LEVELS), help="consecutive encoder levels to stack")
    p.add_argument("--output", default="outputs/fpa_branch.json")
    a = p.parse_args()
    if a.device == "cuda":
        torch.backends.cudnn.benchmark = True
    results = []
    for name in a.variants.split(","):
        t = time.perf_counter()
        try:
            r = run_variant(name, VARIANTS[name], a)
        except Exception as e:  # report and go on: one variant's failure must not cost the others
            r = {"variant": name, "error": f"{type(e).__name__}: {e}"}
        r["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "top"}), flush=True)
        # whole or not at all: the stage's time box may kill it here, and a cut file lost every variant
        atomic_write_text(
            a.output,
            json.dumps(
                {
                    "device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
                    "torch": torch.__version__,
                    "levels": a.levels,
                    "results": results,
                },
                indent=1,
            ),
        )
    base = {r["variant"]: r.get("ms") for r in results}
    print(
        "\n| variant | step ms (median) | min | kernel ms | vs fpa | compile s |\n|---|---|---|---|---|---|"
    )
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | ERROR {r['error'][:80]} | | | | |")
            continue
        rel = f"{base['fpa'] / r['ms']:.2f}x" if base.get("fpa") else "-"
        print(
            f"| {r['variant']} | {r['ms']:.2f} | {r['min_ms']:.2f} | {r.get('kernel_ms', 0):.2f} | {rel} | {r['compile_s']} |"
        )
    for r in results:  # where each variant's kernel time goes, and how far from memory speed
        if r.get("top"):
            print(f"\n{r['variant']}: largest kernels (ms per step, calls, TB/s by inductor's byte estimate)")
            for k in r["top"][:8]:
                tbs = f"{k['tb_per_s']:.2f}" if "tb_per_s" in k else "-"
                print(f"  {k['ms']:7.3f} {k['calls']:3d} {tbs:>6}  {k['name'][:100]}")


if __name__ == "__main__":
    main()
