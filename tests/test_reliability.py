"""Interrupted runs, corrupt checkpoints, non-finite losses and bad inputs at inference."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pam_monai.data import synth
from pam_monai.engines import (
    CasePredictor,
    atomic_save,
    find_inference_cases,
    load_checkpoint,
    safe_output_path,
)
from pam_monai.metrics import case_metrics
from pam_monai.networks import get_network

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "bundles" / "brats_fpa" / "configs" / "train.json")
INFER = str(ROOT / "bundles" / "brats_fpa" / "configs" / "inference.json")
SMALL = {"features": [8, 16, 32, 64]}

# all training runs here share one xdist worker: they compare weights across runs
pytestmark = pytest.mark.xdist_group("reliability")


def train_cmd(
    root: Path, data: Path, epochs: int, resume: bool = False, *extra: str, batch_size: int = 8
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        TRAIN,
        "--bundle_root",
        str(root),
        "--dataset_dir",
        str(data / "none"),
        "--synthetic_stand_in",  # this test's dataset_dir is not the bundle's default one
        "true",
        "--synthetic_dir",
        str(data / "synthetic"),
        "--epochs",
        str(epochs),
        "--batch_size",
        str(batch_size),
        "--num_workers",
        "0",
        "--deterministic",
        "true",
        "--network_options",
        json.dumps(SMALL),
        "--resume",
        "true" if resume else "false",
        *extra,
    ]


def run_training(
    root: Path, data: Path, epochs: int, resume: bool = False, *extra: str, batch_size: int = 8
) -> str:
    proc = subprocess.run(
        train_cmd(root, data, epochs, resume, *extra, batch_size=batch_size),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def weights(root: Path) -> dict:
    return load_checkpoint(root / "models" / "checkpoint_last.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ in {different[:5]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability_data")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> Path:
    """An uninterrupted 2-epoch run in deterministic mode."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run_training(root, data, epochs=2)
    return root


@pytest.mark.slow
def test_deterministic_mode_repeats_exactly(reference, data, tmp_path):
    run_training(tmp_path, data, epochs=2)
    assert_same_weights(weights(tmp_path), weights(reference))


@pytest.mark.slow
def test_samples_held_on_the_device_train_and_resume_exactly_like_the_dataloader(reference, data, tmp_path):
    """``--device_data true`` (DeviceSliceLoader, here on the CPU) serves the DataLoader's batches
    in the same order: one epoch, then a resumed second one, ends on the reference's weights."""
    out = run_training(tmp_path, data, 1, False, "--device_data", "true")
    assert "training samples held on cpu" in out
    run_training(tmp_path, data, 2, True, "--device_data", "true")
    assert_same_weights(weights(tmp_path), weights(reference))


@pytest.mark.slow
def test_runs_that_drop_the_last_batch_resume_exactly_and_only_as_such(data, tmp_path):
    """``--drop_last true`` (the compiled bundles' default): a resumed second epoch ends on the
    weights of an uninterrupted run. A resume with the other ``drop_last`` (a run compiled on a GPU,
    resumed without compiling) has another epoch length: refused, naming the setting that fits
    (the refusal named batch_size only, which was the same)."""
    whole, part, drop = tmp_path / "whole", tmp_path / "part", ("--drop_last", "true")
    out = run_training(whole, data, 2, False, *drop, batch_size=6)
    assert "32 slices, 5 optimiser steps per epoch" in out and "2 slices of each epoch dropped" in out
    run_training(part, data, 1, False, *drop, batch_size=6)
    cmd = train_cmd(part, data, 2, True, "--drop_last", "false", batch_size=6)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "resume with --drop_last true" in proc.stderr, proc.stderr[-3000:]
    run_training(part, data, 2, True, *drop, batch_size=6)
    assert_same_weights(weights(part), weights(whole))


@pytest.mark.slow
def test_a_run_with_train_transforms_resumes_exactly(reference, data, tmp_path):
    """With train_transforms (random, drawn in 2 DataLoader workers) a resumed second epoch draws
    what the uninterrupted run drew (each epoch's draws are seeded by the seed, the epoch and the
    worker), so it ends on the same weights; the transforms change the weights (they are drawn)."""
    augment = (
        "[{'_target_': 'RandGaussianNoised', 'keys': ['image'], 'prob': 0.5, 'std': 0.1}, "
        "{'_target_': 'RandFlipd', 'keys': ['image', 'label'], 'prob': 0.5, 'spatial_axis': 0}]"
    )

    def train(root: Path, epochs: int, resume: bool) -> str:
        cmd = train_cmd(root, data, epochs, resume, "--train_transforms", augment)
        cmd[cmd.index("--num_workers") + 1] = "2"
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.stdout + proc.stderr

    whole, part = tmp_path / "whole", tmp_path / "part"
    assert "a per-sample transform (train_transforms)" in train(whole, 2, False)
    train(part, 1, False)
    train(part, 2, True)
    assert_same_weights(weights(part), weights(whole))
    # the same run without transforms (the number of workers changes nothing there)
    assert any(not torch.equal(a, b) for a, b in zip(weights(reference).values(), weights(whole).values()))


@pytest.mark.slow
def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(reference, data, tmp_path):
    proc = subprocess.Popen(
        train_cmd(tmp_path, data, epochs=2), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "models" / "checkpoint_last.pt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.is_file(), "no checkpoint was written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(last)  # complete and loadable, whatever the moment of the kill
    assert state["trainer"]["epoch"] in (1, 2)
    out = run_training(tmp_path, data, epochs=2, resume=True)
    assert "resume" in out
    assert_same_weights(weights(tmp_path), weights(reference))


@pytest.mark.slow
def test_truncated_temporary_checkpoint_resumes_from_the_last_complete_one(
    reference, data, tmp_path, monkeypatch
):
    run_training(tmp_path, data, epochs=1)
    models = tmp_path / "models"
    complete = (models / "checkpoint_last.pt").read_bytes()
    # 1. what a kill in the middle of a write leaves: a truncated temporary file beside the checkpoint
    (models / ".checkpoint_last.pt.k1ll3d.tmp").write_bytes(complete[: len(complete) // 3])
    # 2. a write that fails half-way through never touches the existing checkpoint
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(len(complete) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"model": {}}, models / "checkpoint_last.pt")
    monkeypatch.undo()
    assert (models / "checkpoint_last.pt").read_bytes() == complete
    assert not [
        p for p in models.iterdir() if p.name.startswith(".checkpoint_last.pt.") and "k1ll3d" not in p.name
    ]
    # 3. a truncated file in place of the checkpoint is refused by name, not half-loaded
    broken = models / "broken.pt"
    broken.write_bytes(complete[: len(complete) // 2])
    with pytest.raises(RuntimeError, match="broken.pt: cannot load checkpoint"):
        load_checkpoint(broken)
    broken.unlink()
    run_training(tmp_path, data, epochs=2, resume=True)
    assert_same_weights(weights(tmp_path), weights(reference))


def test_small_text_files_reach_the_disk_before_their_rename(tmp_path, monkeypatch):
    """model.json and the metric tables describe the large files: each is synced before it takes
    its name, so a node's crash after the rename cannot leave an empty one (as checkpoints are)."""
    import pam_monai.atomic as atomic

    events = []
    real_fsync, real_replace = os.fsync, atomic.os.replace

    def fsync(fd):
        events.append(
            ("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        )
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    target = atomic.atomic_write_text(tmp_path / "model.json", "{}")
    assert target.read_text() == "{}"
    assert [e[0] for e in events] == ["fsync", "replace"] and events[0][1] == events[1][1]


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_keeps_the_last_good_checkpoint(reference, data, tmp_path):
    import shutil

    shutil.copytree(reference / "models", tmp_path / "models")
    before = (tmp_path / "models" / "checkpoint_last.pt").read_bytes()
    cmd = train_cmd(tmp_path, data, epochs=3, resume=True) + [
        "--loss",
        "$lambda x, y: (x * float('nan')).mean()",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "non-finite loss nan at epoch 3, iteration" in proc.stderr + proc.stdout
    assert "(batch 1 of the epoch)" in proc.stderr + proc.stdout
    assert re.search(r"\(samples: Brats18_SYN_\d+_1 slice \d+, ", proc.stderr + proc.stdout)  # its slices
    assert (tmp_path / "models" / "checkpoint_last.pt").read_bytes() == before
    state = load_checkpoint(tmp_path / "models" / "checkpoint_last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_loss_is_read_every_n_iterations_and_a_nan_is_still_named(monkeypatch):
    """Reading a CUDA loss waits for the GPU: the guard, the loss log and the progress bar read it
    at the first, every n-th and the last iteration of an epoch only, and the guard still names
    the first non-finite loss (iteration, batch, cases) before the epoch can be checkpointed."""
    from ignite.engine import Engine, Events

    from pam_monai.engines import EveryIterations, NonFiniteLossGuard, ProgressBar

    def trainer(losses, check_every):
        engine = Engine(
            lambda e, b: {"loss": torch.tensor(losses[e.state.iteration - 1], requires_grad=True)}
        )
        NonFiniteLossGuard(check_every=check_every).attach(engine)
        saved = []
        engine.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: saved.append(e.state.epoch)
        )  # a checkpoint
        return engine, saved

    every = EveryIterations(10)
    hits = []
    probe = Engine(lambda e, b: None)
    probe.add_event_handler(
        Events.ITERATION_COMPLETED(event_filter=every), lambda e: hits.append(e.state.iteration)
    )
    probe.run(range(25), max_epochs=2)
    assert hits == [1, 10, 20, 25, 26, 35, 45, 50]
    for bad in (0, -1, 2.5):  # 0 was silently taken as 1
        with pytest.raises(ValueError, match=rf"EveryIterations: n must be a whole number .*got {bad}"):
            EveryIterations(bad)

    reads = []
    real = NonFiniteLossGuard.check
    monkeypatch.setattr(
        NonFiniteLossGuard, "check", lambda self, e: reads.append(e.state.iteration) or real(self, e)
    )
    losses = [1.0] * 50
    engine, saved = trainer(losses, 10)
    engine.run([{"case": [f"c{i}"]} for i in range(25)], max_epochs=2)
    assert saved == [1, 2] and reads == [1, 10, 20, 25, 25, 26, 35, 45, 50, 50]  # + once at each epoch's end

    losses[27] = float("nan")  # iteration 28: epoch 2, batch 3
    losses[30] = float("inf")
    engine, saved = trainer(losses, 10)
    with pytest.raises(FloatingPointError) as info:
        engine.run([{"case": [f"c{i}"]} for i in range(25)], max_epochs=2)
    assert str(info.value).startswith(
        "non-finite loss nan at epoch 2, iteration 28 (batch 3 of the epoch) (cases ['c2'])"
    )
    assert engine.state.iteration == 35 and saved == [1]
    losses[27] = losses[30] = 1.0
    losses[49] = float("nan")  # the last iteration: found at the epoch's end, before its checkpoint
    engine, saved = trainer(losses, 100)
    with pytest.raises(FloatingPointError, match="iteration 50 "):
        engine.run([{"case": [f"c{i}"]} for i in range(25)], max_epochs=2)
    assert saved == [1]

    shown = []
    bar = ProgressBar(loss_every=10)
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(e.state.iteration))})
    bar.attach(engine)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: shown.append(bar.pbar.postfix))
    engine.run(range(12), max_epochs=1)
    assert shown[0] == "loss=1" and shown[8] == "loss=1" and shown[9] == "loss=10" and shown[11] == "loss=12"


def test_progress_bar_does_not_flood_a_log_file(capsys):
    """Written to a file or a pipe (a CI log, nohup, a cluster job's output) and not a terminal, the
    training bar redrew itself 10 times a second: a line of text per iteration of a slow CPU run;
    it now redraws at most every 30 s there, and still ends on its final count."""
    import time

    from ignite.engine import Engine

    from pam_monai.engines import ProgressBar

    bar = ProgressBar(desc="train")
    engine = Engine(lambda e, b: time.sleep(0.03) or {"loss": 1.0})
    bar.attach(engine)
    engine.run(range(30), max_epochs=1)
    drawn = capsys.readouterr().err
    assert drawn.count("\n") <= 3, f"{drawn.count(chr(10))} redraws of a 1 s bar:\n{drawn!r}"
    assert "30/30" in drawn


def test_progress_bar_imports_from_ignite_0_4(monkeypatch):
    """setup.cfg allows pytorch-ignite 0.4.11, whose ``ignite.handlers`` has no ``ProgressBar`` (it
    moved there from ``ignite.contrib.handlers`` in 0.5): importing ``pam_monai.engines`` failed,
    and with it every bundle ("module 'pam_monai' has no attribute 'engines'"). The module is loaded
    afresh here with ``ignite.handlers`` as 0.4 has it."""
    import importlib.util

    import ignite.handlers
    from ignite.engine import Engine, Events

    import pam_monai.engines.progress as progress

    ContribBar = pytest.importorskip("ignite.contrib.handlers").ProgressBar  # (a later Ignite may drop it)
    monkeypatch.delattr(ignite.handlers, "ProgressBar", raising=False)  # absent in 0.4
    spec = importlib.util.spec_from_file_location("pam_monai.engines._progress_ignite04", progress.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert issubclass(module.ProgressBar, ContribBar)
    bar = module.ProgressBar(desc="train")
    engine = Engine(lambda e, b: {"loss": 2.0})
    bar.attach(engine)
    shown = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: shown.append((bar.pbar.n, bar.pbar.postfix))
    )
    engine.run(range(3), max_epochs=1)
    assert shown == [(1, "loss=2"), (2, "loss=2"), (3, "loss=2")]


def test_tqdm_monitor_does_not_redraw_a_log_file_bar_before_its_interval():
    """tqdm's monitor thread redraws a fast bar (miniters > 1) once ``maxinterval`` (10 s) has
    passed since its last redraw: a bar in a log file drew a line every 10 s, not every 30 s."""
    import io
    import time

    from tqdm._monitor import TMonitor

    from pam_monai.progress import LOG_FILE_REDRAW_S, LogFileTqdm, progress_bar

    out = io.StringIO()
    bar = progress_bar(total=10**6, desc="fast", file=out)
    bar.miniters = 1000  # what tqdm sets after a redraw of a fast loop
    bar.last_print_t = time.time() - 0.5 * (10.0 + LOG_FILE_REDRAW_S)  # past 10 s, not yet 30 s
    drawn = out.getvalue()
    monitor = TMonitor(LogFileTqdm, 0.01)
    try:
        time.sleep(0.3)  # ~30 of the monitor's checks
    finally:
        monitor.exit()
    assert out.getvalue() == drawn, (
        f"redrawn {LOG_FILE_REDRAW_S / 2:g} s after its last line:\n{out.getvalue()}"
    )
    bar.close()


def test_every_progress_bar_in_a_log_file_is_whole_lines(tmp_path, capsys):
    """The data preparation's and the commands' bars (tqdm directly: the check, the slice cache,
    inference, ...) wrote carriage returns into log files as the training bars did: they come from
    pam_monai.progress.progress_bar, whole lines there, a tqdm bar in a terminal."""
    import io

    from pam_monai.data import SliceDataset, discover_cases, synth
    from pam_monai.progress import LogFileTqdm, progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert type(progress_bar(range(2), file=Terminal())) is not LogFileTqdm
    assert type(progress_bar(range(2), file=io.StringIO())) is LogFileTqdm
    root = synth("brats", tmp_path, cases=2, slices=6)
    capsys.readouterr()
    SliceDataset(discover_cases("brats", root), "brats", progress=True)
    drawn = capsys.readouterr().err
    assert "preparing volumes" in drawn and "\r" not in drawn, repr(drawn)


def test_progress_bars_in_a_log_file_are_whole_lines(capsys):
    """In a file a bar's carriage returns and cursor moves (``ESC[A`` when a bar that is not kept
    closes) glued the log's own lines onto the bar's text ("... 100%|... [A2026-... new best"):
    each redraw is now a line of its own, and a bar that is not kept writes nothing when it closes."""
    import logging

    from ignite.engine import Engine, Events

    from pam_monai.engines import ProgressBar

    engine = Engine(lambda e, b: {"loss": 1.0})
    ProgressBar(desc="validate", persist=False).attach(engine)
    engine.add_event_handler(Events.COMPLETED, lambda e: logging.getLogger("pam_monai").warning("new best"))
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger("pam_monai").addHandler(handler)
    try:
        engine.run(range(5), max_epochs=2)
    finally:
        logging.getLogger("pam_monai").removeHandler(handler)
    drawn = capsys.readouterr().err
    assert "\r" not in drawn and "\x1b" not in drawn, repr(drawn)
    assert "new best" in drawn.splitlines(), repr(drawn)  # on a line of its own


@pytest.mark.parametrize("loader_kind", ["dataloader", "device", "device_shuffle"])
def test_a_non_finite_loss_names_the_slices_of_its_batch(loader_kind):
    """Batches of slices carry no case names: the guard works them out from the sampler's order
    when the run stops (nothing recorded per step), for a DataLoader and the device loader alike."""
    from ignite.engine import Engine, Events
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from pam_monai.engines import DeviceSliceLoader, LoaderEpoch, NonFiniteLossGuard, batch_samples

    class Slices(torch.utils.data.Dataset):
        def __len__(self):
            return 23

        def __getitem__(self, i):  # the image says which sample it is
            return {"image": torch.full((1, 2, 2), float(i)), "label": torch.zeros(1, 2, 2)}

        def slice_info(self, i):
            return f"case{i // 10}", i % 10

    data, bad = Slices(), 17
    sampler = (
        None if loader_kind == "device_shuffle" else DistributedSampler(data, 1, 0, shuffle=True, seed=3)
    )
    if loader_kind == "dataloader":
        loader = DataLoader(data, batch_size=4, sampler=sampler)
    else:
        loader = DeviceSliceLoader(data, 4, sampler=sampler, seed=3)
    seen = {}

    def step(engine, batch):
        ids = batch["image"][:, 0, 0, 0].long().tolist()
        seen[engine.state.iteration] = ids
        return {"loss": torch.tensor(float("nan") if engine.state.epoch == 2 and bad in ids else 1.0)}

    engine = Engine(step)
    NonFiniteLossGuard(check_every=3, loader=loader).attach(engine)
    if sampler is not None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: sampler.set_epoch(e.state.epoch))
    if loader_kind != "dataloader":
        LoaderEpoch(loader).attach(engine)
    with pytest.raises(FloatingPointError) as info:
        engine.run(loader, max_epochs=3)
    first = min(i for i, ids in seen.items() if i > 6 and bad in ids)
    expected = ", ".join(f"case{i // 10} slice {i % 10}" for i in seen[first])
    assert f"(batch {first - 6} of the epoch) (samples: {expected})" in str(info.value)
    assert "case1 slice 7" in expected
    assert batch_samples(loader, 0) is None and batch_samples(object(), 1) is None


SPAWNED_GUARD = """
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from ignite.engine import Engine
from pam_monai.engines import NonFiniteLossGuard

def run(rank, folder):
    dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=2)
    def step(engine, batch):
        bad = rank == 1 and engine.state.iteration == 3
        return {"loss": torch.tensor(float("nan") if bad else 1.0)}
    engine = Engine(step)
    NonFiniteLossGuard(check_every=4).attach(engine)
    try:
        engine.run([{"case": [f"rank{rank}_c{i}"]} for i in range(8)], max_epochs=1)
        message = "finished"
    except FloatingPointError as e:
        message = str(e)
    open(f"{folder}/rank{rank}.txt", "w").write(message)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=2)
"""


def test_a_non_finite_loss_in_one_process_stops_every_process(tmp_path):
    """Under torchrun each process checks its own loss: one that stopped alone left the others
    waiting in their next gradient all-reduce until the process group's timeout."""
    script = tmp_path / "guard.py"
    script.write_text(SPAWNED_GUARD)
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=120, cwd=ROOT)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert messages[1].startswith(
        "non-finite loss nan at epoch 1, iteration 3 (batch 3 of the epoch) (cases ['rank1_c2'])"
    )
    # the other process names no cases: its own batch of that iteration had a finite loss
    assert messages[0].startswith(
        "non-finite loss in another process at epoch 1, iteration 3 (batch 3 of the epoch); "
    )


FAILING_RANK = """
import sys, time, torch, torch.distributed as dist
from ignite.engine import Engine
from pam_monai.engines import StopEveryProcessOnError

rank, folder = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=2)

def step(engine, batch):
    if engine.state.iteration == 2 and rank == 1:
        open(folder + "/raised", "w").write(str(time.time()))
        raise ValueError("injected failure in the training step")
    if engine.state.iteration == 2:  # NCCL's all-reduce, waiting for a dead peer: it does not notice
        time.sleep(40)
    dist.all_reduce(torch.ones(1))

engine = Engine(step)
StopEveryProcessOnError(poll_seconds=0.5, grace_seconds=1).attach(engine)
engine.run(range(4), max_epochs=1)
"""


def test_a_process_stopped_for_another_ones_error_names_it_in_torchruns_summary(monkeypatch, tmp_path):
    """A process that StopEveryProcessOnError ends for another process's error (os._exit: no
    excepthook) left no torchrun error file: on another node, its agent's closing summary said only
    "To enable traceback see: ..." while the READMEs say the summary names the error."""
    import threading

    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from pam_monai.engines import StopEveryProcessOnError

    class Store:  # the process group's store, holding process 1's error
        def check(self, keys):
            return True

        def get(self, key):
            return b"1\nValueError: injected failure in a training step"

    class Exited(Exception):
        pass

    def exit_(code):
        raise Exited(code)

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))  # what torchrun gives each process
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(os, "_exit", exit_)
    watcher = StopEveryProcessOnError(poll_seconds=0.01, grace_seconds=0.01)
    with pytest.raises(Exited):
        watcher._watch(Store(), "pam_monai/failed/1", threading.Event())
    # torchrun's reading of it
    summary = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(error_file))
    assert isinstance(summary.message, dict), summary.message
    assert "process 1: ValueError: injected failure in a training step" in summary.message["message"]
    shown = summary.message["extraInfo"]["py_callstack"]  # what the summary prints
    assert "process 1: ValueError: injected failure in a training step" in shown, shown


