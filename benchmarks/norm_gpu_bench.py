"""Where does a conv + instance norm + ReLU block spend its time on a GPU, per layout?

One block of the 3-stage U-Net (3x3 convolution C -> C, then the norm, then ReLU), forward and
backward in bf16 at batch 50, at each level's shape (32 x 160 x 160 ... 256 x 20 x 20), in:

- ``conv``: the convolution alone (cuDNN), the floor of the block;
- ``instance``: ``nn.InstanceNorm2d`` eager (the native kernel: always contiguous);
- ``group_norm``: ``F.group_norm`` with one group per channel, eager (ATen's kernels, which have
  channels-last variants);
- ``fast``: :class:`pam_monai.networks.blocks.norm.FastInstanceNorm` compiled (what the fast path runs);
- ``batch``: ``nn.BatchNorm2d`` compiled (the anchor's U-Net: not the paper's function, a yardstick);

each in NCHW (``cf``) and channels-last (``cl``). Times are milliseconds per forward + backward
(CUDA events, median of ``repeats``), the memory traffic floor beside them.

    python benchmarks/norm_gpu_bench.py [--repeats 20] [--batch 50] [--levels 32x160,64x80,128x40,256x20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from pam_monai.atomic import atomic_write_text
from pam_monai.bench.timing import run_times_ms


class Block(nn.Module):
    def __init__(self, c: int, norm: str):
        super().__init__()
        from pam_monai.networks.blocks.norm import FastInstanceNorm2d

        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.kind = norm
        if norm == "instance":
            self.norm = nn.InstanceNorm2d(c, affine=True)
        elif norm == "fast":
            self.norm = FastInstanceNorm2d(c, affine=True, impl="var_mean")
        elif norm == "batch":
            self.norm = nn.BatchNorm2d(c)
        elif norm == "group_norm":
            self.norm = nn.GroupNorm(c, c)
        else:
            self.norm = None

    def forward(self, x):
        y = self.conv(x)
        if self.norm is not None:
            y = F.relu(self.norm(y))
        return y


def time_block(c, size, batch, norm, layout, compiled, repeats, dev=torch.device("cuda")) -> float:
    torch.manual_seed(0)
    block = Block(c, norm).to(dev)
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    block = block.to(memory_format=fmt)
    x = torch.randn(batch, c, size, size, device=dev).to(memory_format=fmt).requires_grad_(True)
    fn = torch.compile(block) if compiled else block
    g = None

    def run():
        nonlocal g
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            y = fn(x)
        if g is None:
            g = torch.randn_like(y)
        y.backward(g)

    for _ in range(3):
        run()
    return statistics.median(run_times_ms(run, repeats, dev))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--levels", default="32x160,64x80,128x40,256x20")
    p.add_argument("--output", default=None, help="JSON file of the rows")
    p.add_argument("--device", default="cuda", help="cuda (cpu: only a check of the script)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("norm_gpu_bench: no CUDA device, nothing to measure")
        return 0
    torch.backends.cudnn.benchmark = True
    variants = [
        ("conv", "cf", False),
        ("conv", "cl", False),
        ("instance", "cf", False),
        ("group_norm", "cf", False),
        ("group_norm", "cl", False),
        ("fast", "cf", True),
        ("fast", "cl", True),
        ("batch", "cl", True),
    ]
    rows = []
    print("| level | variant | layout | compiled | ms fwd+bwd | GB/s of a 6-pass floor |")
    print("|---|---|---|---|---|---|")
    for lv in a.levels.split(","):
        c, s = (int(v) for v in lv.split("x"))
        nbytes = a.batch * c * s * s * 2  # one bf16 tensor of the level
        for norm, layout, compiled in variants:
            t0 = time.perf_counter()
            try:
                ms = time_block(c, s, a.batch, norm, layout, compiled, a.repeats, dev)
                err = None
            except Exception as e:  # report and go on
                ms, err = float("nan"), f"{type(e).__name__}: {e}"[:200]
            gbs = 6 * nbytes / (ms * 1e-3) / 1e9 if ms == ms else float("nan")
            rows.append(
                {
                    "level": lv,
                    "variant": norm,
                    "layout": layout,
                    "compiled": compiled,
                    "ms": ms,
                    "error": err,
                    "build_s": round(time.perf_counter() - t0, 1),
                }
            )
            print(
                f"| {lv} | {norm} | {layout} | {compiled} | {ms:.3f} | {gbs:.0f} |"
                + (f" {err}" if err else ""),
                flush=True,
            )
            torch._dynamo.reset()
    if a.output:
        atomic_write_text(  # whole or not at all: a time box may kill the run here
            a.output,
            json.dumps(
                {
                    "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
                    "torch": torch.__version__,
                    "rows": rows,
                },
                indent=1,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
