"""Checkpoints that survive interruptions: atomic writes, the last and the best, exact resume.

* :class:`TrainingCheckpoint` (on the trainer) writes ``checkpoint_last.pt`` after every epoch:
  model, optimiser, the trainer's epoch and iteration, and every RNG state that the next epoch
  draws from (torch CPU and CUDA, NumPy, Python, the data loader's shuffle generator), through a
  temporary file and an ``os.replace``, so a run killed at any moment (SIGKILL included) leaves
  the previous complete checkpoint. With ``resume=True`` it loads that checkpoint before the
  first epoch, and the resumed run ends where an uninterrupted one would.
* :class:`BestCheckpoint` (on the evaluator) writes ``model.pt`` (the model's state dict, what
  ``ckpt_export`` and ``inference.json`` load) when the key metric improves, and remembers the
  best value in ``model.json`` so that a resumed run keeps comparing against it, beside what the
  weights belong to (task, network, options, input channels, training data): evaluation and
  inference check it first (:func:`check_run`) and name any mismatch instead of failing inside
  ``load_state_dict``, or scoring a model on data it was not meant for.

Everything is loaded with ``torch.load(..., weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..atomic import atomic_path, atomic_write_text, remove_orphaned_temps
from ..data.intensity import PROPERTIES_KEY
from ..networks.polarity import unwrap_network
from .eventlogs import training_tags, trim_event_logs
from .flags import as_bool
from .loaders import epoch_samples

__all__ = [
    "BestCheckpoint",
    "TrainingCheckpoint",
    "atomic_save",
    "check_run",
    "check_weights",
    "load_weights",
    "load_checkpoint",
]

log = logging.getLogger("pam_monai")

LAST = "checkpoint_last.pt"
BEST = "model.pt"


def _save_synced(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path) as tmp:
        _save_synced(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``), naming the file when it is unreadable, and
    what it is instead when that is recognisable (:func:`_not_weights`)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt or not a plain-tensor checkpoint
        instead = _not_weights(path, e)
        if instead:  # torch's own message (e.g. "Unsupported operand 118") would only mislead
            raise RuntimeError(f"{path}: cannot load checkpoint: {instead}") from None
        raise RuntimeError(f"{path}: cannot load checkpoint ({type(e).__name__}: {e})") from e


_LFS_POINTER = b"version https://git-lfs"


def _not_weights(path: str | os.PathLike, error: Exception) -> str | None:
    """What the unloadable file at ``path`` is, and what to do, for the files that users copy in by
    mistake: torch's errors for them ("Unsupported operand 118", a bare ``EOFError``) named neither,
    and its advice for the weights-only refusal (load with ``weights_only=False``) lets a file run code."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    again = "copy it again from where it was trained (model.pt with its model.json), or train anew"
    if not head:
        return f"an empty file (a copy or download that did not finish): {again}"
    if head.startswith(b"PK") and "failed reading zip archive" in str(error):
        return f"truncated or corrupt (a copy or download that did not finish, or a full disk): {again}"
    if head.startswith(_LFS_POINTER):
        return (
            "a Git LFS pointer, not the weights (a clone without Git LFS): fetch them with `git lfs pull`, "
            "or download the file itself"
        )
    if "TorchScript" in str(error):
        return (
            "a TorchScript export (ckpt_export's model.ts), not a state dict: use the model.pt it was exported "
            "from"
        )
    if "Weights only load failed" in str(error) and head.startswith(b"PK"):
        return (
            "it holds Python objects besides tensors (e.g. a whole network saved with torch.save(model)), and "
            "checkpoints are loaded as tensors only, so that a file cannot run code: save the network's "
            "state_dict() instead (torch.save(model.state_dict(), 'model.pt'))"
        )
    if not head.startswith(b"PK") and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"a text file, not weights saved by torch.save: {again}"
    if not head.startswith((b"PK", b"\x80")):  # neither torch.save's zip nor its legacy pickle
        return f"not a file saved by torch.save (e.g. a NumPy or safetensors file): {again}"
    return None


