"""The pieces the bundles' workflows are built from: data preparation, batch preparation,
training loaders, slice-wise inference, per-case metrics, checkpoints, progress and run set-up."""

from ..atomic import atomic_write_text
from .batch import FlipPrepareBatch
from .checkpoint import (
    BestCheckpoint,
    TrainingCheckpoint,
    atomic_save,
    check_run,
    check_weights,
    load_checkpoint,
)
from .data import CaseDataset, prepare_data, voxel_spacing
from .handlers import (
    CaseMetrics,
    DecollateKeepingLoss,
    EveryIterations,
    IgnoredVoxelsCheck,
    NonFiniteLossGuard,
    RankZeroBuffers,
    TrainingPlan,
    loss_of,
)
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
from .progress import ProgressBar
from .runtime import (
    as_bool,
    bundle_root,
    check_device,
    check_network_channels,
    check_outputs,
    check_override_ids,
    check_schedule,
    check_single_process,
    check_training_settings,
    compile_by_default,
    fast_network,
    refuse_training_with,
    setup_run,
)

__all__ = [
    "BestCheckpoint",
    "CaseDataset",
    "CaseMetrics",
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
    "SliceWiseInferer",
    "TrainingCheckpoint",
    "TrainingPlan",
    "as_bool",
    "batch_samples",
    "bundle_root",
    "atomic_save",
    "atomic_write_text",
    "check_device",
    "check_network_channels",
    "check_outputs",
    "check_override_ids",
    "check_schedule",
    "check_run",
    "check_single_process",
    "check_training_settings",
    "check_weights",
    "compile_by_default",
    "fast_network",
    "refuse_training_with",
    "find_inference_cases",
    "inference_spec",
    "input_problems",
    "recorded",
    "recorded_intensity",
    "foreground_mask",
    "load_checkpoint",
    "loss_of",
    "prepare_data",
    "safe_output_path",
    "setup_run",
    "slice_loader",
    "validate_case",
    "voxel_spacing",
]
