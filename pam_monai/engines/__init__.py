"""The pieces the bundles' workflows are built from: data preparation, batch preparation,
training loaders, slice-wise inference, per-case metrics, checkpoints, progress and run set-up."""

from ..atomic import atomic_write_text
from ..runlock import RunLockError, hold_training_lock, release_training_locks
from .batch import FlipPrepareBatch
from .case_metrics import CaseMetrics
from .checkpoint import (
    BestCheckpoint,
    TrainingCheckpoint,
    atomic_save,
    check_run,
    check_weights,
    load_checkpoint,
    load_weights,
)
from .cleanup import CloseWritersOnError, ReleaseTrainingLocksOnError, close_writers
from .config_checks import (
    check_compile_mode,
    check_device,
    check_evaluate_json_layered,
    check_inference_tracking,
    check_network_channels,
    check_outputs,
    check_override_ids,
    check_schedule,
    check_single_process,
    check_training_settings,
    refuse_training_with,
)
from .data import CaseDataset, prepare_data, voxel_spacing
from .distributed import RankZeroBuffers, StopEveryProcessOnError, handlers_of_rank
from .error_report import show_error_cause
from .fast_path import compile_by_default, fast_network
from .flags import as_bool
from .infer import (
    CasePredictor,
    find_inference_cases,
    inference_spec,
    input_problems,
    recorded,
    recorded_intensity,
    safe_output_path,
    validate_case,
)
from .inferer import SliceWiseInferer
from .loaders import DeviceSliceLoader, LoaderEpoch, batch_samples, slice_loader
from .postprocessing import ForegroundMaskd, foreground_mask
from .process_settings import kept_process_settings, setup_run
from .progress import ProgressBar
from .termination import StopOnTerminate, Terminated, stop_on_terminate
from .tracking import (
    TensorBoardStatsHandler,
    TrackingEvery,
    hold_executed_config,
    prepare_tracking_store,
    save_executed_config,
)
from .training import (
    Bf16WithoutLossScaling,
    DecollateKeepingLoss,
    EveryIterations,
    IgnoredVoxelsCheck,
    NonFiniteLossGuard,
    TrainingPlan,
    loss_of,
)
from .workflow import bundle_root, config_as_given

__all__ = [
    "RunLockError",
    "hold_training_lock",
    "release_training_locks",
    "BestCheckpoint",
    "CaseDataset",
    "Bf16WithoutLossScaling",
    "CaseMetrics",
    "CloseWritersOnError",
    "CasePredictor",
    "DecollateKeepingLoss",
    "DeviceSliceLoader",
    "EveryIterations",
    "FlipPrepareBatch",
    "ForegroundMaskd",
    "IgnoredVoxelsCheck",
    "LoaderEpoch",
    "NonFiniteLossGuard",
    "ProgressBar",
    "RankZeroBuffers",
    "ReleaseTrainingLocksOnError",
    "SliceWiseInferer",
    "StopEveryProcessOnError",
    "StopOnTerminate",
    "TensorBoardStatsHandler",
    "Terminated",
    "TrainingCheckpoint",
    "TrackingEvery",
    "TrainingPlan",
    "as_bool",
    "batch_samples",
    "bundle_root",
    "atomic_save",
    "atomic_write_text",
    "check_compile_mode",
    "close_writers",
    "handlers_of_rank",
    "stop_on_terminate",
    "check_device",
    "check_evaluate_json_layered",
    "check_network_channels",
    "check_outputs",
    "check_override_ids",
    "check_schedule",
    "check_run",
    "check_inference_tracking",
    "check_single_process",
    "check_training_settings",
    "check_weights",
    "compile_by_default",
    "config_as_given",
    "fast_network",
    "kept_process_settings",
    "prepare_tracking_store",
    "hold_executed_config",
    "save_executed_config",
    "refuse_training_with",
    "find_inference_cases",
    "inference_spec",
    "input_problems",
    "recorded",
    "recorded_intensity",
    "foreground_mask",
    "load_checkpoint",
    "load_weights",
    "loss_of",
    "prepare_data",
    "safe_output_path",
    "setup_run",
    "show_error_cause",
    "slice_loader",
    "validate_case",
    "voxel_spacing",
]
