"""The bundles' whole training loop: slices/s of ``train.json`` as ``monai.bundle run training`` runs it.

The training-step rows time forward, loss, backward and optimiser step alone. A bundle's trainer
also fetches each batch (``DeviceSliceLoader`` or a ``DataLoader``), flips it on the device
(``FlipPrepareBatch``), runs MONAI's ``SupervisedTrainer`` iteration (bf16 autocast without its
loss scaler: :class:`~pam_monai.engines.Bf16WithoutLossScaling`; the decollated output) and the training handlers (loss log, TensorBoard, progress bar, NaN guard),
and sees an epoch's smaller last batch, unless compiled (the bundle then drops it: ``drop_last``,
one compiled shape; the rows say which loader and ``drop_last`` ran). This stage runs the BRATS bundle's ``train.json`` through
MONAI's ``ConfigWorkflow`` on a synthetic BRATS set, with the run's device, batch and crop and the
bundle's own fast-path default (``fast`` = CUDA available), without validation, and times whole
epochs after the first (compilation, caches): from each epoch's start to its last iteration's
handlers (synchronised at both ends), so the end-of-epoch checkpoint is not counted.

Each network runs once per ``log_every`` value: 1 reads the loss after every step (the bundles
before ``log_every``), the default 10 every tenth.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch

from .report import _rate

__all__ = ["bench_bundle"]

log = logging.getLogger("pam_monai.bench")


class _EpochClock:
    """Slices and seconds of each epoch's iterations (epoch start -> last iteration's handlers)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.epochs: list[tuple[int, float]] = []
        self.slices = 0
        self.t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.count)  # after the bundle's handlers

    def start(self, engine) -> None:
        self._sync()
        self.slices, self.t0 = 0, time.perf_counter()

    def count(self, engine) -> None:
        batch = engine.state.batch  # MONAI's trainer decollates it into a list of slices
        self.slices += len(batch["image"]) if isinstance(batch, dict) else len(batch)
        length = engine.state.epoch_length
        if (engine.state.iteration - 1) % length + 1 == length:
            self._sync()
            self.epochs.append((self.slices, time.perf_counter() - self.t0))


def _write_bundle(folder: Path) -> Path:
    from ..bundle_templates.build import bundle_files

    for rel, text in bundle_files("brats", "fpa").items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder / "configs" / "train.json"


def _without_validation(config: Path, epochs: int) -> dict:
    """Overrides that switch the bundle's validation off (``val_interval`` past the last epoch) and
    tell its schedule check so: the "no epoch is validated" warning is for users, not the bench."""
    checks = json.loads(config.read_text(encoding="utf-8"))["checks"]
    check = "$pam_monai.engines.check_schedule("
    found = [i for i, item in enumerate(checks) if item.startswith(check) and item.endswith(")")]
    if len(found) != 1:  # the template changed: fail here rather than warn on every run
        raise RuntimeError(f"{config}: 'checks' has no one {check}...) to mark validation as off")
    checks[found[0]] = checks[found[0]][:-1] + ", validation=False)"
    return {"val_interval": epochs + 1, "checks": checks}


