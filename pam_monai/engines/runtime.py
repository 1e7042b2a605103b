"""Re-exports of names now in config_checks, error_report, fast_path, flags, process_settings, tracking, workflow."""

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
    log,
    refuse_training_with,
)
from .error_report import show_error_cause
from .fast_path import compile_by_default, fast_network, use_fast_norm
from .flags import as_bool
from .process_settings import kept_process_settings, run_every_step, setup_run
from .tracking import prepare_tracking_store
from .workflow import bundle_root, config_as_given

__all__ = [
    "as_bool",
    "bundle_root",
    "check_compile_mode",
    "check_device",
    "check_evaluate_json_layered",
    "check_inference_tracking",
    "check_network_channels",
    "check_outputs",
    "check_override_ids",
    "check_schedule",
    "check_single_process",
    "check_training_settings",
    "compile_by_default",
    "config_as_given",
    "fast_network",
    "kept_process_settings",
    "log",
    "prepare_tracking_store",
    "refuse_training_with",
    "run_every_step",
    "setup_run",
    "show_error_cause",
    "use_fast_norm",
]