def test_stopping_every_process_does_without_the_private_store_lookup_and_forgets_earlier_runs(
    monkeypatch, caplog
):
    """StopEveryProcessOnError finds the process group's store through a private PyTorch function: a
    PyTorch without it loses the early stop (with a warning), not the training."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    from pam_monai.engines import StopEveryProcessOnError

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.delattr(distributed_c10d, "_get_default_store")
    with caplog.at_level("WARNING", logger="pam_monai"):
        assert StopEveryProcessOnError._store() is None
    assert "_get_default_store (private in torch): gone or changed" in caplog.text
    assert "StopEveryProcessOnError (a failed process is not announced" in caplog.text
    # a new run forgets an earlier run's "failed after process R" (torchrun's summary would name it)
    monkeypatch.setattr(StopEveryProcessOnError, "failed_first_elsewhere", "process 1: ValueError: old")
    StopEveryProcessOnError()._start(None)
    assert StopEveryProcessOnError.failed_first_elsewhere == ""


def _run_two_processes(script: str, tmp_path: Path) -> tuple[list, list]:
    """Run ``script`` as processes 0 and 1 (argv: rank, ``tmp_path``) to their end (30 s at most):
    the processes and their (stdout, stderr)."""
    path = tmp_path / "ranks.py"
    path.write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(path), str(rank), str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        return ranks, [rank.communicate(timeout=30) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()


def test_a_training_step_that_raises_in_one_process_stops_every_process(tmp_path):
    """A process whose training step raised ended alone: the others waited for it in their next
    collective until the process group's timeout (NCCL does not notice a dead peer, and across
    nodes torchrun's agents do not stop the other nodes' processes). They now stop at once,
    naming its error."""
    ranks, outputs = _run_two_processes(FAILING_RANK, tmp_path)
    errors = [err for _, err in outputs]
    waited = time.time() - float((tmp_path / "raised").read_text())
    assert "ValueError: injected failure in the training step" in errors[1] and ranks[1].returncode == 1
    assert ranks[0].returncode == 1, errors[0]
    assert waited < 10, f"process 0 stopped {waited:.0f} s after process 1 failed"
    assert (
        "process 1 failed in training: ValueError: injected failure in the training step; process 0"
        in errors[0]
    ), errors[0]


def test_a_process_whose_training_raised_leaves_no_watcher_inside_a_store_call(monkeypatch):
    """The failing process of a two-process gloo training sometimes died of SIGABRT (status -6,
    "terminate called without an active exception") instead of exiting with status 1 and its error
    (test_a_training_step_that_raises_in_one_process_stops_every_process, a few runs in 100). One
    cause: the StopEveryProcessOnError watcher, a daemon thread, was still inside a store call when
    the run raised, and came back from C++ while the interpreter was exiting. The run's end now
    waits for it to leave."""
    import threading

    from ignite.engine import Engine

    from pam_monai.engines import StopEveryProcessOnError

    raising = threading.Event()

    class SlowStore:  # the process group's store, slow to answer on a loaded machine
        def check(self, keys):
            if raising.is_set():
                time.sleep(1)  # the watcher is inside it when the run raises
            return False

        def compare_set(self, key, expected, value):
            return value.encode()

    monkeypatch.setattr(StopEveryProcessOnError, "_store", staticmethod(SlowStore))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)

    def step(engine, batch):
        raising.set()
        time.sleep(0.3)  # the watcher enters check
        raise ValueError("injected failure in the training step")

    engine = Engine(step)
    StopEveryProcessOnError(poll_seconds=0.05).attach(engine)
    with pytest.raises(ValueError, match="injected failure"):
        engine.run(range(4), max_epochs=1)
    watchers = [t for t in threading.enumerate() if t.name == "pam_monai-peer-errors"]
    assert not watchers, "the watcher is still inside a store call: the interpreter's exit aborts (SIGABRT)"


def test_a_process_whose_training_raised_destroys_its_gloo_group_before_the_interpreter_ends(tmp_path):
    """The failing process of a two-process gloo training sometimes still died of SIGABRT (status
    -6) after its error (a few runs in 100 on a loaded machine): a gloo worker thread freed the last
    all-reduce's work, and its tensors, while the interpreter finalized, took the GIL there and
    was ended inside a C++ destructor (seen in a core dump). The process group is now destroyed at
    exit, before finalizing, which joins those threads; an exit hook registered before the run runs
    after it and sees that."""
    seen_at_exit = (
        "import atexit\natexit.register(lambda: print('at exit: initialized', dist.is_initialized()))\n"
    )
    script = FAILING_RANK.replace("engine = Engine(step)", seen_at_exit + "engine = Engine(step)")
    ranks, outputs = _run_two_processes(script, tmp_path)
    out, err = outputs[1]
    assert ranks[1].returncode == 1 and "ValueError: injected failure" in err, err
    assert "at exit: initialized False" in out, out


CLEANING_UP_RANK = """
import os, signal, sys, time
from ignite.engine import Engine
from pam_monai.engines import StopOnTerminate
from pam_monai.engines.cleanup import clean_up_on_error

folder = sys.argv[1]

def release_lock(engine, error):  # a clean-up attached before StopOnTerminate (the training lock's)
    if not os.path.exists(folder + "/released"):  # torchrun signals once
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's, sent when it saw a peer fail
        time.sleep(0.2)
    open(folder + "/released", "w").write("1")

def step(engine, batch):
    raise RuntimeError("Connection reset by peer")  # gloo's, a peer having ended

engine = Engine(step)
clean_up_on_error(engine, release_lock)
StopOnTerminate().attach(engine)
engine.run(range(4), max_epochs=1)
"""


def test_a_sigterm_while_cleaning_up_after_an_error_waits_for_the_clean_up(tmp_path):
    """When a peer process failed, torchrun sends the others a SIGTERM; process 0, whose collective
    had just raised, was cleaning up (training locks, writers, MLflow run), but StopOnTerminate's
    error handler ran first and put SIGTERM's default back: the signal ended the process inside its
    clean-up (status -15: locks held, MLflow run RUNNING). Now the clean-up runs to its end and the
    process exits with its error."""
    script = tmp_path / "rank.py"
    script.write_text(CLEANING_UP_RANK)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # a ceiling: about 8 s, imports mostly (monai takes 18 s on a loaded machine)
    )
    tail = done.stderr[-2000:]
    assert done.returncode == 1, tail
    assert (tmp_path / "released").exists(), tail
    assert tail.rstrip().endswith("RuntimeError: Connection reset by peer"), tail
    assert "SIGTERM while cleaning up after the run's error" in done.stderr, done.stderr[:2000]


RESUMING_RANKS = """
import datetime, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from ignite.engine import Engine
from pam_monai.engines import TrainingCheckpoint

def run(rank, folder):
    timeout = datetime.timedelta(seconds=30)  # without the check, rank 1 waits for a gone rank 0
    dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=2, timeout=timeout)
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda engine, batch: 0.0)
    ckpt = TrainingCheckpoint(f"{folder}/node{rank}", net, torch.optim.SGD(net.parameters(), lr=0.1), resume=True)
    ckpt.attach(engine)
    try:
        engine.run(list(range(4)), max_epochs=2)
        message = f"trained from epoch {engine.state.epoch}"
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
    open(f"{folder}/rank{rank}.txt", "w").write(message)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.start_processes(run, args=(sys.argv[1],), nprocs=2, start_method="fork")
