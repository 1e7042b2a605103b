"""Runner bookkeeping found in review: a refused call must not rewrite experiment.json, and a
failed run is reported by its root cause, not by MONAI's wrapper ("Failed to evaluate ConfigExpression")."""

from __future__ import annotations

import json

import pytest

from pam_monai.experiments import run_experiment
from pam_monai.experiments import runner as runner_module

TINY = {"features": [8, 16, 32, 64]}


def _finish(run, identity):
    run.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    run.metrics_csv.write_text(
        "case,iou,dice,hd95,fp_rate,fn_rate,target_empty,pred_empty\nc1,0.5,0.6,3.0,0.001,0.2,False,False\n"
    )
    done = {**identity, "params": 1, "resumed": False, "seconds": 0.0, "test_cases": 1, "test_iou_mean": 0.5}
    run.marker.write_text(json.dumps(done))
    return done


@pytest.fixture
def common(tmp_path):
    from pam_monai.data import ensure_dataset

    data, _ = ensure_dataset("brats", tmp_path / "none", output=tmp_path / "synthetic_brats", slices=8)
    return {
        "dataset": "brats",
        "networks": "unet",
        "epochs": 1,
        "batch_size": 8,
        "num_workers": 0,
        "network_options": TINY,
        "figures": False,
        "dataset_dir": str(data),
        "output": str(tmp_path / "exp"),
    }


def test_refused_call_leaves_experiment_json_alone(common, tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "_execute", lambda run, b, o, identity, ctx: _finish(run, identity))
    run_experiment(**common)
    record = tmp_path / "exp" / "experiment.json"
    before = record.read_text()
    assert json.loads(before)["settings"]["epochs"] == 1
    with pytest.raises(ValueError, match="epochs"):
        run_experiment(**{**common, "epochs": 2})
    # the grid on disk was made with epochs=1: its record must still say so
    assert record.read_text() == before


def test_failed_run_is_reported_by_its_root_cause(common, tmp_path, monkeypatch):
    def fail(run, b, o, identity, ctx):
        try:
            raise FileExistsError(17, "File exists", str(run.dir / "models"))
        except FileExistsError as e:
            raise RuntimeError('Failed to evaluate ConfigExpression: "$...run()"') from e

    monkeypatch.setattr(runner_module, "_execute", fail)
    with pytest.raises(RuntimeError) as info:
        run_experiment(**common, keep_going=True)
    assert "FileExistsError" in str(info.value) and "models" in str(info.value)
    events = [json.loads(x) for x in (tmp_path / "exp" / "runs.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "failed"]
    assert failed and "FileExistsError" in failed[0]["error"]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("figure_cases", "nope", "figure_cases"),
        ("figure_networks", "unett", "unett"),
        ("figure_networks", "fpa", "fpa"),
    ],
)
def test_figure_flags_are_checked_before_any_training(common, tmp_path, monkeypatch, flag, value, message):
    """A typo in --figure_cases / --figure_networks was found only after the whole grid had trained,
    and then no results.md was written."""

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained before checking the figure flags")

    monkeypatch.setattr(runner_module, "_execute", must_not_train)
    with pytest.raises(ValueError, match=message):
        run_experiment(**{**common, "figures": True}, **{flag: value})
