"""DICOM series (what a scanner or a PACS export gives) into the nnU-Net layout's image files.

Every 3-D series found under a folder (any depth; files are grouped by their Series Instance UID
across folders, as GDCM identifies series; each file's header is read once) becomes one case,
``<case>_<XXXX>.nii.gz``, read by SimpleITK with its orientation, spacing and the rescale slope /
intercept applied (CT in Hounsfield units). The case is named after the patient ID (made safe for file names; without a
readable ID, after the study: ``study-<hash>``; a patient's further series get ``-2``, ``-3``,
...); ``dicom_series.json`` beside the images records which series each case came from. A trained
own-data model then segments them: ``--input_dir`` the output folder, or make it a data set's
``imagesTs``.

Series that would convert to a wrong volume are skipped with a warning naming them, never
written: single images (a 2-D image belongs in a 2-D data set), several volumes in one series
(repeated slice positions: diffusion b-values, echoes, phases), irregular slice spacing (a
missing slice) and sheared stacks (gantry tilt); resample or split those first. A multi-frame file
(enhanced CT / MR) is one series of its own, its geometry as GDCM reads it.

Several channels of one study (e.g. MR T2 and ADC) are separate series: convert the folder of each
into the same output with its ``channel`` (0, then 1, ...). A series of channel 1 joins the case of
channel 0 from the same study (Study Instance UID) on the same grid; one without such a case is
skipped with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import locale
import logging
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_text, check_writable

log = logging.getLogger("pam_monai")

__all__ = ["RECORD", "convert_dicom", "find_series", "keep_locale"]

RECORD = "dicom_series.json"
_TAGS = {
    "patient": "0010|0020",
    "study_uid": "0020|000d",
    "series_number": "0020|0011",
    "description": "0008|103e",
    "modality": "0008|0060",
    "study_date": "0008|0020",
}
_POSITION, _ORIENTATION, _SERIES = "0020|0032", "0020|0037", "0020|000e"
_PIXEL_FORMAT = ("0028|0100", "0028|0101", "0028|0103")  # bits allocated, bits stored, signed or not
_RESCALE = ("0028|1052", "0028|1053")  # Rescale Intercept, Slope: per slice in PET, some CT exports


@contextlib.contextmanager
def keep_locale():
    """Restore the C library's locale and ITK's warning display after GDCM: its DICOM writer sets
    ``LC_CTYPE`` to "C", after which Python decodes subprocess output and opens text files as
    ASCII; and GDCM prints a warning for every non-DICOM file it looks at."""
    import SimpleITK as sitk

    saved = locale.setlocale(locale.LC_ALL)
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
        locale.setlocale(locale.LC_ALL, saved)


def _header(reader) -> dict[str, str]:
    return {k: reader.GetMetaData(k).strip() for k in (_POSITION, _ORIENTATION) if reader.HasMetaDataKey(k)}


def _numbers(text: str) -> np.ndarray | None:
    try:
        return np.asarray([float(v) for v in text.split("\\")], dtype=np.float64)
    except ValueError:
        return None


def _sorted_along_normal(files: list[str], headers: dict[str, dict[str, str]]) -> list[str]:
    """Files of one series from several folders, in slice order (along the slice normal)."""
    orientation = _numbers(headers[files[0]].get(_ORIENTATION, ""))
    if orientation is None or orientation.size != 6:
        return sorted(files)
    normal = np.cross(orientation[:3], orientation[3:])
    keys = []
    for f in files:
        p = _numbers(headers[f].get(_POSITION, ""))
        keys.append(float(p @ normal) if p is not None and p.size == 3 else 0.0)
    return [f for _, f in sorted(zip(keys, files))]


def _gdcm_order(slices: list[tuple[str, tuple, tuple]]) -> list[str]:
    """``(file, origin, direction)`` of one folder's files of a series in GDCM's order
    (``gdcm::SerieHelper::OrderFileList``, what ``GetGDCMSeriesFileNames`` returned): along the normal
    of the first file's orientation when no two positions coincide, else by file name. Geometry as
    ITK reads it (GDCM's scan used a Secondary Capture's only once ITK had read a DICOM image)."""
    d = slices[0][2]  # ITK's direction, row-major: its columns are the row and column cosines
    c = (d[0], d[3], d[6], d[1], d[4], d[7])
    normal = (c[1] * c[5] - c[2] * c[4], c[2] * c[3] - c[0] * c[5], c[0] * c[4] - c[1] * c[3])
    dist = {f: normal[0] * o[0] + normal[1] * o[1] + normal[2] * o[2] for f, o, _ in slices}
    if len(set(dist.values())) == len(dist):  # exact comparison, as GDCM's
        return sorted(dist, key=dist.get)
    return sorted(dist)


def find_series(input_dir: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """``(series UID, its files in slice order)`` of every DICOM series under ``input_dir``, folder
    by folder (sorted), by UID within a folder; a series whose files lie in several folders is one
    series. Files that are no DICOM image, or have no Series Instance UID, are skipped. Each header
    is read once (``GetGDCMSeriesFileNames`` re-reads the whole folder for each series in it)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")  # DICOM only, as GDCM's scan: no PNG or NIfTI read as a slice
    by_uid: dict[str, list[list[str]]] = defaultdict(list)
    headers: dict[str, dict[str, str]] = {}
    with keep_locale():
        for folder, _, names in sorted(os.walk(str(input_dir))):
            # as gdcm::Directory lists a folder: regular files, not hidden ones, in directory order
            # (the first file's orientation gives GDCM's slice normal)
            in_folder: dict[str, list[tuple[str, tuple, tuple]]] = defaultdict(list)
            for name in names:
                path = os.path.join(folder, name)
                if name.startswith(".") or not os.path.isfile(path):
                    continue
                reader.SetFileName(path)
                try:
                    reader.ReadImageInformation()
                except RuntimeError:  # not DICOM, or no image in it
                    continue
                # GDCM's series identifier: the UID without characters other than [A-Za-z0-9.]
                uid = (
                    re.sub(r"[^A-Za-z0-9.]", "", reader.GetMetaData(_SERIES))
                    if reader.HasMetaDataKey(_SERIES)
                    else ""
                )
                if uid and reader.GetDimension() == 3:  # GDCMImageIO's always is; the guard for origin[2]
                    in_folder[uid].append((path, reader.GetOrigin(), reader.GetDirection()))
                    headers[path] = _header(reader)
            for uid in sorted(in_folder):  # GDCM's order: a std::map by UID
                by_uid[uid].append(_gdcm_order(in_folder[uid]))
    return [
        (uid, parts[0] if len(parts) == 1 else _sorted_along_normal([f for p in parts for f in p], headers))
        for uid, parts in by_uid.items()
    ]