"""


def _resume_on_two_nodes(tmp_path) -> list[str]:
    """Two gloo ranks resume from node0/ and node1/ (rank 0's node holding a one-epoch checkpoint,
    node1/ as the test left it); each rank's error message, checked to be the resume's refusal."""
    from ignite.engine import Engine

    from pam_monai.engines import TrainingCheckpoint

    net = torch.nn.Linear(2, 1)
    first = Engine(lambda engine, batch: 0.0)
    TrainingCheckpoint(str(tmp_path / "node0"), net, torch.optim.SGD(net.parameters(), lr=0.1)).attach(first)
    first.run(list(range(4)), max_epochs=1)
    script = tmp_path / "ranks.py"
    script.write_text(RESUMING_RANKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=120, cwd=ROOT, env=env)
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    for rank, message in enumerate(messages):
        assert message.startswith(f"ValueError: {tmp_path / f'node{rank}' / 'checkpoint_last.pt'}: resume"), (
            message
        )
    return messages


def test_resume_refuses_when_the_processes_see_different_checkpoints(tmp_path):
    """torchrun on several nodes with a ckpt_dir on each node's own disk: rank 0 writes
    checkpoint_last.pt on its node only, and a resume loaded it on rank 0 while the ranks of the
    other nodes found none and trained from epoch 0 (DDP synchronises weights only when it is
    built, before the resume), one epoch count apart, until a collective waited for a rank that
    had ended. Every rank now refuses, naming what each one found."""
    for message in _resume_on_two_nodes(tmp_path):  # rank 0's node holds epoch 1; rank 1's node nothing
        assert "rank 0: epoch 1, rank 1: none" in message and "ckpt_dir" in message, message


def test_resume_refuses_on_every_rank_when_one_cannot_read_its_checkpoint(tmp_path):
    """A rank whose checkpoint_last.pt is unreadable (a node's truncated copy) raised before the
    collective that compares the ranks' checkpoints, and the other ranks waited there until the
    process group's timeout. Every rank now refuses at once, naming the unreadable file."""
    (tmp_path / "node1").mkdir()
    (tmp_path / "node1" / "checkpoint_last.pt").write_bytes(b"truncated")
    for message in _resume_on_two_nodes(tmp_path):
        assert "rank 0: epoch 1, rank 1: unreadable: " in message, message
        assert f"{tmp_path / 'node1' / 'checkpoint_last.pt'}: cannot load checkpoint" in message, message


def test_checkpoints_load_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(RuntimeError, match="evil.pt: cannot load checkpoint"):
        load_checkpoint(path)


def test_evaluation_loads_its_weights_only(tmp_path):
    """evaluate.json loaded model.pt with MONAI's ``CheckpointLoader``, which MONAI 1.4 and 1.5 (the
    floor is 1.4) run with ``weights_only=False``: a model.pt from elsewhere could run code (and it
    read the file a second time, after check_weights). Its evaluating step now loads the weights
    once, the project's way, refusing such a file before it runs anything."""
    from monai.bundle import ConfigParser
    from monai.handlers import CheckpointLoader

    parser = ConfigParser()
    parser.read_config([TRAIN, str(ROOT / "bundles" / "brats_fpa" / "configs" / "evaluate.json")])
    parser.update({"bundle_root": str(tmp_path), "network_options": SMALL, "device": "$torch.device('cpu')"})
    assert not [h for h in parser.get_parsed_content("validate#handlers") if isinstance(h, CheckpointLoader)]
    (step,) = [
        i for i, e in enumerate(parser["evaluating"]) if "load_weights(@ckpt_path, @network)" in str(e)
    ]
    ran = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    ckpt = Path(parser.get_parsed_content("ckpt_path"))
    ckpt.parent.mkdir(parents=True)
    torch.save(Evil(), ckpt)
    with pytest.raises(RuntimeError) as refused:  # MONAI's "Failed to evaluate" around ours
        parser.get_parsed_content(f"evaluating#{step}")
    assert "model.pt: cannot load checkpoint" in str(refused.value.__cause__), refused.value.__cause__
    assert not ran.exists()
    network = parser.get_parsed_content("network")
    trained = {
        k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in network.state_dict().items()
    }
    torch.save(trained, ckpt)
    parser.get_parsed_content(f"evaluating#{step}")  # into the same network object
    assert all(torch.equal(v, trained[k]) for k, v in network.state_dict().items())


def _whole_network(path):
    torch.save(torch.nn.Linear(2, 2), path)


def _torchscript(path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)


def _truncated(path):
    torch.save({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize(
    "write, expected",
    [
        (lambda p: p.write_bytes(b""), "an empty file .*copy it again"),
        (
            lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n"),
            "a Git LFS pointer.*git lfs pull",
        ),
        (lambda p: p.write_text("<html>404 Not Found</html>"), "a text file, not weights .*copy it again"),
        (lambda p: np.save(open(p, "wb"), np.zeros(3)), "not a file saved by torch.save .*copy it again"),
        (_truncated, "truncated or corrupt .*copy it again"),
        (
            _whole_network,
            r"it holds Python objects besides tensors .*torch.save\(model.state_dict\(\), 'model.pt'\)",
        ),
        (_torchscript, "a TorchScript export .*use the model.pt it was exported from"),
    ],
    ids=["empty", "lfs-pointer", "text", "numpy", "truncated", "whole-network", "torchscript"],
)
def test_unloadable_checkpoints_say_what_the_file_is(tmp_path, write, expected):
    """Files copied in by mistake as model.pt: torch named neither what they are nor what to do (an
    empty file ended in a bare EOFError; a Git LFS pointer in "Unsupported operand 118" with advice to
    load it with weights_only=False, which lets a file run code)."""
    path = tmp_path / "model.pt"
    write(path)
    with pytest.warns(UserWarning, match="TorchScript") if "TorchScript" in expected else nullcontext():
        with pytest.raises(RuntimeError, match=f"model.pt: cannot load checkpoint: {expected}") as err:
            load_checkpoint(path)
    assert "weights_only` set to `False`" not in str(err.value)


@pytest.mark.parametrize("case", ["../escape", "/etc/passwd", "a/b", "..", ""])
def test_output_paths_never_escape_the_output_folder(case, tmp_path):
    with pytest.raises(ValueError, match="unsafe case ID"):
        safe_output_path(tmp_path, case, "_seg.nii.gz")
    assert safe_output_path(tmp_path, "Brats18_2013_2_1", "_seg.nii.gz").parent == tmp_path.resolve()


# --- bad input at inference ------------------------------------------------------------------


@pytest.fixture()
def cases(tmp_path) -> Path:
    root = tmp_path / "brats"
    synth("brats", root, cases=2, seed=1, slices=4)
    return root


def predict(root: Path, out: Path) -> None:
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    CasePredictor(net, find_inference_cases("brats", root), "brats", str(out)).run()


def first_case(root: Path) -> tuple[str, Path]:
    folder = sorted(p for p in root.rglob("Brats18_*") if p.is_dir())[0]
    return folder.name, folder


def rewrite(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(array, img.affine if affine is None else affine), str(path))


def corrupt(kind: str, root: Path) -> tuple[str, str]:
    case, folder = first_case(root)
    t1 = folder / f"{case}_t1.nii.gz"
    data = np.asarray(nib.load(str(t1)).dataobj).astype(np.float32)
    if kind == "missing modality":
        t1.unlink()
        return case, "missing modality 't1'"
    if kind == "wrong dimensionality":
        rewrite(t1, data[..., 0])
        return case, "shape"
    if kind == "mismatched grid":
        rewrite(t1, data, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
        return case, "affine differs"
    if kind == "nan":
        data[100, 100, 1] = np.nan
        data[101, 100, 1] = np.inf
        rewrite(t1, data)
        return case, "1 NaN and 1 Inf voxels"
    if kind == "all-zero modality":
        rewrite(t1, np.zeros_like(data))
        return case, "modality is all zeros: give the case this channel's image"
    if kind == "constant modality":  # a placeholder for a missing scan: normalises to zeros as well
        rewrite(t1, np.full_like(data, 7.0))
        return case, "modality is constant (7 everywhere): give the case this channel's image"
    if kind == "truncated file":  # a copy cut short: which of the four files is the user to replace?
        t1.write_bytes(t1.read_bytes()[:2000])
        return case, "unreadable or truncated file"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "missing modality",
        "wrong dimensionality",
        "mismatched grid",
        "nan",
        "all-zero modality",
        "constant modality",
        "truncated file",
    ],
)
def test_bad_input_at_inference_is_refused_by_name_and_writes_nothing(kind, cases, tmp_path):
    case, message = corrupt(kind, cases)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        predict(cases, out)
    text = str(err.value)
    assert case in text and message in text, text
    if kind != "missing modality":
        assert f"{case}_t1.nii.gz" in text, text
    assert not out.exists() or not any(out.iterdir())


def test_a_volume_smaller_than_the_crop_is_padded_and_its_mask_is_on_its_own_grid(cases, tmp_path, caplog):
    """A BraTS volume smaller in-plane than the 160x160 crop is zero-padded to it, as training and
    evaluation do, with a WARNING: its mask has the input's shape and affine and equals the mask of
    the same volume padded by hand (what the refusal asked the user to do) cut back to the input."""
    import logging

    case, folder = first_case(cases)
    padded_root = tmp_path / "padded"
    shutil.copytree(cases, padded_root)
    for mod in ("flair", "t1", "t1ce", "t2", "seg"):
        small = np.asarray(nib.load(str(folder / f"{case}_{mod}.nii.gz")).dataobj)[
            40:190, 45:195
        ]  # 150 x 150
        rewrite(folder / f"{case}_{mod}.nii.gz", small)
        by_hand = np.pad(small, ((5, 5), (5, 5), (0, 0)))  # centred, as MONAI's SpatialPad pads
        rewrite(next(padded_root.rglob(f"{case}_{mod}.nii.gz")), by_hand)
    torch.manual_seed(0)  # weights of their own, not of whatever the tests before left in the RNG
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        CasePredictor(net, find_inference_cases("brats", cases), "brats", str(tmp_path / "out")).run()
    assert f"{case}: in-plane size (150, 150) is smaller than the 160x160 crop" in caplog.text
    CasePredictor(
        net, find_inference_cases("brats", padded_root), "brats", str(tmp_path / "out_padded")
    ).run()
    source = nib.load(str(folder / f"{case}_t1.nii.gz"))
    mask = nib.load(str(tmp_path / "out" / f"{case}_seg.nii.gz"))
    assert mask.shape == source.shape == (150, 150, 4)
    np.testing.assert_array_equal(mask.affine, source.affine)
    expected = np.asarray(nib.load(str(tmp_path / "out_padded" / f"{case}_seg.nii.gz")).dataobj)[5:155, 5:155]
    assert expected.any()  # seed-0 weights segment something: the comparison is not of two empty masks
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)


@pytest.mark.parametrize("kind", ["wrong dimensionality", "mismatched grid", "nan", "all-zero modality"])
def test_skip_invalid_segments_the_other_cases(kind, cases, tmp_path, caplog):
    """--skip_invalid: one bad scan in a folder no longer blocks the others; it is named, not segmented."""
    import logging

    bad, message = corrupt(kind, cases)
    out = tmp_path / "out"
    items = find_inference_cases("brats", cases)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        written = CasePredictor(net, items, "brats", str(out), skip_invalid="true").run()
    names = sorted(p.name for p in written)
    assert names == [f"{it['case']}_seg.nii.gz" for it in items if it["case"] != bad]
    assert "skipping 1 input problem(s) (--skip_invalid)" in caplog.text and bad in caplog.text
    assert message in caplog.text


def test_brats_cases_stored_in_another_orientation_are_named(cases, tmp_path, caplog):
    """BraTS ships LPS; a copy reoriented (e.g. to RAS by a MONAI pipeline) reaches the network
    turned: training records the usual orientation and inference names such cases, with the fix."""
    import logging

    from pam_monai.data.checker import orientation, usual_orientation

    train = find_inference_cases("brats", cases)
    stored = usual_orientation("brats", train)
    assert stored == orientation(nib.load(str(train[0]["image"][0])).affine)
    other = "RAS" if stored != "RAS" else "LPS"
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    atomic_save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(
        json.dumps({"metric": "val_iou", "value": 0.1, "run": {"orientation": other}})
    )
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        CasePredictor(
            net,
            find_inference_cases("brats", cases),
            "brats",
            str(tmp_path / "out"),
            ckpt_path=str(tmp_path / "model.pt"),
        ).run()
    assert f"orientation {stored}, but the training cases are {other}" in caplog.text
    assert f"axcodes2ornt('{other}')" in caplog.text


def test_inference_command_exits_non_zero_on_bad_input(cases, tmp_path):
    corrupt("nan", cases)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inferring",
        "--config_file",
        INFER,
        "--bundle_root",
        str(tmp_path),
        "--input_dir",
        str(cases),
        "--output_dir",
        str(out),
        "--ckpt_path",
        "",
        "--network_options",
        json.dumps(SMALL),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "1 NaN and 1 Inf voxels" in proc.stderr + proc.stdout
    assert not out.exists() or not any(out.iterdir())


def test_inference_on_a_folder_in_another_layout_names_the_expected_one(tmp_path):
    """An --input_dir without a single case says which layout was expected (and, for ISLES 2022
    files given to an ISLES 2018 bundle, the converter), even where that message mentions labels."""
    isles22 = tmp_path / "isles22" / "sub-strokecase0001"
    isles22.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no case found in .*\n.*ISLES 2022.*convert_isles22"):
        find_inference_cases("isles", isles22.parent)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no case found in .*\n.*expected <root>/leftImg8bit/"):
        find_inference_cases("cityscapes", tmp_path / "frames")


def test_isles_inference_finds_the_testing_cases(tmp_path, caplog):
    """ISLES 2018's TESTING folder (cases without OT) is what inference is for: a root holding it
    alone was refused ("no case_<n> folders, expected <root>/TRAINING/..."); with TRAINING beside it
    (whose case_<n> are other patients of the same names) TRAINING is segmented and the run says how
    to get TESTING's."""
    import logging
    import shutil

    root = synth("isles", tmp_path / "isles", cases=2, max_slices=2)
    shutil.move(root / "TRAINING", root / "TESTING")
    for label in (root / "TESTING").glob("case_*/SMIR.Brain.XX.O.OT.*"):
        shutil.rmtree(label)
    assert [it["case"] for it in find_inference_cases("isles", root)] == ["case_1", "case_2"]
    assert "TESTING" in find_inference_cases("isles", root)[0]["image"][0]
    shutil.copytree(root / "TESTING", root / "TRAINING")
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        items = find_inference_cases("isles", root)
    assert all("TRAINING" in it["image"][0] for it in items)
    assert f"for the test cases pass --input_dir {root / 'TESTING'}" in caplog.text


@pytest.mark.parametrize(
    "layout, expected",
    [
        (
            lambda sd: {f"module.{k}": v for k, v in sd.items()},
            r"every key starts with 'module.' .*removeprefix",
        ),
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, r"every key starts with '_orig_mod.'"),
        (
            lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
            r"every key starts with 'module._orig_mod.' .*removeprefix\('module._orig_mod.'\)",
        ),
        (
            lambda sd: {"state_dict": sd, "epoch": 3},
            r"the weights are its entry 'state_dict' .*torch.load\(path, weights_only=True\)\['state_dict'\]",
        ),
    ],
    ids=["ddp", "compiled", "compiled_in_ddp", "nested"],
)
def test_weights_in_another_layout_name_the_layout_not_the_network(tmp_path, layout, expected):
    """The right weights saved from a wrapped network, or nested in another tool's checkpoint, were
    blamed on the network ("81 missing, 81 unexpected: pass the network_name ..."), which sent the
    user after the wrong override. The fix it names loads the file with ``weights_only=True`` (it
    said ``torch.load(path)``, which before torch 2.6, allowed here, lets a file run code)."""
    from pam_monai.engines import check_weights

    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    weights = tmp_path / "model.pt"
    torch.save(layout(net.state_dict()), weights)
    with pytest.raises(ValueError, match=f"model.pt: these weights do not fit as saved: {expected}") as err:
        check_weights(weights, net)
    assert "network_name" not in str(err.value)
    # the line it gives to run loads as the project does: tensors only, whatever torch's default
    assert all(
        c == "torch.load(path, weights_only=True)"
        for c in re.findall(r"torch\.load\([^)]*\)", str(err.value))
    )


def test_own_data_weights_without_their_record_name_the_missing_model_json(tmp_path):
    """model.pt copied in alone (the README says: with its model.json): own-data inference said only
    "data/dataset.json not found", sending the user after a data set that inference does not need."""
    from pam_monai.engines import inference_spec

    weights = tmp_path / "models" / "model.pt"
    weights.parent.mkdir()
    atomic_save({}, weights)
    with pytest.raises(
        FileNotFoundError,
        match=r"dataset.json not found.*model.json .*there is none: copy it in with the weights",
    ):
        inference_spec("nnunet", tmp_path / "data", None, str(weights))
    with pytest.raises(FileNotFoundError, match=r"dataset.json not found") as err:  # no weights: the data set
        inference_spec("nnunet", tmp_path / "data", None, str(tmp_path / "none.pt"))
    assert "model.json" not in str(err.value)


def test_datalist_mistakes_are_errors_not_a_synthetic_stand_in(tmp_path):
    from pam_monai.engines import prepare_data

    with pytest.raises(FileNotFoundError, match="datalist .*missing.json not found"):
        prepare_data("brats", tmp_path / "data", tmp_path / "missing.json", synthetic_dir=tmp_path / "s")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="dataset_dir .*none does not exist"):
        prepare_data("brats", tmp_path / "none", datalist, synthetic_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()  # refused before any stand-in is generated
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no data set .*would ignore the datalist"):
        prepare_data("brats", tmp_path / "empty", datalist, synthetic_dir=tmp_path / "s")
    # a dataset_dir named explicitly (not the bundle's default) must hold the data set: no stand-in
    for folder, what in ((tmp_path / "typo", "does not exist"), (tmp_path / "empty", "is empty")):
        with pytest.raises(FileNotFoundError, match=f"brats: dataset_dir .*{folder.name} {what}: .*a typo"):
            prepare_data("brats", folder, synthetic_dir=tmp_path / "s2", stand_in="false")
    assert not (tmp_path / "s2").exists()


def test_a_broken_datalist_file_is_named(tmp_path):
    """A hand-edited --data_list_file_path that is not JSON (or not an object of lists) is named:
    a bare JSONDecodeError ('line 2 column 1') does not say which file."""
    from pam_monai.data import load_datalist

    path = tmp_path / "external.json"
    for text, what in (('{"test": [\n', "Expecting value"), ("[]", "got list")):
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"{path}: not a JSON datalist \(.*{what}"):
            load_datalist(path, tmp_path)


def test_a_datalist_is_read_as_utf8_as_dataset_json_is(tmp_path):
    """A hand-made datalist saved by a Windows editor (byte-order mark) is read, as dataset.json
    is, and paths with accents decode as UTF-8 whatever the locale; another encoding is named."""
    from pam_monai.data import load_datalist

    path = tmp_path / "external.json"
    path.write_bytes(
        json.dumps({"test": [{"image": "Énée_0000.nii.gz"}]}, ensure_ascii=False).encode("utf-8-sig")
    )
    assert load_datalist(path)["test"][0]["image"] == "Énée_0000.nii.gz"
    path.write_bytes('{"test": [{"image": "Énée_0000.nii.gz"}]}'.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{path}: not UTF-8 text .*save it as UTF-8"):
        load_datalist(path)


def test_inference_names_weights_that_do_not_fit_the_network(cases, tmp_path):
    weights = tmp_path / "model.pt"
    atomic_save(get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1).state_dict(), weights)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    predictor = CasePredictor(
        net, find_inference_cases("brats", cases), "brats", str(tmp_path / "out"), ckpt_path=str(weights)
    )
    with pytest.raises(
        ValueError, match=r"model.pt: these weights do not fit FPAUNet .*network_name and network_options"
    ):
        predictor.run()
    assert not (tmp_path / "out").exists()


