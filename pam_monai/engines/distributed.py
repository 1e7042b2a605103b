"""Training on several processes (``torchrun``, ``multi_gpu_train.json``): rank 0's BatchNorm
statistics for every process's validation (:class:`RankZeroBuffers`), every process stopped when
one fails (:class:`StopEveryProcessOnError`), and the handlers each rank runs (:func:`handlers_of_rank`)."""

from __future__ import annotations

import logging
import os
import sys
import threading

import torch
from ignite.engine import Engine, Events

from .cleanup import clean_up_on_error
from .error_report import _write_error_file
from .training import Bf16WithoutLossScaling, DecollateKeepingLoss, IgnoredVoxelsCheck, NonFiniteLossGuard

__all__ = ["RankZeroBuffers", "StopEveryProcessOnError", "handlers_of_rank"]

log = logging.getLogger("pam_monai")


class RankZeroBuffers:
    """Under ``torch.distributed``, give every process's network rank 0's buffers (BatchNorm's
    running statistics) when an evaluator starts.

    ``multi_gpu_train.json`` deals the validation cases to the processes, each scoring its share
    with its own copy of the network. DDP broadcasts rank 0's buffers at the start of each training
    step, but the step itself updates each copy's running statistics from its own batch: after
    the epoch, a network with BatchNorm (``network_options`` ``norm: batch``) would score each
    share with other statistics than those of the ``model.pt`` rank 0 saves. Training is unchanged
    (the next step broadcasts rank 0's again). Every process must run it (a collective); a network
    without buffers (the bundles' instance norm) has nothing to send.

    Args:
        network: the trained network (DDP and ``torch.compile`` wrappers are looked through).
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        from ..networks.polarity import unwrap_network

        for buffer in unwrap_network(self.network).buffers():
            dist.broadcast(buffer, src=0)


class StopEveryProcessOnError:
    """Under ``torch.distributed``, when the run of its engine (the trainer) raises in one process,
    every other process stops at once, naming that error, instead of waiting for it in a collective
    until ``dist_timeout_minutes`` (60 by default).

    A healthy process does not notice a peer that died: NCCL waits in its all-reduce, and across
    nodes torchrun's agent of another node does not stop its workers (measured with two agents:
    still waiting after 10 minutes). So the process that failed puts its error into the process
    group's store (the first error only), and each process watches that store from a thread,
    every ``poll_seconds`` (nothing per step): on another process's error it logs it at once and,
    unless torchrun's agent stops it first (on one node it does, once the failed process has
    ended: the agent then reports that process as the failure's root cause), exits with status 1
    after ``grace_seconds``, which its agent answers by stopping the rest of its node. A process
    that fails in turn (gloo's "Connection closed by peer") logs the first error too, so each log
    ends with it. Without a process group it does nothing.

    Args:
        poll_seconds: how often each process looks for another's error.
        grace_seconds: how long a process that saw another's error waits to be stopped by its
            agent before it exits.
    """

    _runs = 0  # runs watched in this process: every process counts the same, a key per run
    # "process R: <its error>" when another process failed first and this one then (its collective
    # broke): torchrun's summary of this process names that error (show_error_cause)
    failed_first_elsewhere = ""

    def __init__(self, poll_seconds: float = 1.0, grace_seconds: float = 10.0) -> None:
        self.poll_seconds = float(poll_seconds)
        self.grace_seconds = float(grace_seconds)
        self._stop: threading.Event | None = None
        self._watcher: threading.Thread | None = None
        self._key = ""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._end)
        clean_up_on_error(engine, self._failed)

    @staticmethod
    def _store():
        """The default process group's store, None without a process group."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        try:  # private in PyTorch: a version without it loses the early stop, not the training
            return dist.distributed_c10d._get_default_store()
        except AttributeError:
            from ..internals import changed

            feature = "StopEveryProcessOnError (a failed process is not announced: the others wait for it)"
            log.warning(
                "%s", changed("torch", "torch.distributed.distributed_c10d._get_default_store", feature)
            )
            return None
        except (RuntimeError, ValueError) as e:
            log.warning(
                "StopEveryProcessOnError: no process group store (%s): a failed process is not announced", e
            )
            return None

    def _start(self, engine: Engine) -> None:
        StopEveryProcessOnError.failed_first_elsewhere = ""  # an earlier run's, in this process
        store = self._store()
        if store is None:
            return
        StopEveryProcessOnError._runs += 1
        # a key per run: a later run in the same process group must not find an earlier run's error
        self._key = f"pam_monai/failed/{StopEveryProcessOnError._runs}"
        self._stop = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch,
            args=(store, self._key, self._stop),
            name="pam_monai-peer-errors",
            daemon=True,
        )
        self._watcher.start()

    # how long the end of a run waits for the watcher to leave a store call (milliseconds unless the
    # store hangs): a daemon thread that returns from C++ while the interpreter exits aborts it
    join_seconds = 10.0

    def _end(self, engine: Engine | None = None) -> None:
        """Stop the watcher and wait until it has ended. Left inside a store call (slow on a loaded
        machine), it came back into Python while the interpreter was exiting after the run's error:
        the process died of SIGABRT ("terminate called without an active exception", status -6)
        instead of exiting with status 1 and its error."""
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        watch, self._watcher = self._watcher, None
        if watch is not None and watch is not threading.current_thread():
            watch.join(self.join_seconds)
            if watch.is_alive():
                log.warning(
                    "StopEveryProcessOnError: the process group's store has not answered for %.0f s; "
                    "this process may end with SIGABRT instead of its own status",
                    self.join_seconds,
                )

    def _watch(self, store, key: str, stop: threading.Event) -> None:
        rank = torch.distributed.get_rank()
        while not stop.wait(self.poll_seconds):
            try:
                if not store.check([key]):
                    continue
                failed, error = store.get(key).decode().split("\n", 1)
            except Exception:  # the store is gone (its process ended): the others stop on their own
                return
            if int(failed) == rank or stop.is_set():
                return
            log.error(
                "process %s failed in training: %s; process %d, which waits for it, stops too (see process "
                "%s's log for where it failed)",
                failed,
                error,
                rank,
                failed,
            )
            for handler in logging.getLogger().handlers + log.handlers:  # os._exit skips Python's clean-up
                handler.flush()
            sys.stderr.flush()
            if stop.wait(self.grace_seconds):  # its own run raised meanwhile: that error goes on
                return
            # os._exit skips the excepthook that names the error in torchrun's summary: name it here
            # (on another node than the failed process, that summary is the last thing its agent prints)
            stopped = f"process {failed}: {error}; process {rank}, which waited for it, stopped too"
            _write_error_file(stopped, f"{stopped} (see process {failed}'s log for where it failed)\n")
            # the main thread may be blocked in a collective that never returns: no exception reaches it
            os._exit(1)

    def _failed(self, engine: Engine, error: BaseException) -> None:
        """Tell the other processes of this process's error (:meth:`_announce`), then end the watcher."""
        store, key = self._store(), self._key  # once per failure (clean_up_on_error)
        if self._stop is not None:
            self._stop.set()  # the watcher stops now; waited for once the error is told (_end)
        try:
            self._announce(store, key, error)
        finally:
            self._end()
            if store is not None and isinstance(error, Exception):
                _destroy_gloo_group_at_exit()

    def _announce(self, store, key: str, error: BaseException) -> None:
        """Put ``error`` under ``key`` in ``store`` unless another process's came first (then log that one)."""
        # an interrupt (Ctrl-C) or exit reaches every process from torchrun itself
        if store is None or not key or not isinstance(error, Exception):
            return
        rank = torch.distributed.get_rank()
        mine = f"{rank}\n{type(error).__name__}: {error}"
        try:
            first = store.compare_set(key, "", mine).decode()
        except Exception as e:  # the store is gone: this process's error is the one to see
            log.warning("could not tell the other processes of this error: %s", e)
            return
        failed, first_error = first.split("\n", 1)
        if int(failed) != rank:
            log.error("process %s failed first, in training: %s", failed, first_error)
            StopEveryProcessOnError.failed_first_elsewhere = f"process {failed}: {first_error}"


