"""MONAI ``CumulativeIterationMetric`` classes over the per-case metrics, for loops and Ignite.

Each sample (and each channel) of a batch is one case: ``y_pred`` and ``y`` are ``B x C x
spatial`` tensors (or lists of ``C x spatial`` tensors), binary or probabilities (foreground =
value > 0.5), usually ``C = 1``. Every channel is scored as its own binary mask, so drop a
background channel before. Values follow the package's empty-mask rule, so they are never NaN
and ``aggregate()`` is a plain mean over every sample: a missed lesion is counted, not skipped.
With ``ignore=True`` the reference may mark unannotated voxels (:data:`pam_monai.data.ops.IGNORE`,
sparse annotations, as :class:`~pam_monai.data.transforms.BinarizeLabeld` writes them): each sample
is scored over its annotated voxels (:func:`~pam_monai.metrics.case_metrics`), and one without any
annotated voxel is NaN, which MONAI's reductions leave out. Without it (the default) every value
> 0.5 is foreground, so a label map (values 1, 2, ...) scores as the functions do.

Example:
    >>> import torch
    >>> m = IoUMetric()
    >>> _ = m(torch.tensor([[[[1.0, 1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0, 1.0]]]]))
    >>> round(m.aggregate().item(), 4)
    0.3333
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction, prepare_spacing
from monai.utils import MetricReduction

from .masks import split_ignored
from .overlap import dice, fn_rate, fp_rate, iou
from .summary import case_metrics
from .surface import hd95

__all__ = ["MaskMetric", "IoUMetric", "HD95Metric", "FPRateMetric", "FNRateMetric"]

_FUNCTIONS = {"iou": iou, "dice": dice, "hd95": hd95, "fp_rate": fp_rate, "fn_rate": fn_rate}


class MaskMetric(CumulativeIterationMetric):
    """One per-case metric (``"iou" | "dice" | "hd95" | "fp_rate" | "fn_rate"``) over batches.

    Args:
        metric_name: which metric of :mod:`pam_monai.metrics` to compute.
        spacing: voxel spacing for ``"hd95"``: a number, one value per spatial axis, or one such
            value per sample (as in MONAI's ``HausdorffDistanceMetric``); default 1.0. A
            ``spacing`` keyword given to a call overrides it for that call.
        empty_value: HD95 when exactly one mask is empty; ``None`` -> image diagonal.
        reduction: MONAI reduction for :meth:`aggregate` (``"mean"``, ``"mean_batch"``,
            ``"none"``, ...).
        ignore: the reference marks unannotated voxels with ``IGNORE`` (2): score the annotated
            voxels only (own data with nnU-Net's ``ignore`` label).

    Example:
        >>> import torch
        >>> m = MaskMetric("fn_rate")
        >>> m(torch.tensor([[[0.9, 0.2]]]), torch.tensor([[[1.0, 1.0]]])).tolist()
        [[0.5]]
    """

    def __init__(
        self,
        metric_name: str,
        spacing=None,
        empty_value: float | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        ignore: bool = False,
    ) -> None:
        super().__init__()
        if metric_name not in _FUNCTIONS:
            raise ValueError(f"metric_name must be one of {sorted(_FUNCTIONS)}, got {metric_name!r}.")
        if metric_name != "hd95" and empty_value is not None:
            raise ValueError("empty_value only applies to metric_name='hd95'.")
        self.metric_name = metric_name
        self.spacing = spacing
        self.empty_value = empty_value
        self.reduction = reduction
        self.ignore = bool(ignore)

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if y is None:
            raise ValueError("y (the reference masks) is required.")
        if y_pred.shape != y.shape or y_pred.ndim < 3:
            raise ValueError(
                f"y_pred and y must both be B x C x spatial, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        fn = _FUNCTIONS[self.metric_name]
        extra = {"empty_value": self.empty_value} if self.metric_name == "hd95" else {}
        batch, channels = y_pred.shape[:2]
        spacings = prepare_spacing(
            _float_spacing(kwargs.get("spacing", self.spacing)), batch, y_pred.ndim - 2
        )
        pred, ref = y_pred.detach().cpu(), y.detach().cpu()
        out = np.empty((batch, channels))
        for b, c in np.ndindex(batch, channels):
            target, annotated = split_ignored(ref[b, c]) if self.ignore else (ref[b, c], None)
            if annotated is None:
                out[b, c] = fn(pred[b, c], ref[b, c], spacing=spacings[b], **extra)
            elif not annotated.any():
                out[b, c] = np.nan  # nothing annotated: not scored
            else:
                row = case_metrics(pred[b, c], target, spacings[b], self.empty_value, annotated=annotated)
                out[b, c] = row[self.metric_name]
        return torch.as_tensor(out, dtype=torch.float32, device=y_pred.device)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        """Reduce every value collected so far (default: their mean).

        Args:
            reduction: overrides ``self.reduction`` for this call.

        Returns:
            The reduced tensor (a 0-d tensor for ``"mean"``).
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"nothing to aggregate: the buffer is {data!r}; call the metric first.")
        value, _ = do_metric_reduction(data.clone(), reduction or self.reduction)
        return value


def _float_spacing(spacing):
    """``spacing`` with every number a Python float, for MONAI's ``prepare_spacing``, which refuses
    a sequence mixing ``int`` and ``float`` (``(1, 1, 2.5)``) and tensors; the functions take both."""
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    if isinstance(spacing, np.ndarray):
        return spacing.astype(float).tolist()
    if isinstance(spacing, (int, float, np.number)) and not isinstance(spacing, bool):
        return float(spacing)
    if isinstance(spacing, (list, tuple)):
        return [_float_spacing(s) for s in spacing]
    return spacing


class IoUMetric(MaskMetric):
    """Foreground IoU (Jaccard) per sample; see :class:`MaskMetric`."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, ignore: bool = False) -> None:
        super().__init__("iou", reduction=reduction, ignore=ignore)


class HD95Metric(MaskMetric):
    """Symmetric surface HD95 (physical units) per sample; see :class:`MaskMetric`."""

    def __init__(
        self,
        spacing=None,
        empty_value: float | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        ignore: bool = False,
    ) -> None:
        super().__init__("hd95", spacing=spacing, empty_value=empty_value, reduction=reduction, ignore=ignore)


class FPRateMetric(MaskMetric):
    """False-positive rate FP/N per sample; see :class:`MaskMetric`."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, ignore: bool = False) -> None:
        super().__init__("fp_rate", reduction=reduction, ignore=ignore)


class FNRateMetric(MaskMetric):
    """False-negative rate FN/P per sample; see :class:`MaskMetric`."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, ignore: bool = False) -> None:
        super().__init__("fn_rate", reduction=reduction, ignore=ignore)