def test_check_run_names_every_mismatch_and_refuses_real_weights_on_synthetic_data(tmp_path):
    from pam_monai.engines import check_run

    weights = tmp_path / "model.pt"
    with pytest.raises(FileNotFoundError, match="no trained weights"):
        check_run(weights, {})
    assert check_run("", {}) is None  # no checkpoint to load (inference keeps the weights it has)
    atomic_save({}, weights)
    assert check_run(weights, {"network_name": "fpa"}) is None  # no record: weights from elsewhere
    record = {
        "task": "brats",
        "network_name": "fpa",
        "network_options": {"features": [8, 16, 32, 64]},
        "in_channels": 4,
        "data_root": "/data/brats",
        "synthetic": False,
    }
    (tmp_path / "model.json").write_text(json.dumps({"metric": "val_iou", "value": 0.5, "run": record}))
    same = {k: record[k] for k in ("task", "network_name", "network_options", "in_channels")}
    assert check_run(weights, same, {"synthetic": False, "root": "/data/brats"}) == record
    with pytest.raises(ValueError) as err:
        check_run(
            weights,
            {**same, "network_name": "rfna", "network_options": {}},
            {"synthetic": True, "root": "/s"},
        )
    text = str(err.value)
    assert (
        "network_name: the weights were trained with 'fpa', this run has 'rfna' (pass --network_name 'fpa')"
        in text
    )
    assert """(pass --network_options '{"features": [8, 16, 32, 64]}')""" in text
    assert "trained on /data/brats" in text
    assert "this run's data in /s are SYNTHETIC" in text and "pass --dataset_dir of real data" in text
    with pytest.raises(
        ValueError, match=r"in_channels: .* \(pass the data set \(--task, --dataset_dir\) they were"
    ):
        check_run(weights, {**same, "in_channels": 2})


def test_best_model_records_and_says_its_epoch_and_the_best_so_far(tmp_path, caplog):
    """model.json said the best value but not the epoch it came from, and an epoch that did not
    beat it said nothing of the best: both now, and a resumed run goes on from the recorded one."""
    import logging
    from types import SimpleNamespace

    from pam_monai.engines import BestCheckpoint

    def validated(best, value, epoch):
        best(SimpleNamespace(state=SimpleNamespace(metrics={"val_iou": value}, epoch=epoch)))

    net = get_network("unet", spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8))
    best = BestCheckpoint(str(tmp_path), net, run_info={"task": "brats"})
    with caplog.at_level(logging.INFO, logger="pam_monai"):
        validated(best, 0.4, 1)
        validated(best, 0.5, 2)
        validated(best, 0.45, 3)
    record = json.loads((tmp_path / "model.json").read_text())
    assert (record["value"], record["epoch"]) == (0.5, 2)
    assert "new best val_iou 0.5000 at epoch 2: saved" in caplog.text
    assert (
        f"val_iou 0.4500 at epoch 3; the best so far 0.5000 (epoch 2) in {tmp_path / 'model.pt'}"
        in caplog.text
    )
    caplog.clear()
    resumed = BestCheckpoint(str(tmp_path), net, run_info={"task": "brats"}, resume=True)
    with caplog.at_level(logging.INFO, logger="pam_monai"):
        validated(resumed, 0.3, 4)
    assert "the best so far 0.5000 (epoch 2)" in caplog.text


