"""One training per output folder: a second one is refused at its start (pam_monai.runlock)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pam_monai import runlock
from pam_monai.runlock import LOCK_NAME, RunLockError, hold_training_lock, release_training_locks

ROOT = Path(__file__).resolve().parents[1]


def _write_lock(folder: Path, pid: int, host: str = runlock._HOST, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {
        "pid": pid,
        "host": host,
        "hostname": "node7" if host != runlock._HOST else "here",
        "proc_start": runlock._proc_start(pid),
        "started": "2026-01-02T03:04:05+0000",
        "token": "other",
        **extra,
    }
    path = folder / LOCK_NAME
    path.write_text(json.dumps(holder), encoding="utf-8")
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(autouse=True)
def _release():
    yield
    release_training_locks()


def test_second_training_in_the_folder_is_refused_naming_the_holder(tmp_path):
    live = os.getppid()  # another live process on this host: the first training
    path = _write_lock(tmp_path / "models", live)
    with pytest.raises(RunLockError) as e:
        hold_training_lock(tmp_path / "models", tmp_path / "eval")
    message = str(e.value)
    assert str(tmp_path / "models") in message
    assert f"process {live} on here, started 2026-01-02T03:04:05+0000" in message
    assert "--bundle_root" in message
    assert json.loads(path.read_text())["token"] == "other"  # the holder's lock is left alone
    assert not (tmp_path / "eval" / LOCK_NAME).exists()


def test_lock_is_exclusive_and_released(tmp_path):
    held = hold_training_lock(tmp_path / "models", tmp_path / "eval", tmp_path / "models", None)
    assert held == [tmp_path / "models" / LOCK_NAME, tmp_path / "eval" / LOCK_NAME]
    holder = json.loads(held[0].read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == runlock._HOST
    release_training_locks()
    assert not any(p.exists() for p in held)


def test_a_failure_on_the_second_folder_releases_the_first(tmp_path):
    _write_lock(tmp_path / "eval", os.getppid())
    with pytest.raises(RunLockError, match="eval"):
        hold_training_lock(tmp_path / "models", tmp_path / "eval")
    assert not (tmp_path / "models" / LOCK_NAME).exists()


def test_lock_of_a_dead_process_is_broken(tmp_path):
    _write_lock(tmp_path / "models", _dead_pid())
    (path,) = hold_training_lock(tmp_path / "models")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert [p.name for p in (tmp_path / "models").iterdir()] == [LOCK_NAME]  # nothing left aside


def test_locks_left_aside_by_a_killed_breaker_are_removed_at_the_next_lock(tmp_path):
    """A process killed between renaming a stale lock aside and deleting it left
    ``.training.lock.stale.*``, which nothing removed. The next training to lock the folder removes
    those of a process that is gone (this host) and those of another host older than OLD_HOURS;
    one of a live process, or a recent one of another host, is left."""
    folder = tmp_path / "models"
    dead = _write_lock(folder, _dead_pid()).rename(folder / f"{LOCK_NAME}.stale.1.dead0000")
    live = _write_lock(folder, os.getppid()).rename(folder / f"{LOCK_NAME}.stale.2.live0000")
    far = _write_lock(folder, 1, host="other-host").rename(folder / f"{LOCK_NAME}.stale.3.far00000")
    old = _write_lock(folder, 1, host="other-host").rename(folder / f"{LOCK_NAME}.stale.4.old00000")
    long_ago = time.time() - (runlock.OLD_HOURS + 1) * 3600
    os.utime(old, (long_ago, long_ago))
    hold_training_lock(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK_NAME, live.name, far.name])
    assert not dead.exists() and not old.exists()


def test_refuse_if_held_judges_a_lock_as_a_training_would(tmp_path):
    """The experiment grid, running without flock, asks refuse_if_held before clearing a run's
    folders: a live holder (or an empty lock being written) refuses, as hold_training_lock would;
    a dead or reused-PID holder's lock does not, else a grid killed on such a file system could
    never take up its interrupted run. It only looks: no lock is taken, broken or left aside."""
    live = _write_lock(tmp_path / "live", os.getppid())
    with pytest.raises(RunLockError, match=rf"{tmp_path / 'live'}: another training is writing into it"):
        runlock.refuse_if_held(tmp_path / "none", tmp_path / "live")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / LOCK_NAME).write_text("")
    with pytest.raises(RunLockError, match="names no process"):
        runlock.refuse_if_held(tmp_path / "empty")
    dead = _write_lock(tmp_path / "dead", _dead_pid())
    reused = _write_lock(tmp_path / "reused", os.getppid(), proc_start="1")
    runlock.refuse_if_held(tmp_path / "dead", tmp_path / "reused", tmp_path / "none", None)
    assert [p.name for p in (tmp_path / "dead").iterdir()] == [LOCK_NAME]  # nothing broken or left aside
    assert dead.exists() and reused.exists()
    assert json.loads(live.read_text())["token"] == "other" and not runlock._held


def test_lock_of_a_reused_pid_is_broken(tmp_path):
    _write_lock(tmp_path / "models", os.getppid(), proc_start="1")  # alive, but started at another time
    (path,) = hold_training_lock(tmp_path / "models")
    assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_of_another_host_is_reported_never_broken(tmp_path):
    path = _write_lock(tmp_path / "models", _dead_pid(), host="node7-ns1")
    old = time.time() - 30 * 3600
    os.utime(path, (old, old))
    with pytest.raises(RunLockError) as e:
        hold_training_lock(tmp_path / "models")
    assert "on node7" in str(e.value)
    assert "it is 30 hours old" in str(e.value) and f"delete {path}" in str(e.value)
    assert json.loads(path.read_text())["token"] == "other"


def test_release_leaves_a_lock_that_another_process_took_over(tmp_path):
    (path,) = hold_training_lock(tmp_path / "models")
    _write_lock(tmp_path / "models", os.getppid())  # broken and retaken meanwhile
    release_training_locks()
    assert json.loads(path.read_text())["token"] == "other"


def test_empty_lock_being_written_is_held(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / LOCK_NAME).write_text("")
    with pytest.raises(RunLockError, match="names no process"):
        hold_training_lock(tmp_path / "models")


def test_a_lock_stopped_while_written_is_not_left_empty(tmp_path, monkeypatch):
    """A run stopped (Ctrl-C, a SIGTERM: stop_on_terminate) between creating its lock and writing
    its holder into it left an empty ``.training.lock``, which names no process and so is never
    broken: every later training there was refused until it was deleted by hand. The stopped run
    now removes the lock it created."""

    def stopped():
        raise KeyboardInterrupt

    monkeypatch.setattr(runlock, "_content", stopped)
    with pytest.raises(KeyboardInterrupt):
        hold_training_lock(tmp_path / "models")
    assert not (tmp_path / "models" / LOCK_NAME).exists()
    assert not runlock._held


def test_bundle_training_is_refused_while_another_holds_its_folder(tmp_path):
    """The bundles take the lock once the trainer is built (a data error is named first, and leaves
    no lock), before its start: the refused run writes nothing into models/ or eval/."""
    root = tmp_path / "bundle"
    path = _write_lock(root / "models", os.getpid())  # this test process plays the running training
    # the child is another process: this one is alive, so its lock holds
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training"]
    cmd += ["--config_file", str(ROOT / "bundles/brats_fpa/configs/train.json"), "--bundle_root", str(root)]
    cmd += ["--epochs", "1", "--network_options", '{"features": [4, 8, 8, 8]}']
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert f"{root / 'models'}: another training is writing into it (process {os.getpid()}" in out.stderr
    assert not (root / "eval").exists() or not list((root / "eval").iterdir())
    assert sorted(p.name for p in (root / "models").iterdir()) == [LOCK_NAME]
    assert json.loads(path.read_text())["token"] == "other"


def test_bundle_training_that_raised_releases_its_locks(tmp_path, monkeypatch):
    """``monai.bundle.run`` calls ``finalize`` only after a run that ended: a training that raised in
    a notebook kept its folders locked while the kernel idled, and a training started there from a
    terminal was refused ("wait for it to finish"). The locks now go when the trainer's run raises."""
    from monai.bundle import run
    from monai.engines import SupervisedTrainer

    def out_of_memory(self, engine, batch):
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(SupervisedTrainer, "_iteration", out_of_memory)
    root = tmp_path / "bundle"
    with pytest.raises(RuntimeError) as raised:
        run(
            "training",
            config_file=str(ROOT / "bundles/brats_fpa/configs/train.json"),
            bundle_root=str(root),
            epochs=1,
            network_options={"features": [4, 8, 8, 8]},
            logging_file=False,
        )
    assert str(raised.value.__cause__) == "out of memory (injected)"  # MONAI's wrapper of the error
    assert not list(root.rglob(LOCK_NAME))
    assert not runlock._held


