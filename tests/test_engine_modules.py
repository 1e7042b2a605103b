"""The engines' module layout: the names that moved out of ``engines/handlers.py`` and
``engines/runtime.py`` are still importable from there (bundles shared before the split name them,
e.g. ``pam_monai.engines.handlers.CaseMetrics``), and every ``pam_monai`` name that the bundles'
configs reference resolves."""

import importlib
import json
import re

import pytest
from conftest import ROOT, resolve_dotted

# every public name these modules defined before they were split (git show 6b546f3:pam_monai/engines/...)
HANDLERS_NAMES = (
    "Bf16WithoutLossScaling",
    "CaseMetrics",
    "CloseWritersOnError",
    "DecollateKeepingLoss",
    "EveryIterations",
    "IgnoredVoxelsCheck",
    "METRICS",
    "METRICS_LOCK",
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
)
RUNTIME_NAMES = (
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
)


@pytest.mark.parametrize("module, names", [("handlers", HANDLERS_NAMES), ("runtime", RUNTIME_NAMES)])
def test_names_that_moved_are_still_importable_from_their_old_module(module, names):
    """Each is the object of the module that holds it now (a re-export, not a copy: a config that
    names the old path and code that names the new one get one class)."""
    old = importlib.import_module(f"pam_monai.engines.{module}")
    missing = [name for name in names if not hasattr(old, name)]
    assert not missing, f"pam_monai.engines.{module} lost {missing}"
    assert set(names) <= set(old.__all__), set(names) - set(old.__all__)
    for name in names:
        obj = getattr(old, name)
        home = getattr(obj, "__module__", None)
        if home is None or not callable(obj):  # a constant, the logger
            continue
        assert home != old.__name__, f"{name} is still defined in {old.__name__}"
        assert getattr(importlib.import_module(home), name) is obj, (name, home)


def _config_references() -> dict[str, set]:
    """Every ``pam_monai.<...>`` name in the bundles' configs and their templates, with the files."""
    files = sorted(ROOT.glob("bundles/*/configs/*.json")) + sorted(
        (ROOT / "pam_monai" / "bundle_templates").glob("*.json")
    )
    assert files
    found: dict[str, set] = {}
    for path in files:
        json.loads(path.read_text(encoding="utf-8"))  # a config, not any text
        for name in re.findall(r"\bpam_monai(?:\.\w+)+", path.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_pam_monai_name_in_the_bundles_configs_resolves():
    references = _config_references()
    assert "pam_monai.engines.CaseMetrics" in references  # the search finds what configs hold
    broken = {}
    for name, files in references.items():
        try:
            resolve_dotted(name)
        except (ImportError, AttributeError) as e:
            broken[name] = f"{sorted(files)[0]}: {type(e).__name__}: {e}"
    assert not broken, broken