def _rng_state(engine: Engine) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": np_state[0],
            "pos": np_state[2],
            "has_gauss": np_state[3],
            "gauss": np_state[4],
            "state": torch.from_numpy(np_state[1].astype(np.int64)),
        },
        "python": _python_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(getattr(engine, "data_loader", None), "generator", None)
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def _python_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _set_rng_state(engine: Engine, state: dict | None) -> None:
    if state is None:  # nothing saved for this rank: it keeps its own
        return
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = getattr(getattr(engine, "data_loader", None), "generator", None)
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def _world() -> tuple[int, int] | None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def _world_size() -> int:
    world = _world()
    return 1 if world is None else world[1]


def _saved_world_size(state: dict) -> int:
    """How many processes wrote a checkpoint: recorded since ``world_size`` was, else the count of
    per-rank random states (only written under ``torch.distributed``)."""
    saved = state.get("trainer", {}).get("world_size")
    if saved:
        return int(saved)
    return len(state.get("rng_per_rank") or ()) or 1


def _gather_per_rank(rng: dict) -> list[dict] | None:
    """Every rank's random state (under ``torch.distributed``): the ranks' states differ (each draws
    its own flips), and a resumed rank must continue from its own."""
    world = _world()
    if world is None:
        return None
    states: list = [None] * world[1]
    torch.distributed.all_gather_object(states, rng)
    return states


def _own_rng(state: dict) -> dict | None:
    """This rank's random state in the checkpoint; None for a rank it holds none of (a run with
    more processes than wrote it), which keeps its own seeding (``seed + rank``): handing it rank
    0's would make it draw the same flips as rank 0."""
    rank, size = _world() or (0, 1)
    per_rank = state.get("rng_per_rank") or [state["rng"]]  # a one-process checkpoint: its one state
    if len(per_rank) != size:
        log.warning(
            "resume: the checkpoint was written by %d process(es), this run has %d: ranks below %d resume "
            "their own random states, the others keep their seed + rank (the run continues, but not exactly "
            "as an uninterrupted one)",
            len(per_rank),
            size,
            min(len(per_rank), size),
        )
    return per_rank[rank] if rank < len(per_rank) else None


