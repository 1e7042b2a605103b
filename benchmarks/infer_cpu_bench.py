"""Whole-case CPU inference, before and after, interleaved in one process, on real BraTS files.

``CasePredictor`` (read the four NIfTI files, preprocess, 155 slices through the network, threshold,
un-crop, write ``<case>_seg.nii.gz``) over every case of a BraTS folder, once per variant and
round, the variants alternating (A B A B ...) so that the load of a shared machine hits both
alike; then the median seconds per case, the median of the per-round ratios, and a check that
every variant wrote the same masks, byte for byte (the decompressed voxels), as the first.

Variants: ``before`` (``reuse_memory=False``: glibc's defaults) and ``after``
(``reuse_memory=True``, the default); ``after@N`` / ``before@N`` with ``slice_batch_size`` N.
The network is FPA with seed-0 weights unless ``--ckpt`` names a ``model.pt``. With ``--split``
it first times the phases of one case (read, preprocess, network, un-crop, write).

    python benchmarks/infer_cpu_bench.py --data ../shared/data/brats2018 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from pam_monai.data import get_spec, load_case, preprocess_case, restore_prediction
from pam_monai.engines import CasePredictor, SliceWiseInferer, find_inference_cases, foreground_mask
from pam_monai.engines.infer import _first, _save_nifti
from pam_monai.engines.memory import reuse_freed_memory
from pam_monai.networks import get_network


def _network(name: str, ckpt: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    net = get_network(name, spatial_dims=2, in_channels=4, out_channels=1)
    if ckpt:
        net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    return net.eval()


def split(net, spec, item, slice_batch_size: int, out: Path) -> dict:
    """Seconds of each phase of one case, as CasePredictor runs them (memory reuse on)."""
    t, s = {}, time.perf_counter()
    case = load_case(spec, item)
    t["read"] = time.perf_counter() - s
    s = time.perf_counter()
    pre = preprocess_case(spec, case)
    image = torch.from_numpy(np.ascontiguousarray(pre["image"], dtype=np.float32))[None]
    t["preprocess"] = time.perf_counter() - s
    with reuse_freed_memory():
        s = time.perf_counter()
        with torch.no_grad():
            logits = SliceWiseInferer(slice_batch_size, roi_size=spec.crop_size)(image, net)
        t["network"] = time.perf_counter() - s
    s = time.perf_counter()
    mask = foreground_mask(logits)[0, 0].numpy().astype(np.uint8)
    mask = restore_prediction(spec, mask, case["original_shape"])
    t["threshold+uncrop"] = time.perf_counter() - s
    s = time.perf_counter()
    _save_nifti(mask, case["affine"], out / "split_seg.nii.gz", reference=_first(item))
    t["write"] = time.perf_counter() - s
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/brats2018")
    p.add_argument("--network", default="fpa")
    p.add_argument("--ckpt", default=None)
    p.add_argument("--variants", default="before,after")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slice_batch_size", type=int, default=64)
    p.add_argument("--split", action="store_true")
    args = p.parse_args()
    spec = get_spec("brats")
    items = find_inference_cases(spec, args.data)
    net = _network(args.network, args.ckpt)
    tmp = Path(tempfile.mkdtemp(prefix="infer_bench_"))
    print(f"{len(items)} cases, {args.network}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.split:
        split(net, spec, items[0], args.slice_batch_size, tmp)  # warm-up
        t = split(net, spec, items[0], args.slice_batch_size, tmp)
        total = sum(t.values())
        print(
            "split of one case: " + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.1f}%)" for k, v in t.items())
        )
    variants = args.variants.split(",")
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds + 1):  # round 0 warms up
        for v in variants:
            name, _, bs = v.partition("@")
            out = tmp / f"{v}_{r}"
            pred = CasePredictor(
                net,
                items,
                spec,
                str(out),
                slice_batch_size=int(bs or args.slice_batch_size),
                reuse_memory=name == "after",
            )
            s = time.perf_counter()
            pred.run()
            if r:
                times[v].append((time.perf_counter() - s) / len(items))
        if r:
            print(f"round {r}: " + ", ".join(f"{v} {times[v][-1]:.2f} s/case" for v in variants), flush=True)
    ref = variants[0]
    for v in variants:
        same = all(
            np.array_equal(
                np.asarray(nib.load(str(f)).dataobj),
                np.asarray(nib.load(str(tmp / f"{ref}_1" / f.name)).dataobj),
            )
            for r in range(1, args.rounds + 1)
            for f in sorted((tmp / f"{v}_{r}").glob("*_seg.nii.gz"))
        )
        ratios = [a / b for a, b in zip(times[ref], times[v])]
        print(
            f"{v}: {statistics.median(times[v]):.2f} s/case (median), {ref}/{v} = {statistics.median(ratios):.2f} "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f}), masks identical to {ref}: {same}"
        )


if __name__ == "__main__":
    main()