def test_best_model_and_its_record_interrupted_between_the_two_writes(tmp_path, monkeypatch):
    """model.pt and model.json are two renames: the new record waits beside them (pending, naming
    its weights by SHA-256) until the weights are in place, so a run killed at either step leaves a
    pair that evaluation reads right and that a resumed run completes; weights replaced by hand
    beside another record are refused."""
    from types import SimpleNamespace

    from pam_monai.engines import BestCheckpoint, check_run
    from pam_monai.engines import checkpoint as ckpt

    class Killed(BaseException):
        pass

    def validated(best, value):
        best(SimpleNamespace(state=SimpleNamespace(metrics={"val_iou": value})))

    def stored(name="model.json"):
        return json.loads((tmp_path / name).read_text())["value"]

    net = get_network("unet", spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8))
    record = {"task": "brats", "network_name": "unet"}
    best = BestCheckpoint(str(tmp_path), net, run_info=record)
    validated(best, 0.4)
    assert check_run(tmp_path / "model.pt", record) == record
    first = (tmp_path / "model.pt").read_bytes()

    # killed after the new weights are in place, before their record is
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    with monkeypatch.context() as m:
        m.setattr(ckpt, "_commit_record", lambda path: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            validated(best, 0.5)
    assert (tmp_path / "model.pt").read_bytes() != first and stored() == 0.4
    assert check_run(tmp_path / "model.pt", record) == record  # the pending record describes them
    resumed = BestCheckpoint(str(tmp_path), net, run_info=record, resume=True)
    assert resumed.best_value == pytest.approx(0.5) and stored() == 0.5
    assert not (tmp_path / "model.json.pending").exists()

    # killed after the pending record, before the weights' rename: the old pair stands
    saved = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    real_write = ckpt.atomic_write_text

    def write_then_die(path, text):
        real_write(path, text)
        raise Killed()

    with monkeypatch.context() as m:
        m.setattr(ckpt, "atomic_write_text", write_then_die)
        with pytest.raises(Killed):
            validated(resumed, 0.6)
    assert (tmp_path / "model.pt").read_bytes() == saved and stored("model.json.pending") == 0.6
    assert check_run(tmp_path / "model.pt", record) == record
    resumed = BestCheckpoint(str(tmp_path), net, run_info=record, resume=True)
    assert resumed.best_value == pytest.approx(0.5) and not (tmp_path / "model.json.pending").exists()
    assert not [f.name for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temporary left

    # weights replaced by hand beside the record of others: refused by name
    atomic_save(net.state_dict(), tmp_path / "model.pt")
    with pytest.raises(
        ValueError, match=r"model.json describes other weights than .*model.pt .*delete model.json"
    ):
        check_run(tmp_path / "model.pt", record)


def test_a_resumed_optimiser_says_which_settings_it_keeps_from_the_checkpoint(tmp_path, caplog):
    """PyTorch restores every optimiser setting of a checkpoint, not only the learning rate: ``--resume
    true --weight_decay 0.1`` went on with the checkpoint's weight decay, and only another learning
    rate was said."""
    import logging

    from ignite.engine import Engine

    from pam_monai.engines import TrainingCheckpoint

    net = torch.nn.Linear(2, 1)

    def train(weight_decay: float, resume: bool) -> None:
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
        engine = Engine(lambda e, b: optimizer.step())
        TrainingCheckpoint(str(tmp_path), net, optimizer, resume=resume).attach(engine)
        engine.run([0, 1], max_epochs=2 if resume else 1)

    train(1e-5, resume=False)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        train(1e-5, resume=True)
        assert "continues with" not in caplog.text
        (tmp_path / "checkpoint_last.pt").unlink()
        train(1e-5, resume=False)
        train(0.1, resume=True)
    assert "continues with the checkpoint's weight decay 1e-05, not this run's 0.1" in caplog.text
    assert "learning rate" not in caplog.text


@pytest.mark.parametrize("rank, said", [(0, True), (1, False)])
def test_a_replaced_model_is_said_once_under_torchrun(tmp_path, caplog, monkeypatch, rank, said):
    """Under ``torchrun`` every process makes the ``BestCheckpoint`` (validation is collective),
    but only rank 0 writes ``model.pt``: each process said that it would replace the earlier model,
    the same warning once per GPU. Now the process that writes it says so."""
    import logging
    from types import SimpleNamespace

    from pam_monai.engines import BestCheckpoint

    net = torch.nn.Linear(2, 1)
    record = {"task": "brats", "network_name": "fpa", "network_options": {}}
    BestCheckpoint(str(tmp_path), net, run_info=record)(
        SimpleNamespace(state=SimpleNamespace(metrics={"val_iou": 0.3}))
    )
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
    for run_info in (record, {**record, "network_name": "aunet"}):  # the same network; another one
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pam_monai"):
            BestCheckpoint(str(tmp_path), net, run_info=run_info)
        assert ("replaces it" in caplog.text) is said, (rank, caplog.text)


def test_what_a_run_keeps_or_replaces_is_said(tmp_path, caplog):
    """A resumed optimiser keeps the checkpoint's learning rate (PyTorch's rule): a WARNING says so
    when the run asked for another; a new run that will replace another network's model says so;
    weights trained on a synthetic stand-in scored on real data are named."""
    import logging
    from types import SimpleNamespace

    from ignite.engine import Engine

    from pam_monai.engines import BestCheckpoint, TrainingCheckpoint, check_run

    net = torch.nn.Linear(2, 1)

    def train(lr: float, resume: bool) -> Engine:
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
        engine = Engine(lambda e, b: optimizer.step())
        TrainingCheckpoint(str(tmp_path), net, optimizer, resume=resume).attach(engine)
        engine.run([0, 1], max_epochs=2 if resume else 1)
        return engine

    train(1e-3, resume=False)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        train(1e-3, resume=True)
        assert "learning rate" not in caplog.text
        (tmp_path / "checkpoint_last.pt").unlink()
        train(1e-3, resume=False)
        train(5e-4, resume=True)
    assert "continues with the checkpoint's learning rate 0.001, not this run's 0.0005" in caplog.text

    caplog.clear()
    record = {"task": "brats", "network_name": "fpa", "synthetic": True, "data_root": "/s"}
    BestCheckpoint(str(tmp_path), net, run_info=record)(
        SimpleNamespace(state=SimpleNamespace(metrics={"val_iou": 0.3}))
    )
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        BestCheckpoint(str(tmp_path), net, run_info=record, resume=True)  # continues it: nothing to say
        assert "replaces it" not in caplog.text
        BestCheckpoint(str(tmp_path), net, run_info=record)  # the same command again: its model would go
        assert "holds the model of an earlier training (val_iou 0.3000); this run starts anew" in caplog.text
        assert "--resume true continues that training" in caplog.text
        caplog.clear()
        BestCheckpoint(str(tmp_path), net, run_info={**record, "network_name": "aunet"})
        assert "holds a model trained with network_name 'fpa'; this run replaces it" in caplog.text
        check_run(tmp_path / "model.pt", record, {"synthetic": False, "root": "/data/brats"})
    assert "trained on a SYNTHETIC stand-in (/s); their scores on /data/brats" in caplog.text


def test_training_says_at_its_end_where_the_model_is_and_what_to_type_next(tmp_path, caplog, monkeypatch):
    """A training ended on Ignite's "Engine run finished": a new user had to find the model's
    path in the log and the evaluation command in the docs. The end names the best model (epoch,
    score) and the evaluation and inference commands; a run stopped early (Ctrl-C, SIGTERM) or
    without a validated model says nothing, nor does a training run in a program (the experiment
    runner, which evaluates it itself: it was told to type the evaluation of another network's
    bundle, without the run's folder)."""
    import logging

    from ignite.engine import Engine

    from pam_monai.engines import TrainingPlan, workflow

    monkeypatch.setattr(workflow, "_run_by_monai_bundle", lambda: True)  # python -m monai.bundle

    def train(stop_at: int | None = None) -> str:
        engine = Engine(lambda e, b: e.terminate() if e.state.epoch == stop_at else None)
        TrainingPlan(synthetic=True, ckpt_dir=str(tmp_path)).attach(engine)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pam_monai"):
            engine.run(range(2), max_epochs=3)
        return caplog.text

    assert "training finished" not in train()  # no model.pt: nothing validated
    (tmp_path / "model.pt").write_bytes(b"weights")
    (tmp_path / "model.json").write_text(json.dumps({"metric": "val_iou", "value": 0.25, "epoch": 2}))
    said = train()
    assert f"training finished: best model {tmp_path / 'model.pt'} (epoch 2, val_iou 0.2500)" in said
    assert (
        "python -m monai.bundle run evaluating --config_file \"['configs/train.json','configs/evaluate.json']\""
        in said
    )
    assert "python -m monai.bundle run inferring --config_file configs/inference.json --input_dir DIR" in said
    # the run's overrides go with the commands: inference gets those inference.json has (it refuses
    # --epochs), not --output_dir (the training's eval/ folder, not where masks go); neither gets
    # --tracking's settings (refused without --tracking, an id no config has)
    configs = tmp_path / "bundle" / "configs"
    shutil.copytree(ROOT / "bundles" / "brats_fpa" / "configs", configs)
    monkeypatch.setattr(workflow, "_running_workflow_configs", lambda: configs)
    given = ["--epochs", "2", "--batch_size=4", "--dataset_dir", "/data/my cases", "--task", "nnunet"]
    given += ["--output_dir", "/r/eval", "--tracking", "mlflow", "--tracking_uri", "sqlite:///t.db"]
    command = [str(Path(sys.executable).parent / "monai" / "bundle" / "__main__.py"), "run", "training"]
    monkeypatch.setattr(sys, "argv", [*command, "--config_file", str(configs / "train.json"), *given])
    said = train()
    evaluating = said.split("run evaluating ")[1].split(";")[0]
    assert evaluating.endswith(
        "--epochs 2 --batch_size 4 --dataset_dir '/data/my cases' --task nnunet --output_dir /r/eval"
    )
    inferring = said.split("run inferring ")[1].splitlines()[0]
    assert (
        inferring
        == f"--config_file {configs / 'inference.json'} --input_dir DIR --dataset_dir '/data/my cases' --task nnunet"
    )
    from monai.bundle import ConfigParser

    for files, printed in ((["train.json", "evaluate.json"], evaluating), (["inference.json"], inferring)):
        parser = ConfigParser()  # check_override_ids's rule: an id the command's configs have
        parser.read_config([str(configs / f) for f in files])
        words = shlex.split(printed)
        ids = [w[2:] for w in words if w.startswith("--") and w not in ("--config_file", "--input_dir")]
        assert ids and all(i in parser for i in ids), (files, ids)
    assert "training finished" not in train(stop_at=1)
    assert "training finished" not in train(stop_at=3)  # stopped in the last epoch
    monkeypatch.setattr(workflow, "_run_by_monai_bundle", lambda: False)  # the runner, a notebook
    assert "training finished" not in train()


def test_next_commands_of_a_torchrun_training_carry_only_their_configs_ids(tmp_path, caplog, monkeypatch):
    """A torchrun training (train.json and multi_gpu_train.json) given ``--dist_timeout_minutes``
    printed an evaluation command carrying it too, which the evaluation (train.json and
    evaluate.json) refused: "--dist_timeout_minutes: no such id in train.json, evaluate.json". The
    commands now carry the ids their own configs have; the others (here also an id of the user's
    own extra config) stay with the training."""
    import logging

    from ignite.engine import Engine

    from pam_monai.engines import TrainingPlan, workflow

    configs = tmp_path / "bundle" / "configs"
    shutil.copytree(ROOT / "bundles" / "brats_fpa" / "configs", configs)
    (tmp_path / "mine.json").write_text(json.dumps({"my_setting": 1}))
    (tmp_path / "model.pt").write_bytes(b"weights")
    monkeypatch.setattr(workflow, "_run_by_monai_bundle", lambda: True)
    monkeypatch.setattr(workflow, "_running_workflow_configs", lambda: configs)
    files = [str(configs / "train.json"), str(configs / "multi_gpu_train.json"), str(tmp_path / "mine.json")]
    given = ["--dist_timeout_minutes", "5", "--epochs", "2", "--my_setting", "2", "--dataset_dir", "/d"]
    command = [str(Path(sys.executable).parent / "monai" / "bundle" / "__main__.py"), "run", "training"]
    monkeypatch.setattr(sys, "argv", [*command, "--config_file", str(files), *given])
    engine = Engine(lambda e, b: None)
    TrainingPlan(synthetic=True, ckpt_dir=str(tmp_path)).attach(engine)
    with caplog.at_level(logging.INFO, logger="pam_monai"):
        engine.run(range(2), max_epochs=1)
    evaluating = caplog.text.split("run evaluating ")[1].split(";")[0]
    inferring = caplog.text.split("run inferring ")[1].splitlines()[0]
    assert evaluating.endswith("evaluate.json']\" --epochs 2 --dataset_dir /d"), evaluating
    assert inferring.endswith("--input_dir DIR --dataset_dir /d"), inferring


def test_training_says_how_many_steps_it_holds(caplog):
    """A run on real data with few optimiser steps (a small own data set at the paper's BRATS
    defaults) is warned about; a synthetic smoke run is not."""
    import logging

    from ignite.engine import Engine

    from pam_monai.engines import TrainingPlan

    for synthetic in (False, True):
        engine = Engine(lambda e, b: None)
        TrainingPlan(synthetic=synthetic, min_steps=100).attach(engine)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pam_monai"):
            engine.run(range(10), max_epochs=3)
        assert "10 optimiser steps per epoch x 3 epochs = 30" in caplog.text
        assert ("only 30 optimiser steps in all" in caplog.text) is not synthetic
    # under torchrun the steps are one process's, of its shard of the slices: the line says so
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    engine = Engine(lambda e, b: None)
    TrainingPlan(synthetic=True).attach(engine)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pam_monai"):
        data = list(range(10))
        engine.run(DataLoader(data, batch_size=2, sampler=DistributedSampler(data, 3, 0)), max_epochs=1)
    assert (
        "10 slices dealt to 3 processes (4 each per epoch), each 2 optimiser steps per epoch x 1"
        in caplog.text
    )


def test_evaluation_and_inference_share_one_threshold():
    """A logit of exactly 0 (probability 0.5) is background everywhere: the bundles' evaluation
    post-processing, inference and the experiments' predictions (MONAI's AsDiscreted keeps >= 0.5)."""
    from monai.bundle import ConfigParser

    from pam_monai.engines import foreground_mask

    logits = torch.tensor([[[-2.0, 0.0], [1e-4, 3.0]]])
    expected = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    assert torch.equal(foreground_mask(logits).float(), expected)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    post = parser.get_parsed_content("validate#postprocessing")
    assert torch.equal(torch.as_tensor(post({"pred": logits})["pred"]), expected)
    with pytest.raises(ValueError, match="threshold"):
        foreground_mask(logits, 1.5)


@pytest.mark.parametrize("network", ["fpa", "rfna"])
def test_saved_probabilities_are_the_masks_numbers(network, cases, tmp_path):
    """``save_probabilities``: float32 foreground probabilities (RFNA too) on the mask's grid, 0
    outside the crop, and ``prob > threshold`` is exactly the mask, at any threshold."""
    net = get_network(network, spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    items = find_inference_cases("brats", cases)
    first = CasePredictor(net, items, "brats", str(tmp_path / "a"), save_probabilities=True).run()
    case = items[0]["case"]
    prob = np.asarray(nib.load(str(tmp_path / "a" / f"{case}_prob.nii.gz")).dataobj)
    seg = nib.load(str(tmp_path / "a" / f"{case}_seg.nii.gz"))
    assert len(first) == 2 * len(items) and prob.dtype == np.float32 and prob.shape == seg.shape
    np.testing.assert_array_equal(nib.load(str(tmp_path / "a" / f"{case}_prob.nii.gz")).affine, seg.affine)
    assert prob.min() >= 0 and prob.max() <= 1 and not prob[:40].any()  # BRATS crop: rows 40:200
    np.testing.assert_array_equal(prob > 0.5, np.asarray(seg.dataobj) > 0)
    # the same at a threshold that splits this case's voxels
    threshold = float(np.median(prob[40:200, 40:200]))
    CasePredictor(net, items, "brats", str(tmp_path / "b"), threshold=threshold).run()
    mask = np.asarray(nib.load(str(tmp_path / "b" / f"{case}_seg.nii.gz")).dataobj) > 0
    assert 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(prob > threshold, mask)
    with pytest.raises(ValueError, match="threshold must be a probability"):
        CasePredictor(net, items, "brats", str(tmp_path / "c"), threshold=1.5)
    with pytest.raises(
        ValueError, match=r"got 50: pass --threshold a fraction, e.g. 0.5 \(not a percentage\)"
    ):
        CasePredictor(
            net, items, "brats", str(tmp_path / "c"), threshold=50
        )  # 50 % meant: the flag was not named


def test_ensemble_averages_saved_probabilities(cases, tmp_path, caplog):
    import logging

    from pam_monai.cli import main
    from pam_monai.engines.ensemble import ensemble_probabilities

    items = find_inference_cases("brats", cases)
    for name in ("fpa", "rfna"):
        net = get_network(name, spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
        CasePredictor(net, items, "brats", str(tmp_path / name), save_probabilities=True).run()
    a, b, out = tmp_path / "fpa", tmp_path / "rfna", tmp_path / "ens"
    main(["ensemble", "--inputs", f"{a},{b}", "--output", str(out), "--threshold", "0.4"])
    for item in items:
        case = item["case"]
        pa, pb = (np.asarray(nib.load(str(d / f"{case}_prob.nii.gz")).dataobj) for d in (a, b))
        mean = nib.load(str(out / f"{case}_prob.nii.gz"))
        np.testing.assert_allclose(np.asarray(mean.dataobj), (pa.astype(np.float64) + pb) / 2, atol=1e-7)
        seg = nib.load(str(out / f"{case}_seg.nii.gz"))
        np.testing.assert_array_equal(np.asarray(seg.dataobj) > 0, np.asarray(mean.dataobj) > 0.4)
        np.testing.assert_array_equal(seg.affine, nib.load(str(a / f"{case}_seg.nii.gz")).affine)
    # an input whose inference was stopped part way (its mark left) is named: it may mix two runs
    (b / ".inference_running").write_text("pid 1\n")
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        ensemble_probabilities([a, b], tmp_path / "ens1")
    assert f"ensemble: {b}: an inference into this folder was stopped before it ended" in caplog.text
    # inputs that do not hold the same cases are refused before anything is written
    (b / f"{items[0]['case']}_prob.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"1 case\(s\) missing \(" + items[0]["case"]):
        ensemble_probabilities([a, b], tmp_path / "ens2")
    assert not (tmp_path / "ens2").exists()
    with pytest.raises(ValueError, match="at least two input folders"):
        ensemble_probabilities([a], tmp_path / "ens3")


def test_ensemble_refuses_what_would_lose_or_misweigh_data(tmp_path):
    """Output into an input folder (it would overwrite that model's maps), the same folder twice,
    two maps of one case, grids that differ (refused before any case is written), unreadable
    maps named; ``.nii`` maps give readable ``.nii`` outputs; a non-numeric threshold is named."""
    from pam_monai.engines.ensemble import ensemble, ensemble_probabilities

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, value in ((a, 0.2), (b, 0.6)):
        folder.mkdir()
        for case in ("c1", "c2"):
            nib.save(
                nib.Nifti1Image(np.full((4, 5, 3), value, np.float32), affine),
                str(folder / f"{case}_prob.nii"),
            )
    out = tmp_path / "ens"
    ensemble(f"{a},{b}", str(out), threshold=0.3)
    mean = nib.load(str(out / "c1_prob.nii"))  # uncompressed, as its name says
    np.testing.assert_allclose(np.asarray(mean.dataobj), 0.4, atol=1e-6)
    assert np.asarray(nib.load(str(out / "c1_seg.nii")).dataobj).all()
    with pytest.raises(ValueError, match="is one of the inputs"):
        ensemble_probabilities([a, b], a)
    with pytest.raises(ValueError, match="given twice"):
        ensemble_probabilities([a, tmp_path / "." / "a"], tmp_path / "x")
    with pytest.raises(ValueError, match="no such input folder"):
        ensemble_probabilities([a, tmp_path / "nope"], tmp_path / "x")
    with pytest.raises(ValueError, match="threshold must be a probability.*'abc'"):
        ensemble_probabilities([a, b], tmp_path / "x", threshold="abc")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 2), np.float32), affine), str(b / "c2_prob.nii"))
    with pytest.raises(ValueError) as err:
        ensemble_probabilities([a, b], tmp_path / "x")
    assert str(err.value).splitlines() == [
        "ensemble: the inputs are not on the same grids: run every model's inference on the same images (one "
        "--input_dir, --save_probabilities true) and ensemble those folders:",
        f"{b / 'c2_prob.nii'} is on another grid than {a / 'c2_prob.nii'} (shape 4x5x2, not 4x5x3)",
    ]
    assert not (tmp_path / "x").exists()  # c1 was fine, and not written either
    (b / "c2_prob.nii").write_bytes(b"not a volume")
    with pytest.raises(ValueError, match="c2_prob.nii: unreadable"):
        ensemble_probabilities([a, b], tmp_path / "x")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), affine), str(b / "c2_prob.nii.gz"))
    with pytest.raises(ValueError, match="two probability files of case 'c2'"):
        ensemble_probabilities([a, b], tmp_path / "x")
    (b / "c2_prob.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.full((4, 5, 3), 200, np.uint8), affine), str(b / "c2_prob.nii"))  # 0-255
    with pytest.raises(ValueError, match=r"c2_prob.nii: values 200 to 200 are not probabilities \(0 to 1\)"):
        ensemble_probabilities([a, b], tmp_path / "y")


def test_score_refuses_what_it_would_mis_score(cases, tmp_path):
    """Binary masks under --label_map (all would be empty), images taken for masks, unreadable
    masks named; own data's test labels (labelsTs) are found."""
    from pam_monai.engines.score import score_predictions

    items = find_inference_cases("brats", cases)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    out = tmp_path / "preds"
    CasePredictor(net, items, "brats", str(out), threshold=0.3).run()
    with pytest.raises(ValueError, match=r"--label_map: no mask holds a foreground label \[4\]"):
        score_predictions(out, "brats", cases, tmp_path / "s1", label_map=True)
    case = items[0]["case"]
    mask = out / f"{case}_seg.nii.gz"
    mask.write_bytes(mask.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{case}_seg.nii.gz: unreadable"):
        score_predictions(out, "brats", cases, tmp_path / "s2")
    # own data: the images of a folder taken for masks; a test set's labels in labelsTs
    own = tmp_path / "own"
    synth("nnunet", own, cases=2, slices=4, test_cases=1)
    images = tmp_path / "images"
    images.mkdir()
    for f in (own / "imagesTr").glob("SYN_001_*"):
        (images / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match=r"SYN_001_0000, .* look like images"):
        score_predictions(images, "nnunet", own, tmp_path / "s3")
    (own / "labelsTs").mkdir()
    test_case = next((own / "imagesTs").glob("*_0000.nii.gz")).name[: -len("_0000.nii.gz")]
    label = own / "labelsTs" / f"{test_case}.nii.gz"
    label.write_bytes(next((own / "labelsTr").glob("*.nii.gz")).read_bytes())
    preds = tmp_path / "test_preds"
    preds.mkdir()
    (preds / f"{test_case}.nii.gz").write_bytes(label.read_bytes())
    assert score_predictions(preds, "nnunet", own, tmp_path / "s4")["iou"]["mean"] == 1.0


def test_save_probabilities_and_threshold_from_the_command_line(cases, tmp_path):
    """The monai.bundle CLI passes ``--save_probabilities false`` as the string "false" (bool("false")
    is True) and a mistyped threshold as a string: both are read, or refused, before any output."""
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    items = find_inference_cases("brats", cases)
    for text, expected in (("false", False), ("False", False), ("0", False), ("true", True), (True, True)):
        assert (
            CasePredictor(
                net, items, "brats", str(tmp_path / "a"), save_probabilities=text
            ).save_probabilities
            is expected
        )
    with pytest.raises(ValueError, match="not a boolean"):
        CasePredictor(net, items, "brats", str(tmp_path / "a"), save_probabilities="maybe")
    with pytest.raises(ValueError, match="threshold must be a probability"):
        CasePredictor(net, items, "brats", str(tmp_path / "a"), threshold="abc")
    assert not (tmp_path / "a").exists()


def test_score_any_folder_of_masks(cases, tmp_path):
    """``pam_monai score``: masks of any origin (ours, nnU-Net's <case>.nii.gz label maps) scored on
    their label's grid by the evaluator's rules; masks off the grid or of unknown cases are refused."""
    from pam_monai.cli import main
    from pam_monai.engines.score import score_predictions

    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    items = find_inference_cases("brats", cases)
    out = tmp_path / "preds"
    CasePredictor(net, items, "brats", str(out), save_probabilities=True, threshold=0.45).run()
    main(["score", "--predictions", str(out), "--dataset", "brats", "--dataset_dir", str(cases)])
    table = list(csv.DictReader(open(out / "metrics" / "metrics.csv", newline="")))
    assert [r["case"] for r in table] == sorted(i["case"] for i in items)
    for row in table:
        folder = next(p for p in cases.rglob(row["case"]) if p.is_dir())
        label = nib.load(str(folder / f"{row['case']}_seg.nii.gz"))
        mask = nib.load(str(out / f"{row['case']}_seg.nii.gz"))
        spacing = tuple(float(s) for s in np.sqrt((label.affine[:3, :3] ** 2).sum(0)))
        expected = case_metrics(np.asarray(mask.dataobj), np.asarray(label.dataobj) == 4, spacing=spacing)
        for metric in ("iou", "hd95", "fp_rate", "fn_rate"):
            assert float(row[metric]) == pytest.approx(expected[metric], rel=1e-5, abs=1e-9)
    # nnU-Net's naming and label maps: with label_map, only the target's label (4) is foreground
    other = tmp_path / "nnunet_preds"
    other.mkdir()
    case = table[0]["case"]
    folder = next(p for p in cases.rglob(case) if p.is_dir())
    label = nib.load(str(folder / f"{case}_seg.nii.gz"))
    nib.save(label, str(other / f"{case}.nii.gz"))  # the reference itself, all its labels
    perfect = score_predictions(other, "brats", cases, tmp_path / "s1", label_map=True)
    assert perfect["iou"]["mean"] == 1.0
    non_zero = score_predictions(other, "brats", cases, tmp_path / "s2", label_map=False)
    assert non_zero["iou"]["mean"] < 1.0  # 1, 2 and 4 counted
    with pytest.raises(
        ValueError, match=rf"{case}.nii.gz: values 1, 2, 4, where a binary mask holds one .*--label_map true"
    ):
        score_predictions(other, "brats", cases, tmp_path / "s3")  # which reading? not guessed
    # a mask on another grid, and one of a case the data set does not have, are refused by name
    data = np.asarray(label.dataobj)
    nib.save(nib.Nifti1Image(data[:-1], label.affine), str(other / f"{case}.nii.gz"))
    with pytest.raises(ValueError, match=f"{case}.nii.gz: shape .* differs from its label"):
        score_predictions(other, "brats", cases, tmp_path / "s3")
    nib.save(label, str(other / f"{case}.nii.gz"))
    nib.save(label, str(other / "Brats18_NOPE_1_seg.nii.gz"))
    with pytest.raises(ValueError, match="have no labelled case .*Brats18_NOPE_1"):
        score_predictions(other, "brats", cases, tmp_path / "s4")


def test_resume_with_another_epoch_length_is_refused(tmp_path):
    """A checkpoint saved at epoch 1 after 8 iterations, resumed by a run with 4 iterations per
    epoch (another ``batch_size``): ignite would take iteration 8 as the end of epoch 2 and finish
    at once, without training and with exit status 0; the resume must refuse and name the cause."""
    from ignite.engine import Engine

    from pam_monai.engines import TrainingCheckpoint

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine, batch):
        return 0.0

    first = Engine(step)
    TrainingCheckpoint(str(tmp_path), net, opt).attach(first)
    first.run(list(range(8)), max_epochs=1)  # 8 iterations per epoch
    assert (tmp_path / "checkpoint_last.pt").is_file()

    second = Engine(step)
    TrainingCheckpoint(str(tmp_path), net, opt, resume=True).attach(second)
    with pytest.raises(ValueError, match="batch_size"):
        second.run(list(range(4)), max_epochs=2)  # 4 iterations per epoch

    same = Engine(step)
    TrainingCheckpoint(str(tmp_path), net, opt, resume=True).attach(same)
    same.run(list(range(8)), max_epochs=2)
    assert (same.state.epoch, same.state.iteration) == (2, 16)


def test_resume_with_another_process_count_names_it(tmp_path):
    """A checkpoint of a 2-process torchrun run (multi_gpu_train.json) resumed by one process: the
    DistributedSampler gave each rank half the slices, so the epoch length doubles with the same
    batch_size; the refusal must name the process count, not tell the user to change a batch_size
    that did not change."""
    from ignite.engine import Engine

    from pam_monai.engines import TrainingCheckpoint
    from pam_monai.engines.checkpoint import load_checkpoint

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine, batch):
        return 0.0

    first = Engine(step)
    TrainingCheckpoint(str(tmp_path), net, opt).attach(first)
    first.run(list(range(4)), max_epochs=1)  # one rank's share: 4 iterations per epoch
    path = tmp_path / "checkpoint_last.pt"
    state = load_checkpoint(path)
    state["rng_per_rank"] = [state["rng"], state["rng"]]  # what rank 0 writes under torchrun with 2 ranks
    for record in (True, False):  # checkpoints with the recorded process count, and older ones without
        if record:
            state["trainer"]["world_size"] = 2
        else:
            state["trainer"].pop("world_size", None)
        torch.save(state, path)
        second = Engine(step)
        TrainingCheckpoint(str(tmp_path), net, opt, resume=True).attach(second)
        with pytest.raises(
            ValueError, match=r"written by 2 training process\(es\), this run has 1.*nproc_per_node=2"
        ):
            second.run(list(range(8)), max_epochs=2)  # the whole data set in one process