def _other_drop_last(engine: Engine, epoch_length: int) -> str | None:
    """The fix when the checkpoint's ``epoch_length`` is what this run's loader gives with the other
    ``drop_last`` (it follows ``compile``: a run compiled on a GPU, resumed without), else None."""
    loader = getattr(engine, "data_loader", None)
    samples, size = epoch_samples(loader), getattr(loader, "batch_size", None)
    drop = getattr(loader, "drop_last", None)
    if samples is None or not size or drop is None:
        return None
    if epoch_length != (math.ceil(samples / size) if drop else samples // size):
        return None
    kept = "kept" if drop else "dropped"
    return f"the interrupted run {kept} each epoch's incomplete last batch: resume with --drop_last {str(not drop).lower()}"


class TrainingCheckpoint:
    """Save the whole training state atomically after every epoch; resume from it on request.

    Args:
        ckpt_dir: folder of ``checkpoint_last.pt``.
        network: the trained network (DDP / compiled wrappers are unwrapped).
        optimizer: its optimiser.
        scheduler: an optional learning-rate scheduler.
        resume: load ``checkpoint_last.pt`` (when it exists) before training starts.
        save_rank0_only: under ``torch.distributed``, only rank 0 writes (the random states of
            every rank are gathered into it, so every rank must run :meth:`save`).
        log_dir: the TensorBoard folder of the training (the bundles' ``output_dir``): a resume
            removes from its event files what the interrupted run logged after the checkpoint (all
            its scalars when it was killed before its first one), which the resumed run logs again (:func:`~pam_monai.engines.eventlogs.trim_event_logs`).

    When training starts, the temporary files of killed saves in ``ckpt_dir`` are removed
    (:func:`~pam_monai.atomic.remove_orphaned_temps`).
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        resume: bool = False,
        save_rank0_only: bool = True,
        log_dir: str | None = None,
    ) -> None:
        self.path = Path(ckpt_dir) / LAST
        self.log_dir = log_dir
        self.network = network
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.resume = as_bool(resume)
        self.save_rank0_only = save_rank0_only

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.remove_orphans)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)

    def remove_orphans(self, engine: Engine | None = None) -> None:
        """Remove what writers killed mid-save left in the checkpoint folder (a few MB a kill;
        they would pile up under repeated preemption). Writes in progress are left alone."""
        if self._writer():
            for path in remove_orphaned_temps(self.path.parent):
                log.info("removed %s, left by a killed writer", path)

    def _writer(self) -> bool:
        if not self.save_rank0_only or not torch.distributed.is_initialized():
            return True
        return torch.distributed.get_rank() == 0

    def _trim_logs(self, engine: Engine, iteration: int, epoch: int) -> None:
        """Remove from ``log_dir``'s event files what ``engine`` logged after ``iteration`` / ``epoch``
        (the tags its handlers name: :func:`~pam_monai.engines.eventlogs.training_tags`), where the
        resumed run starts (0, 0: from the start), so that it logs no step twice."""
        if self.log_dir and self._writer():
            for path in trim_event_logs(self.log_dir, iteration, epoch, *training_tags(engine)):
                log.info("resume: removed from %s what was logged after the checkpoint", path)

    def save(self, engine: Engine) -> None:
        rng = _rng_state(engine)
        per_rank = _gather_per_rank(rng)  # every rank takes part; only the writer keeps the list
        if not self._writer():
            return
        state = {
            "model": unwrap_network(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "max_epochs": engine.state.max_epochs,
                "world_size": _world_size(),
            },
            "rng": rng,
        }
        if per_rank is not None:
            state["rng_per_rank"] = per_rank
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        atomic_save(state, self.path)

    def load(self, engine: Engine) -> None:
        state, unreadable = None, None
        try:
            state = load_checkpoint(self.path) if self.path.is_file() else None
        except RuntimeError as e:  # raised after the collective below, which every rank must reach
            unreadable = e
        self._check_same_on_every_rank(state, unreadable)
        if unreadable is not None:
            raise unreadable
        if state is None:
            log.warning("resume: no checkpoint at %s; training from the start", self.path)
            # a run killed before its first checkpoint logged steps this one repeats
            self._trim_logs(engine, 0, 0)
            return
        epoch, iteration = int(state["trainer"]["epoch"]), int(state["trainer"]["iteration"])
        epoch_length = engine.state.epoch_length
        if epoch_length and epoch and iteration != epoch * epoch_length:
            # ignite counts epochs by iterations: another epoch length would end the run at once
            # (or train a wrong number of epochs) without a word
            saved_world, world = _saved_world_size(state), _world_size()
            if saved_world != world:  # torchrun's DistributedSampler gives each process its share
                how = (
                    f"torchrun --nproc_per_node={saved_world} with multi_gpu_train.json"
                    if saved_world > 1
                    else "train.json alone, without torchrun"
                )
                cause = (
                    f"the checkpoint was written by {saved_world} training process(es), this run has {world} "
                    f"(the epoch length follows the process count): resume with {saved_world} ({how}) and the "
                    "same batch_size"
                )
            else:
                cause = _other_drop_last(engine, iteration // epoch) or (
                    "resume with the interrupted run's batch_size (and data)"
                )
            raise ValueError(
                f"{self.path}: resume: the checkpoint took {iteration} iterations in {epoch} epoch(s), this run "
                f"takes {epoch_length} per epoch: {cause}, or train anew (--resume false "
                "or another --ckpt_dir)"
            )
        unwrap_network(self.network).load_state_dict(state["model"])
        asked = [dict(group) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        _say_kept_settings(asked, self.optimizer.param_groups)
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        engine.state.epoch = epoch
        engine.state.iteration = iteration
        _set_rng_state(engine, _own_rng(state))
        self._trim_logs(engine, iteration, epoch)
        log.info(
            "resumed from %s at epoch %d (iteration %d) of %d",
            self.path,
            engine.state.epoch,
            engine.state.iteration,
            engine.state.max_epochs,
        )
        if engine.state.epoch >= engine.state.max_epochs:
            log.info("resume: the checkpoint already completed all %d epochs", engine.state.max_epochs)
            engine.terminate()

    def _check_same_on_every_rank(self, state: dict | None, unreadable: Exception | None = None) -> None:
        """Under ``torch.distributed``, refuse a resume in which the ranks found different
        checkpoints (a ``ckpt_dir`` on each node's own disk: rank 0 writes to its node's only).
        Ranks resuming different epochs fall out of step; DDP synchronised the weights when it
        was built, before the resume, and never again. A rank that could not read its checkpoint
        (``unreadable``) takes part too, so that every rank refuses rather than wait for it."""
        world = _world()
        if world is None:
            return
        if unreadable is not None:
            mine = f"unreadable: {unreadable}"
        else:
            mine = "none" if state is None else f"epoch {int(state['trainer']['epoch'])}"
        found: list = [None] * world[1]
        torch.distributed.all_gather_object(found, mine)
        if len(set(found)) > 1:
            seen = ", ".join(f"rank {r}: {e}" for r, e in enumerate(found))
            raise ValueError(
                f"{self.path}: resume: the training processes found different checkpoints ({seen}); every "
                "process must read the same ckpt_dir (with several nodes, a folder they all share), or train "
                "anew (--resume false)"
            ) from unreadable


class BestCheckpoint:
    """Write the model's state dict to ``model.pt`` whenever ``metric_name`` improves (higher is better).

    Args:
        ckpt_dir: folder of ``model.pt`` and ``model.json``.
        network: the evaluated network.
        metric_name: key in the evaluator's ``state.metrics`` (``"val_iou"``).
        mode: ``"max"`` or ``"min"``.
        resume: continue comparing against the stored best value.
        save_rank0_only: under ``torch.distributed``, only rank 0 writes.
        run_info: what the weights belong to, written to ``model.json`` under ``"run"`` (the bundles:
            ``task``, ``network_name``, ``network_options``, ``in_channels``, ``data_root``,
            ``synthetic``); :func:`check_run` compares against it, and a resumed run (``resume``)
            is refused when it differs from the interrupted run's record.
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        metric_name: str = "val_iou",
        mode: str = "max",
        resume: bool = False,
        save_rank0_only: bool = True,
        run_info: dict | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = Path(ckpt_dir) / BEST
        self.network = network
        self.metric_name = metric_name
        self.mode = mode
        self.save_rank0_only = save_rank0_only
        self.run_info = _jsonable(run_info) if run_info else None
        # a new run starts its own comparison; a resumed run continues the interrupted one's, and
        # only with the same settings and data (crop, target, CT statistics: check_run names them)
        if as_bool(resume):
            settle_record(self.path)
        if as_bool(resume) and self.run_info and self.path.is_file():
            # weights newer than their record (killed between the two writes) need no refusal here:
            # the resumed epoch is validated again and saves both when it beats the recorded best
            check_run(self.path, self.run_info, verify=False)
        elif self.run_info and self.path.is_file() and self._writes():  # replacing a model: say so once
            previous = read_run_record(self.path, verify=False) or {}
            changed = [
                k
                for k in ("network_name", "network_options", "task")
                if k in previous and previous[k] != self.run_info.get(k)
            ]
            if changed:
                log.warning(
                    "%s holds a model trained with %s; this run replaces it at its first validation (another "
                    "--ckpt_dir keeps both)",
                    self.path,
                    ", ".join(f"{k} {previous[k]!r}" for k in changed),
                )
            else:  # the same command run again: its best model would go without a word
                log.warning(
                    "%s holds the model of an earlier training%s; this run starts anew and replaces it at its "
                    "first validation (--resume true continues that training; another --ckpt_dir or "
                    "--bundle_root keeps both)",
                    self.path,
                    _best_of(self._stored_record()),
                )
        stored = self._stored_record() if as_bool(resume) else {}
        self.best_value = float(stored["value"]) if "value" in stored else None
        self.best_epoch = stored.get("epoch")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _writes(self) -> bool:
        """Whether this process writes ``model.pt`` (under ``torchrun``, rank 0 alone by default)."""
        return not (
            self.save_rank0_only and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0
        )

    def _stored_record(self) -> dict:
        meta = self.path.with_suffix(".json")
        if meta.is_file() and self.path.is_file():
            return json.loads(meta.read_text(encoding="utf-8"))
        return {}

    def __call__(self, engine: Engine) -> None:
        if not self._writes():
            return
        value = float(engine.state.metrics[self.metric_name])
        # a validator run by MONAI's ValidationHandler counts the trainer's epochs
        epoch = getattr(engine.state, "epoch", None)
        at = "" if epoch is None else f" at epoch {epoch}"
        best = self.best_value
        if best is not None and not (value > best if self.mode == "max" else value < best):
            since = "" if self.best_epoch is None else f" (epoch {self.best_epoch})"
            log.info(
                "%s %.4f%s; the best so far %.4f%s in %s", self.metric_name, value, at, best, since, self.path
            )
            return
        self.best_value, self.best_epoch = value, epoch
        # two files cannot be renamed at once: the new record (naming its weights by SHA-256) is
        # written first as model.json.pending, then the weights are renamed into place, then the
        # record; a run killed between any two steps leaves a pair that readers resolve
        # (read_run_record) and a resumed run completes (settle_record)
        with atomic_path(self.path) as tmp:
            _save_synced(unwrap_network(self.network).state_dict(), tmp)
            meta = {"metric": self.metric_name, "value": value, "weights_sha256": file_sha256(tmp)}
            if epoch is not None:
                meta["epoch"] = epoch
            if self.run_info:
                meta["run"] = self.run_info
            atomic_write_text(_pending(self.path), json.dumps(meta, indent=1) + "\n")
        _commit_record(self.path)
        log.info("new best %s %.4f%s: saved %s", self.metric_name, value, at, self.path)


def load_weights(ckpt_path: str | os.PathLike, network: torch.nn.Module) -> None:
    """Load ``model.pt`` into ``network``, weights only, after :func:`check_weights` checked that
    they fit: evaluation's one read of them. MONAI's ``CheckpointLoader``, which evaluate.json used
    after that check (a second read), loads with ``weights_only=False`` up to MONAI 1.5 (the floor
    here is 1.4): a model.pt from elsewhere could run code when evaluated."""
    unwrap_network(network).load_state_dict(check_weights(ckpt_path, network))
    log.info("loaded the weights in %s", ckpt_path)


def _best_of(record: dict) -> str:
    """`` (epoch 3, val_iou 0.4120)`` from a ``model.json`` record, as much of it as it holds."""
    parts = [f"epoch {record['epoch']}"] if "epoch" in record else []
    if "value" in record:
        parts.append(f"{record.get('metric', 'value')} {float(record['value']):.4f}")
    return f" ({', '.join(parts)})" if parts else ""


def _jsonable(obj):
    """Plain JSON types (paths and other objects as strings)."""
    return json.loads(json.dumps(obj, default=str))


def _pending(ckpt_path: str | os.PathLike) -> Path:
    """Where the record of weights being saved waits until the weights are in place."""
    return Path(ckpt_path).with_suffix(".json.pending")


def _commit_record(ckpt_path: str | os.PathLike) -> None:
    os.replace(_pending(ckpt_path), Path(ckpt_path).with_suffix(".json"))


def _record_path(ckpt_path: str | os.PathLike) -> Path:
    """The record that describes the weights in ``ckpt_path``: ``model.json``, or the pending one
    when a run was killed after renaming the weights it names into place (read only: no writes)."""
    pending = _pending(ckpt_path)
    if pending.is_file() and Path(ckpt_path).is_file():
        try:
            named = json.loads(pending.read_text(encoding="utf-8")).get("weights_sha256")
        except (OSError, ValueError, AttributeError):
            named = None  # a pending record is written atomically; anything else is not ours to use
        if named and named == file_sha256(ckpt_path):
            return pending
    return Path(ckpt_path).with_suffix(".json")


def _missing_record_hint(ckpt_path: str | os.PathLike, record: Path) -> str:
    """What to do when the weights in ``ckpt_path`` have no record (``record``) of their network."""
    weights = Path(ckpt_path).name
    if record.name == "model.json":  # the names training writes: the record itself was left behind
        return (
            f" (no model.json beside {weights}: training writes that record of the network beside the "
            "weights; copy in the model.json that came with them)"
        )
    # weights renamed alone (fold1.pt beside model.json) lose the record that names their network
    return (
        f" (no record of them here: training writes it as model.json beside model.pt, and it is read as "
        f"{record.name} beside {weights}: rename weights with their record ({weights} with {record.name}))"
    )


def settle_record(ckpt_path: str | os.PathLike) -> None:
    """Complete or undo a best-model save that was interrupted (see :meth:`BestCheckpoint.__call__`):
    a pending record whose weights are in place becomes ``model.json``; one whose weights never
    arrived is removed (``model.json`` still describes the weights there)."""
    pending = _pending(ckpt_path)
    if not pending.is_file():
        return
    try:
        if _record_path(ckpt_path) == pending:
            _commit_record(ckpt_path)
            log.info(
                "completed the interrupted save of %s: %s now describes it",
                ckpt_path,
                pending.with_suffix(""),
            )
        else:
            pending.unlink()
    except FileNotFoundError:  # another rank settled it first
        pass


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run_record(ckpt_path: str | os.PathLike, verify: bool = True) -> dict | None:
    """The ``"run"`` record that training wrote beside ``ckpt_path`` (``model.json``), or None.

    Raises ``ValueError`` when the record names other weights than those in ``ckpt_path`` (its
    ``weights_sha256``: a training killed between writing the weights and their record, or weights
    replaced by hand; ``verify=False`` skips the check); records without a checksum (earlier
    versions) are taken as they are.
    """
    for again in (True, False):
        meta_path = _record_path(ckpt_path)
        try:
            text = meta_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if again:  # the pending record picked was committed (renamed to model.json) meanwhile
                continue
            return None
        except OSError as e:
            raise ValueError(f"{meta_path}: unreadable ({e})") from e
        break
    try:
        meta = json.loads(text)
        record = meta.get("run") or None
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{meta_path}: unreadable ({e})") from e
    expected = meta.get("weights_sha256")
    if verify and expected and Path(ckpt_path).is_file() and file_sha256(ckpt_path) != expected:
        raise ValueError(
            f"{meta_path} describes other weights than {ckpt_path} (weights replaced by hand, or saved by an "
            f"earlier version interrupted between its two writes): delete {meta_path.name} to load these weights "
            "without their record, or train them again"
        )
    return record


def check_run(
    ckpt_path: str | os.PathLike | None, expected: dict, data: dict | None = None, verify: bool = True
) -> dict | None:
    """Check that the weights in ``ckpt_path`` belong to this run before they are loaded.

    Compares ``expected`` (the bundle's ``task``, ``network_name``, ``network_options``,
    ``in_channels``, ``crop_size``, ``foreground_label``, and own data's CT statistics; keys missing
    on either side are not compared) with the ``"run"`` record that training wrote beside the weights
    (``model.json``), and refuses to score a model trained on real data on a synthetic stand-in
    (``data``: :func:`pam_monai.engines.prepare_data`'s result). Raises ``ValueError`` naming every
    mismatch and the override that fixes it; returns the record (None when there is none, e.g.
    weights from elsewhere, which are then loaded unchecked, or when ``ckpt_path`` is empty: no
    weights are loaded).
    """
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained weights here (train first, or set ckpt_dir / ckpt_path)")
    record = read_run_record(path, verify=verify)
    if not record:
        return None
    expected = _jsonable(expected)

    def fix(key) -> str:
        if key == "in_channels":  # channels follow the data set: no override of their own
            return "the data set (--task, --dataset_dir) they were trained on"
        value = record[key]
        return f"--{key} '{json.dumps(value) if isinstance(value, (dict, list)) else value}'"

    problems = [
        f"{key}: the weights were trained with {record[key]!r}, this run has {expected[key]!r} (pass {fix(key)})"
        for key in ("task", "network_name", "network_options", "in_channels", "crop_size", "foreground_label")
        if key in record and key in expected and record[key] != expected[key]
    ]
    if record.get("dataset_json") and expected.get("dataset_json"):  # own data: CT channels' statistics
        trained, here = (d["dataset_json"].get(PROPERTIES_KEY) for d in (record, expected))
        if trained != here:
            problems.append(
                f"CT statistics: the weights were trained with {trained or 'none (the per-volume z-score of versions before CT normalisation)'}, "
                f"this run normalises with {here} (the data set changed since training: restore it, or train "
                "anew in another bundle_root)"
            )
    if data is not None and data.get("synthetic") and record.get("synthetic") is False:
        problems.append(
            f"data: the weights were trained on {record.get('data_root')}, but this run's data in {data.get('root')} "
            "are SYNTHETIC (a stand-in, or a set marked synthetic.json); pass --dataset_dir of real data"
        )
    if problems:
        raise ValueError(f"{path}: these weights do not belong to this run:\n" + "\n".join(problems))
    if data is not None and data.get("synthetic") is False and record.get("synthetic") is True:
        log.warning(
            "%s: these weights were trained on a SYNTHETIC stand-in (%s); their scores on %s say nothing about "
            "a model trained on it",
            path,
            record.get("data_root"),
            data.get("root"),
        )
    return record


# the optimiser settings a bundle sets (learning_rate, weight_decay) and AdamW's own, as said
_RESTORED_SETTINGS = {"lr": "learning rate", "weight_decay": "weight decay", "betas": "betas", "eps": "eps"}


def _say_kept_settings(asked: list[dict], groups: list[dict]) -> None:
    """Warn of each optimiser setting that a resume took from the checkpoint instead of this run's
    (PyTorch's ``load_state_dict`` restores them all): ``--resume true --weight_decay 0.1`` went on
    with the checkpoint's weight decay without a word."""
    for key, what in _RESTORED_SETTINGS.items():
        wanted = [group.get(key) for group in asked]
        kept = [group.get(key) for group in groups]
        if wanted != kept:
            log.warning(
                "resume: the optimiser continues with the checkpoint's %s %s, not this run's %s "
                "(train anew, --resume false, to use another)",
                what,
                kept[0] if len(set(map(str, kept))) == 1 else kept,
                wanted[0] if len(set(map(str, wanted))) == 1 else wanted,
            )


# the prefixes that wrappers give their network's keys: DistributedDataParallel, DataParallel, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _wrapper_prefix(state: dict) -> str:
    """The wrappers' prefixes that every key of ``state`` starts with, nested as saved
    (``module._orig_mod.``: a compiled network in DistributedDataParallel), or ``""``."""
    prefix = ""
    while state:  # (no key: every one starts with any prefix)
        more = next((p for p in _WRAPPER_PREFIXES if all(str(k).startswith(prefix + p) for k in state)), None)
        if more is None:
            return prefix
        prefix += more
    return prefix


def _layout_hint(state, own: dict) -> str | None:
    """The fix for a state dict that holds the right weights in another layout, which
    ``check_weights`` would otherwise blame on the network ("81 missing, 81 unexpected: pass the
    network_name ..."): keys of a wrapped network (``module.``, ``_orig_mod.``), or the weights
    nested in a training checkpoint of another tool (``{"state_dict": ..., "epoch": ...}``)."""
    if not isinstance(state, dict) or not state:
        return None
    prefix = _wrapper_prefix(state)
    if prefix and {k[len(prefix) :] for k in state} == set(own):
        return (
            f"every key starts with {prefix!r} (saved from a wrapped network: DistributedDataParallel, "
            f"DataParallel or torch.compile): save the unwrapped network's state_dict(), or strip it: "
            f"s = torch.load(path, weights_only=True); "
            f"torch.save({{k.removeprefix({prefix!r}): v for k, v in s.items()}}, path)"
        )
    nested = [k for k, v in state.items() if isinstance(v, dict) and set(own) <= set(v)]
    if nested:
        return (
            f"the weights are its entry {nested[0]!r} (a training checkpoint with keys "
            f"{', '.join(map(repr, list(state)[:5]))}): save that entry alone: "
            f"torch.save(torch.load(path, weights_only=True)[{nested[0]!r}], path)"
        )
    return None


def check_weights(ckpt_path: str | os.PathLike, network: torch.nn.Module) -> dict:
    """Load the state dict in ``ckpt_path`` (``model.pt``, or ``checkpoint_last.pt``'s ``"model"``) and
    check that it fits ``network`` as built; returns it. Raises ``ValueError`` naming the file, the
    counts of missing, unexpected and mis-shaped entries and the likely cause (another
    ``network_name`` or ``network_options``) instead of ``load_state_dict``'s page of keys."""
    state = load_checkpoint(ckpt_path)
    state = state.get("model", state) if isinstance(state, dict) else state
    own = unwrap_network(network).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shaped:
        layout = _layout_hint(state, own)
        if layout:
            raise ValueError(f"{ckpt_path}: these weights do not fit as saved: {layout}")
        example = (shaped or missing or unexpected)[0]
        record = _record_path(ckpt_path)
        unrecorded = "" if record.is_file() else _missing_record_hint(ckpt_path, record)
        raise ValueError(
            f"{ckpt_path}: these weights do not fit {type(unwrap_network(network)).__name__} as built here "
            f"({len(missing)} missing, {len(unexpected)} unexpected and {len(shaped)} mis-shaped entries, e.g. "
            f"{example!r}); pass the network_name and network_options the weights were trained with{unrecorded}"
        )
    return state