def _geometry_problem(reader, n: int) -> str | None:
    """Why the slices of a series do not make one regular volume, or None (also when the tags
    needed to tell are missing, and for one multi-frame file: its frames' positions are not in it)."""
    if n < 2 or not reader.HasMetaDataKey(0, _ORIENTATION):
        return None
    orientation = _numbers(reader.GetMetaData(0, _ORIENTATION))
    positions = [
        _numbers(reader.GetMetaData(i, _POSITION)) if reader.HasMetaDataKey(i, _POSITION) else None
        for i in range(n)
    ]
    if orientation is None or orientation.size != 6 or any(p is None or p.size != 3 for p in positions):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    offsets = np.asarray(positions) - positions[0]
    along = offsets @ normal
    steps = np.diff(along)
    if np.any(np.abs(along[:, None] - along[None, :])[np.triu_indices(n, 1)] < 1e-3):
        # repeated positions, also when the files come volume after volume (30, 32.5, 35, 30, ...)
        return "several volumes in one series (repeated slice positions: b-values, echoes or phases); split it first"
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > 0.01 * abs(step) + 1e-3:
        return (
            f"irregular slice spacing ({np.min(np.abs(steps)):.4g} to {np.max(np.abs(steps)):.4g} mm: a missing "
            "slice?); resample it first"
        )
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if np.max(sideways) > 0.01 * np.max(np.abs(along)) + 1e-3:
        return "slices shifted sideways along the stack (gantry tilt); resample it first"
    return None


