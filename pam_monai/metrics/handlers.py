"""Ignite metric handlers (like ``monai.handlers.MeanDice``) for evaluators and bundles.

Bundle JSON, for example in an evaluator's ``key_val_metric``::

    {"_target_": "pam_monai.metrics.handlers.IoUHandler",
     "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}

``IoU``, ``HD95``, ``FPRate`` and ``FNRate`` are short aliases of the ``*Handler`` classes.
Per-case values go to ``engine.state.metric_details[name]`` when ``save_details`` is True.

Under ``torch.distributed`` each process scores its own cases and the mean is over all of them
(MONAI gathers the values). A loader whose ``DistributedSampler`` repeats cases to deal every
process as many (PyTorch's, or MONAI's with ``even_divisible=True``) or drops some
(``drop_last=True``) would make that mean count a case twice or not at all: such a loader is
refused when the run starts. Evaluate with ``monai.data.DistributedSampler(dataset,
even_divisible=False, shuffle=False)``, or with :class:`pam_monai.engines.CaseMetrics`, which counts
each case once under any sampler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
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

    def attach(self, engine: Engine, name: str) -> None:  # type: ignore[override]
        """Attach as MONAI's handlers do, and check the loader's sampler when each run starts."""
        super().attach(engine, name)
        engine.add_event_handler(Events.STARTED, _check_sampler, name)


def _check_sampler(engine: Engine, name: str) -> None:
    """Refuse a ``DistributedSampler`` that deals more or fewer cases than the data set holds: the
    gathered mean would count the repeated cases twice, or leave the dropped ones out."""
    loader = getattr(engine.state, "dataloader", None)
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, torch.utils.data.DistributedSampler):
        return
    dealt, cases = sampler.total_size, len(sampler.dataset)
    if dealt != cases:
        what = f"repeats {dealt - cases}" if dealt > cases else f"drops {cases - dealt}"
        raise ValueError(
            f"metric '{name}': the loader's DistributedSampler deals {dealt} cases for a data set of "
            f"{cases} (it {what}), so the mean over the processes would count cases twice or not at "
            "all; evaluate with monai.data.DistributedSampler(dataset, even_divisible=False, "
            "shuffle=False), or with pam_monai.engines.CaseMetrics"
        )


class _CountHandler(MaskMetricHandler):
    """A voxel-count ratio's handler: the arguments of :class:`MaskMetricHandler` but the name and
    the HD95 ones (``spacing`` and ``empty_value`` do not change a ratio of counts)."""

    metric_name: str

    def __init__(
        self,
        reduction=MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details=True,
        ignore: bool = False,
    ):
        super().__init__(
            self.metric_name,
            reduction=reduction,
            output_transform=output_transform,
            save_details=save_details,
            ignore=ignore,
        )


class IoUHandler(_CountHandler):
    """Mean foreground IoU over cases; arguments as :class:`MaskMetricHandler`."""

    metric_name = "iou"


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


class FPRateHandler(_CountHandler):
    """Mean FP rate (FP/N) over cases; arguments as :class:`MaskMetricHandler`."""

    metric_name = "fp_rate"


class FNRateHandler(_CountHandler):
    """Mean FN rate (FN/P) over cases; arguments as :class:`MaskMetricHandler`."""

    metric_name = "fn_rate"


IoU, HD95, FPRate, FNRate = IoUHandler, HD95Handler, FPRateHandler, FNRateHandler