def _run(config: Path, root: Path, overrides: dict, device: torch.device) -> dict:
    from monai.bundle import ConfigWorkflow

    from ..engines import as_bool

    workflow = ConfigWorkflow(
        config_file=str(config), workflow_type="train", logging_file=False, bundle_root=str(root), **overrides
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    clock = _EpochClock(device)
    clock.attach(trainer)
    workflow.run()
    workflow.finalize()
    timed = clock.epochs[1:]  # the first epoch compiles and warms the caches
    if not timed:
        raise RuntimeError("no epoch after the first was timed: raise epochs")
    slices, seconds = sum(s for s, _ in timed), sum(t for _, t in timed)
    parser = workflow.parser
    loader = parser.get_parsed_content("train#dataloader")
    return {
        "slices_per_s": slices / seconds,
        "epoch_slices_per_s": [s / t for s, t in timed],
        "epoch_s_median": statistics.median(t for _, t in timed),
        "iterations_per_epoch": int(trainer.state.epoch_length),
        "samples": len(parser.get_parsed_content("train#dataset")),
        "epochs_timed": len(timed),
        "slices_timed": slices,
        "loader": type(loader).__name__,
        "drop_last": bool(getattr(loader, "drop_last", False)),
        "fast": as_bool(parser.get_parsed_content("fast")),
        "amp": bool(parser.get_parsed_content("amp")),
        "compile": bool(parser.get_parsed_content("compile")),
        "compile_mode": parser.get_parsed_content("compile_mode"),
    }


def bench_bundle(
    networks: list[str],
    device: torch.device,
    batch: int,
    size: int,
    log_every: tuple[int, ...] = (1, 10),
    epochs: int = 4,
    cases: int = 8,
    slices: int = 64,
    fast: bool | None = None,
    compile_mode: str | None = None,
    seed: int = 0,
    on_result=None,
) -> list[dict]:
    """Run the BRATS bundle's training for each network and ``log_every``; see the module docstring.

    Args:
        networks: registered network names (the bundle's ``network_name``).
        device: the training device.
        batch: the bundle's ``batch_size``.
        size: the in-plane crop (``crop_size`` = size x size; 160 is the bundle's own).
        log_every: the bundle's ``log_every`` values to compare.
        epochs: epochs per run; all but the first are timed.
        cases: synthetic BRATS cases (3 of 5 are training cases).
        slices: axial slices per synthetic case.
        fast: the bundle's ``fast`` (None: its default, CUDA available).
        compile_mode: the bundle's ``compile_mode`` (e.g. ``reduce-overhead``: CUDA graphs; None: its
            default, PyTorch's default mode).
        seed: the synthetic set's and the runs' seed.
        on_result: called with the rows so far after each run (a killed stage keeps them).

    Returns:
        One row per (network, log_every) with ``slices_per_s`` over the timed epochs.
    """
    from ..data import synth

    tmp = Path(tempfile.mkdtemp(prefix="pam_bench_bundle_"))
    rows: list[dict] = []
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the progress bar runs (and is timed) but draws nothing
    try:
        data = synth("brats", tmp / "brats", cases=int(cases), seed=seed, slices=int(slices))
        config = _write_bundle(tmp / "bundle")
        no_validation = _without_validation(config, int(epochs))
        for network in networks:
            for every in log_every:
                row = {
                    "network": network,
                    "mode": f"bundle, log_every {every}"
                    + (f" [mode={compile_mode}]" if compile_mode else ""),
                    "log_every": int(every),
                    "batch": int(batch),
                    "size": [int(size), int(size)],
                }
                overrides = {
                    "dataset_dir": str(data),
                    "cache_dir": str(tmp / "cache"),
                    "network_name": network,
                    "epochs": int(epochs),
                    "batch_size": int(batch),
                    "crop_size": [int(size), int(size)],
                    "num_workers": 0,
                    "log_every": int(every),
                    "seed": int(seed),
                    "device": f"$torch.device({json.dumps(str(device))})",
                    **no_validation,
                }
                if fast is not None:
                    overrides["fast"] = bool(fast)
                if compile_mode:
                    overrides["compile_mode"] = str(compile_mode)
                try:
                    row.update(_run(config, tmp / f"run_{network}_{every}", overrides, device))
                    if compile_mode and not row.get("compile"):  # not compiled (the CPU): no mode ran
                        row["mode"] = f"bundle, log_every {every}"
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"
                    log.error("bundle %s log_every %s: %s\n%s", network, every, e, traceback.format_exc())
                rows.append(row)
                print(
                    f"[bench] bundle {network} log_every {every}: "
                    + (
                        f"{_rate(row['slices_per_s'])} slices/s"
                        if "slices_per_s" in row
                        else f"ERROR {row['error']}"
                    ),
                    flush=True,
                )
                if on_result is not None:
                    on_result(rows)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