def _varying(reader, n: int, tags: tuple[str, ...]) -> bool:
    """Whether the slices' numeric values of ``tags`` differ (``"1"`` and ``"1.0"`` do not)."""
    values = {
        tuple(reader.GetMetaData(i, t).strip() if reader.HasMetaDataKey(i, t) else "" for t in tags)
        for i in range(n)
    }
    return len({tuple(float(v) if v else None for v in row) for row in values}) > 1


def _tag(reader, tag: str) -> str:
    return reader.GetMetaData(0, tag).strip() if reader.HasMetaDataKey(0, tag) else ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text.strip()).strip("-.")


def _grid(image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing": [round(v, 6) for v in image.GetSpacing()],
        "origin": [round(v, 4) for v in image.GetOrigin()],
        "direction": [round(v, 6) for v in image.GetDirection()],
    }


def _same_grid(a: dict, b: dict) -> bool:
    return (
        a["size"] == b["size"]
        and np.allclose(a["spacing"], b["spacing"], atol=1e-3)
        and np.allclose(a["origin"], b["origin"], atol=1e-2)
        and np.allclose(a["direction"], b["direction"], atol=1e-4)
    )


def _holds(path: Path, image) -> bool:
    """Whether the image file ``path`` holds ``image``: its voxels, pixel type and geometry."""
    import SimpleITK as sitk

    try:
        with keep_locale():
            there = sitk.ReadImage(str(path))
    except RuntimeError:  # not an image SimpleITK reads
        return False
    return (
        there.GetPixelID() == image.GetPixelID()
        and _same_grid(_grid(there), _grid(image))
        and np.array_equal(sitk.GetArrayViewFromImage(there), sitk.GetArrayViewFromImage(image))
    )


def _compact(image):
    """int16 when the values fit (CT read as int32 after the rescale), float32 for float64."""
    import SimpleITK as sitk

    pixel = image.GetPixelID()
    if pixel in (sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64):
        values = sitk.GetArrayViewFromImage(image)
        if values.size and values.min() >= -32768 and values.max() <= 32767:
            return sitk.Cast(image, sitk.sitkInt16)
    if pixel == sitk.sitkFloat64:
        return sitk.Cast(image, sitk.sitkFloat32)
    return image


