"""Score any folder of predicted masks against a data set's labels with the project's metrics.

``python -m pam_monai score --dataset brats --dataset_dir /data/brats --predictions preds`` reads
every mask in ``preds`` (this project's ``<case>_seg.nii.gz`` / ``.mha`` / ``.nrrd`` /
``<case>_seg.png`` / ``<case>_vehicles.png``, or nnU-Net's ``<case>.nii.gz`` / ``<case>.png``), finds
the case's label in the data set, and writes ``metrics.csv`` and ``summary.json`` exactly as the
bundles' evaluation does (:class:`~pam_monai.engines.CaseMetrics`): per-case IoU, Dice, HD95 in the
label's physical units, FP and FN rates on the label's own grid, over the annotated voxels of
sparsely annotated data. So an ensemble, another tool's output (nnU-Net, the authors' code) or a
colleague's masks are scored by the same rules as the bundles' models.

Masks: any non-zero value is foreground (0/1 or 0/255); with ``label_map=True`` the predictions are
label maps with the data set's label values, and the same foreground labels as the target are
taken. Masks holding other values than 0, 1, 255 and the target's are refused unless
``label_map`` says how to read them (``False``: every non-zero value is foreground), since the two
readings of a label map give different metrics. A mask must lie on its label's grid (shape, and for volumes the affine): it is refused by
name otherwise, as are masks whose case has no label in the data set. Own data: the labels of
``labelsTr``, and of ``labelsTs`` where there is one (a test set's masks). BRATS: of every grade
(``HGG/`` and ``LGG/``, as inference segments them); the HGG cases, and those of a grade masks were
given for, are expected to have a mask (a WARNING names the others).

CityScapes: masks are scored at the label's full resolution (as inference writes them, 2048 x 1024
on the real data), whereas the bundles' evaluation scores the network's 256 x 128 output, as the
paper does: the overlap metrics of the same model differ slightly, and HD95 (in pixels) scales with
the resolution (8x on the real data); compare ``score`` results with ``score`` results.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import check_writable
from ..data import get_spec, scan_cases
from ..data.brats import GRADES as BRATS_GRADES
from ..data.checker import fractional_values
from ..data.files import UnreadableFile, load_png, load_volume, voxel_spacing
from ..data.layout import nnunet_layout_note, visible_entries
from ..data.ops import binarize
from ..metrics import summarize
from ..progress import progress_bar
from .case_metrics import score_case, scored_with, write_case_metrics
from .flags import as_bool
from .infer import stopped_inference_note

__all__ = ["score", "score_predictions"]

log = logging.getLogger("pam_monai")

_VOLUME_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd")
_OUR_SUFFIXES = ("_seg", "_vehicles")


def _case_of(name: str, volumetric: bool) -> str | None:
    """The case ID of a mask file name, None for other files (probability maps, records)."""
    endings = _VOLUME_ENDINGS if volumetric else (".png",)
    ending = next((e for e in endings if name.lower().endswith(e)), None)
    if ending is None or name.startswith("."):
        return None
    stem = name[: -len(ending)]
    if stem.endswith("_prob"):
        return None
    for suffix in _OUR_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _fractional(pred: np.ndarray) -> str | None:
    """The first few non-integer values of a mask, shown, or None when every value is an integer."""
    values = fractional_values(pred)
    return (
        ", ".join(f"{v:g}" for v in values[:3]) + (", ..." if values.size > 3 else "")
        if values.size
        else None
    )


def _read(path: Path, volumetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return load_volume(path) if volumetric else (load_png(path, label=True), None)
    except UnreadableFile as e:
        raise ValueError(f"score: {path}: {e}") from None


def score_predictions(
    predictions: str | os.PathLike,
    dataset: str = "brats",
    dataset_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    foreground_label: int | Sequence[int] | None = None,
    label_map: bool | None = None,
    empty_value: float | None = None,
    **scan_options,
) -> dict:
    """Score the masks in ``predictions`` against the labels under ``dataset_dir`` (see the module)
    and write ``metrics.csv`` and ``summary.json`` into ``output`` (default
    ``<predictions>/metrics``); returns the summary."""
    spec = get_spec(dataset, root=dataset_dir)
    fg, _ = spec.resolve_labels(foreground_label)
    folder = Path(predictions)
    if not folder.is_dir():
        raise FileNotFoundError(f"score: {folder}: no such folder of predicted masks")
    stopped = stopped_inference_note(folder)
    if stopped:
        log.warning("score: %s", stopped)
    masks = {}
    for path in visible_entries(folder):
        case = _case_of(path.name, spec.volumetric) if path.is_file() else None
        if case is not None:
            if case in masks:
                raise ValueError(
                    f"score: {folder}: two masks of case {case!r}: {masks[case].name}, {path.name}"
                )
            masks[case] = path
    if not masks:
        kind = "<case>_seg.nii.gz (.nii, .mha, .nrrd)" if spec.volumetric else "<case>_seg.png"
        raise ValueError(f"score: {folder}: no mask file ({kind}, or nnU-Net's <case> naming)")
    if spec.name == "brats" and "grades" not in scan_options:
        scan_options = {**scan_options, "grades": BRATS_GRADES}  # masks of LGG cases too (inference's)
    scans = [scan_options]
    if spec.name == "nnunet" and "subset" not in scan_options and (Path(dataset_dir) / "labelsTs").is_dir():
        scans.append({**scan_options, "subset": "imagesTs"})  # a test set's labels
    found = [
        c for options in scans for c in scan_cases(spec, dataset_dir, **options).cases if c.label is not None
    ]
    labels = {c.case: c.label for c in found}
    # the cases expected to have a mask: BRATS, those of the grades masks were given for (HGG at least)
    grades = {c.group for c in found if c.case in masks} | {"HGG"}
    expected = {c.case for c in found if spec.name != "brats" or c.group in grades}
    unknown = sorted(set(masks) - set(labels))
    if unknown:
        images = [u for u in unknown if re.fullmatch(r"(.+)_\d{4}", u) and u[:-5] in labels]
        note = None if labels else nnunet_layout_note(spec.name, dataset_dir)  # --dataset left at brats
        hint = (
            f"; {', '.join(images[:3])}{', ...' if len(images) > 3 else ''} look like images (<case>_XXXX), "
            "not masks"
            if images
            else f"; {note}"
            if note
            else ": another data set or split?"
        )
        raise ValueError(
            f"score: {len(unknown)} mask(s) in {folder} have no labelled case in {dataset_dir} "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}){hint}"
        )
    unscored = sorted(expected - set(masks))
    if unscored:  # a WARNING: a comparison over fewer cases than another is no comparison
        log.warning(
            "score: %d labelled case(s) of %s have no mask in %s (not scored): %s",
            len(unscored),
            dataset_dir,
            folder,
            ", ".join(unscored[:10]) + (", ..." if len(unscored) > 10 else ""),
        )
    if spec.name == "cityscapes":
        log.info("score: CityScapes masks are scored at the labels' full resolution (evaluation: 256 x 128)")
    rows, skipped, values, no_label = [], [], set(), []
    for case in progress_bar(sorted(masks), desc="score", unit="case"):
        label_path, mask_path = labels[case], masks[case]
        label, affine = _read(label_path, spec.volumetric)
        pred, pred_affine = _read(mask_path, spec.volumetric)
        if pred.shape != label.shape or (
            affine is not None and not np.allclose(pred_affine, affine, atol=1e-3)
        ):
            what = f"shape {pred.shape}" if pred.shape != label.shape else "affine"
            raise ValueError(
                f"score: {mask_path}: {what} differs from its label {label_path} (shape {label.shape}): a mask must "
                "lie on its label's grid"
            )
        fractional = _fractional(pred)
        if fractional is not None:  # neither reading of a label map fits: non-zero would be foreground
            raise ValueError(
                f"score: {mask_path}: non-integer values ({fractional}), where a mask holds integer labels: a "
                "probability map? score the mask cut from it (inference writes <case>_seg beside <case>_prob; "
                "ensemble too)"
            )
        if (
            label_map is None
        ):  # the two readings differ unless a binary mask (one value, 1 or 255) or targets only
            present = {float(v) for v in np.unique(pred)} - {0.0}
            if not (present <= {1.0} or present <= {255.0} or present <= {float(v) for v in fg}):
                raise ValueError(
                    f"score: {mask_path}: values {', '.join(f'{v:g}' for v in sorted(present)[:5])}, where a binary "
                    f"mask holds one (1 or 255) and the target is {list(fg)}: a label map (nnU-Net's output)? pass "
                    "--label_map true to score its target labels, or --label_map false to count every non-zero "
                    "value as foreground"
                )
        foreground = np.isin(pred, fg) if label_map else np.asarray(pred) != 0
        if label_map:
            present = np.unique(pred)
            values.update(int(v) for v in present[:16])
            if present.any() and not foreground.any():
                no_label.append(case)
        # the evaluator's scoring, on the label's own grid already (no crop to undo)
        target = binarize(label, fg, spec.ignore_label)
        scores = score_case(
            foreground, target, spacing=voxel_spacing(affine, label.ndim), empty_value=empty_value
        )
        if scores is None:  # nothing annotated
            skipped.append(case)
            continue
        rows.append({"case": case, **scores})
    if label_map and no_label and len(no_label) == len(masks) and values <= {0, 1, 255}:
        raise ValueError(
            f"score: --label_map: no mask holds a foreground label {list(fg)}, their values are "
            f"{sorted(values)}: binary masks? (without --label_map any non-zero value is foreground)"
        )
    if no_label:
        log.warning(
            "score: label maps without a foreground label %s but other labels: %s",
            list(fg),
            ", ".join(no_label),
        )
    if skipped:
        log.warning("score: no annotated voxel (all 'ignore'), not scored: %s", ", ".join(skipped))
    if not rows:
        raise ValueError(f"score: none of the {len(masks)} masks' cases has an annotated voxel")
    # what makes two folders' figures comparable, for ``python -m pam_monai compare``
    settings = scored_with(spec, foreground_label, empty_value)
    out = Path(output) if output is not None else folder / "metrics"
    return write_case_metrics(rows, out, {**summarize(rows), "scored_with": settings})


def score(
    predictions: str,
    dataset: str = "brats",
    dataset_dir: str | None = None,
    output: str | None = None,
    foreground_label=None,
    label_map: bool | None = None,
    empty_value: float | None = None,
) -> str:
    """Score a folder of predicted masks against a data set's labels with the bundles' evaluation
    rules (per-case IoU, Dice, HD95, FP and FN rates on each label's own grid) and write
    metrics.csv and summary.json.

    Args:
        predictions: folder of masks: <case>_seg.nii.gz (.nii, .mha, .nrrd; 2-D: <case>_seg.png,
            CityScapes <case>_vehicles.png) or nnU-Net's <case>.nii.gz / <case>.png.
        dataset: brats, isles, cityscapes or nnunet (own data; its dataset.json names the labels).
        dataset_dir: the data set's root (the labels).
        output: where metrics.csv and summary.json go (default <predictions>/metrics).
        foreground_label: the target's labels (values or own data's names), as in the bundles.
        label_map: true: the masks are label maps with the data set's label values (e.g. nnU-Net's
            multi-label output), the same foreground labels are taken; false, any non-zero value is
            foreground; by default non-zero is foreground, and masks with other values than 0, 1,
            255 and the target's are refused (say which reading is meant).
        empty_value: HD95 when exactly one mask is empty (default: the image diagonal).

    Returns:
        a line with the number of cases and where the tables went.
    """
    if dataset_dir is None:
        raise ValueError("score: pass --dataset_dir, the data set with the labels")
    # Fire gives all-digit folder names as numbers
    predictions, dataset_dir = str(predictions), str(dataset_dir)
    # written after every mask is scored: a folder that cannot take them is refused first
    out = check_writable(
        Path(str(output)) if output is not None else Path(predictions) / "metrics", "--output DIR"
    )
    summary = score_predictions(
        predictions,
        dataset,
        dataset_dir,
        out,
        foreground_label,
        None if label_map is None else as_bool(label_map),
        empty_value,
    )
    note = ""
    if str(dataset).lower() == "cityscapes":  # own data's spec needs its root: the name says enough
        note = " (CityScapes: at the labels' full resolution; the bundles' evaluation scores 256 x 128)"
    return f"{summary['count']} cases scored -> {out / 'metrics.csv'}, {out / 'summary.json'}{note}"
