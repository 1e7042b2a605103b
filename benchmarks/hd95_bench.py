"""HD95 speed: pam_monai.metrics.hd95 against MONAI's compute_hausdorff_distance(percentile=95).

Builds a BraTS-sized 155x240x240 pair with a tumour-sized lesion (an ellipsoid of about 21k
voxels and a shifted, ragged copy of it), times both implementations in the same process
(median of ``repeats`` runs after one untimed call each) and prints both values: they differ slightly by convention (union
of the two directed distance sets vs the larger of the two directed 95th percentiles). So that the
speed ratio is one of equal answers, it also takes MONAI's convention from our directed distance
sets (untimed) and checks that it gives MONAI's value (``same_answer``).
Given BraTS label files, it also times pairs made the same way from their real enhancing-tumour
masks (label 4), whose ragged ring shapes have far more surface than an ellipsoid.

Each pair is timed in a fresh Python process: glibc's malloc adapts its thresholds to what a
process has freed before (and this project's inference sets them, ``reuse_freed_memory``), which
made MONAI 15% faster in a process that had kept freed memory before (62 against 71-74 ms).

Run: ``python benchmarks/hd95_bench.py [repeats] [BraTS *_seg.nii.gz ...]``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from pam_monai.engines.memory import reuse_freed_memory
from pam_monai.metrics import hd95
from pam_monai.metrics.surface import directed_surface_distances


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
    return ragged_copy(target, seed), target


def ragged_copy(target: np.ndarray, seed: int = 0) -> np.ndarray:
    """``target`` shifted by (1, 2, -1) voxels, with 30% of its border voxels removed and 30% of
    the voxels just outside added: a prediction that is close but not equal to the reference."""
    pred = np.roll(target, (1, 2, -1), axis=(0, 1, 2))
    rng = np.random.default_rng(seed)
    outer = ndimage.binary_dilation(pred) & ~pred
    inner = pred & ~ndimage.binary_erosion(pred)
    return (pred & ~(inner & (rng.random(target.shape) < 0.3))) | (outer & (rng.random(target.shape) < 0.3))


def brats_lesion_pair(seg_path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A pair from a real BraTS label file: its enhancing tumour (label 4) and a ragged copy.

    Args:
        seg_path: a BraTS ``*_seg.nii.gz`` (240 x 240 x 155).
        seed: seed of the border noise.

    Returns:
        ``(pred, target)`` as ``bool`` arrays with axes (z, y, x), i.e. 155 x 240 x 240.
    """
    import nibabel as nib

    target = np.ascontiguousarray((np.asarray(nib.load(str(seg_path)).dataobj) == 4).transpose(2, 1, 0))
    if not target.any():
        raise ValueError(f"{seg_path}: no enhancing tumour (label 4) to build a lesion pair from.")
    return ragged_copy(target, seed), target


def bench_hd95(repeats: int = 3, shape=(155, 240, 240), segs=(), fresh_process: bool = True) -> dict:
    """Time ours and MONAI's HD95 on the same lesion pairs (float masks, as a network gives).

    Args:
        repeats: timed runs per implementation; the median is reported.
        shape: volume shape of the synthetic pair.
        segs: BraTS label files whose enhancing tumours give further pairs (``"lesions"``).
        fresh_process: time each pair in a new Python process (glibc's allocator in its initial
            state, whatever ran before in this one); ``False``: in this process.

    Returns:
        ``{"shape", "voxels_pred", "voxels_target", "ours_s", "monai_s", "speedup", "kept_memory",
        "ours_hd95", "monai_hd95", "ours_hd95_monai_convention", "same_answer", "pid", "pam_monai",
        "lesions"}`` (``kept_memory``: ``{"ours_s", "monai_s", "speedup"}`` with freed memory kept;
        ``pid``: the timing process; ``pam_monai``: the package file it imported): the synthetic
        pair, and the same fields (plus ``"name"``) for each label file in ``"lesions"``.

    Example:
        >>> r = bench_hd95(repeats=1, shape=(60, 80, 80))
        >>> sorted(r)[:3], r["same_answer"]
        (['lesions', 'monai_hd95', 'monai_s'], True)
    """
    timed = _time_in_fresh_process if fresh_process else _time_here
    result = timed({"shape": [int(n) for n in shape]}, repeats)
    result["lesions"] = [
        {"name": Path(seg).name.split("_seg")[0], **timed({"seg": str(seg)}, repeats)} for seg in segs
    ]
    return result


def _time_here(pair: dict, repeats: int) -> dict:
    """:func:`time_pair` on the pair ``{"shape": [...]}`` (synthetic) or ``{"seg": path}`` names."""
    made = lesion_pair(tuple(pair["shape"])) if "shape" in pair else brats_lesion_pair(pair["seg"])
    import pam_monai

    return {**time_pair(*made, repeats), "pid": os.getpid(), "pam_monai": pam_monai.__file__}


