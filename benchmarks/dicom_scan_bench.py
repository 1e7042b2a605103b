"""Speed of finding DICOM series: ``pam_monai.data.dicom.find_series`` (each file read once) against
the GDCM scan it replaced (``_find_series_gdcm``: per folder ``GetGDCMSeriesIDs``, then
``GetGDCMSeriesFileNames`` per series UID, each a full re-read of the folder, S + 1 scans of a flat
export folder holding S series).

Writes a synthetic flat export folder (``series`` series of ``slices`` slices of ``size`` x ``size``, int16,
plus a README and a ``dicom_series.json`` that must be skipped), times both in one process (best of
``repeats`` runs, after one warm-up run each so both read from the page cache), checks they return
the same series and file order, and prints files, series, seconds and the ratio.

Run: ``python benchmarks/dicom_scan_bench.py [series] [slices] [size] [repeats]`` (default 20 40 64 3;
512 is a CT slice's size, where reading the files outweighs ITK's per-file overhead).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pam_monai.data.dicom import find_series, keep_locale

UID = "1.2.826.0.1.3680043.2.1125.9."


def _find_series_gdcm(input_dir) -> list[tuple[str, list[str]]]:
    """find_series before the single-read scan (its per-folder ordering is GDCM's; series spread
    over folders, which the flat folder here does not have, were then sorted along the normal)."""
    by_uid: dict[str, list[list[str]]] = defaultdict(list)
    with keep_locale():
        for folder, _, files in sorted(os.walk(str(input_dir))):
            if not files:
                continue
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or ():
                names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
                if names:
                    by_uid[uid].append(list(names))
    assert all(len(parts) == 1 for parts in by_uid.values()), "a series spread over folders"
    return [(uid, parts[0]) for uid, parts in by_uid.items()]


def write_flat_export(folder: Path, series: int, slices: int, size: int = 64) -> int:
    """``series`` CT series of ``slices`` slices, all in ``folder``, as one PACS export folder holds
    them; slices written in a shuffled order with shuffled file names, so order comes from the
    positions. Returns the number of files written (DICOM and not)."""
    rng = np.random.default_rng(0)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for s in range(series):
        image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (slices, size, size), dtype=np.int16))
        image.SetSpacing((0.8, 0.8, 2.5))
        image.SetOrigin((-100.0, -90.0, 30.0))
        tags = {
            "0020|000e": f"{UID}{s + 1}",
            "0020|000d": f"{UID}0",
            "0010|0020": "BENCH",
            "0020|0011": str(s + 1),
            "0008|0060": "CT",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for i in rng.permutation(slices):
            one = image[:, :, int(i)]
            for tag, value in tags.items():
                one.SetMetaData(tag, value)
            one.SetMetaData(
                "0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, int(i)))))
            )
            one.SetMetaData("0020|0013", str(i + 1))
            writer.SetFileName(str(folder / f"IM{rng.integers(1 << 40):012x}.dcm"))
            with keep_locale():
                writer.Execute(one)
    (folder / "README.txt").write_text("not DICOM\n")
    (folder / "dicom_series.json").write_text("{}\n")
    return series * slices + 2


def best_time(fn, folder: Path, repeats: int) -> tuple[float, list]:
    result = fn(folder)  # warm-up: imports, page cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(folder)
        times.append(time.perf_counter() - start)
    return min(times), result


def main(series: int = 20, slices: int = 40, size: int = 64, repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        folder.mkdir()
        files = write_flat_export(folder, series, slices, size)
        before, old = best_time(_find_series_gdcm, folder, repeats)
        after, new = best_time(find_series, folder, repeats)
    assert new == old, "find_series differs from the GDCM scan"
    assert len(new) == series and all(len(f) == slices for _, f in new)
    print(
        f"files {files}, series {len(new)}, slices per series {slices} ({size} x {size} int16), best of {repeats}"
    )
    print(f"GDCM scan per series UID (before): {before:.3f} s")
    print(f"one read per file (find_series):   {after:.3f} s")
    print(f"speed-up: {before / after:.1f}x")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:5]))
