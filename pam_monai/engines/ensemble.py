"""Ensembles of saved predictions: the mean foreground probability of several models.

Inference with ``--save_probabilities true`` writes ``<case>_prob`` beside each mask (see
:class:`~pam_monai.engines.CasePredictor`). ``python -m pam_monai ensemble --inputs a,b,c --output
d`` averages the probability maps of the same cases in every input folder (e.g. the five fold
models of a cross-validation, or FPA and RFNA) and writes, in the inputs' format and grid, the
mean probability ``<case>_prob`` and its mask ``<case>_seg`` (``mean > threshold``; CityScapes:
``<case>_vehicles.png``, 0 / 255, as its inference writes it). Before anything is written every
input must hold the same cases, on the same grid (from the files' headers); an input folder given
twice, and an output folder that is one of the inputs (its maps would be overwritten), are refused.
A map whose body cannot be read, or whose values are not probabilities (0 to 1), stops the run
when its case comes (the cases before it are written, each whole). 2-D maps are the networks'
probabilities resized bilinearly to the image (what inference cuts its masks from): a bilinear
resize is linear, so the mean of the maps is the resize of the mean on the networks' grid, and
the ensemble's mask is cut on the image's pixels as a single model's is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import check_writable
from ..data.files import (
    UnreadableFile,
    load_volume,
    volume_affine,
    volume_shape,
)
from ..progress import progress_bar
from .infer import safe_output_path, save_prediction, stopped_inference_note
from .postprocessing import _probability

__all__ = ["ensemble", "ensemble_probabilities"]

log = logging.getLogger("pam_monai")

PROB_ENDINGS = ("_prob.nii.gz", "_prob.nii", "_prob.mha", "_prob.nrrd", "_prob.npy")


def _prob_files(folder: Path) -> dict[str, Path]:
    """``case -> probability file`` of one inference output folder (two of one case are refused)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        ending = next((e for e in PROB_ENDINGS if path.name.endswith(e)), None)
        if ending is not None and not path.name.startswith("."):
            case = path.name[: -len(ending)]
            if case in found:
                raise ValueError(
                    f"ensemble: {folder}: two probability files of case {case!r}: {found[case].name}, "
                    f"{path.name} (keep one)"
                )
            found[case] = path
    return found


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            return np.load(path).astype(np.float32), None
        data, affine = load_volume(path)
    except (UnreadableFile, OSError, ValueError) as e:
        raise ValueError(f"ensemble: {path}: {e}") from None
    return np.asarray(data, dtype=np.float32), affine


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray | None]:
    """The shape and affine of a probability file, from its header only."""
    try:
        if path.suffix == ".npy":
            return tuple(np.load(path, mmap_mode="r").shape), None
        return tuple(volume_shape(path)), volume_affine(path)
    except Exception as e:  # nibabel, SimpleITK and NumPy raise many types
        raise ValueError(f"ensemble: {path}: unreadable ({' '.join(str(e).split())})") from None


def _shapes(shape: tuple[int, ...], other: tuple[int, ...]) -> str:
    """`` (shape 4x5x2, not 4x5x3)`` when the shapes differ; nothing when only the affines do."""
    if shape == other:
        return " (the same shape, another affine)"
    return f" (shape {'x'.join(map(str, shape))}, not {'x'.join(map(str, other))})"