def test_resume_with_more_processes_keeps_each_rank_its_own_flips(tmp_path, monkeypatch, caplog):
    """A one-process checkpoint resumed by 2 torchrun processes with half the batch_size (README:
    the same epoch length, so nothing refuses it) gave every rank the one process's random state:
    from then on both ranks flipped the same positions of their batches, in silence. Rank 0
    resumes it; a rank the checkpoint holds no state of keeps its own seed (``seed + rank``), and
    the run says that it is not an exact continuation."""
    import logging

    from ignite.engine import Engine, Events

    from pam_monai.engines import TrainingCheckpoint
    from pam_monai.engines import checkpoint as ckpt

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first = Engine(lambda engine, batch: 0.0)
    TrainingCheckpoint(str(tmp_path), net, opt).attach(first)
    torch.manual_seed(0)
    first.run(list(range(4)), max_epochs=1)  # one process, 4 iterations per epoch
    saved = torch.get_rng_state()
    resumed = {}
    # each rank in turn, in this process (the ranks' check that they found the same epoch left out)
    monkeypatch.setattr(TrainingCheckpoint, "_check_same_on_every_rank", lambda self, *found: None)
    for rank in (0, 1):
        monkeypatch.setattr(ckpt, "_world", lambda rank=rank: (rank, 2))
        torch.manual_seed(0 + rank)  # setup_run's seed + rank
        own = torch.get_rng_state()
        second = Engine(lambda engine, batch: 0.0)
        TrainingCheckpoint(str(tmp_path), net, opt, resume=True).attach(second)
        second.add_event_handler(
            Events.STARTED, lambda engine, r=rank: resumed.update({r: torch.get_rng_state()})
        )
        with caplog.at_level(logging.WARNING, logger="pam_monai"):
            second.run(list(range(4)), max_epochs=1)  # each rank's half of the data: 4 iterations too
        expected = saved if rank == 0 else own
        assert torch.equal(resumed[rank], expected), f"rank {rank} resumed another random state"
    assert not torch.equal(resumed[0], resumed[1]), "both ranks draw the same flips"
    assert "written by 1 process(es), this run has 2" in caplog.text, caplog.text


def test_skip_invalid_skips_a_case_missing_a_modality(cases, tmp_path, caplog):
    """--skip_invalid covers a missing modality too (README: inference refuses it, --skip_invalid
    segments the others): inference.json's case list skips that case instead of refusing the folder."""
    import logging

    from monai.bundle import ConfigParser

    bad, _ = corrupt("missing modality", cases)
    root = Path(__file__).resolve().parents[1]
    parser = ConfigParser()
    parser.read_config(str(root / "bundles" / "brats_fpa" / "configs" / "inference.json"))
    parser.update({"bundle_root": str(tmp_path), "input_dir": str(cases), "skip_invalid": "true"})
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        items = parser.get_parsed_content("dataset")
    assert [it["case"] for it in items] and bad not in [it["case"] for it in items]
    assert "--skip_invalid" in caplog.text and bad in caplog.text
    parser = ConfigParser()
    parser.read_config(str(root / "bundles" / "brats_fpa" / "configs" / "inference.json"))
    parser.update({"bundle_root": str(tmp_path), "input_dir": str(cases)})
    with pytest.raises(Exception) as err:  # the default still refuses the folder
        parser.get_parsed_content("dataset")
    assert bad in error_text(err.value)


def error_text(e: BaseException) -> str:
    parts = []
    while e is not None:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _host() -> str:
    from pam_monai.atomic import _HOST

    return _HOST


def test_a_file_open_elsewhere_on_windows_is_named_when_it_cannot_be_replaced(tmp_path, monkeypatch):
    """Windows refuses os.replace onto a file another program holds open (results.csv shown in a
    spreadsheet): the error named only the temporary file. Now the file, why, and what to do."""
    from pam_monai import atomic

    target = tmp_path / "results.csv"
    target.write_text("old\n", encoding="utf-8")

    def locked(src, dst):
        raise PermissionError(13, "Access is denied", str(src), None, str(dst))

    monkeypatch.setattr(atomic.os, "replace", locked)
    with pytest.raises(
        PermissionError, match=re.escape(f"{target}: cannot replace it (Access is denied)")
    ) as e:
        atomic.atomic_write_text(target, "new\n")
    assert "close it in any program that has it open" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"] and target.read_text(
        encoding="utf-8"
    ) == "old\n"


def test_orphaned_temporary_files_on_windows_are_kept_without_signalling(tmp_path, monkeypatch):
    """On Windows os.kill(pid, 0) is no liveness probe: signal 0 is CTRL_C_EVENT, sent to the process
    group ``pid`` (or an OSError for a PID that is no group). The sweep asks no process there and keeps
    the orphans (harmless); elsewhere a dead writer's file is removed as before."""
    from pam_monai import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".model.pt.pid{dead.pid}@{atomic._HOST}.abcdefgh.tmp"
    orphan.write_bytes(b"half")
    signalled = []
    monkeypatch.setattr(atomic.os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    monkeypatch.setattr(sys, "platform", "win32")
    assert atomic.remove_orphaned_temps(tmp_path) == [] and orphan.exists()
    assert signalled == []
    monkeypatch.undo()
    assert atomic.remove_orphaned_temps(tmp_path) == [orphan] and not orphan.exists()


def test_temporary_files_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    """A SIGKILL mid-write leaves the writer's temporary file; the next start removes it (it would
    pile up under repeated preemption), never a write in progress nor another host's file."""
    from ignite.engine import Engine

    from pam_monai.atomic import atomic_path, remove_orphaned_temps
    from pam_monai.engines import TrainingCheckpoint

    models = tmp_path / "models"
    models.mkdir()
    writer = (
        "import sys, time\n"
        "from pam_monai.atomic import atomic_path, sibling_temp_dir\n"
        "d = sibling_temp_dir(sys.argv[1] + '/converted')\n"
        "(d / 'a.nii.gz').write_bytes(b'x')\n"
        "with atomic_path(sys.argv[1] + '/checkpoint_last.pt') as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    print(tmp.name, d.name, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(models)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    orphans = proc.stdout.readline().split()
    assert remove_orphaned_temps(models) == []  # the writer is alive: its files stay
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(p.name for p in models.iterdir()) == sorted(orphans)
    assert all(f"pid{proc.pid}@" in name for name in orphans)

    other_host = models / f".checkpoint_last.pt.pid{proc.pid}@elsewhere.abcd1234.tmp"
    other_host.write_bytes(b"x")
    untagged = models / ".checkpoint_last.pt.k1ll3d.tmp"  # not ours to judge
    untagged.write_bytes(b"x")
    net = torch.nn.Linear(1, 1)
    handler = TrainingCheckpoint(str(models), net, torch.optim.SGD(net.parameters(), lr=0.1))
    with atomic_path(models / "model.pt") as live:  # this process's write in progress
        live.write_bytes(b"y")
        engine = Engine(lambda e, b: None)
        handler.attach(engine)
        engine.run([0], max_epochs=1)
        assert live.is_file()
    left = sorted(p.name for p in models.iterdir())
    assert left == sorted(["model.pt", "checkpoint_last.pt", other_host.name, untagged.name]), left

    # a slice dataset sweeps its cache folder (half-written preprocessed volumes) the same way
    from pam_monai.data import SliceDataset, discover_cases

    cases = discover_cases("brats", synth("brats", tmp_path / "raw", cases=1, slices=4))
    cache = tmp_path / "cache" / "brats"
    cache.mkdir(parents=True)
    dead_npy = cache / f".Brats18_SYN_001_1-x.image.npy.pid{proc.pid}@{_host()}.a1b2c3d4.npy.tmp"
    dead_npy.write_bytes(b"half")
    SliceDataset(cases, "brats", cache_dir=tmp_path / "cache", progress=False)
    assert not dead_npy.exists() and any(cache.glob("*.npy"))

    # inference sweeps its output folder (masks of a killed run) before writing
    out = tmp_path / "predictions"
    out.mkdir()
    dead_mask = out / f".Brats18_SYN_001_1_seg.nii.gz.pid{proc.pid}@{_host()}.z9y8x7w6.nii.gz"
    dead_mask.write_bytes(b"half")
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    CasePredictor(net, find_inference_cases("brats", tmp_path / "raw"), "brats", str(out)).run()
    assert not dead_mask.exists() and (out / "Brats18_SYN_001_1_seg.nii.gz").is_file()

    # the experiment grid sweeps its whole output folder (under its lock) the same way
    _HOST = _host()

    nested = tmp_path / "runs" / "fpa" / "seed0" / "fold0" / "eval"
    nested.mkdir(parents=True)
    dead_dir = nested / f".masks.pid{proc.pid}@{_HOST}.q1w2e3r4"
    (dead_dir / "sub").mkdir(parents=True)
    (dead_dir / "sub" / f".x.pid{proc.pid}@{_HOST}.zzzzzzzz.tmp").write_bytes(b"x")
    kept = nested / ".hidden_user_file"
    kept.write_bytes(b"x")
    assert remove_orphaned_temps(tmp_path / "runs") == []  # not recursive: nothing at the top
    assert remove_orphaned_temps(tmp_path / "runs", recursive=True) == [dead_dir]
    assert sorted(p.name for p in nested.iterdir()) == [kept.name]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _refuse_unlink(monkeypatch, name: str) -> None:
    """``Path.unlink`` of a file called ``name`` fails as on another user's file in a sticky folder."""
    unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self.name == name:
            raise PermissionError(13, "Operation not permitted", str(self))
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)


def test_an_orphan_that_cannot_be_removed_does_not_stop_the_start(tmp_path, monkeypatch):
    """A read-only cache or another user's orphan in a sticky folder: the sweep leaves it and goes
    on (a training, a slice dataset and an experiment call start with it); it raised before."""
    from pam_monai.atomic import _HOST, remove_orphaned_temps

    pid = _dead_pid()
    stuck = tmp_path / f".model.pt.pid{pid}@{_HOST}.abcdefgh.tmp"
    gone = tmp_path / f".checkpoint_last.pt.pid{pid}@{_HOST}.ijklmnop.tmp"
    stuck.write_bytes(b"x")
    gone.write_bytes(b"x")
    _refuse_unlink(monkeypatch, stuck.name)
    assert remove_orphaned_temps(tmp_path) == [gone]
    assert stuck.exists() and not gone.exists()


def test_temporary_names_tell_containers_apart_and_spare_look_alike_user_files(tmp_path):
    """Containers with host networking share the host name, not the process IDs: a live writer
    of another container must not look dead here. A user's file that only resembles a temporary
    name (no 8-character random part) is not one. A long target name still fits NAME_MAX."""
    import socket

    from pam_monai.atomic import _HOST, atomic_path, remove_orphaned_temps

    if os.path.exists("/proc/self/ns/pid"):
        assert _HOST.endswith(f"-ns{os.stat('/proc/self/ns/pid').st_ino}"), _HOST
    pid = _dead_pid()
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
    other_container = tmp_path / f".model.pt.pid{pid}@{host}.abcdefgh.tmp"
    user_file = tmp_path / f".notes.pid{pid}@{_HOST}.txt"
    orphan = tmp_path / f".model.pt.pid{pid}@{_HOST}.abcdefgh.tmp"
    for f in (other_container, user_file, orphan):
        f.write_bytes(b"x")
    assert remove_orphaned_temps(tmp_path) == [orphan]
    assert other_container.exists() and user_file.exists()

    long_name = "c" * 240 + ".nii.gz"  # 247 bytes: a valid name, its temporary name must be too
    with atomic_path(tmp_path / long_name, suffix=".nii.gz") as tmp:
        tmp.write_bytes(b"y")
    assert (tmp_path / long_name).read_bytes() == b"y"


def test_inference_shows_progress_while_it_checks_every_input(tmp_path, monkeypatch):
    """Inference reads every case's files before the first mask (~0.4 s per full-size BraTS case):
    a few hundred cases were minutes without a word before the inference bar. Both passes have a
    bar over every case, the check first."""
    from pam_monai.data.synthetic import synth_brats
    from pam_monai.engines import CasePredictor, find_inference_cases
    from pam_monai.engines import infer as infer_module

    synth_brats(tmp_path / "data", cases=3, slices=2)
    bars = []

    def progress_bar(iterable, desc="", **kwargs):
        bars.append((desc, len(iterable)))
        return iterable

    monkeypatch.setattr(infer_module, "progress_bar", progress_bar)

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x[:, :1]) - 1

    items = find_inference_cases("brats", tmp_path / "data")
    CasePredictor(Zero(), items, "brats", str(tmp_path / "out")).run()
    assert bars == [("brats: checking inputs", 3), ("brats: inference", 3)]


@pytest.mark.parametrize("stop_at", [6, 3])
def test_a_resume_leaves_tensorboard_no_step_twice(tmp_path, stop_at):
    """A training killed mid-epoch had logged steps after its last checkpoint, and the resumed run
    logged them again: TensorBoard showed train_loss at steps 1-6, 5, 6, 7, 8 (and a validation
    epoch twice when the kill came between validation and checkpoint). Killed before its first
    checkpoint (stop_at 3), the resume trains from the start and the earlier steps go too."""
    from ignite.engine import Engine, Events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from pam_monai.engines import TrainingCheckpoint

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    logs, models = tmp_path / "eval", tmp_path / "models"

    def training(resume: bool, stop_at: int | None = None) -> Engine:
        writer = SummaryWriter(str(logs))  # made before the run starts, as MONAI's handler makes it

        def step(engine, batch):
            writer.add_scalar("train_loss", 1.0, engine.state.iteration)
            if engine.state.iteration == stop_at:
                writer.add_scalar("val_iou", 0.5, engine.state.epoch)  # as if validated before the kill
                writer.flush()
                raise KeyboardInterrupt
            return 0.0

        engine = Engine(step)
        engine.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: writer.add_scalar("val_iou", 0.5, e.state.epoch)
        )
        TrainingCheckpoint(str(models), net, opt, resume=resume, log_dir=str(logs)).attach(engine)
        try:
            engine.run(list(range(4)), max_epochs=2)
        finally:
            writer.close()
        return engine

    with pytest.raises(KeyboardInterrupt):
        training(False, stop_at=stop_at)
    training(True)
    events = EventAccumulator(str(logs))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.step for e in events.Scalars("val_iou")] == [1, 2]


def test_a_resume_keeps_the_scalars_it_does_not_log_again(tmp_path):
    """The training's TensorBoard folder is also the evaluation's (``output_dir``, ``eval/``): a
    resume without a checkpoint removed every scalar after step 0 there, an evaluation's
    ``test_iou`` and the user's own tags among them, which the resumed training never writes back.
    Only its own tags (train_loss by iteration, val_* by epoch) are removed now."""
    from ignite.engine import Engine
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from pam_monai.engines import TrainingCheckpoint
    from pam_monai.engines.eventlogs import trim_event_logs

    logs = tmp_path / "eval"
    earlier = SummaryWriter(str(logs))  # an earlier training's and an evaluation's scalars
    for step in (1, 2, 3):
        for tag in ("train_loss", "val_iou", "test_iou", "my_lr"):
            earlier.add_scalar(tag, 0.5, step)
    earlier.close()

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    TrainingCheckpoint(str(tmp_path / "models"), net, opt, resume=True, log_dir=str(logs)).load(
        Engine(lambda e, b: None)
    )

    def steps():
        events = EventAccumulator(str(logs))
        events.Reload()
        return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}

    assert steps() == {"test_iou": [1, 2, 3], "my_lr": [1, 2, 3]}
    trim_event_logs(logs, iteration=1, epoch=1)  # a resume from a checkpoint keeps them too
    assert steps() == {"test_iou": [1, 2, 3], "my_lr": [1, 2, 3]}


def test_a_resume_goes_on_when_an_event_file_cannot_be_rewritten(tmp_path, monkeypatch, caplog):
    """Trimming the earlier event files replaces them; where that fails (on Windows TensorBoard,
    open on the folder, holds the file; a read-only folder) the resume stopped with the
    PermissionError, for the sake of a tidier log. It now warns, names the file, and goes on."""
    from torch.utils.tensorboard import SummaryWriter

    from pam_monai import atomic
    from pam_monai.engines.eventlogs import trim_event_logs

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 5):
        writer.add_scalar("train_loss", 1.0, step)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    before = path.read_bytes()

    def held(src, dst):
        raise PermissionError(
            13, "The process cannot access the file because it is being used by another process"
        )

    monkeypatch.setattr(atomic.os, "replace", held)
    with caplog.at_level("WARNING", logger="pam_monai.engines.eventlogs"):
        assert trim_event_logs(tmp_path, iteration=2, epoch=1) == []
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"resume: {path}: could not remove the 2 scalar(s) logged after the checkpoint")
    assert message.endswith("delete the file, or close TensorBoard before resuming")


