"""CPU micro-benchmark of the two convolutions that FastConv2d re-routes (FPA's attention branch).

For each shape: forward and forward + backward (input and weight gradients) of

- a 3x3 depthwise convolution of dilation ``d`` as PyTorch runs it (oneDNN grouped convolution)
  and by FastConv2d's tap route;
- a strided 1x1 convolution as PyTorch runs it and on the sub-sampled input;

minimum of ``repeats`` runs (the machine is shared: the minimum is the least disturbed run).

Run: ``python benchmarks/conv_cpu_bench.py [threads] [repeats]``.
"""

from __future__ import annotations

import sys
import time

import torch

from pam_monai.networks.blocks import FastConv2d

# FPA's attention branch at batch 4 and an 80 x 80 input (c2, c3, c4 / bridge), and at 160 x 160
DEPTHWISE = [(256, 40, 9), (512, 20, 9), (1024, 10, 9), (256, 80, 9), (256, 40, 6), (256, 40, 12)]
POINTWISE = [(32, 256, 80), (64, 512, 40), (128, 1024, 20)]


def _min_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def _pair(plain: torch.nn.Module, fast: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple:
    g = torch.randn_like(plain(x))

    def fwd(m):
        with torch.no_grad():
            m(x)

    def both(m):
        torch.autograd.grad(m(x), (x, m.weight), g)

    return (
        _min_ms(lambda: fwd(plain), repeats),
        _min_ms(lambda: both(plain), repeats),
        _min_ms(lambda: fwd(fast), repeats),
        _min_ms(lambda: both(fast), repeats),
    )


def main(threads: int = 1, repeats: int = 10) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch 4, minimum of {repeats} runs (ms)"
    )
    print("| convolution | input | PyTorch fwd | PyTorch fwd+bwd | FastConv2d fwd | FastConv2d fwd+bwd |")
    print("|---|---|---|---|---|---|")
    for c, s, d in DEPTHWISE:
        fast = FastConv2d(c, c, 3, padding=d, dilation=d, groups=c, bias=False)
        plain = torch.nn.Conv2d(c, c, 3, padding=d, dilation=d, groups=c, bias=False)
        plain.weight = fast.weight
        x = torch.randn(4, c, s, s, requires_grad=True)
        assert fast._route(x) == "tap"
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)
        r = _pair(plain, fast, x, repeats)
        print(f"| depthwise 3x3, dilation {d} | {c}x{s}x{s} | " + " | ".join(f"{v:.1f}" for v in r) + " |")
    for cin, cout, s in POINTWISE:
        fast = FastConv2d(cin, cout, 1, stride=2, bias=False)
        plain = torch.nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        plain.weight = fast.weight
        x = torch.randn(4, cin, s, s, requires_grad=True)
        assert fast._route(x) == "subsample"
        r = _pair(plain, fast, x, repeats)
        print(f"| 1x1 stride 2, {cin}->{cout} | {cin}x{s}x{s} | " + " | ".join(f"{v:.1f}" for v in r) + " |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
