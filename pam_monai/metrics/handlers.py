"""Ignite metric handlers (like ``monai.handlers.MeanDice``) for evaluators and bundles.

Bundle JSON, for example in an evaluator's ``key_val_metric``::

    {"_target_": "pam_monai.metrics.handlers.IoUHandler",
     "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}

``IoU``, ``HD95``, ``FPRate`` and ``FNRate`` are short aliases of the ``*Handler`` classes.
Per-case values go to ``engine.state.metric_details[name]`` when ``save_details`` is True.
"""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers import IgniteMetricHandler
from monai.utils import MetricReduction

from .monai_metrics import MaskMetric

__all__ = [
    "MaskMetricHandler",
    "IoUHandler",
    "HD95Handler",
    "FPRateHandler",
    "FNRateHandler",
    "IoU",
    "HD95",
    "FPRate",
    "FNRate",
]


class MaskMetricHandler(IgniteMetricHandler):
    """Ignite handler for one :class:`~pam_monai.metrics.MaskMetric`.

    Args:
        metric_name: ``"iou" | "dice" | "hd95" | "fp_rate" | "fn_rate"``.
        spacing: voxel spacing for HD95 (see :class:`~pam_monai.metrics.MaskMetric`).
        empty_value: HD95 when exactly one mask is empty; ``None`` -> image diagonal.
        reduction: MONAI reduction of the collected values (default ``"mean"``).
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: store per-case values in ``engine.state.metric_details``.
        ignore: the label marks unannotated voxels (``IGNORE``): score the annotated ones only.

    Example:
        >>> from monai.handlers import from_engine
        >>> handler = MaskMetricHandler("dice", output_transform=from_engine(["pred", "label"]))
    """

    def __init__(
        self,
        metric_name: str,
        spacing=None,
        empty_value: float | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        ignore: bool = False,
    ) -> None:
        metric_fn = MaskMetric(
            metric_name, spacing=spacing, empty_value=empty_value, reduction=reduction, ignore=ignore
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class IoUHandler(MaskMetricHandler):
    """Mean foreground IoU over cases; arguments as :class:`MaskMetricHandler`."""

    def __init__(
        self,
        reduction=MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details=True,
        ignore: bool = False,
    ):
        super().__init__(
            "iou",
            reduction=reduction,
            output_transform=output_transform,
            save_details=save_details,
            ignore=ignore,
        )


class HD95Handler(MaskMetricHandler):
    """Mean symmetric surface HD95 over cases; arguments as :class:`MaskMetricHandler`."""

    def __init__(
        self,
        spacing=None,
        empty_value: float | None = None,
        reduction=MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details=True,
        ignore: bool = False,
    ):
        super().__init__("hd95", spacing, empty_value, reduction, output_transform, save_details, ignore)


class FPRateHandler(MaskMetricHandler):
    """Mean FP rate (FP/N) over cases; arguments as :class:`MaskMetricHandler`."""

    def __init__(
        self,
        reduction=MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details=True,
        ignore: bool = False,
    ):
        super().__init__(
            "fp_rate",
            reduction=reduction,
            output_transform=output_transform,
            save_details=save_details,
            ignore=ignore,
        )


class FNRateHandler(MaskMetricHandler):
    """Mean FN rate (FN/P) over cases; arguments as :class:`MaskMetricHandler`."""

    def __init__(
        self,
        reduction=MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details=True,
        ignore: bool = False,
    ):
        super().__init__(
            "fn_rate",
            reduction=reduction,
            output_transform=output_transform,
            save_details=save_details,
            ignore=ignore,
        )


IoU, HD95, FPRate, FNRate = IoUHandler, HD95Handler, FPRateHandler, FNRateHandler