def test_a_training_bar_keeps_one_label_and_times_its_epoch(capsys):
    """The training bar's first line read ``train[1/4]`` and its later ones ``train: [1/1]``
    (tqdm drew the bar as it was made, before Ignite set its description); and a finished bar
    read ``[00:00<?]`` after an epoch of 17 s: it was timed from its first draw, after the
    epoch's first step, and that step was left out of its rate. Each line now has the label the
    bar keeps, and the time is the epoch's."""
    import re
    import time

    from ignite.engine import Engine

    from pam_monai.engines import ProgressBar

    engine = Engine(lambda e, b: time.sleep(1.1 if b == 0 else 0) or {"loss": 1.0})  # a slow first step
    ProgressBar(desc="train").attach(engine)
    engine.run(range(3), max_epochs=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if "%|" in line]
    labels = [re.match(r"(.*?)\[\d+/3\]", line).group(1) for line in lines]
    assert labels == ["train [1/2]: "] * 2 + ["train [2/2]: "] * 2, lines
    assert [line.split("[")[-1] for line in lines[1::2]] == ["00:01<00:00]"] * 2, lines


def test_a_resume_trims_the_tags_the_training_logs_under_its_own_names(tmp_path):
    """A resume removed the steps logged after the checkpoint of ``train_loss`` and of the tags
    starting ``val_`` only: a training whose validation metrics were renamed
    (``--validate#metrics#prefix``) or whose loss tag was, logged their steps twice. The names now
    come from the run's own handlers: its TensorBoard handler's tag, its validation's metric prefix."""
    from ignite.engine import Engine
    from monai.handlers import ValidationHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from pam_monai.engines import CaseMetrics, TensorBoardStatsHandler, TrainingCheckpoint

    logs = tmp_path / "eval"
    earlier = SummaryWriter(str(logs))  # a killed training's steps, and an evaluation's
    for step in (1, 2, 3):
        for tag in ("loss", "my_iou", "val_iou", "test_iou"):
            earlier.add_scalar(tag, 0.5, step)
    earlier.close()

    trainer, validator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    CaseMetrics(prefix="my_").attach(validator)
    validation = ValidationHandler(interval=1)
    validation.validator = validator  # a bare Engine (MONAI's setter wants its Evaluator)
    validation.attach(trainer)
    TensorBoardStatsHandler(log_dir=str(logs), tag_name="loss").attach(trainer)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    TrainingCheckpoint(str(tmp_path / "models"), net, opt, resume=True, log_dir=str(logs)).load(trainer)

    events = EventAccumulator(str(logs))
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    # val_iou is not this training's: another run's, or the user's own
    assert steps == {"val_iou": [1, 2, 3], "test_iou": [1, 2, 3]}


def test_a_validation_bar_keeps_one_label_across_the_training(capsys):
    """MONAI runs its evaluator once per validation with the training's epoch as ``max_epochs``:
    the validation bar read ``validate: [1/1]`` after the first epoch and ``validate [2/2]: [1/1]``
    after the second (with 5 epochs ``[2/2]`` too, not the training's count). An evaluator's bar is
    labelled ``validate: `` every time."""
    import re

    import torch
    from monai.engines import SupervisedEvaluator

    from pam_monai.engines import ProgressBar

    cases = [{"image": torch.zeros(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}] * 2
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=cases, network=torch.nn.Identity()
    )
    ProgressBar(desc="validate", persist=False).attach(evaluator)
    for epoch in (1, 2, 3):
        evaluator.run(global_epoch=epoch)
    lines = [line for line in capsys.readouterr().err.splitlines() if "%|" in line]
    assert {re.match(r"(.*?)\[\d+/2\]", line).group(1) for line in lines} == {"validate: "}, lines


def test_a_record_committed_while_it_is_read_is_read_from_its_new_name(tmp_path, monkeypatch):
    """Evaluation picked the pending record (model.json.pending) while a training committed it
    (renamed to model.json) before it was read: the record was then missing, and the weights were
    loaded unchecked. The record is looked up again."""
    from pam_monai.engines import checkpoint

    weights = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    record = {"run": {"network_name": "fpa"}, "weights_sha256": checkpoint.file_sha256(weights)}
    (tmp_path / "model.json").write_text(json.dumps(record))
    picks = iter([tmp_path / "model.json.pending", tmp_path / "model.json"])  # gone by the time it is read
    monkeypatch.setattr(checkpoint, "_record_path", lambda ckpt_path: next(picks))
    assert checkpoint.read_run_record(weights) == {"network_name": "fpa"}


def test_wrapper_prefix_of_an_empty_state_dict_is_none():
    # every key of no key starts with 'module.': the prefix grew for ever
    from pam_monai.engines.checkpoint import _wrapper_prefix

    assert _wrapper_prefix({}) == ""
    assert _wrapper_prefix({"module._orig_mod.w": 1}) == "module._orig_mod."


def test_score_names_a_folder_whose_inference_was_stopped_part_way(cases, tmp_path, monkeypatch, caplog):
    """An inference stopped part way (killed, Ctrl-C) left its new masks beside an earlier run's
    masks of the cases it had not reached, with no word: ``score`` mixed both runs. Inference now
    marks its folder while it writes (``.inference_running.pid<pid>@<host>.<id>``, gone when it ends): ``score`` warns,
    naming the folder and what to do; a finished inference leaves no mark and no warning."""
    import logging

    from pam_monai.engines.infer import CasePredictor as Predictor
    from pam_monai.engines.score import score_predictions

    items = find_inference_cases("brats", cases)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    out = tmp_path / "preds"
    CasePredictor(net, items, "brats", str(out)).run()  # the earlier run: every case
    assert not list(out.glob(".inference_running*"))
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        score_predictions(out, "brats", cases, tmp_path / "s1")
    assert "stopped before it ended" not in caplog.text
    real, done = Predictor._predict, []

    def stopped_after_one(self, network, item):
        if done:
            raise KeyboardInterrupt
        done.append(item["case"])
        return real(self, network, item)

    monkeypatch.setattr(Predictor, "_predict", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        CasePredictor(net, items, "brats", str(out), threshold=0.3).run()
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        score_predictions(out, "brats", cases, tmp_path / "s2")
    assert f"score: {out}: an inference into this folder was stopped before it ended" in caplog.text


def test_summary_json_names_the_metrics_csv_it_summarises(tmp_path, monkeypatch):
    """metrics.csv and summary.json are two atomic writes: a kill between them left a new
    metrics.csv beside the summary of the one before, and nothing told them apart. summary.json now
    holds the SHA-256 of the metrics.csv it summarises (``metrics_csv_sha256``)."""
    import hashlib

    from pam_monai.atomic import atomic_write_text as real_write
    from pam_monai.engines import case_metrics

    row = {"case": "a", "iou": 1, "dice": 1, "hd95": 0, "fp_rate": 0, "fn_rate": 0}
    row.update(target_empty=0, pred_empty=0)
    eval_dir = tmp_path / "eval"

    def matches() -> bool:
        summary = json.loads((eval_dir / "summary.json").read_text())
        return (
            summary["metrics_csv_sha256"]
            == hashlib.sha256((eval_dir / "metrics.csv").read_bytes()).hexdigest()
        )

    returned = case_metrics.write_case_metrics([row], eval_dir)
    assert matches() and "metrics_csv_sha256" not in returned  # the file's, not a metric

    def killed_after_the_first_write(path, text):
        if Path(path).name != "metrics.csv":
            raise KeyboardInterrupt
        return real_write(path, text)

    monkeypatch.setattr(case_metrics, "atomic_write_text", killed_after_the_first_write)
    with pytest.raises(KeyboardInterrupt):
        case_metrics.write_case_metrics([{**row, "case": "b"}], eval_dir)
    assert "b," in (eval_dir / "metrics.csv").read_text()
    assert not matches()  # the old summary.json is told from the new metrics.csv


_WRITE_METRICS = """
import sys, time
from pathlib import Path
from pam_monai.engines import case_metrics

out, case, n, role = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
real = case_metrics.atomic_write_text

def write(path, text):
    written = real(path, text)
    if role == "first" and Path(path).name == "metrics.csv":  # the second writer starts here
        (out.parent / "first_wrote_csv").touch()
        while not (out.parent / "go").exists():
            time.sleep(0.05)
    return written

case_metrics.atomic_write_text = write
row = {"iou": 0.5, "dice": 0.5, "hd95": 1.0, "fp_rate": 0.0, "fn_rate": 0.0, "target_empty": 0, "pred_empty": 0}
if role == "second":
    (out.parent / "second_writes").touch()
case_metrics.write_case_metrics([{**row, "case": f"{case}{i}"} for i in range(n)], out)
"""


def test_two_evaluations_writing_one_folder_at_once_leave_a_matching_pair(tmp_path):
    """Two evaluations (or ``score`` runs) writing metrics into one folder at once: one wrote its
    metrics.csv, the other replaced it (and its summary.json), and the first then hashed the
    other's file into its own summary.json: a summary of 3 cases whose ``metrics_csv_sha256``
    vouched for a metrics.csv of 1. The two files are now written under one lock per folder: the
    second writer waits (here, until the first is let go: 10 s after it starts writing, or at its
    end where nothing stops it), and the folder ends with one writer's pair, whole."""
    import hashlib

    out = tmp_path / "eval"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def writer(case: str, n: int, role: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", _WRITE_METRICS, str(out), case, str(n), role]
        return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)

    def wait_for(marker: str, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while not (tmp_path / marker).exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)

    first = writer("a", 3, "first")
    try:
        wait_for("first_wrote_csv", first)
        second = writer("b", 1, "second")
        wait_for("second_writes", second)
        try:
            second.wait(timeout=10)  # unlocked, it writes both files in this time
        except subprocess.TimeoutExpired:
            pass  # it waits for the first one's lock
        (tmp_path / "go").touch()
        assert first.wait(timeout=120) == 0, first.stderr.read()
        assert second.wait(timeout=120) == 0, second.stderr.read()
    finally:
        (tmp_path / "go").touch()
        first.kill()
    summary = json.loads((out / "summary.json").read_text())
    csv_bytes = (out / "metrics.csv").read_bytes()
    assert summary["metrics_csv_sha256"] == hashlib.sha256(csv_bytes).hexdigest()
    assert summary["count"] == len(csv_bytes.decode().splitlines()) - 1, (summary["count"], csv_bytes)


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock: POSIX")
@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_metrics_are_written_where_the_file_system_has_no_flock(tmp_path, monkeypatch, code):
    """A folder on a file system without ``flock`` (NFS without its lock daemon: ENOLCK; Lustre
    mounted without ``-o flock``: ENOSYS; some FUSE and SMB mounts: EOPNOTSUPP) made the metrics
    lock raise at the end of a whole evaluation, "[Errno 37] No locks available", naming no file,
    and no metrics were written. The metrics are now written unlocked, as before the lock, with a
    warning naming the lock file and what is lost."""
    import errno
    import fcntl

    from pam_monai.engines import case_metrics

    def no_flock(fd, operation):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    row = {"case": "a", "iou": 1, "dice": 1, "hd95": 0, "fp_rate": 0, "fn_rate": 0}
    row.update(target_empty=0, pred_empty=0)
    eval_dir = tmp_path / "eval"
    with pytest.warns(RuntimeWarning) as caught:
        case_metrics.write_case_metrics([row], eval_dir)
    message = str(caught[0].message)
    assert str(eval_dir / case_metrics.METRICS_LOCK) in message and "not locked" in message, message
    assert json.loads((eval_dir / "summary.json").read_text())["count"] == 1
    assert (eval_dir / "metrics.csv").read_text().splitlines()[1].startswith("a,")


def test_a_second_inference_into_the_folder_keeps_the_first_s_mark(cases, tmp_path, monkeypatch, caplog):
    """Two inferences into one folder at once (a job submitted twice) shared one mark: the one that
    ended first removed it, and the other, stopped part way, left none: ``score`` then read the
    mixed folder without a word. Each run now has a mark of its own, removed at its own end."""
    import logging

    from pam_monai.engines.score import score_predictions

    items = find_inference_cases("brats", cases)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    out = tmp_path / "preds"
    _second_run_inside_a_stopped_one(monkeypatch, net, items, out, str(out))
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        score_predictions(out, "brats", cases, tmp_path / "s")
    assert f"score: {out}: an inference into this folder was stopped before it ended" in caplog.text


def _second_run_inside_a_stopped_one(monkeypatch, net, items, out, second_out, check=lambda: None) -> None:
    """A first inference into ``out`` runs, during its first case, a second one into ``second_out``
    (the same folder) to its end, calls ``check``, and is stopped (Ctrl-C) at its next case."""
    real, calls = CasePredictor._predict, []

    def second_run_then_stopped(self, network, item):
        calls.append(item["case"])
        if len(calls) == 1:  # the first run's first case: the second run, to its end
            CasePredictor(net, items, "brats", second_out).run()
            check()
        elif self.threshold == 0.3:  # the first run's next case: stopped
            raise KeyboardInterrupt
        return real(self, network, item)

    monkeypatch.setattr(CasePredictor, "_predict", second_run_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        CasePredictor(net, items, "brats", str(out), threshold=0.3).run()


def test_a_rerun_to_its_end_clears_the_mark_of_the_stopped_run_before(cases, tmp_path, monkeypatch, caplog):
    """The stopped-run warning says to run the inference again to its end: that run rewrites every
    mask, so it removes the marks of runs that are no longer running (here one stopped by Ctrl-C in
    this process, and one of a process that is gone), not only its own: ``score`` no longer warns."""
    import logging

    from pam_monai.atomic import _HOST
    from pam_monai.engines.infer import CasePredictor as Predictor
    from pam_monai.engines.score import score_predictions

    items = find_inference_cases("brats", cases)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    out = tmp_path / "preds"
    real = Predictor._predict

    def stopped(self, network, item):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "_predict", stopped)
    with pytest.raises(KeyboardInterrupt):
        CasePredictor(net, items, "brats", str(out)).run()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (out / f".inference_running.pid{int(gone.stdout)}@{_HOST}.abcd1234").write_text("")  # a killed process's
    assert len(list(out.glob(".inference_running*"))) == 2
    monkeypatch.setattr(Predictor, "_predict", real)
    CasePredictor(net, items, "brats", str(out)).run()
    assert not list(out.glob(".inference_running*"))
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        score_predictions(out, "brats", cases, tmp_path / "s")
    assert "stopped before it ended" not in caplog.text


def test_a_second_inference_naming_the_folder_otherwise_keeps_the_first_s_mark(
    cases, tmp_path, monkeypatch, caplog
):
    """This process's running inferences were told by their marks' paths: a second run into the
    same folder spelt otherwise (relative, where the first gave it absolute) took the first's mark,
    still writing, for a stopped run's and removed it at its end; the first, then stopped, left
    none. They are now told by the mark's name, which is unique."""
    import logging

    from pam_monai.engines.score import score_predictions

    items = find_inference_cases("brats", cases)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    out = tmp_path / "preds"
    monkeypatch.chdir(tmp_path)

    def first_run_s_mark_kept():  # the first run's, still writing
        assert len(list(out.glob(".inference_running*"))) == 1

    _second_run_inside_a_stopped_one(monkeypatch, net, items, out, "preds", first_run_s_mark_kept)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        score_predictions(out, "brats", cases, tmp_path / "s")
    assert f"score: {out}: an inference into this folder was stopped before it ended" in caplog.text


def test_a_run_to_its_end_that_cannot_remove_another_s_mark_ends_saying_so(
    cases, tmp_path, monkeypatch, caplog
):
    """A run to its end removes the marks of stopped runs; one it may not remove (another user's, in
    a folder whose sticky bit keeps it) raised PermissionError after every mask was written, so the
    finished inference failed. It now ends, with a WARNING naming the mark and what to do."""
    import logging

    items = find_inference_cases("brats", cases)
    net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, options=SMALL)
    out = tmp_path / "preds"
    out.mkdir()
    foreign = out / ".inference_running.pid1@elsewhere.abcd1234"
    foreign.write_text("pid 1\n")
    _refuse_unlink(monkeypatch, foreign.name)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        written = CasePredictor(net, items, "brats", str(out)).run()
    assert len(written) == len(items)
    assert [p.name for p in out.glob(".inference_running*")] == [foreign.name]
    assert f"{foreign}: could not be removed" in caplog.text and "remove it" in caplog.text


def test_score_of_a_folder_an_inference_still_writes_says_to_wait(tmp_path):
    """``score`` or ``ensemble`` of a folder that an inference of this host writes into now said the
    inference was stopped and to run it again to its end: a second run beside the first. Of a live
    run's mark it now says the inference is still writing and to wait for its end."""
    from pam_monai.atomic import _HOST
    from pam_monai.engines.infer import stopped_inference_note

    out = tmp_path / "preds"
    out.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".inference_running.pid{writer.pid}@{_HOST}.abcd1234").write_text("")
        note = stopped_inference_note(out)
    finally:
        writer.kill()
        writer.wait()
    assert note.startswith(f"{out}: an inference is still writing into this folder (process {writer.pid}")
    assert "wait for it to end" in note and "stopped" not in note
    assert "was stopped before it ended" in stopped_inference_note(out)  # its process is gone now


