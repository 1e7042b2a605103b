"""Check FPA's plane kernels (``pam_monai.networks.blocks.plane_kernels``) against the reference.

On a GPU this runs the compiled Triton kernels (the barrier between a program's passes included)
before any timing of them means anything; on the CPU, with ``TRITON_INTERPRET=1`` set before the
start, Triton's interpreter runs the same kernels (``tests/test_fast_path.py`` does that).

    python benchmarks/plane_kernels_check.py --device cuda          # also FPA's c2 shape, batch 50
    TRITON_INTERPRET=1 python benchmarks/plane_kernels_check.py --device cpu

Each case compares the output and the four gradients (input, convolution weight, gamma, beta) with
the reference computed in fp32 from the same (rounded) inputs, relative to each tensor's scale
(the weight's gradient is compared on the input gradient's scale: an instance norm undoes a scaling
of the weight, so that gradient is nearly zero). Prints one line per case, naming the path that ran
(Triton kernels or the operator's reference PyTorch path); exits 1 on a mismatch, and when the
kernels were required (``--require_triton``, always on CUDA) but the reference path ran: it matches
the reference by construction, so without Triton a GPU run said "ok" and timed the fallback.
On CUDA, when every case passed, it then times one attention unit at FPA's c2 shape: the plane
operator beside the fast path's compiled unit, contiguous and channels-last (``--no_timing`` skips).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pam_monai.atomic import atomic_write_text
from pam_monai.networks.blocks import plane_kernels as pk

SMALL = [  # (n, c, h, w, dilation, dtype): odd sizes, taps outside the image, bf16
    (2, 3, 13, 11, 3, torch.float32),
    (1, 2, 20, 20, 9, torch.float32),
    (2, 2, 7, 9, 9, torch.float32),
    (2, 2, 18, 10, 6, torch.bfloat16),
    (1, 2, 37, 41, 9, torch.float32),  # 1,517 elements: several loop steps, the last one partial
]
FPA = [  # FPA's attention units at batch 50 (c2, c3, c4 / bridge), bf16 as under autocast
    (50, 256, 80, 80, 9, torch.bfloat16),
    (50, 512, 40, 40, 9, torch.bfloat16),
    (50, 1024, 20, 20, 9, torch.bfloat16),
]


def check(n, c, h, w, d, dtype, device, seed=0) -> tuple[bool, str, str]:
    """(ok, the case's line, the path that ran: ``"Triton"`` or ``"reference"``)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(device, dtype)
    wt = (torch.randn(c, 1, 3, 3, generator=g) * 0.5).to(device)
    gamma = (torch.rand(c, generator=g) + 0.5).to(device)
    beta = (torch.randn(c, generator=g) * 0.5).to(device)
    path = "Triton" if pk._use_triton(x) else "reference"
    leaves = [t.clone().requires_grad_() for t in (x, wt, gamma, beta)]
    ref_leaves = [t.clone().float().requires_grad_() for t in (x, wt, gamma, beta)]
    y = pk.plane_dconv_norm_relu(*leaves, d)
    y_ref = pk.reference_dconv_norm_relu(*ref_leaves, d, 1e-5)
    gy = torch.randn(y_ref.shape, generator=g).to(device)
    got = torch.autograd.grad(y, leaves, gy.to(dtype))
    ref = torch.autograd.grad(y_ref, ref_leaves, gy)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    errors = {"y": ((y.float() - y_ref).abs().max() / max(1.0, y_ref.abs().max().item())).item()}
    for name, a, r in zip(("dx", "dweight", "dgamma", "dbeta"), got, ref):
        scale = (
            max(r.abs().max().item(), ref[0].abs().max().item())
            if name == "dweight"
            else r.abs().max().item()
        )
        errors[name] = (a.float() - r).abs().max().item() / max(scale, 1e-12)
    ok = (
        y.dtype == dtype
        and all(e <= tol for e in errors.values())
        and all(torch.isfinite(t).all() for t in got)
    )
    shown = " ".join(f"{k} {v:.1e}" for k, v in errors.items())
    return (
        ok,
        f"{'ok  ' if ok else 'FAIL'} {n}x{c}x{h}x{w} d={d} {str(dtype)[6:]} [{path}]: {shown} (tolerance {tol:g})",
        path,
    )


def time_unit(
    device: str, n: int = 50, c: int = 256, h: int = 80, w: int = 80, d: int = 9, steps: int = 20
) -> str:
    """Forward + backward of one attention unit at FPA's c2 shape (bf16): the plane operator beside
    the fast path's compiled unit (taps, fusible norm, ReLU) on the contiguous and the channels-last
    layout. Median milliseconds of ``steps`` runs after 3 warm-up runs (CUDA events on a GPU)."""
    import statistics

    from pam_monai.bench.timing import run_times_ms
    from pam_monai.networks.blocks import FastConv2d, FastInstanceNorm2d

    conv = FastConv2d(c, c, 3, padding=d, dilation=d, groups=c, bias=False).to(device)
    conv.taps = True
    norm = FastInstanceNorm2d(c, affine=True).to(device)
    unit = torch.nn.Sequential(conv, norm, torch.nn.ReLU(inplace=True))
    compiled = torch.compile(unit)
    x = torch.randn(n, c, h, w, device=device, dtype=torch.bfloat16)
    gy = torch.randn(n, c, h, w, device=device, dtype=torch.bfloat16)

    def plane(inp):
        y = pk.plane_dconv_norm_relu(inp, conv.weight, norm.weight, norm.bias, d)
        y.backward(gy)

    def inductor(inp):
        with torch.autocast(device, dtype=torch.bfloat16):
            y = compiled(inp)
        y.backward(gy.contiguous(memory_format=torch.channels_last) if not inp.is_contiguous() else gy)

    def median_ms(run, inp) -> float:
        inp = inp.detach().requires_grad_()
        for _ in range(3):
            run(inp)
        return statistics.median(run_times_ms(lambda: run(inp), steps, device))

    cl = x.contiguous(memory_format=torch.channels_last)
    rows = {
        "plane operator (contiguous)": median_ms(plane, x),
        "compiled taps + norm + ReLU (contiguous)": median_ms(inductor, x),
        "compiled taps + norm + ReLU (channels-last, the fast path now)": median_ms(inductor, cl),
    }
    return f"one attention unit, forward + backward, {n}x{c}x{h}x{w} d={d} bf16: " + "; ".join(
        f"{k} {v:.3f} ms" for k, v in rows.items()
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--fpa", action="store_true", help="also FPA's shapes at batch 50 (default on CUDA)")
    p.add_argument("--output", help="also write the lines to this file")
    p.add_argument("--no_timing", action="store_true", help="on CUDA, skip timing one unit after the checks")
    p.add_argument(
        "--require_triton",
        action="store_true",
        help="fail unless the Triton kernels ran (always on CUDA; on the CPU they run with TRITON_INTERPRET=1)",
    )
    a = p.parse_args()
    require = a.require_triton or torch.device(a.device).type == "cuda"
    cases = SMALL + (FPA if a.fpa or a.device == "cuda" else [])
    failed, fallbacks, lines = 0, 0, []
    for case in cases:
        t = time.perf_counter()
        ok, line, path = check(*case, device=a.device)
        lines.append(f"{line} [{time.perf_counter() - t:.1f} s]")
        print(lines[-1], flush=True)
        failed += not ok
        fallbacks += require and path != "Triton"
    if fallbacks:
        lines.append(
            f"plane kernels: NOT RUN: {fallbacks} case(s) took the operator's reference PyTorch path, not the "
            f"Triton kernels (triton importable: {pk.triton_available()}; on the CPU set TRITON_INTERPRET=1): "
            "nothing of the kernels was checked, and their timings would time the fallback"
        )
    elif failed:
        lines.append(f"plane kernels: {failed} case(s) FAILED")
    else:
        lines.append("plane kernels ok")
    print(lines[-1], flush=True)
    failed += fallbacks
    save(lines, a.output)  # the verdict first: a time box that kills the timing keeps it
    if not failed and a.device == "cuda" and not a.no_timing:
        lines.append(time_unit(a.device))
        print(lines[-1], flush=True)
        save(lines, a.output)
    return 1 if failed else 0


def save(lines: list[str], path: str | None) -> None:
    """Write ``lines`` to ``path`` (if any) whole or not at all: the time box that kills the timing
    may do so while the file is being rewritten, and the verdict written before must survive."""
    if path:
        atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
