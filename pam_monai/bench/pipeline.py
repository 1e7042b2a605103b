"""Data pipeline throughput: BRATS training slices delivered to the device, per second.

The real pipeline on a synthetic BRATS set (``pam_monai.data.synth``, full 240 x 240 x D volumes):
:class:`~pam_monai.data.SliceDataset` does the per-volume work once (timed separately as
``prepare_s``), then batches go through either

- a ``torch.utils.data.DataLoader`` (``num_workers`` = each of ``workers``; shuffled; pinned memory
  on CUDA), then :class:`~pam_monai.engines.FlipPrepareBatch` (copy to the device, random flips and
  channels-last there), as the bundles' ``train.json`` does; or
- :class:`~pam_monai.engines.loaders.DeviceSliceLoader` (the samples copied to the device once,
  batches gathered there), then the same ``FlipPrepareBatch``.

A rate counts the slices of the batches handed to the training step, after one warm-up epoch,
over at least ``min_batches`` batches and ``min_seconds`` seconds (epochs repeat as needed).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch

__all__ = ["bench_data", "flip_wait"]

log = logging.getLogger("pam_monai.bench")


def _rate(batches, prepare, device: torch.device, min_batches: int, min_seconds: float) -> dict:
    """Iterate ``batches()`` (a fresh iterator per epoch) until enough batches and time have passed."""
    # warm-up: one epoch (starts workers, touches memory)
    for b in batches():
        prepare(b, device)
    n_batches = n_slices = epochs = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    while True:
        epochs += 1
        for b in batches():
            image, _ = prepare(b, device, non_blocking=True)
            n_batches += 1
            n_slices += int(image.shape[0])
        elapsed = time.perf_counter() - start
        if n_batches >= min_batches and elapsed >= min_seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "slices_per_s": n_slices / elapsed,
        "batches": n_batches,
        "slices": n_slices,
        "epochs": epochs,
        "seconds": elapsed,
    }


def bench_data(
    device: torch.device,
    batch: int,
    cases: int = 2,
    slices: int = 155,
    workers: tuple[int, ...] = (0, 2),
    device_loader: bool = True,
    channels_last: bool = False,
    min_batches: int = 20,
    min_seconds: float = 2.0,
    workdir: str | None = None,
    seed: int = 0,
) -> dict:
    """Measure the slice pipeline; see the module docstring. Returns a dict of rates per loader."""
    from ..data import SliceDataset, build_datalist, get_spec, load_datalist, synth
    from ..engines import FlipPrepareBatch
    from ..engines.loaders import DeviceSliceLoader

    spec = get_spec("brats")
    tmp = Path(tempfile.mkdtemp(prefix="pam_bench_data_", dir=workdir))
    result: dict = {"cases": cases, "slices_per_case": slices, "batch": batch, "loaders": []}
    try:
        t = time.perf_counter()
        root = synth("brats", tmp / "brats", cases=cases, seed=seed, slices=slices)
        result["synth_s"] = time.perf_counter() - t
        items = load_datalist(build_datalist("brats", root, seed=seed), root)["training"]
        t = time.perf_counter()
        ds = SliceDataset(items, "brats", cache_dir=tmp / "cache", progress=False, seed=seed)
        result["prepare_s"] = time.perf_counter() - t  # per-volume work, once
        result["prepare_s_per_case"] = result["prepare_s"] / max(len(items), 1)
        result["samples"] = len(ds)
        result["slice_shape"] = list(ds[0]["image"].shape)  # the training step's may differ (CPU)
        if len(ds) < batch:
            raise ValueError(f"only {len(ds)} training slices for batch {batch}: raise cases or slices")
        prepare = FlipPrepareBatch(prob=0.5, spatial_axis=spec.flip_axis, channels_last=channels_last)
        for w in workers:
            entry = {"loader": f"DataLoader(num_workers={w})", "workers": w}
            try:
                loader = torch.utils.data.DataLoader(
                    ds,
                    batch_size=batch,
                    shuffle=True,
                    num_workers=w,
                    pin_memory=device.type == "cuda",
                    persistent_workers=w > 0,
                    drop_last=True,
                    generator=torch.Generator().manual_seed(seed),
                )
                entry.update(
                    _rate(lambda loader=loader: iter(loader), prepare, device, min_batches, min_seconds)
                )
                del loader
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"
                log.error("data %s: %s\n%s", entry["loader"], e, traceback.format_exc())
            result["loaders"].append(entry)
        if device_loader:
            entry = {"loader": "DeviceSliceLoader", "workers": 0}
            try:
                t = time.perf_counter()
                dl = DeviceSliceLoader(ds, batch, device=device, drop_last=True, seed=seed)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                entry["build_s"] = time.perf_counter() - t
                entry["device_bytes"] = int(dl.nbytes)
                entry.update(_rate(lambda: iter(dl), prepare, device, min_batches, min_seconds))
                del dl
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"
                log.error("data DeviceSliceLoader: %s\n%s", e, traceback.format_exc())
            result["loaders"].append(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def flip_wait(device: str = "cuda", batch: int = 50, size: int = 160) -> tuple[float, float]:
    """Seconds until :func:`~pam_monai.data.random_flip_batch` returns with about a second of GPU
    work queued before it, and until that work ends (CUDA only). The flip's per-sample choice is
    drawn on the CPU and copied to the GPU from pinned memory: from pageable memory the driver may
    synchronise with the stream to stage the copy, and the first figure would reach the second."""
    from ..data import random_flip_batch

    sleep = getattr(torch.cuda, "_sleep", None)  # private in PyTorch: queues a GPU spin of N cycles
    if sleep is None:
        from ..internals import changed

        raise RuntimeError(
            changed("torch", "torch.cuda._sleep", "the bench's flip_wait (GPU work queued before the flip)")
        )
    x = torch.zeros(batch, 4, size, size, device=device)
    generator = torch.Generator().manual_seed(0)
    random_flip_batch({"image": x}, prob=1.0, generator=generator)  # warm (allocator, kernels)
    torch.cuda.synchronize()
    sleep(2_000_000_000)  # about a second of queued GPU work
    start = time.perf_counter()
    random_flip_batch({"image": x}, prob=1.0, generator=generator)
    returned = time.perf_counter() - start
    torch.cuda.synchronize()
    return returned, time.perf_counter() - start
