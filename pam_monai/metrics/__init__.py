"""Honest per-case segmentation metrics: IoU, Dice, HD95, FP rate, FN rate.

The five metric functions (``iou``, ``dice``, ``hd95``, ``fp_rate``, ``fn_rate``) take
``(pred, target, spacing=None)``: binary 2D or 3D masks as numpy arrays or torch tensors of any
dtype (foreground = value > 0.5, i.e. the non-zero voxels of a binary or label mask), and return a
float. HD95 is the symmetric surface HD95 of the medpy convention in physical units (``spacing``
per axis, default 1.0); the other metrics are ratios of voxel counts.

Empty-mask rule (BraTS 2023 evaluation; a missed lesion never improves a mean; never NaN/inf):

================================  =====  =====  ==============  ========  ========
case                              IoU    Dice   HD95            FP rate   FN rate
================================  =====  =====  ==============  ========  ========
both masks empty                  1      1      0               0         0
target empty, prediction not      0      0      empty_value     FP / N    0
prediction empty, target not      0      0      empty_value     0         1
================================  =====  =====  ==============  ========  ========

``empty_value`` defaults to the image diagonal in physical units, ``sqrt(sum((n_i s_i)^2))``
(373.13 for 155x240x240 at 1 mm), longer than any distance inside the image. FP rate = FP / N
(N = target background voxels, 0 when N = 0); FN rate = FN / P (P = target foreground voxels,
0 when P = 0: no lesion to miss). See README.md in this folder.

Example:
    >>> import numpy as np
    >>> from pam_monai.metrics import iou, hd95
    >>> a = np.zeros((10, 10)); a[2:6, 2:6] = 1
    >>> b = np.zeros((10, 10)); b[2:6, 3:7] = 1
    >>> iou(a, b), hd95(a, b, spacing=(1.0, 0.5))
    (0.6, 0.5)
"""

from .masks import as_mask, image_diagonal
from .monai_metrics import FNRateMetric, FPRateMetric, HD95Metric, IoUMetric, MaskMetric
from .overlap import confusion_counts, dice, fn_rate, fp_rate, iou
from .summary import METRIC_NAMES, case_metrics, split_ignored, summarize
from .surface import directed_surface_distances, hd95

__all__ = [
    "METRIC_NAMES",
    "as_mask",
    "case_metrics",
    "split_ignored",
    "confusion_counts",
    "dice",
    "directed_surface_distances",
    "fn_rate",
    "fp_rate",
    "hd95",
    "image_diagonal",
    "iou",
    "summarize",
    "MaskMetric",
    "IoUMetric",
    "HD95Metric",
    "FPRateMetric",
    "FNRateMetric",
]
