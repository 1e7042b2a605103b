"""Whole-volume inference time for a BRATS-sized case (155 x 240 x 240, 4 modalities).

From a raw ``4 x 240 x 240 x 155`` float32 case (as read from its NIfTI files; the read itself
is left out), as :class:`~pam_monai.engines.CasePredictor` segments it (:func:`segment_case`):
z-score each channel over the whole volume's non-zero voxels and centre crop to ``crop x crop``
(:func:`~pam_monai.data.preprocess_case`'s work), copy to the device, all 155 axial slices
through the network with :class:`~pam_monai.engines.SliceWiseInferer` (``slice_batch_size``
slices per call, eval mode, ``torch.inference_mode``), ``sigmoid > 0.5``, copy the mask back and
un-crop it to ``240 x 240 x 155``. Median of ``repeats`` runs after one warm-up run. The fast mode
runs bf16 autocast, channels-last and the fusible norm in eager mode (compiling an inference
graph would cost more than a case takes).
On the CPU the runs keep freed memory in the process, as ``CasePredictor`` does
(:func:`~pam_monai.engines.memory.reuse_freed_memory`; ``reuse_memory=False``: glibc's defaults,
the figure before; ``benchmarks/infer_cpu_bench.py`` compares both on real cases).
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
import traceback

import numpy as np
import torch

from .modes import Mode

__all__ = ["bench_volume", "raw_case", "segment_case"]

log = logging.getLogger("pam_monai.bench")


def raw_case(volume: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A synthetic raw ``4 x H x W x D`` case: positive scanner-like intensities inside a centred
    ellipsoid ("brain"), 0 outside, as BraTS's skull-stripped volumes are."""
    rng = np.random.default_rng(seed)
    axes = np.ogrid[tuple(slice(0, n) for n in volume)]
    inside = sum(((a - (n - 1) / 2) / (0.4 * n)) ** 2 for a, n in zip(axes, volume)) <= 1
    case = rng.gamma(4.0, 150.0, size=(4, *volume)).astype(np.float32)
    return case * inside


def segment_case(
    image: np.ndarray, net, inferer, device: torch.device, crop: int, amp: bool = False
) -> np.ndarray:
    """The uint8 mask of one raw ``C x H x W x D`` BRATS case on its own grid, as
    :class:`~pam_monai.engines.CasePredictor` makes it without reading and writing files:
    :func:`~pam_monai.data.preprocess_case` (z-score over the whole volume, in-plane centre crop
    to ``crop``, padded where smaller), the slices through the network, ``sigmoid > 0.5`` and
    :func:`~pam_monai.data.restore_prediction`."""
    from ..data import get_spec, preprocess_case, restore_prediction
    from ..engines import foreground_mask

    spec = get_spec("brats", crop_size=(crop, crop))
    item = {"case": "bench", "image": image, "label": None, "affine": None, "original_shape": image.shape[1:]}
    x = torch.from_numpy(np.ascontiguousarray(preprocess_case(spec, item)["image"], dtype=np.float32))
    x = x[None].to(device, non_blocking=True)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
        logits = inferer(x, net)
    mask = foreground_mask(logits)[0, 0].to(torch.uint8).cpu().numpy()  # the copy back synchronises
    return restore_prediction(spec, mask, image.shape[1:])


def bench_volume(
    networks: list[str],
    modes: list[Mode],
    device: torch.device,
    volume: tuple[int, int, int] = (240, 240, 155),
    crop: int = 160,
    slice_batch_size: int = 64,
    repeats: int = 3,
    seed: int = 0,
    reuse_memory: bool = True,
) -> list[dict]:
    """Time whole-volume inference per (network, mode); see the module docstring."""
    from ..engines import SliceWiseInferer
    from ..engines.memory import reuse_freed_memory
    from .train import build_network

    case = raw_case(tuple(volume), seed)
    results = []
    for mode in modes:
        for name in networks:
            r = {
                "network": name,
                "mode": mode.name,
                "volume": [4, *volume],
                "crop": crop,
                "slice_batch_size": slice_batch_size,
                "repeats": repeats,
                "reuse_memory": bool(reuse_memory and device.type == "cpu"),
                "error": None,
            }
            try:
                torch.manual_seed(seed)
                net = build_network(name, mode, device).eval()
                inferer = SliceWiseInferer(slice_batch_size=slice_batch_size, channels_last=mode.cl)

                def run(net=net, inferer=inferer, mode=mode) -> np.ndarray:
                    return segment_case(case, net, inferer, device, crop, mode.amp)

                with reuse_freed_memory(reuse_memory and device.type == "cpu"):  # as CasePredictor
                    t = time.perf_counter()
                    out = run()
                    r["first_s"] = time.perf_counter() - t
                    assert out.shape == tuple(volume), out.shape
                    times = []
                    for _ in range(max(repeats, 1)):
                        t = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - t)
                r["seconds_median"] = statistics.median(times)
                r["seconds_min"] = min(times)
                r["slices_per_s"] = volume[2] / statistics.median(times)
            except Exception as e:
                r["error"] = f"{type(e).__name__}: {e}"
                log.error("infer %s/%s: %s\n%s", name, mode.name, e, traceback.format_exc())
            results.append(r)
            net = inferer = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results
