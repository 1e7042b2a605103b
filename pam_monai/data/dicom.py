"""DICOM series (what a scanner or a PACS export gives) into the nnU-Net layout's image files.

Every 3-D series found under a folder (any depth; several series per folder are told apart by
their Series Instance UID, as GDCM groups them) becomes one case, ``<case>_<XXXX>.nii.gz``,
read by SimpleITK with its orientation, spacing and the rescale slope / intercept applied (CT in
Hounsfield units). The case is named after the patient ID (made safe for file names; a patient's
further series get ``-2``, ``-3``, ...); ``dicom_series.json`` beside the images records which
series each case came from. A trained own-data model then segments them: ``--input_dir`` the
output folder, or make it a data set's ``imagesTs``.

Several channels of one study (e.g. MR T2 and ADC) are separate series: convert the folder of each
into the same output with its ``channel`` (0, then 1, ...); a patient's series of channel 1 joins
that patient's case of channel 0. Single-image series (an X-ray, one slice) are skipped with a
warning: a 2-D image belongs in a 2-D data set (PNG).
"""

from __future__ import annotations

import contextlib
import json
import locale
import logging
import os
import re
from pathlib import Path

from ..atomic import atomic_path, atomic_write_text

log = logging.getLogger("pam_monai")

__all__ = ["RECORD", "convert_dicom", "find_series", "keep_locale"]

RECORD = "dicom_series.json"
_TAGS = {
    "patient": "0010|0020",
    "series_number": "0020|0011",
    "description": "0008|103e",
    "modality": "0008|0060",
    "study_date": "0008|0020",
}


@contextlib.contextmanager
def keep_locale():
    """Restore the C library's locale after GDCM: its DICOM writer sets ``LC_CTYPE`` to "C", after
    which Python decodes subprocess output and opens text files as ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def find_series(input_dir: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """``(series UID, its files in slice order)`` of every DICOM series under ``input_dir``."""
    import SimpleITK as sitk

    found = []
    for folder, _, files in sorted(os.walk(input_dir)):
        if not files:
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or ():
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
            if names:
                found.append((uid, list(names)))
    return found


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text.strip()).strip("-.") or "case"


def convert_dicom(
    input_dir: str | os.PathLike,
    output: str | os.PathLike,
    channel: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write every 3-D DICOM series under ``input_dir`` as ``<output>/<case>_<channel:04d>.nii.gz``
    (see the module) and ``<output>/dicom_series.json``; returns the written images. Raises
    ``ValueError`` naming the folder when no DICOM series is found. Series that ``dicom_series.json``
    lists as converted are skipped (a re-run adds only new ones); an existing image file is never
    replaced."""
    import SimpleITK as sitk

    input_dir, output = Path(input_dir), Path(output)
    if not input_dir.is_dir():
        raise ValueError(f"{input_dir}: not a folder of DICOM files")
    if not 0 <= int(channel) <= 9999:
        raise ValueError(f"channel must be 0..9999, got {channel}")
    with keep_locale():
        series = find_series(input_dir)
    if not series:
        raise ValueError(f"{input_dir}: no DICOM series found (GDCM reads none of its files)")
    record_path = output / RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    used = {c for c in record}
    written: list[Path] = []
    iterator = series
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(series, desc="dicom: converting series", unit="series")
    done = {entry["series_uid"] for r in record.values() for k, entry in r.items() if isinstance(entry, dict)}
    for uid, files in iterator:
        if uid in done:  # converted by an earlier run into this folder: a re-run adds only new series
            log.info("dicom: series %s was converted before, skipped", uid)
            continue
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        try:
            with keep_locale():
                image = reader.Execute()
        except RuntimeError as e:
            log.warning(
                "dicom: %s: series %s unreadable, skipped (%s)",
                Path(files[0]).parent,
                uid,
                str(e).splitlines()[-1],
            )
            continue
        tags = {
            k: (reader.GetMetaData(0, t).strip() if reader.HasMetaDataKey(0, t) else "")
            for k, t in _TAGS.items()
        }
        if image.GetDimension() != 3 or image.GetSize()[2] < 2:
            log.warning(
                "dicom: %s: series %s (%s) is a single image, skipped: 2-D images belong in a 2-D data set",
                Path(files[0]).parent,
                tags["series_number"] or uid,
                tags["description"],
            )
            continue
        key = f"{int(channel):04d}"
        # another channel of a patient converted before joins its case; else a new case
        case = next(
            (
                c
                for c in sorted(record)
                if record[c].get("patient") == tags["patient"] and key not in record[c]
            ),
            None,
        )
        if case is None:
            base = _safe(tags["patient"] or "patient")
            case, n = base, 1
            while case in used:
                n += 1
                case = f"{base}-{n}"
        used.add(case)
        path = output / f"{case}_{key}.nii.gz"
        if path.exists():
            raise FileExistsError(f"{path} exists: convert into an empty folder, or as another channel")
        output.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".nii.gz") as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        record.setdefault(case, {"patient": tags["patient"]})
        record[case][key] = {
            "folder": str(Path(files[0]).parent),
            "series_uid": uid,
            "slices": len(files),
            "size": list(image.GetSize()),
            "spacing": [round(v, 6) for v in image.GetSpacing()],
            **tags,
        }
        written.append(path)
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return written
