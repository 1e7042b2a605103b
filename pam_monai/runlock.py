"""One training at a time per output folder.

Two trainings started with the same ``bundle_root`` (two seeds in two terminals, a job array)
both wrote ``models/model.pt``, ``model.json`` and ``checkpoint_last.pt`` and ran to the end
without a word: the folder kept whichever model was saved last, and a record of one run could
land beside the weights of the other. A training now holds a lock file (``.training.lock``) in
each folder it writes (``ckpt_dir``, ``output_dir``), created atomically (``O_CREAT | O_EXCL``)
and naming its process, host and start time; a second training there is refused before it
writes there. The bundles take it once the trainer is built (data prepared and checked), so a data
error is named first and leaves no lock, which the run's failure would otherwise keep in a notebook.

A lock whose process is gone (killed, SIGKILL included) is broken at the next start, on the same
host and PID namespace only (:mod:`pam_monai.atomic`'s host tag); a lock of another host is never
broken (its process cannot be asked): the refusal says how old it is and how to remove it. A
lock left renamed aside by a process killed while it broke one is removed at the next lock there.
Evaluation and inference take no lock: they only read ``model.pt``, which is replaced atomically.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from .atomic import _HOST, _writer_gone

__all__ = ["LOCK_NAME", "RunLockError", "hold_training_lock", "refuse_if_held", "release_training_locks"]

log = logging.getLogger("pam_monai")

LOCK_NAME = ".training.lock"
OLD_HOURS = 24  # a lock of another host older than this is said to be possibly left by a dead run
_STARTING_S = 10  # an empty lock this young is being written by a run that is starting
_held: dict[Path, str] = {}  # lock path -> the token this process wrote into it


class RunLockError(RuntimeError):
    """A training refused because another one holds its output folder."""


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), which tells a reused process ID from its first owner."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _content() -> dict:
    return {
        "pid": os.getpid(),
        "host": _HOST,
        "hostname": socket.gethostname(),
        "proc_start": _proc_start(os.getpid()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "token": uuid.uuid4().hex,
    }


def _read(path: Path) -> dict | None:
    """The holder recorded in ``path``; None for an empty or unreadable file."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _stale(holder: dict) -> bool:
    """Whether the lock's process is gone: only judged on this host and PID namespace."""
    if holder.get("host") != _HOST:
        return False
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():  # this process: a training of it that failed before releasing (the grid runner)
        return True
    if pid <= 0 or _writer_gone(pid):
        return True
    started = holder.get("proc_start")
    return started is not None and _proc_start(pid) not in (None, started)  # the PID was reused


def _age_hours(path: Path) -> float:
    try:
        return (time.time() - path.stat().st_mtime) / 3600
    except OSError:
        return 0.0


def _refusal(path: Path, holder: dict | None) -> RunLockError:
    folder = path.parent
    fix = (
        "wait for it to finish, or train into another folder (--bundle_root, or --ckpt_dir and --output_dir)"
    )
    if holder is None:
        return RunLockError(
            f"{folder}: another training holds it ({path} exists but names no process): {fix}; if none runs, "
            f"delete {path}"
        )
    who = f"process {holder.get('pid')} on {holder.get('hostname')}, started {holder.get('started')}"
    message = f"{folder}: another training is writing into it ({who}): {fix}"
    if holder.get("host") != _HOST:
        age = _age_hours(path)
        dead = (
            f"; it is {age:.0f} hours old: if that run is dead"
            if age >= OLD_HOURS
            else "; if that run is dead"
        )
        message += f"{dead} (killed on another machine), delete {path}"
    return RunLockError(message)


def _break(path: Path, holder: dict) -> None:
    """Remove the stale lock ``holder`` read from ``path``, and not a fresh one that another
    starting run put there meanwhile: it is renamed aside, checked, and put back if it changed."""
    aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another starting run broke it first
        return
    if _read(aside) == holder:
        aside.unlink(missing_ok=True)
        if holder.get("pid") != os.getpid():
            log.info("removed %s, left by process %s that is gone", path, holder.get("pid"))
        return
    try:  # a fresh lock: back in place, unless a third run took the name meanwhile
        os.link(aside, path)
    except (FileExistsError, FileNotFoundError):  # or a run's _remove_left_aside took the aside
        pass
    aside.unlink(missing_ok=True)


def _remove_left_aside(folder: Path) -> None:
    """Remove the locks that a process killed in :func:`_break` left renamed aside
    (``.training.lock.stale.*``): those whose holder is gone (this host), and those of another host
    older than OLD_HOURS. One of a live holder is left (a fresh lock its breaker was to put back),
    and one of this process (its new lock, which a starting run may have renamed aside to check)."""
    for aside in folder.glob(f"{LOCK_NAME}.stale.*"):
        holder = _read(aside)
        if holder is not None and holder.get("host") == _HOST and holder.get("pid") == os.getpid():
            continue
        gone = holder is not None and _stale(holder)
        if gone or ((holder is None or holder.get("host") != _HOST) and _age_hours(aside) >= OLD_HOURS):
            aside.unlink(missing_ok=True)
            log.info("removed %s, a lock left aside by a run killed while it broke a stale lock", aside)


def _acquire(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None and _age_hours(path) * 3600 < _STARTING_S:
                raise _refusal(path, None) from None
            if holder is None or not _stale(holder):
                raise _refusal(path, holder) from None
            _break(path, holder)
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                content = _content()
                f.write(json.dumps(content) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # stopped (a signal) or failed: an empty lock names no one, is never broken
            path.unlink(missing_ok=True)
            raise
        _remove_left_aside(path.parent)  # the folder is ours now
        return content["token"]
    raise _refusal(path, _read(path))


def _release(path: Path) -> None:
    token = _held.pop(path, None)
    holder = _read(path)
    if token is not None and holder is not None and holder.get("token") == token:  # ours, not a successor's
        path.unlink(missing_ok=True)


def refuse_if_held(*folders: str | os.PathLike | None) -> None:
    """Raise :class:`RunLockError` (as a training there would be refused) when a training that is
    not gone holds one of ``folders`` (None and repeats skipped): for a caller about to remove their
    files to train there anew (the experiment grid redoing a run), which removed the lock with them
    and let a second training in beside the first."""
    for folder in dict.fromkeys(f for f in folders if f):
        path = Path(os.path.abspath(folder)) / LOCK_NAME
        if not path.exists():
            continue
        holder = _read(path)
        if holder is None or not _stale(holder):  # as _acquire judges it: refused, not broken
            raise _refusal(path, holder)


def hold_training_lock(*folders: str | os.PathLike | None) -> list[Path]:
    """Lock each of ``folders`` (None and repeats skipped) for this training, or raise
    :class:`RunLockError` naming the folder, the holder and the fix, holding none then. Under
    ``torch.distributed`` only rank 0 locks (the others get its result or its error). Released by
    :func:`release_training_locks` (the bundles' ``finalize``) or at the process's exit."""
    from .ranks import on_rank0  # imports torch

    return on_rank0(lambda: _hold(folders))


def _hold(folders: Iterable[str | os.PathLike | None]) -> list[Path]:
    paths = list(dict.fromkeys(Path(os.path.abspath(f)) / LOCK_NAME for f in folders if f))
    taken: list[Path] = []
    try:
        for path in paths:
            _held[path] = _acquire(path)
            taken.append(path)
    except BaseException:
        for path in taken:
            _release(path)
        raise
    return taken


def release_training_locks() -> None:
    """Remove the lock files this process holds (those another process took over are left)."""
    for path in list(_held):
        _release(path)


atexit.register(release_training_locks)