def convert_dicom(
    input_dir: str | os.PathLike,
    output: str | os.PathLike,
    channel: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write every 3-D DICOM series under ``input_dir`` as ``<output>/<case>_<channel:04d>.nii.gz``
    (see the module) and ``<output>/dicom_series.json``; returns the written images. Raises
    ``ValueError`` naming the folder when no DICOM series is found. Series that
    ``dicom_series.json`` lists as converted are skipped (a re-run adds only new ones); an existing
    image file is never replaced: one the record lacks that holds the image a series gives (written by
    a conversion stopped before recording it) is recorded, another raises ``FileExistsError``."""
    import SimpleITK as sitk

    input_dir, output = Path(str(input_dir)), Path(str(output))
    if not input_dir.is_dir():
        raise ValueError(f"{input_dir}: not a folder of DICOM files")
    if not 0 <= int(channel) <= 9999:
        raise ValueError(f"channel must be 0..9999, got {channel}")
    check_writable(output)  # before the scan; created after it, so that a refusal leaves no empty folder
    series = find_series(input_dir)
    if not series:
        raise ValueError(f"{input_dir}: no DICOM series found (GDCM reads none of its files)")
    output.mkdir(parents=True, exist_ok=True)
    record_path = output / RECORD
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    key = f"{int(channel):04d}"
    done = {
        e["series_uid"]
        for r in record.values()
        for e in r.values()
        if isinstance(e, dict) and "series_uid" in e
    }
    written: list[Path] = []
    iterator = series
    if progress:
        from ..progress import progress_bar

        iterator = progress_bar(series, desc="dicom: converting series", unit="series")
    for uid, files in iterator:
        where = Path(files[0]).parent
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
                "dicom: %s: series %s unreadable, skipped (%s)", where, uid, str(e).strip().splitlines()[-1]
            )
            continue
        # the first slice gave the pixel type: slices with another slope would be truncated, and
        # unsigned slices read as signed ones wrap (60000 becomes -5536)
        wider = (
            sitk.sitkFloat64
            if _varying(reader, len(files), _RESCALE)
            else sitk.sitkInt32
            if _varying(reader, len(files), _PIXEL_FORMAT)
            else None
        )
        if wider is not None and image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
            reader.SetOutputPixelType(wider)
            with keep_locale():
                image = reader.Execute()
        tags = {k: _tag(reader, t) for k, t in _TAGS.items()}
        label = f"{where}: series {tags['series_number'] or uid} ({tags['description'] or 'no description'})"
        if image.GetDimension() == 4:  # multi-frame files: the series reader stacks them on a 4th axis
            if image.GetSize()[3] != 1:
                log.warning(
                    "dicom: %s not converted: %d multi-frame files in one series (several volumes); split it first",
                    label,
                    image.GetSize()[3],
                )
                continue
            image = image[:, :, :, 0]  # one multi-frame file: the volume, its geometry kept
        if image.GetDimension() != 3 or image.GetSize()[2] < 2:
            log.warning("dicom: %s is a single image, skipped: 2-D images belong in a 2-D data set", label)
            continue
        problem = _geometry_problem(reader, len(files))
        if problem:
            log.warning("dicom: %s not converted: %s", label, problem)
            continue
        grid = _grid(image)
        if int(channel) == 0:
            base = (
                _safe(tags["patient"])
                or "study-" + hashlib.sha1((tags["study_uid"] or uid).encode()).hexdigest()[:8]
            )
            # in any letter case: macOS and Windows would keep one file for P1 and p1
            used = {c.casefold() for c in record}
            case, n = base, 1
            while case.casefold() in used:
                n += 1
                case = f"{base}-{n}"
        else:  # another channel: the case of channel 0 of the same study, on the same grid
            fitting = [
                c
                for c in sorted(record)
                if record[c].get("study_uid") == tags["study_uid"]
                and "0000" in record[c]
                and _same_grid(record[c]["0000"], grid)
            ]
            case = next((c for c in fitting if key not in record[c]), None)
            if case is not None and len(fitting) > 1:  # nothing tells which is whose: a guess, said
                log.warning(
                    "dicom: %s converted as channel %s of case %s, a guess: the study has %d cases of "
                    "channel 0000 on its grid (%s), given their channel %s series in folder order; check "
                    "with %s which series each case holds, and swap the %s files of two cases if wrong",
                    label,
                    key,
                    case,
                    len(fitting),
                    ", ".join(fitting),
                    key,
                    record_path,
                    f"_{key}.nii.gz",
                )
            if case is None:
                same_study = [c for c in sorted(record) if record[c].get("study_uid") == tags["study_uid"]]
                why = (
                    f"the study's case(s) {same_study} already have channel {key} or lie on another grid"
                    if same_study
                    else "no case of channel 0000 from its study (Study Instance UID) was converted into this folder"
                )
                log.warning("dicom: %s not converted as channel %s: %s", label, key, why)
                continue
        path = output / f"{case}_{key}.nii.gz"
        image = _compact(image)
        if path.exists():  # never in the record: its case or channel would have been another
            if not _holds(path, image):
                raise FileExistsError(
                    f"{path} exists but is not in {record_path}, and holds another image than {label}: "
                    "move it out of the folder (or convert into an empty folder, or as another channel)"
                )
            # written by a conversion that stopped before recording it: this series, done
            log.info("dicom: %s was written from %s before it was recorded: recorded now", path, label)
        else:
            with atomic_path(path, suffix=".nii.gz") as tmp, keep_locale():
                sitk.WriteImage(image, str(tmp), useCompression=True)
            written.append(path)
        record.setdefault(case, {"patient": tags["patient"], "study_uid": tags["study_uid"]})
        record[case][key] = {
            "folder": str(where),
            "series_uid": uid,
            "slices": image.GetSize()[2],
            **grid,
            **tags,
        }
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return written