def ensemble_probabilities(
    inputs: Sequence[str | os.PathLike], output: str | os.PathLike, threshold: float = 0.5
) -> list[Path]:
    """Average the ``<case>_prob`` files of the same cases in every folder of ``inputs`` into
    ``output`` (see the module); returns the files written."""
    folders = [Path(str(i)) for i in inputs]
    if len(folders) < 2:
        raise ValueError(f"ensemble: give at least two input folders, got {[str(f) for f in folders]}")
    threshold = _probability(threshold)
    missing_folders = [str(f) for f in folders if not f.is_dir()]
    if missing_folders:
        raise ValueError(f"ensemble: no such input folder: {', '.join(missing_folders)}")
    for folder in folders:
        stopped = stopped_inference_note(folder)
        if stopped:
            log.warning("ensemble: %s", stopped)
    resolved = [f.resolve() for f in folders]
    twice = sorted({str(f) for f, r in zip(folders, resolved) if resolved.count(r) > 1})
    if twice:
        raise ValueError(
            f"ensemble: the same input folder given twice ({', '.join(twice)}): it would weigh double"
        )
    out = Path(str(output))
    if out.resolve() in resolved:
        raise ValueError(
            f"ensemble: the output folder {out} is one of the inputs: its probability maps and masks would "
            "be overwritten by the ensemble's; choose another --output"
        )
    files = [_prob_files(f) for f in folders]
    empty = [str(f) for f, found in zip(folders, files) if not found]
    if empty:
        raise ValueError(
            f"ensemble: no <case>_prob file in {', '.join(empty)} (run inference with --save_probabilities true)"
        )
    cases = sorted(files[0])
    problems = []
    for folder, found in zip(folders[1:], files[1:]):
        missing, extra = sorted(set(cases) - set(found)), sorted(set(found) - set(cases))
        if missing or extra:
            problems.append(
                f"{folder}: {len(missing)} case(s) missing ({', '.join(missing[:5])}), {len(extra)} not in "
                f"{folders[0]} ({', '.join(extra[:5])})"
            )
        problems += [
            f"{found[c]}: another file type than {files[0][c].name}"
            for c in cases
            if c in found and found[c].name[len(c) :] != files[0][c].name[len(c) :]
        ]
    if problems:
        raise ValueError("ensemble: the inputs do not hold the same predictions:\n" + "\n".join(problems))
    for case in cases:  # every grid, from the headers, before anything is written
        shape, affine = _grid(files[0][case])
        for found in files[1:]:
            other_shape, other_affine = _grid(found[case])
            if other_shape != shape or (
                affine is not None and not np.allclose(other_affine, affine, atol=1e-3)
            ):
                problems.append(
                    f"{found[case]} is on another grid than {files[0][case]}{_shapes(other_shape, shape)}"
                )
    if problems:  # maps of other images of the case (a resampled copy, another version of the data)
        raise ValueError(
            "ensemble: the inputs are not on the same grids: run every model's inference on the same images "
            "(one --input_dir, --save_probabilities true) and ensemble those folders:\n" + "\n".join(problems)
        )
    check_writable(out, "--output DIR")
    stale = sorted(
        {
            p.name[: -len(e)]
            for p in (out.iterdir() if out.is_dir() else ())
            for e in PROB_ENDINGS
            if p.name.endswith(e)
        }
        - set(cases)
    )
    if stale:
        log.warning(
            "ensemble: %s holds the outputs of %d other case(s) from an earlier run (%s%s); they are left as they are",
            out, len(stale), ", ".join(stale[:5]), ", ..." if len(stale) > 5 else "",
        )  # fmt: skip
    written: list[Path] = []
    for case in progress_bar(cases, desc="ensemble", unit="case"):
        first = files[0][case]
        arrays = [_read(found[case]) for found in files]
        for (array, _), found in zip(arrays, files):
            low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
            if not (0.0 <= low and high <= 1.0):  # e.g. a 0-255 map: its mean would be no probability
                raise ValueError(
                    f"ensemble: {found[case]}: values {low:g} to {high:g} are not probabilities (0 to 1); the "
                    "maps of inference's --save_probabilities are"
                )
        affine = arrays[0][1]
        mean = np.mean([a for a, _ in arrays], axis=0, dtype=np.float64).astype(np.float32)
        mask = (mean > threshold).astype(np.uint8)
        ending = first.name[len(case) + len("_prob") :]
        out.mkdir(parents=True, exist_ok=True)
        prob_path = safe_output_path(out, case, f"_prob{ending}")
        seg_suffix, scale = f"_seg{ending}", 1
        if ending == ".npy":  # 2-D images: the mask as their inference writes it (CityScapes: 0 / 255)
            if any((found[case].parent / f"{case}_vehicles.png").is_file() for found in files):
                seg_suffix, scale = "_vehicles.png", 255
            else:
                seg_suffix = "_seg.png"
        seg_path = safe_output_path(out, case, seg_suffix)
        # 2-D: the first input's mask beside its map carries its image's EXIF orientation (if any)
        mask_reference = first.parent / f"{case}{seg_suffix}" if ending == ".npy" else first
        save_prediction(mean, prob_path, first, affine)
        save_prediction(mask * np.uint8(scale), seg_path, mask_reference, affine)
        written += [prob_path, seg_path]
        log.info(
            "%s: mean of %d models, %d foreground voxels -> %s", case, len(arrays), int(mask.sum()), seg_path
        )
    return written


def ensemble(inputs: str | Sequence[str], output: str, threshold: float = 0.5) -> str:
    """Average the foreground probabilities that several models' inference saved
    (``--save_probabilities true``) and write the mean and its mask.

    Args:
        inputs: inference output folders, comma-separated (``preds/fold0,preds/fold1``), each with
            the ``<case>_prob`` files of the same cases.
        output: folder for the ensemble's ``<case>_prob`` and ``<case>_seg`` files (the inputs' format).
        threshold: the mask is ``mean probability > threshold``.

    Returns:
        the output folder.
    """
    # Fire turns "a,b" into a tuple, and all-digit names into numbers
    if isinstance(inputs, (list, tuple)):
        folders = [str(i) for i in inputs]
    else:
        folders = [s.strip() for s in str(inputs).split(",")]
    written = ensemble_probabilities([f for f in folders if f], str(output), threshold)
    return f"{len(written) // 2} cases -> {output}"
