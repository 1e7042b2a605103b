"""Overlap metrics per case: foreground IoU (Jaccard), Dice, FP rate and FN rate.

All four are ratios of voxel counts, so ``spacing`` does not change them; it is accepted for a
signature shared with :func:`pam_monai.metrics.hd95`. Inputs: see :mod:`pam_monai.metrics.masks`.

Empty masks (P = target foreground voxels, N = target background voxels):

- both empty: IoU = Dice = 1, FN rate = 0, FP rate = 0;
- one empty: IoU = Dice = 0 (no special case needed: the intersection is empty);
- FN rate = FN / P, and 0 when P = 0 (no lesion to miss);
- FP rate = FP / N, and 0 when N = 0 (then FP is 0 too).
"""

from __future__ import annotations

import numpy as np

from .masks import mask_pair

__all__ = ["confusion_counts", "iou", "dice", "fp_rate", "fn_rate"]


def confusion_counts(pred, target) -> tuple[int, int, int, int]:
    """Voxel counts ``(tp, fp, fn, tn)`` of a prediction against a target.

    Args:
        pred: predicted binary mask (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.

    Returns:
        ``(tp, fp, fn, tn)`` as Python ints.

    Example:
        >>> confusion_counts(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
        (1, 1, 1, 1)
    """
    a, b = mask_pair(pred, target)
    return _counts(a, b)


def _counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(a & b))
    n_pred, n_target = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    fp, fn = n_pred - tp, n_target - tp
    return tp, fp, fn, a.size - tp - fp - fn


def _ratio(num: int, den: int, if_zero: float) -> float:
    return num / den if den else if_zero


def iou(pred, target, spacing=None) -> float:
    """Foreground intersection over union (Jaccard index) ``TP / (TP + FP + FN)``.

    Args:
        pred: predicted binary mask, 2D or 3D (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.
        spacing: ignored (voxel-count ratio); accepted for a common signature.

    Returns:
        IoU in [0, 1]; 1.0 when both masks are empty.

    Example:
        >>> iou(np.array([1, 1, 0]), np.array([0, 1, 1]))
        0.3333333333333333
    """
    tp, fp, fn, _ = confusion_counts(pred, target)
    return _ratio(tp, tp + fp + fn, 1.0)


def dice(pred, target, spacing=None) -> float:
    """Dice coefficient ``2 TP / (2 TP + FP + FN)``.

    Args:
        pred: predicted binary mask, 2D or 3D (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.
        spacing: ignored (voxel-count ratio); accepted for a common signature.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty.

    Example:
        >>> dice(np.array([1, 1, 0]), np.array([0, 1, 1]))
        0.5
    """
    tp, fp, fn, _ = confusion_counts(pred, target)
    return _ratio(2 * tp, 2 * tp + fp + fn, 1.0)


def fp_rate(pred, target, spacing=None) -> float:
    """False-positive rate ``FP / N``, N = number of background voxels of the target.

    Args:
        pred: predicted binary mask, 2D or 3D (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.
        spacing: ignored (voxel-count ratio); accepted for a common signature.

    Returns:
        FP rate in [0, 1]; 0.0 when the target has no background voxel.

    Example:
        >>> fp_rate(np.array([1, 1, 0, 0]), np.array([0, 1, 0, 0]))
        0.3333333333333333
    """
    _, fp, _, tn = confusion_counts(pred, target)
    return _ratio(fp, fp + tn, 0.0)


def fn_rate(pred, target, spacing=None) -> float:
    """False-negative rate ``FN / P``, P = number of foreground voxels of the target.

    Args:
        pred: predicted binary mask, 2D or 3D (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.
        spacing: ignored (voxel-count ratio); accepted for a common signature.

    Returns:
        FN rate in [0, 1]; 0.0 when the target is empty (there is no lesion to miss).

    Example:
        >>> fn_rate(np.array([0, 1, 0, 0]), np.array([1, 1, 0, 0]))
        0.5
    """
    tp, _, fn, _ = confusion_counts(pred, target)
    return _ratio(fn, tp + fn, 0.0)