_destroying_at_exit: list = []  # the one exit hook of this process, once registered


def _destroy_gloo_group_at_exit() -> None:
    """Destroy the gloo process group when the interpreter exits, before it finalizes, unless it is
    gone by then (the bundle's ``finalize`` or the user destroyed it).

    A gloo worker thread frees the last collective's work, and with it that step's tensors, a
    moment after the main thread saw it complete; on a loaded machine that came during the
    interpreter's finalization after a run's error: taking the GIL there ends the thread
    (``pthread_exit``) inside a C++ destructor and the process died of SIGABRT ("terminate called
    without an active exception", status -6) instead of exiting with status 1 and its error.
    Destroying the group joins those threads while Python is whole. At exit only: a process that
    goes on after the error (``trainer.run()`` in a notebook) keeps its process group."""
    if not _destroying_at_exit:
        import atexit

        _destroying_at_exit.append(_destroy_gloo_group)
        atexit.register(_destroy_gloo_group)


def _destroy_gloo_group() -> None:
    dist = torch.distributed
    # gloo only: the threads are gloo's, and NCCL's destroy may wait for peers that are gone
    if dist.is_initialized() and dist.get_backend() == "gloo":
        dist.destroy_process_group()


def handlers_of_rank(handlers: list, rank: int) -> list:
    """The training handlers process ``rank`` runs under ``torchrun`` (multi_gpu_train.json): all of
    them on rank 0; on the others those that every process must run, because they take part in a
    collective (validation, checkpoint, the error exchange), keep the processes in step (the
    sampler's epoch, the resume, the NaN stop) or shape the step itself (decollation, bf16 without a
    scaler). The loggers and writers are rank 0's alone."""
    from monai.handlers import ValidationHandler

    from .checkpoint import TrainingCheckpoint
    from .loaders import LoaderEpoch

    if int(rank) == 0:
        return list(handlers)
    every_rank = (
        NonFiniteLossGuard,
        LoaderEpoch,
        ValidationHandler,
        TrainingCheckpoint,
        IgnoredVoxelsCheck,
        DecollateKeepingLoss,
        Bf16WithoutLossScaling,
        StopEveryProcessOnError,
    )
    return [h for h in handlers if isinstance(h, every_rank)]
