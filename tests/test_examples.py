"""The worked examples in ``examples/`` run as their docstrings say, on the public API only."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pam_monai.metrics import iou

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_training_loop.py"
METRICS = ("iou", "dice", "hd95", "fp_rate", "fn_rate")


def _run_example(output: Path, *flags: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--output", str(output), *flags],
        capture_output=True, text=True, timeout=300, env=env, cwd=output,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _load_example():
    import importlib.util

    spec = importlib.util.spec_from_file_location("own_training_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_documented_example_commands_use_flags_it_takes():
    """Every ``--flag`` of a ``python examples/own_training_loop.py`` command in the example's
    docstring and examples/README.md is one of its options: a renamed flag fails here."""
    module = _load_example()
    known = set(vars(module.parse_args([])))
    commands = []
    for text in (module.__doc__, (ROOT / "examples" / "README.md").read_text()):
        text = text.replace("\\\n", " ")
        commands += re.findall(r"python examples/own_training_loop\.py([^\n`]*)", text)
    assert len(commands) >= 4, commands
    flags = {f for command in commands for f in re.findall(r"(?<![\w/-])--(\w+)", command.split(" #")[0])}
    assert flags and flags <= known, sorted(flags - known)


def _printed_metrics(stdout: str, network: str) -> dict[str, float]:
    line = next(row for row in stdout.splitlines() if row.startswith(f"{network} on "))
    return {name: float(re.search(rf"\b{name} ([-\d.naif]+)", line).group(1)) for name in METRICS}


@pytest.mark.slow
def test_own_training_loop_trains_rfna_and_scores_its_foreground(tmp_path):
    """examples/own_training_loop.py with its smallest settings: RFNA trained on reversed labels
    (``loss_for``) and read back as foreground logits, a held-out mask that is the lesion, not its
    complement (the authors' code reads RFNA's foreground where ``sigmoid < 0.5``; doing so on
    ``RFNAUNet``'s foreground logits would give the inverted mask), weights saved and reloaded."""
    stdout = _run_example(tmp_path, "--network", "rfna", "--steps", "20", "--lr", "3e-3")
    metrics = _printed_metrics(stdout, "rfna")
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert (tmp_path / "rfna.pt").is_file()
    assert not list(tmp_path.glob(".*.tmp")), "the atomic save left a temporary file"

    mask_file = next(tmp_path.glob("*_seg.nii.gz"))
    case = mask_file.name.removesuffix("_seg.nii.gz")
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    target = np.asarray(nib.load(tmp_path / "data" / "labelsTr" / f"{case}.nii.gz").dataobj) > 0
    assert mask.shape == target.shape
    assert iou(mask, target) == pytest.approx(metrics["iou"], abs=1e-3)  # the printed IoU is this mask's
    # the lesion is about a tenth of the volume: its complement covers most of it
    assert mask.mean() < 0.5, f"{mask.mean():.0%} of the volume segmented: the inverted mask?"
    assert iou(mask, target) > max(0.15, iou(~mask, target))
