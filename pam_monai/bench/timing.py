"""Timing a callable on the device it runs on, for the benchmark scripts in ``benchmarks/``."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["run_times_ms"]


def run_times_ms(run: Callable[[], object], repeats: int, device: str | torch.device) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``run`` (warm it up first): on a GPU between two
    CUDA events around the call, synchronised after each, so the time is the device's; elsewhere the
    host clock. Callers take the median (and the minimum) of the list.

    Example::

        >>> times = run_times_ms(lambda: torch.ones(8).sum(), repeats=3, device="cpu")
        >>> len(times), all(t >= 0 for t in times)
        (3, True)
    """
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(int(repeats)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)
    return times