def test_a_mark_whose_process_id_was_reused_is_of_a_stopped_run(tmp_path):
    """A stopped run's mark whose process ID a live process now has (PID reuse) was taken for a run
    still writing: score said to wait for it, and no run to its end removed it. The mark records its
    process's start time, as the training lock does: another start time is another process."""
    from pam_monai.atomic import _HOST
    from pam_monai.engines.infer import stopped_inference_note

    out = tmp_path / "preds"
    out.mkdir()
    live = os.getppid()  # alive, but not the run that made the mark
    mark = out / f".inference_running.pid{live}@{_HOST}.abcd1234"
    mark.write_text(json.dumps({"pid": live, "host": _HOST, "proc_start": "1"}) + "\n")
    assert "was stopped before it ended" in stopped_inference_note(out)


def test_on_windows_a_run_to_its_end_keeps_the_mark_of_this_process_s_other_run(tmp_path, monkeypatch):
    """Where no process can be asked (Windows) every other run's mark is removed at a run's end, but
    this process's own running inferences need no asking: their marks were removed there too, so a
    run of this process stopped after another ended left none."""
    from types import SimpleNamespace

    from pam_monai.engines import infer

    monkeypatch.setattr(infer, "sys", SimpleNamespace(platform="win32"))
    mark = tmp_path / f".inference_running.pid{os.getpid()}@{infer._HOST}.abcd1234"
    mark.write_text("")
    monkeypatch.setattr(infer, "_running", {mark.name})
    infer._clear_marks(tmp_path)
    assert mark.exists()
    monkeypatch.setattr(infer, "_running", set())  # that run ended (stopped): its mark goes
    infer._clear_marks(tmp_path)
    assert not mark.exists()


def test_a_failing_clean_up_after_an_error_still_gives_sigterm_back():
    """StopOnTerminate puts the caller's SIGTERM handler back as the last clean-up after a run's
    error; a clean-up before it that raised (an MLflow database locked, a lock file gone) skipped
    it: its handler stayed the process's, holding back every later SIGTERM as 'while cleaning up'
    (an experiment grid going on with --keep_going never stopped on one). Now the clean-ups
    attached last run even then, and the clean-up's error goes on as before."""
    import signal

    from ignite.engine import Engine

    from pam_monai.engines import StopOnTerminate
    from pam_monai.engines.cleanup import clean_up_on_error

    def callers(signum, frame):
        pass

    def broken_clean_up(engine, error):
        raise OSError("database is locked")

    def step(engine, batch):
        raise RuntimeError("boom")

    engine = Engine(step)
    clean_up_on_error(engine, broken_clean_up)
    StopOnTerminate().attach(engine)
    previous = signal.signal(signal.SIGTERM, callers)
    try:
        with pytest.raises(OSError, match="database is locked"):
            engine.run(range(2), max_epochs=1)
        assert signal.getsignal(signal.SIGTERM) is callers
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_last_clean_up_failing_after_a_failed_clean_up_is_logged_not_raised(caplog):
    """After a clean-up raised, the ones attached last still run, in order; one of them failing
    too is logged (a WARNING naming its error) and the others still run: the first clean-up's
    error is the one that goes on, not the later one's. Each runs once (Ignite hands that error to
    the EXCEPTION_RAISED handlers again: :func:`test_each_clean_up_runs_once_per_failure`)."""
    import logging

    from ignite.engine import Engine

    from pam_monai.engines.handlers import clean_up_on_error

    ran = []

    def broken_clean_up(engine, error):
        raise OSError("database is locked")

    def broken_last(engine, error):
        ran.append("broken_last")
        raise ZeroDivisionError("lock file gone")

    def step(engine, batch):
        raise RuntimeError("boom")

    engine = Engine(step)
    clean_up_on_error(engine, broken_clean_up)
    clean_up_on_error(engine, broken_last, last=True)
    clean_up_on_error(engine, lambda engine, error: ran.append("last"), last=True)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        with pytest.raises(OSError, match="database is locked"):
            engine.run(range(2), max_epochs=1)
    assert ran == ["broken_last", "last"]
    assert "after a failed clean-up, another failed too: ZeroDivisionError: lock file gone" in caplog.text


@pytest.mark.parametrize("failing", [False, True])
def test_each_clean_up_runs_once_per_failure(failing):
    """Ignite hands an error of an iteration to the EXCEPTION_RAISED handlers twice (the loop over
    the data catches it, then the run around it catches it again), and a clean-up's own error the
    second time: every clean-up ran twice after one failure (StopOnTerminate's restore, an MLflow
    run ended FAILED twice, a lock released twice). Now each runs once per failure, and the error
    that goes on is the same. (A clean-up in line after one that raised runs when Ignite hands it
    that clean-up's error, as before; the ones attached ``last`` run at once, on the run's error.)"""
    from ignite.engine import Engine

    from pam_monai.engines.cleanup import clean_up_on_error

    ran = []

    def first(engine, error):
        ran.append(("first", str(error)))
        if failing:
            raise OSError("database is locked")

    def step(engine, batch):
        raise RuntimeError("boom")

    engine = Engine(step)
    clean_up_on_error(engine, lambda engine, error: ran.append(("second", str(error))))
    clean_up_on_error(engine, first)  # first in line: attached after
    clean_up_on_error(engine, lambda engine, error: ran.append(("last", str(error))), last=True)
    expected = (
        [("first", "boom"), ("last", "boom"), ("second", "database is locked")]
        if failing
        else [("first", "boom"), ("second", "boom"), ("last", "boom")]
    )
    went_on = OSError if failing else RuntimeError
    try:
        engine.run(range(2), max_epochs=1)
    except went_on as e:
        assert str(e) == ("database is locked" if failing else "boom")
        assert ran == expected
        ran.clear()
        # a retry while handling the error (its error's __context__): this run's failure is cleaned up too
        engine.state.max_epochs = None  # Ignite starts a new run, not a resumed one (its epoch counted done)
        with pytest.raises(went_on):
            engine.run(range(2), max_epochs=1)
        assert ran == expected
    else:
        pytest.fail("the run's error did not go on")


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two_renames"])
def test_a_folder_replaced_by_atomic_dir_is_old_or_new_whatever_the_kill(tmp_path, monkeypatch, exchange):
    """``atomic_dir(replace=True)`` (a synthetic data set made anew) killed at any of its disk calls
    leaves the whole old folder or the whole new one: the old one was removed first, and a kill
    during that removal left a part of it. Where folders cannot be exchanged in one step, a kill
    between the two renames is undone by the next ``atomic_dir`` there (the old folder put back)."""
    from pam_monai import atomic

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if exchange and not atomic._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this system or file system cannot exchange two folders in one step")
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "out" / "Dataset"
    old = {f"cases/{i}.txt": f"old {i}" for i in range(6)}
    new = {f"cases/{i}.txt": f"new {i}" for i in range(4)}

    def write(folder: Path, files: dict[str, str]) -> None:
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)

    def tree() -> dict[str, str] | None:
        return {p.relative_to(target).as_posix(): p.read_text() for p in target.rglob("*.txt")} or None

    def killed_at(k: int, count: list[int], original):
        def call(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                os._exit(9)
            return original(*args, **kwargs)

        return call

    calls = [(os, "rename"), (os, "replace"), (os, "unlink"), (os, "rmdir"), (atomic, "_exchange")]
    k, finished = 0, False
    while not finished:
        k += 1
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        write(target, old)
        pid = os.fork()
        if pid == 0:  # the child, killed at its k-th call: no handler or finally runs
            code = 1
            try:
                count = [0]
                for owner, name in calls:
                    setattr(owner, name, killed_at(k, count, getattr(owner, name)))
                with atomic.atomic_dir(target, replace=True) as tmp:
                    write(tmp, new)
                code = 0
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        assert code in (0, 9)
        finished = code == 0
        if not exchange:
            atomic.recover_swap(target)  # as the next atomic_dir there does first
        assert tree() in (old, new), f"killed at call {k}: a part of the old folder, or none"
        with atomic.atomic_dir(target, replace=True) as tmp:
            write(tmp, new)
        atomic.remove_orphaned_temps(target.parent)  # the killed child's new folder, if left
        assert tree() == new and os.listdir(target.parent) == ["Dataset"], k
    assert k > 5


def _swap_killed_between_its_renames(monkeypatch, target):
    """A swap of ``target`` by two renames killed after the first: its old content left aside, as a
    SIGKILL there leaves it (the second rename never runs, nor the first one's undoing)."""
    from pam_monai import atomic

    rename = os.rename

    def killed_after_the_first_rename(src, dst):
        rename(src, dst)
        raise SystemExit("killed")

    new = atomic.sibling_temp_dir(target)
    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", killed_after_the_first_rename)
        with pytest.raises(SystemExit):
            atomic.swap_dir(new, target)
    shutil.rmtree(new)


def test_a_swap_killed_midway_keeps_its_old_folder_whatever_the_names_beside_it(tmp_path, monkeypatch):
    """The old folder of a swap killed between its two renames waits under a name of its own until the
    next swap there puts it back. That name kept only the first 100 characters of the folder's, so
    two long names beside each other that begin alike shared it: the next swap of the other folder
    took the waiting old folder for its own leftover and removed it, all the content of the first."""
    from pam_monai import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    first, second = (tmp_path / ("results_of_a_long_experiment_name_" * 4 + end) for end in ("a", "b"))
    for folder in (first, second):
        folder.mkdir()
        (folder / "weights.pt").write_text(f"the weights in {folder.name[-1]}")
    _swap_killed_between_its_renames(monkeypatch, first)
    assert not first.exists()  # its old content aside, as a SIGKILL between the renames leaves it
    with atomic.atomic_dir(second, replace=True) as tmp:
        (tmp / "weights.pt").write_text("new weights in b")
    atomic.recover_swap(first)
    assert (first / "weights.pt").read_text() == "the weights in a"
    assert (second / "weights.pt").read_text() == "new weights in b"


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two_renames"])
def test_a_folder_replaced_from_within_a_subfolder_the_new_one_lacks(tmp_path, monkeypatch, exchange):
    """``atomic_dir(replace=True)`` run from a subfolder of the folder it replaces moves the process
    into the new folder at the same path; where the new folder lacks that subfolder, the swap, done,
    raised FileNotFoundError, so a complete replacement was reported as failed. The process is
    moved to the nearest folder above that the new one has."""
    from pam_monai import atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "Dataset"
    (target / "old_only" / "deeper").mkdir(parents=True)
    (target / "kept").mkdir()
    monkeypatch.chdir(target / "old_only" / "deeper")
    with atomic.atomic_dir(target, replace=True) as tmp:
        (tmp / "kept").mkdir()
        (tmp / "kept" / "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["kept"] and (target / "kept" / "new.txt").read_text() == "new"
    assert Path.cwd() == target.resolve() and os.listdir(".") == ["kept"]


def test_a_recovery_run_while_another_process_swaps_waits_for_the_swap(tmp_path, monkeypatch):
    """Where folders cannot be exchanged in one step, a swap renames ``target`` aside, then the new
    folder into place. ``atomic_dir`` and the own-data rebuild ran ``recover_swap`` without the
    parent folder's lock the swap holds: another process starting between the two renames took the
    old folder aside for a killed swap's, renamed it back, and the swap failed with a
    FileNotFoundError on ``.Dataset.replaced``. The recovery now waits for the swap to finish."""
    import contextlib

    from pam_monai import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "Dataset"
    target.mkdir()
    (target / "case.txt").write_text("old")
    new = atomic.sibling_temp_dir(target)
    (new / "case.txt").write_text("new")
    rename, other = os.rename, []
    code = "import sys; from pam_monai.atomic import recover_swap; print('ready', flush=True); recover_swap(sys.argv[1])"

    def another_process_recovers_between_the_renames(src, dst):
        rename(src, dst)
        if other:
            return
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        other.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, env=env
            )
        )
        assert other[0].stdout.readline() == "ready\n"
        with contextlib.suppress(subprocess.TimeoutExpired):  # unlocked it is done at once; else it waits
            other[0].wait(timeout=3)

    monkeypatch.setattr(os, "rename", another_process_recovers_between_the_renames)
    atomic.swap_dir(new, target)
    assert other[0].wait(timeout=60) == 0
    assert (target / "case.txt").read_text() == "new" and os.listdir(tmp_path) == ["Dataset"]


def test_long_non_ascii_names_are_written_swapped_and_recovered(tmp_path, monkeypatch):
    """Temporary names and the old folder's name of a swap kept the target's first 100 characters:
    for a name in Chinese (3 bytes a character) that was up to 300 bytes, past the 255 a file name
    may have, so writing a file or folder of ~80 or more such characters failed (ENAMETOOLONG).
    They keep at most 100 bytes of it, never a character cut in two; names alike in those bytes
    still keep separate old folders."""
    from pam_monai import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # the old folder is renamed aside
    first, second = (tmp_path / ("病灶分割结果" * 14 + end) for end in "甲乙")  # 85 characters, 255 bytes
    try:
        first.mkdir()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            pytest.skip(f"{tmp_path}'s file system allows shorter names than 255 bytes")
        raise
    first.rmdir()
    with atomic.atomic_path(first) as tmp:  # a file of that name
        tmp.write_text("a file")
    assert first.read_text() == "a file"
    first.unlink()
    for folder in (first, second):
        with atomic.atomic_dir(folder) as tmp:
            (tmp / "weights.pt").write_text(f"the weights in {folder.name[-1]}")
        with atomic.atomic_dir(folder, replace=True) as tmp:  # swapped by two renames
            (tmp / "weights.pt").write_text(f"the weights in {folder.name[-1]}")
    _swap_killed_between_its_renames(monkeypatch, first)
    with atomic.atomic_dir(second, replace=True) as tmp:
        (tmp / "weights.pt").write_text("new weights in 乙")
    atomic.recover_swap(first)
    assert (first / "weights.pt").read_text() == "the weights in 甲"
    assert (second / "weights.pt").read_text() == "new weights in 乙"
    assert sorted(os.listdir(tmp_path)) == sorted([first.name, second.name])


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EXDEV], ids=["EBUSY", "EXDEV"])
@pytest.mark.parametrize("replace", [True, False], ids=["swapped", "moved_onto"])
def test_a_folder_that_cannot_be_renamed_is_named_with_what_to_do(tmp_path, monkeypatch, code, replace):
    """A folder replaced whole is renamed; a mount point (``docker -v $PWD:/ws``, then ``--output .``)
    cannot be (EBUSY; EXDEV for a folder of a container's image on overlayfs), and the swap failed with
    a bare "[Errno 16] Device or resource busy" naming neither the folder nor why. The error names it,
    says why and what to do instead; the folder is unchanged and nothing is left beside it."""
    from pam_monai import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # renameat2 fails on a mount point too
    target = tmp_path / "lesion_fpa"
    target.mkdir()
    (target / "train.json").write_text("old")
    original = os.rename if replace else os.replace

    def refused(src, dst):  # a swap renames the folder aside; without replace, the new one onto it
        if Path(src if replace else dst) == target:
            raise OSError(code, os.strerror(code))
        original(src, dst)

    monkeypatch.setattr(os, "rename" if replace else "replace", refused)
    with pytest.raises(OSError) as raised, atomic.atomic_dir(target, replace=replace) as tmp:
        (tmp / "train.json").write_text("new")
    message = str(raised.value)
    assert raised.value.errno == code and raised.value.strerror.startswith(f"{target}: cannot be replaced")
    assert "mount point" in message and "sub-folder" in message, message
    assert os.listdir(tmp_path) == ["lesion_fpa"] and (target / "train.json").read_text() == "old"


def test_cityscapes_inference_of_plainly_named_images_says_how_to_name_them(tmp_path):
    """Camera images named as a user names them (street.png) were refused with "no case found
    (expected the published layout, see the README)" and the layout's gtFine labels, which inference
    does not need: the refusal now says that each frame needs the ``_leftImg8bit.png`` ending, naming
    a file to rename, and with that name the image is segmented."""
    from PIL import Image

    frames = tmp_path / "dashcam"
    frames.mkdir()
    Image.fromarray(np.zeros((16, 32, 3), np.uint8) + 90).save(frames / "street.png")
    with pytest.raises(ValueError) as e:
        find_inference_cases("cityscapes", frames)
    assert (
        "inference reads camera frames alone (no labels), each named <frame>_leftImg8bit.png, in --input_dir, "
        "its sub-folders or the published layout: 1 PNG file(s) here without that ending: rename them, e.g. "
        f"{frames / 'street.png'} -> street_leftImg8bit.png"
    ) in str(e.value)
    (frames / "street.png").rename(frames / "street_leftImg8bit.png")
    (item,) = find_inference_cases("cityscapes", frames)
    assert item["case"] == "street"