def _time_in_fresh_process(pair: dict, repeats: int) -> dict:
    """:func:`_time_here` in a new Python process, with this one's torch thread count."""
    import pam_monai

    # the pam_monai this process imported, wherever it came from: both routes time the same code
    root = str(Path(pam_monai.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    args = ["--pair", json.dumps(pair), str(repeats), str(torch.get_num_threads())]
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(
            f"HD95 pair {pair}: its timing process failed ({_exit_cause(done.returncode)}):\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _exit_cause(code: int) -> str:
    """A child's exit status in words: one killed by a signal (SIGKILL: out of memory) writes no error."""
    if code >= 0:
        return f"exit status {code}"
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    return f"killed by {name}" + (", perhaps for want of memory" if -code == signal.SIGKILL else "")


def time_pair(pred: np.ndarray, target: np.ndarray, repeats: int) -> dict:
    """Time both implementations on one pair, alternating them so that load affects both alike,
    after one untimed call of each (MONAI's first call costs about 1.5x its later ones), in glibc's
    default state and with freed memory kept in the process (``kept_memory``: MONAI's best case)."""
    pred_f, target_f = pred.astype(np.float32), target.astype(np.float32)
    pred_t, target_t = torch.from_numpy(pred_f)[None, None], torch.from_numpy(target_f)[None, None]

    def ours_fn():
        return hd95(pred_f, target_f)

    def monai_fn():
        return compute_hausdorff_distance(pred_t, target_t, include_background=True, percentile=95).item()

    def medians() -> tuple[float, float, float, object, object]:
        ours, theirs = ours_fn(), monai_fn()  # warm-up: lazy imports, first allocations
        ours_t, monai_t = [], []
        for _ in range(repeats):
            t, ours = _timed(ours_fn)
            ours_t.append(t)
            t, theirs = _timed(monai_fn)
            monai_t.append(t)
        ours_s, monai_s = statistics.median(ours_t), statistics.median(monai_t)
        return ours_s, monai_s, monai_s / ours_s, ours, theirs

    ours_s, monai_s, speedup, ours, theirs = medians()
    # MONAI allocates volume-sized arrays whose fresh pages cost it half its time in glibc's default
    # state; with freed memory kept in the process (as this project's inference and evaluation keep
    # it on the CPU, pam_monai.engines.memory) it runs about twice as fast: timed both ways
    with reuse_freed_memory():
        kept = dict(zip(("ours_s", "monai_s", "speedup"), medians()[:3]))
    as_monai = monai_convention(pred_f, target_f)
    return {
        "shape": tuple(pred.shape),
        "voxels_pred": int(pred.sum()),
        "voxels_target": int(target.sum()),
        "ours_s": ours_s,
        "monai_s": monai_s,
        "speedup": speedup,
        "kept_memory": kept,
        "ours_hd95": float(ours),
        "monai_hd95": float(theirs),
        "ours_hd95_monai_convention": as_monai,
        # MONAI computes in float32: equal to its precision, not bit for bit
        "same_answer": bool(abs(as_monai - float(theirs)) <= 1e-5 * max(1.0, abs(float(theirs)))),
    }


def monai_convention(pred: np.ndarray, target: np.ndarray) -> float:
    """HD95 as MONAI defines it (the larger of the two directed 95th percentiles), from our
    directed surface-distance sets: equal to MONAI's value when both find the same surfaces."""
    d_ab, d_ba = directed_surface_distances(pred, target)
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(repeats: int = 3, *segs: str) -> None:
    r = bench_hd95(repeats, segs=segs)
    print(f"median of {repeats} (alternating), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "MONAI: compute_hausdorff_distance(percentile=95), the larger of the two directed 95th percentiles;"
    )
    print("ours: pam_monai.metrics.hd95, the 95th percentile of the union of both directed sets;")
    print("ours in MONAI's convention: the larger directed 95th percentile of our distance sets.")
    print(
        "| pair (155x240x240) | lesion voxels | ours (s) | MONAI (s) | MONAI / ours | same, freed memory "
        "kept: ours / MONAI (s), ratio | HD95 ours | HD95 MONAI | ours in MONAI's convention |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in [("synthetic ellipsoid", r), *((f"{x['name']} ET", x) for x in r["lesions"])]:
        same = "same" if row["same_answer"] else "DIFFERENT"
        kept = row["kept_memory"]
        print(
            f"| {name} | {row['voxels_target']} | {row['ours_s']:.4f} | {row['monai_s']:.4f} | "
            f"{row['speedup']:.1f}x | {kept['ours_s']:.4f} / {kept['monai_s']:.4f}, {kept['speedup']:.1f}x | "
            f"{row['ours_hd95']:.4f} | {row['monai_hd95']:.4f} | {row['ours_hd95_monai_convention']:.4f} ({same}) |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pair"]:  # one pair, timed in this fresh process (_time_in_fresh_process)
        torch.set_num_threads(int(sys.argv[4]))
        print(json.dumps(_time_here(json.loads(sys.argv[2]), int(sys.argv[3]))))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, *sys.argv[2:])
