"""HD95 speed: pam_monai.metrics.hd95 against MONAI's compute_hausdorff_distance(percentile=95).

Builds a BraTS-sized 155x240x240 pair with a tumour-sized lesion (an ellipsoid of about 21k
voxels and a shifted, ragged copy of it), times both implementations in the same process
(median of ``repeats`` runs) and prints both values: they differ slightly by convention (union
of the two directed distance sets vs the larger of the two directed 95th percentiles).

Run: ``python benchmarks/hd95_bench.py [repeats]``.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from pam_monai.metrics import hd95


def lesion_pair(shape=(155, 240, 240), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reference ellipsoid (radii 14, 18, 20 voxels) and a shifted copy with a ragged surface.

    Args:
        shape: volume shape (each axis at least about 50).
        seed: seed of the border noise.

    Returns:
        ``(pred, target)`` as ``bool`` arrays.
    """
    centre = np.array(shape) / 2
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    target = ((z - centre[0]) / 14) ** 2 + ((y - centre[1]) / 18) ** 2 + ((x - centre[2]) / 20) ** 2 <= 1
    pred = np.roll(target, (1, 2, -1), axis=(0, 1, 2))
    rng = np.random.default_rng(seed)
    outer = ndimage.binary_dilation(pred) & ~pred
    inner = pred & ~ndimage.binary_erosion(pred)
    pred = (pred & ~(inner & (rng.random(shape) < 0.3))) | (outer & (rng.random(shape) < 0.3))
    return pred, target


def _median_time(fn, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(value)


def bench_hd95(repeats: int = 3, shape=(155, 240, 240)) -> dict:
    """Time ours and MONAI's HD95 on the same lesion pair (float masks, as a network gives).

    Args:
        repeats: timed runs per implementation; the median is reported.
        shape: volume shape.

    Returns:
        ``{"shape", "voxels_pred", "voxels_target", "ours_s", "monai_s", "speedup",
        "ours_hd95", "monai_hd95"}``.

    Example:
        >>> r = bench_hd95(repeats=1, shape=(60, 80, 80))
        >>> sorted(r)[:3]
        ['monai_hd95', 'monai_s', 'ours_hd95']
    """
    pred, target = lesion_pair(shape)
    pred_f, target_f = pred.astype(np.float32), target.astype(np.float32)
    pred_t, target_t = torch.from_numpy(pred_f)[None, None], torch.from_numpy(target_f)[None, None]
    ours_s, ours = _median_time(lambda: hd95(pred_f, target_f), repeats)
    monai_s, theirs = _median_time(
        lambda: compute_hausdorff_distance(pred_t, target_t, include_background=True, percentile=95).item(),
        repeats,
    )
    return {
        "shape": tuple(shape),
        "voxels_pred": int(pred.sum()),
        "voxels_target": int(target.sum()),
        "ours_s": ours_s,
        "monai_s": monai_s,
        "speedup": monai_s / ours_s,
        "ours_hd95": ours,
        "monai_hd95": theirs,
    }


def main(repeats: int = 3) -> None:
    r = bench_hd95(repeats)
    print(
        f"volume {'x'.join(map(str, r['shape']))}, lesion {r['voxels_target']} voxels (pred {r['voxels_pred']}), "
        f"median of {repeats}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| implementation | time (s) | HD95 (mm) | convention |")
    print("|---|---|---|---|")
    print(
        f"| pam_monai.metrics.hd95 | {r['ours_s']:.4f} | {r['ours_hd95']:.4f} | union of both directed sets |"
    )
    print(
        f"| MONAI compute_hausdorff_distance(percentile=95) | {r['monai_s']:.4f} | {r['monai_hd95']:.4f} "
        "| max of the two directed 95th percentiles |"
    )
    print(f"speed ratio (MONAI / ours): {r['speedup']:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