_SIGNAL_AT_EPOCH_2 = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal (see _PREPARING)
from monai.bundle import run
from monai.engines import SupervisedTrainer

real = SupervisedTrainer._iteration

def iteration(self, engine, batch):
    if engine.state.epoch == 2:  # after the first epoch's checkpoint: a preemption mid-epoch
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    return real(self, engine, batch)

SupervisedTrainer._iteration = iteration
run("training", config_file=sys.argv[3], bundle_root=sys.argv[1], dataset_dir=sys.argv[1] + "/none",
    synthetic_stand_in=True, synthetic_dir=sys.argv[4], epochs=2, batch_size=8, num_workers=0,
    network_options={"features": [4, 8, 8, 8]}, logging_file=False)
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")  # generated by the first training, shared


# a training (python -m monai.bundle, as typed) whose preparation of each volume waits for the test:
# argv: bundle_root, synthetic_dir, the folder of the marks ("preparing" per case started, "go"),
# train.json, and "finalize" to send itself a SIGTERM after the training instead ("evaluate": after
# evaluating the trained model)
_PREPARING = """
import runpy, signal, sys, time
# Ctrl-C as in a terminal: a process started in the background by a non-interactive shell (a CI
# script, nohup ... &) inherits SIGINT ignored, and Python then raises no KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
import pam_monai.data.slices as slices

root, synthetic, marks = sys.argv[1:4]
real = slices.preprocess_case

def preprocess(spec, item, *args, **kwargs):
    with open(Path(marks) / "preparing", "a", encoding="utf-8") as f:
        f.write(item["case"] + "\\n")
    while not (Path(marks) / "go").exists():
        time.sleep(0.02)
    return real(spec, item, *args, **kwargs)

slices.preprocess_case = preprocess
workflow, config = "training", sys.argv[4]
if sys.argv[5] == "evaluate":  # the trained model's evaluation
    workflow, config = "evaluating", str([config, config.replace("train.json", "evaluate.json")])
if sys.argv[5] in ("finalize", "evaluate"):  # a SIGTERM as the finished run closes its writers
    import os, signal
    import pam_monai.engines as engines

    real_close = engines.close_writers

    def close_writers(objects):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_close(objects)

    engines.close_writers = close_writers
    (Path(marks) / "go").touch()
sys.argv = ["monai.bundle", "run", workflow, "--config_file", config, "--bundle_root", root,
            "--dataset_dir", root + "/none", "--synthetic_stand_in", "true", "--synthetic_dir", synthetic,
            "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
            "--network_options", "{'features': [4, 8, 8, 8]}"]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _train(tmp_path: Path, synthetic: Path, when: str) -> list[str]:
    (tmp_path / "marks").mkdir()
    cmd = [
        sys.executable,
        "-c",
        _PREPARING,
        str(tmp_path / "bundle"),
        str(synthetic),
        str(tmp_path / "marks"),
    ]
    return cmd + [str(ROOT / "bundles/brats_fpa/configs/train.json"), when]


def _stop_while_preparing(tmp_path: Path, synthetic: Path, signame: str) -> subprocess.CompletedProcess:
    """Start a training, send ``signame`` once it prepares its first volume (every preparation
    waits for the test), then let the preparations go on; returns the finished process."""
    marks = tmp_path / "marks"
    cmd = _train(tmp_path, synthetic, "prepare")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (marks / "preparing").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
        process.send_signal(getattr(signal, signame))
        (marks / "go").touch()
        output = process.communicate(timeout=240)[0]
    finally:
        (marks / "go").touch()
        process.kill()
    return subprocess.CompletedProcess(cmd, process.returncode, output)


@pytest.mark.parametrize(("signame", "status"), [("SIGTERM", 128 + 15), ("SIGINT", -2)])
def test_a_training_stopped_while_preparing_its_data_stops_there(tmp_path, synthetic, signame, status):
    """A SIGTERM (a cluster's preemption) while the slice cache was built ended the process at once,
    silently, with status -15 (StopOnTerminate acts in the trainer's run only). It now stops it as
    Ctrl-C does: the volumes in flight are finished (each cache file written whole), those not
    started are dropped, the message says what stopped it and what to do, the exit status is 128 + 15,
    no lock is held (taken only once the data are ready)."""
    stopped = _stop_while_preparing(tmp_path, synthetic, signame)
    started = (tmp_path / "marks" / "preparing").read_text().split()
    train_cases = int(re.search(r"preparing volumes: +0%.*?/(\d+)", stopped.stdout)[1])
    assert stopped.returncode == status, stopped.stdout[-3000:]
    if signame == "SIGTERM":
        assert (
            "pam_monai: stopped by SIGTERM (preempted or killed); resume with --resume true" in stopped.stdout
        )
    assert len(started) < train_cases, f"all {train_cases} cases prepared after the signal: {started}"
    assert not list((tmp_path / "bundle").rglob(".*.tmp")), "a half-written cache file was left"
    assert not list((tmp_path / "bundle").rglob(LOCK_NAME))


def test_a_training_stopped_after_its_last_epoch_releases_its_lock(tmp_path, synthetic):
    """A SIGTERM after the last epoch (the bundle's ``finalize``: writers closed, then the locks
    released) ended the process at once: its ``.training.lock`` stayed, and a requeued job on another
    host (a shared file system) was refused by it until removed by hand. The exit now releases it,
    says what stopped the run, and exits with status 128 + 15; the trained model is whole. An
    evaluation stopped there says to run it again."""
    from pam_monai.engines import load_checkpoint

    cmd = _train(tmp_path, synthetic, "finalize")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stopped = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    assert stopped.returncode == 128 + 15, stopped.stdout[-3000:]
    assert "pam_monai: stopped by SIGTERM (preempted or killed)" in stopped.stdout
    root = tmp_path / "bundle"
    assert not list(root.rglob(LOCK_NAME)), "the stopped training left its lock"
    assert not list(root.rglob(".*.tmp"))
    assert load_checkpoint(root / "models" / "checkpoint_last.pt")["trainer"]["epoch"] == 1

    shutil.rmtree(tmp_path / "marks")  # the same run's evaluation, stopped as it closes its writers
    stopped = subprocess.run(
        _train(tmp_path, synthetic, "evaluate"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 128 + 15, stopped.stdout[-3000:]
    assert "pam_monai: stopped by SIGTERM (preempted or killed); run the evaluation again" in stopped.stdout
    assert (root / "eval" / "summary.json").is_file()  # written before: whole


@pytest.mark.parametrize(("signame", "status"), [("SIGTERM", 128 + 15), ("SIGINT", -2)])
def test_a_training_stopped_by_a_signal_cleans_up(tmp_path, synthetic, signame, status):
    """SIGTERM (a cluster's preemption) ended a training at once: no error handler ran, so its
    ``.training.lock`` stayed (broken only by a later start on this host) and its TensorBoard events
    and MLflow run were left open. It now stops the run as Ctrl-C (SIGINT) does: the error handlers
    run (the locks go), the last checkpoint stays whole, and the exit status is 128 + 15."""
    from pam_monai.engines import load_checkpoint

    root = tmp_path / "bundle"
    cmd = [sys.executable, "-c", _SIGNAL_AT_EPOCH_2, str(root), signame]
    cmd += [str(ROOT / "bundles/brats_fpa/configs/train.json"), str(synthetic)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stopped = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert stopped.returncode == status, stopped.stderr[-3000:]
    assert not list(root.rglob(LOCK_NAME)), "the stopped training left its lock"
    assert not list(root.rglob(".*.tmp"))
    assert load_checkpoint(root / "models" / "checkpoint_last.pt")["trainer"]["epoch"] == 1
