"""All metrics of one case at once, and a summary over cases that always counts empty cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .masks import as_mask, mask_pair, normalize_spacing, split_ignored
from .overlap import _counts, _ratio
from .surface import _check_spatial, _hd95

__all__ = ["METRIC_NAMES", "case_metrics", "split_ignored", "summarize"]

METRIC_NAMES = ("iou", "dice", "hd95", "fp_rate", "fn_rate")


def case_metrics(pred, target, spacing=None, empty_value: float | None = None, annotated=None) -> dict:
    """IoU, Dice, HD95, FP rate and FN rate of one case, with its empty-mask flags.

    Same values as the single functions (:func:`pam_monai.metrics.iou`, ...), with the masks
    converted and counted once.

    Args:
        pred: predicted binary mask, 2D or 3D (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.
        spacing: voxel spacing for HD95, a number or one value per axis (default 1.0).
        empty_value: HD95 when exactly one mask is empty (``None`` -> image diagonal).
        annotated: optional mask of the annotated voxels (sparse annotations, see
            :func:`split_ignored`): the metrics are those of the annotated voxels alone, as
            nnU-Net scores data with an ``ignore`` label: a predicted voxel outside them is neither
            a false nor a true positive, and they are not in the FP rate's negatives; HD95 is
            between the surfaces of the two masks restricted to them.

    Returns:
        ``{"iou", "dice", "hd95", "fp_rate", "fn_rate": float, "target_empty", "pred_empty": bool}``,
        a row for :func:`summarize`.

    Example:
        >>> a = np.zeros((6, 6)); a[1:3, 1:3] = 1
        >>> row = case_metrics(a, a)
        >>> row["iou"], row["hd95"], row["target_empty"]
        (1.0, 0.0, False)
    """
    a, b = mask_pair(pred, target)
    _check_spatial(a.shape)
    sp = normalize_spacing(spacing, a.ndim)
    unannotated = 0
    if annotated is not None:
        valid = as_mask(annotated)
        if valid.shape != a.shape:
            raise ValueError(f"annotated mask has shape {valid.shape}, the masks {a.shape}")
        a, b = a & valid, b & valid
        unannotated = int(valid.size - np.count_nonzero(valid))
    tp, fp, fn, tn = _counts(a, b)
    tn -= unannotated  # those voxels are background in both masks now, but not negatives
    return {
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "hd95": _hd95(a, b, sp, empty_value),
        "fp_rate": _ratio(fp, fp + tn, 0.0),
        "fn_rate": _ratio(fn, tp + fn, 0.0),
        "target_empty": tp + fn == 0,
        "pred_empty": tp + fp == 0,
    }


def summarize(rows: Sequence[Mapping] | Mapping[str, Sequence], metrics: Sequence[str] | None = None) -> dict:
    """Mean, std, median and count of each metric over cases, plus how many cases were empty.

    Args:
        rows: per-case rows as returned by :func:`case_metrics` (a list of dicts), or a dict of
            equal-length per-case sequences. Both forms must carry the boolean ``target_empty``
            and ``pred_empty`` of every case, so that no summary hides empty cases.
        metrics: metric keys to summarise; default: those of :data:`METRIC_NAMES` present.

    Returns:
        ``{"count": n, "target_empty": k, "pred_empty": m, "both_empty": j,
        metric: {"mean", "std", "median", "count"}}``; ``std`` is the population standard
        deviation (``ddof=0``).

    Raises:
        ValueError: on no cases, missing empty flags, unequal lengths, a metric the rows lack or
            whose values are not numbers, or a NaN/inf value (the project's metrics never produce
            one; a mean must not silently skip a case).

    Example:
        >>> s = summarize([{"iou": 1.0, "target_empty": True, "pred_empty": True},
        ...                {"iou": 0.5, "target_empty": False, "pred_empty": False}])
        >>> s["iou"]["mean"], s["target_empty"]
        (0.75, 1)
    """
    if isinstance(rows, Mapping):
        columns = {k: list(v) for k, v in rows.items()}
    else:
        rows = list(rows)
        if not rows:  # else the check below would ask for flags of cases there are none of
            raise ValueError("nothing to summarise: no cases.")
        keys = set().union(*(r.keys() for r in rows))
        missing = [k for k in keys if any(k not in r for r in rows)]
        if missing:
            raise ValueError(f"every row needs the same keys; missing somewhere: {sorted(missing)}.")
        columns = {k: [r[k] for r in rows] for k in keys}
    for flag in ("target_empty", "pred_empty"):
        if flag not in columns:
            raise ValueError(f"rows must carry '{flag}' for every case (see case_metrics).")
    n = len(columns["target_empty"])
    if n == 0:
        raise ValueError("nothing to summarise: no cases.")
    if any(len(v) != n for v in columns.values()):
        raise ValueError("all per-case sequences must have the same length.")
    names = [m for m in METRIC_NAMES if m in columns] if metrics is None else list(metrics)
    target_empty = np.asarray(columns["target_empty"], dtype=bool)
    pred_empty = np.asarray(columns["pred_empty"], dtype=bool)
    out: dict = {
        "count": n,
        "target_empty": int(target_empty.sum()),
        "pred_empty": int(pred_empty.sum()),
        "both_empty": int((target_empty & pred_empty).sum()),
    }
    absent = [m for m in names if m not in columns]
    if absent:
        raise ValueError(f"no per-case values of {absent}; the rows hold {sorted(columns)}.")
    for name in names:
        try:
            values = np.asarray(columns[name], dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"'{name}' holds values that are not numbers: {columns[name][:5]!r}.") from None
        if not np.all(np.isfinite(values)):
            raise ValueError(f"'{name}' has NaN or inf values: {int((~np.isfinite(values)).sum())} cases.")
        out[name] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "median": float(np.median(values)),
            "count": int(values.size),
        }
    return out
