"""Check FPA's plane kernels (``pam_monai.networks.blocks.plane_kernels``) against the reference.

On a GPU this runs the compiled Triton kernels (the barrier between a program's passes included)
before any timing of them means anything; on the CPU, with ``TRITON_INTERPRET=1`` set before the
start, Triton's interpreter runs the same kernels (``tests/test_fast_path.py`` does that).

    python benchmarks/plane_kernels_check.py --device cuda          # also FPA's c2 shape, batch 50
    TRITON_INTERPRET=1 python benchmarks/plane_kernels_check.py --device cpu

Each case compares the output and the four gradients (input, convolution weight, gamma, beta) with
the reference computed in fp32 from the same (rounded) inputs, relative to each tensor's scale
(the weight's gradient is compared on the input gradient's scale: an instance norm undoes a scaling
of the weight, so that gradient is nearly zero). Prints one line per case; exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pam_monai.networks.blocks import plane_kernels as pk

SMALL = [  # (n, c, h, w, dilation, dtype): odd sizes, taps outside the image, bf16
    (2, 3, 13, 11, 3, torch.float32),
    (1, 2, 20, 20, 9, torch.float32),
    (2, 2, 7, 9, 9, torch.float32),
    (2, 2, 18, 10, 6, torch.bfloat16),
]
FPA = [  # FPA's attention units at batch 50 (c2, c3, c4 / bridge), bf16 as under autocast
    (50, 256, 80, 80, 9, torch.bfloat16),
    (50, 512, 40, 40, 9, torch.bfloat16),
    (50, 1024, 20, 20, 9, torch.bfloat16),
]


def check(n, c, h, w, d, dtype, device, seed=0) -> tuple[bool, str]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(device, dtype)
    wt = (torch.randn(c, 1, 3, 3, generator=g) * 0.5).to(device)
    gamma = (torch.rand(c, generator=g) + 0.5).to(device)
    beta = (torch.randn(c, generator=g) * 0.5).to(device)
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
        f"{'ok  ' if ok else 'FAIL'} {n}x{c}x{h}x{w} d={d} {str(dtype)[6:]}: {shown} (tolerance {tol:g})",
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--fpa", action="store_true", help="also FPA's shapes at batch 50 (default on CUDA)")
    p.add_argument("--output", help="also write the lines to this file")
    a = p.parse_args()
    cases = SMALL + (FPA if a.fpa or a.device == "cuda" else [])
    failed, lines = 0, []
    for case in cases:
        t = time.perf_counter()
        ok, line = check(*case, device=a.device)
        lines.append(f"{line} [{time.perf_counter() - t:.1f} s]")
        print(lines[-1], flush=True)
        failed += not ok
    lines.append("plane kernels ok" if not failed else f"plane kernels: {failed} case(s) FAILED")
    print(lines[-1])
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
