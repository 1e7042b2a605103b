"""Re-exports of names now in case_metrics, cleanup, distributed, termination, tracking, training."""

from .case_metrics import METRICS, METRICS_LOCK, CaseMetrics, log, score_case, write_case_metrics
from .cleanup import CloseWritersOnError, ReleaseTrainingLocksOnError, clean_up_on_error, close_writers
from .distributed import RankZeroBuffers, StopEveryProcessOnError, handlers_of_rank
from .termination import (
    StopOnTerminate,
    Terminated,
    raise_terminated_on_sigterm,
    stop_on_terminate,
    take_held_sigterm,
)
from .tracking import TensorBoardStatsHandler, TrackingEvery
from .training import (
    Bf16WithoutLossScaling,
    DecollateKeepingLoss,
    EveryIterations,
    IgnoredVoxelsCheck,
    NonFiniteLossGuard,
    TrainingPlan,
    loss_of,
)

__all__ = [
    "METRICS",
    "METRICS_LOCK",
    "Bf16WithoutLossScaling",
    "CaseMetrics",
    "CloseWritersOnError",
    "DecollateKeepingLoss",
    "EveryIterations",
    "IgnoredVoxelsCheck",
    "NonFiniteLossGuard",
    "RankZeroBuffers",
    "ReleaseTrainingLocksOnError",
    "StopEveryProcessOnError",
    "StopOnTerminate",
    "TensorBoardStatsHandler",
    "Terminated",
    "TrackingEvery",
    "TrainingPlan",
    "clean_up_on_error",
    "close_writers",
    "handlers_of_rank",
    "log",
    "loss_of",
    "raise_terminated_on_sigterm",
    "score_case",
    "stop_on_terminate",
    "take_held_sigterm",
    "write_case_metrics",
]
