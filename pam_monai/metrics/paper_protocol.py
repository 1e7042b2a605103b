"""PAPER PROTOCOL, for comparison only: per-2D-slice metrics averaged over slices.

The paper (Tables 5 and 6) reports means over 2D slices, not per-case values. This module
gives that aggregation twice, so a result can be set beside the paper's numbers:

- :func:`paper_protocol_metrics`: the project's honest definitions (:func:`case_metrics`,
  empty-mask rule included; HD95 with the in-plane spacing) applied to each slice, then
  summarised over slices.
- ``authors_code_*``: the definitions of the authors' public code (REFERENCE.md section 7),
  which are defective and NOT the project's metrics:

  - "IoU" = mean of background Dice and foreground Dice (a correct empty slice scores 0.5);
  - HD95 in pixels over all foreground pixels (not the surface), only for slices where both
    masks have more than one pixel; taken here with the same union-of-both-directions 95th
    percentile as :func:`~pam_monai.metrics.hd95` (the reference does not say which percentile
    convention);
  - FN rate of a slice without target foreground = 1.0; FP and FN rates are per-slice means.

Neither is comparable with per-case 3D metrics; report per-case metrics as the result.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .masks import as_mask, mask_pair, normalize_spacing
from .overlap import _counts, _ratio, fp_rate
from .summary import case_metrics, summarize

__all__ = [
    "paper_protocol_metrics",
    "authors_code_iou",
    "authors_code_hd95",
    "authors_code_fn_rate",
    "authors_code_metrics",
]


def _slices(pred, target, axis: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = mask_pair(pred, target)
    if a.ndim != 3:
        raise ValueError(f"expected a 3D volume (a stack of 2D slices), got shape {a.shape}.")
    return np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)


def paper_protocol_metrics(pred, target, axis: int = -1, spacing=None, annotated=None) -> dict:
    """Honest per-slice metrics of a volume, summarised over its 2D slices (paper protocol).

    Args:
        pred: predicted binary volume (numpy or torch, foreground = value > 0.5).
        target: reference binary volume of the same shape.
        axis: slice axis (-1: the last axis, axial for MONAI-loaded H x W x D volumes).
        spacing: 3D voxel spacing; the two in-plane values are used for HD95.
        annotated: optional mask of the annotated voxels (sparse annotations): each slice is
            scored over them (:func:`case_metrics`), slices without any are left out.

    Returns:
        :func:`summarize` over the slices: ``count`` (slices), ``target_empty`` and
        ``pred_empty`` (slices), and ``{"mean", "std", "median", "count"}`` per metric.

    Example:
        >>> v = np.zeros((4, 4, 3)); v[1:3, 1:3, 1] = 1
        >>> paper_protocol_metrics(v, v)["iou"]["mean"], paper_protocol_metrics(v, v)["target_empty"]
        (1.0, 2)
    """
    a, b = _slices(pred, target, axis)
    sp = normalize_spacing(spacing, 3)
    in_plane = sp[: axis % 3] + sp[axis % 3 + 1 :]
    if annotated is None:
        return summarize([case_metrics(p, t, spacing=in_plane) for p, t in zip(a, b)])
    valid = np.moveaxis(as_mask(annotated), axis, 0)
    return summarize(
        [case_metrics(p, t, spacing=in_plane, annotated=v) for p, t, v in zip(a, b, valid) if v.any()]
    )


def authors_code_iou(pred, target) -> float:
    """The authors' code's "IoU" of one slice: mean of background and foreground Dice. DEFECTIVE.

    Args:
        pred: predicted binary 2D mask.
        target: reference binary 2D mask.

    Returns:
        ``(Dice_bg + Dice_fg) / 2``, each Dice 0 when its denominator is 0.

    Example:
        >>> authors_code_iou(np.zeros((4, 4)), np.zeros((4, 4)))  # a correct empty slice
        0.5
    """
    tp, fp, fn, tn = _counts(*mask_pair(pred, target))
    return (_ratio(2 * tp, 2 * tp + fp + fn, 0.0) + _ratio(2 * tn, 2 * tn + fp + fn, 0.0)) / 2


def authors_code_hd95(pred, target) -> float | None:
    """The authors' code's HD95 of one slice: pixels, all foreground pixels. DEFECTIVE.

    Args:
        pred: predicted binary 2D mask.
        target: reference binary 2D mask.

    Returns:
        95th percentile of the union of both directed nearest-foreground-pixel distance sets,
        in pixels, or ``None`` (slice left out) unless both masks have more than one pixel.

    Example:
        >>> a = np.zeros((5, 5)); a[0, 0:2] = 1
        >>> b = np.zeros((5, 5)); b[4, 4] = 1
        >>> print(authors_code_hd95(a, b))  # the target has one pixel: slice left out
        None
    """
    a, b = mask_pair(pred, target)
    if np.count_nonzero(a) <= 1 or np.count_nonzero(b) <= 1:
        return None
    d = np.concatenate([ndimage.distance_transform_edt(~b)[a], ndimage.distance_transform_edt(~a)[b]])
    return float(np.percentile(d, 95))


def authors_code_fn_rate(pred, target) -> float:
    """The authors' code's FN rate of one slice: FN/P, and 1.0 when P = 0. DEFECTIVE.

    Args:
        pred: predicted binary 2D mask.
        target: reference binary 2D mask.

    Returns:
        FN / P, or 1.0 for a slice without target foreground.

    Example:
        >>> authors_code_fn_rate(np.zeros((3, 3)), np.zeros((3, 3)))
        1.0
    """
    tp, _, fn, _ = _counts(*mask_pair(pred, target))
    return _ratio(fn, tp + fn, 1.0)


def authors_code_metrics(pred, target, axis: int = -1, annotated=None) -> dict:
    """Per-slice means with the authors' code's definitions (paper protocol). DEFECTIVE.

    Args:
        pred: predicted binary volume (numpy or torch, foreground = value > 0.5).
        target: reference binary volume of the same shape.
        axis: slice axis (-1: the last axis).
        annotated: optional mask of the annotated voxels (sparse annotations): slices without any
            are left out (else each would score FN rate 1.0 and IoU 0.5), and the counts of the
            others are over their annotated pixels (unannotated pixels are no true negatives);
            HD95 is between the two masks restricted to them.

    Returns:
        ``{"slices", "authors_code_iou", "authors_code_hd95", "authors_code_hd95_slices",
        "authors_code_fp_rate", "authors_code_fn_rate"}``: means over slices; the HD95 mean
        is over its eligible slices only (``None`` when there is none).

    Example:
        >>> v = np.zeros((4, 4, 3)); v[1:3, 1:3, 1] = 1
        >>> authors_code_metrics(v, v)["authors_code_iou"]  # (0.5 + 1.0 + 0.5) / 3
        0.6666666666666666
    """
    a, b = _slices(pred, target, axis)
    pairs = counted = list(zip(a, b))
    if annotated is not None:
        valid = [v for v in np.moveaxis(as_mask(annotated), axis, 0)]
        if len(valid) != len(pairs) or valid[0].shape != a[0].shape:
            raise ValueError(f"annotated mask has shape {np.shape(annotated)}, the masks {np.shape(pred)}")
        keep = [k for k, v in enumerate(valid) if v.any()]
        pairs = [(a[k] & valid[k], b[k] & valid[k]) for k in keep]  # 2-D, for HD95
        counted = [(a[k][valid[k]], b[k][valid[k]]) for k in keep]  # the annotated pixels, for the counts
        if not keep:
            raise ValueError("authors_code_metrics: no slice with an annotated voxel")
    hds = [h for h in (authors_code_hd95(p, t) for p, t in pairs) if h is not None]
    return {
        "slices": len(pairs),
        "authors_code_iou": float(np.mean([authors_code_iou(p, t) for p, t in counted])),
        "authors_code_hd95": float(np.mean(hds)) if hds else None,
        "authors_code_hd95_slices": len(hds),
        "authors_code_fp_rate": float(np.mean([fp_rate(p, t) for p, t in counted])),
        "authors_code_fn_rate": float(np.mean([authors_code_fn_rate(p, t) for p, t in counted])),
    }
