"""Ignite handlers of the bundles: per-case metrics, a NaN guard, the sparse-label loss check."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import TensorBoardStatsHandler as _MonaiTensorBoardStatsHandler
from torch.utils.data import DistributedSampler

from ..atomic import atomic_write_text, folder_lock
from ..metrics import case_metrics, split_ignored, summarize
from .data import on_case_grid
from .error_report import _write_error_file
from .loaders import epoch_samples

__all__ = [
    "Bf16WithoutLossScaling",
    "CaseMetrics",
    "CloseWritersOnError",
    "DecollateKeepingLoss",
    "EveryIterations",
    "IgnoredVoxelsCheck",
    "NonFiniteLossGuard",
    "RankZeroBuffers",
    "ReleaseTrainingLocksOnError",
    "StopEveryProcessOnError",
    "StopOnTerminate",
    "stop_on_terminate",
    "TensorBoardStatsHandler",
    "Terminated",
    "TrackingEvery",
    "TrainingPlan",
    "clean_up_on_error",
    "close_writers",
    "handlers_of_rank",
    "loss_of",
    "score_case",
    "write_case_metrics",
]

log = logging.getLogger("pam_monai")

METRICS = ("iou", "dice", "hd95", "fp_rate", "fn_rate")
METRICS_LOCK = ".metrics.lock"  # held while metrics.csv and summary.json are written (write_case_metrics)


def score_case(
    pred,
    label,
    label_full=None,
    restore: str = "crop",
    spacing=None,
    empty_value: float | None = None,
    threshold: float = 0.5,
) -> dict:
    """:func:`pam_monai.metrics.case_metrics` of a prediction on the case's own grid
    (:func:`~pam_monai.engines.data.on_case_grid`, which cuts resized probabilities at
    ``threshold``), over its annotated voxels when the label marks unannotated ones
    (:func:`pam_monai.metrics.split_ignored`); None for a case without any annotated voxel
    (nothing to score)."""
    pred, label = on_case_grid(pred, label, label_full, restore, threshold)
    target, annotated = split_ignored(label)
    if annotated is not None and not annotated.any():
        return None
    return case_metrics(pred, target, spacing=spacing, empty_value=empty_value, annotated=annotated)


def close_writers(objects) -> None:
    """Close the ``SummaryWriter`` of every TensorBoard handler among ``objects`` (handlers or
    lists of them; a disabled one, ``None``, is skipped), each once.

    MONAI's ``TensorBoardStatsHandler`` never closes the writer it creates: each keeps a flush
    thread alive, with the writer, for the rest of the process (a notebook, the experiment runner)
    that ran the workflow. The bundles' ``finalize`` calls this with their handler lists."""
    from monai.handlers import TensorBoardHandler

    done = set()
    for obj in objects:
        for handler in obj if isinstance(obj, (list, tuple)) else [obj]:
            if isinstance(handler, TensorBoardHandler) and id(handler) not in done:
                done.add(id(handler))
                handler.close()


_NOT_YET = object()  # the writer a TensorBoardStatsHandler makes when it first writes


class TensorBoardStatsHandler(_MonaiTensorBoardStatsHandler):
    """MONAI's ``TensorBoardStatsHandler`` whose own ``SummaryWriter`` (and its flush thread) is
    made when it first writes, not when the handler is made.

    A bundle makes its handler lists before the run: when a handler after it failed to be made
    (a mistyped ``_target_``, an optional package missing), the writers already made were never
    closed (:class:`CloseWritersOnError`, which closes them on error, is attached with the engine
    only, and ``finalize`` does not run), their flush threads alive for the rest of the process (a
    notebook). Takes MONAI's arguments; ``close`` closes a writer it made, if any."""

    def __init__(self, summary_writer=None, log_dir: str = "./runs", *args, **kwargs) -> None:
        from torch.utils.tensorboard import SummaryWriter  # without tensorboard, fails here, as MONAI's

        self._made = None
        self._make = lambda: SummaryWriter(log_dir=log_dir)
        # MONAI's arguments in MONAI's order (its own handler's positional use keeps working)
        super().__init__(_NOT_YET if summary_writer is None else summary_writer, log_dir, *args, **kwargs)
        self.internal_writer = summary_writer is None
        self._check_writer_attribute()

    def _check_writer_attribute(self) -> None:
        """MONAI keeps the writer in its private ``_writer``, which this class makes a property:
        a MONAI that renamed it would write to the placeholder (an AttributeError at the first
        log). There the writer is made at once, as MONAI's is, with a warning."""
        renamed = [name for name, value in vars(self).items() if value is _NOT_YET]
        if renamed:
            from ..internals import changed

            feature = "making the TensorBoard writer at the first write; it is made now"
            warnings.warn(
                changed("monai", "TensorBoardHandler._writer", feature), RuntimeWarning, stacklevel=3
            )
            self._made = self._make()
            for name in renamed:
                setattr(self, name, self._made)

    @property
    def _writer(self):
        if self._made is None:
            self._made = self._make()
        return self._made

    @_writer.setter
    def _writer(self, writer) -> None:
        self._made = None if writer is _NOT_YET else writer

    def close(self) -> None:
        if self.internal_writer and self._made is not None:
            self._made.close()


def _handler_table(engine: Engine) -> dict:
    """Ignite's table of ``engine``'s handlers, ``{event: [(handler, args, kwargs), ...]}``.

    Private in Ignite (``Engine._event_handlers``), read where Ignite has no public call: to put a
    handler first in line at an event, to find the handlers attached. A pytorch-ignite that changed
    it fails here, naming it and its version, not at an unpacking deep in a run."""
    table = getattr(engine, "_event_handlers", None)
    if not isinstance(table, dict) or not all(
        isinstance(entries, list) and all(isinstance(e, tuple) and len(e) == 3 for e in entries)
        for entries in table.values()
    ):
        from ..internals import changed

        raise RuntimeError(
            changed(
                "pytorch-ignite",
                "Engine._event_handlers",
                "the order of the bundles' error clean-up handlers and finding the handlers attached",
            )
        )
    return table


def clean_up_on_error(engine: Engine, clean_up, last: bool = False) -> None:
    """Run ``clean_up(engine, error)`` when a run of ``engine`` raises, then let the error go on.

    Attached first in line at ``EXCEPTION_RAISED``: MONAI's StatsHandler, which logs and re-raises,
    stops the handlers after it. Ignite re-raises an engine's error only when no such handler is
    attached, so the last handler in line raises it (counting instead, raising when alone, let two
    clean-up handlers swallow the error when nothing came after). ``last``: after every clean-up
    attached so far, and before those attached later unless they are ``last`` too; run even where
    an earlier clean-up raised (StopOnTerminate's: its SIGTERM handler, left in place, held back
    every later SIGTERM), before that clean-up's error goes on."""

    def handler(engine: Engine, error: BaseException) -> None:
        try:
            clean_up(engine, error)
        except BaseException:
            if not last:
                _run_last_clean_ups(engine, error)
            raise
        if _handler_table(engine)[Events.EXCEPTION_RAISED][-1][0] is handler:
            raise error

    handler.clean_up = True
    handler.last_clean_up = clean_up if last else None
    table = _handler_table(engine)  # before Ignite is asked to attach anything
    engine.add_event_handler(Events.EXCEPTION_RAISED, handler)
    raised = table[Events.EXCEPTION_RAISED]
    mine = raised.pop()
    at = 0
    if last:
        at = max((i + 1 for i, (h, _, _) in enumerate(raised) if getattr(h, "clean_up", False)), default=0)
    raised.insert(at, mine)


def _run_last_clean_ups(engine: Engine, error: BaseException) -> None:
    """The ``last`` clean-ups of ``engine`` (:func:`clean_up_on_error`), after one before them
    raised: each is taken, its own failure logged (the first clean-up's error goes on)."""
    for entry, _, _ in list(_handler_table(engine)[Events.EXCEPTION_RAISED]):
        clean_up = getattr(entry, "last_clean_up", None)
        if clean_up is None:
            continue
        try:
            clean_up(engine, error)
        except Exception as e:
            log.warning("after a failed clean-up, another failed too: %s: %s", type(e).__name__, e)


class CloseWritersOnError:
    """Ignite handler: when the run of its engine raises (an error, Ctrl-C), closes the writers of
    the TensorBoard handlers attached to the engine and to the evaluator of its ``ValidationHandler``
    (:func:`close_writers`), then lets the error go on (:func:`clean_up_on_error`).

    ``monai.bundle.run`` calls the bundle's ``finalize``, which closes them, only after a run that
    ended: a training that raised in a notebook left its writers and their flush threads alive."""

    def attach(self, engine: Engine) -> None:
        clean_up_on_error(engine, lambda engine, error: close_writers(_attached(engine)))


class ReleaseTrainingLocksOnError:
    """Ignite handler: when the training's run raises (an error, Ctrl-C), removes the lock files
    this process holds on its output folders (:mod:`pam_monai.runlock`), then lets the error go on
    (:func:`clean_up_on_error`).

    ``monai.bundle.run`` calls the bundle's ``finalize``, which releases them, only after a run that
    ended: a training that raised in a notebook kept its folders locked while the kernel idled, and
    a training started there from a terminal was refused, told to wait for a run that had ended."""

    def attach(self, engine: Engine) -> None:
        from ..runlock import release_training_locks

        clean_up_on_error(engine, lambda engine, error: release_training_locks())


class Terminated(SystemExit):
    """Raised in the main thread by a SIGTERM (a cluster's preemption, ``kill``) while a training or
    an evaluation runs (:class:`StopOnTerminate`); exits with status 128 + 15, what a shell reports
    for a SIGTERM kill. ``then`` says what to do next (a training resumes, an evaluation reruns)."""

    def __init__(self, signum: int = signal.SIGTERM, then: str = "resume with --resume true") -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.then = then

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} (preempted or killed); {self.then}"


class StopOnTerminate:
    """Ignite handler: while its engine runs, a SIGTERM raises :class:`Terminated` as Ctrl-C raises
    ``KeyboardInterrupt``, so that the run's error handlers clean up.

    SIGTERM's default action ended the process at once: no ``finally``, no error handler, no
    ``atexit``. A preempted training (SLURM sends SIGTERM, then SIGKILL after its grace period) left
    its ``.training.lock`` (broken only by a later start on the same host), its TensorBoard events
    unflushed and its MLflow run RUNNING. Checkpoints are safe either way (written atomically). The
    handler is the process's from the run's start to its end only (restored then, and at the first
    signal: a second SIGTERM ends the process at once), and in the main thread only (Python's rule).
    After the run's own error it is restored once the other error handlers are done: a SIGTERM
    meanwhile (torchrun's, when a peer failed) is logged and waits for them. MONAI's StatsHandlers
    (the engine's and its validator's) log the :class:`Terminated` at DEBUG, not as an error with
    the traceback of wherever the signal landed (:class:`_TerminatedAtDebug`).
    ``then``: what the error tells to do next (evaluate.json's: run the evaluation again)."""

    def __init__(self, then: str = "resume with --resume true") -> None:
        self.then = then
        self._previous = None
        self._installed = False
        self._cleaning = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.install)
        engine.add_event_handler(Events.COMPLETED, self.restore)
        # after an error, a SIGTERM waits for the other clean-ups: restored first, the default ended
        # the process inside them (torchrun sends one as soon as a peer fails), locks held, MLflow
        # run RUNNING; raising Terminated there would cut them short as well
        clean_up_on_error(engine, lambda engine, error: self.restore(), last=True)

    def _hold(self, engine: Engine, error: BaseException) -> None:
        """First at an error: from now until :meth:`restore`, a SIGTERM is logged, not raised."""
        self._cleaning = self._installed

    def install(self, engine: Engine | None = None) -> None:
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        if engine is not None:  # first in line at an error, before every handler attached
            if engine.has_event_handler(self._hold, Events.EXCEPTION_RAISED):
                engine.remove_event_handler(self._hold, Events.EXCEPTION_RAISED)
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._hold)
            raised = _handler_table(engine)[Events.EXCEPTION_RAISED]
            raised.insert(0, raised.pop())
            _quiet_terminated_in_stats(engine)
        self._previous = signal.signal(signal.SIGTERM, self._raise)
        self._installed = True

    def restore(self, engine: Engine | None = None) -> None:
        if self._installed:
            # None: a handler set outside Python, which cannot be put back; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False
        self._cleaning = False

    def _raise(self, signum: int, frame) -> None:
        if self._cleaning:  # the run's error is on its way out, with its own status
            log.warning("SIGTERM while cleaning up after the run's error: the process ends once that is done")
            global _held_sigterm
            _held_sigterm = signum  # a caller going on after the error (a grid's --keep_going) stops
            return
        self.restore()
        if getattr(signal.getsignal(signal.SIGTERM), "stops_on_terminate", False):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stop_on_terminate's: a second SIGTERM ends it
        raise Terminated(signum, self.then)


_held_sigterm: int | None = None


def take_held_sigterm() -> int | None:
    """The SIGTERM that :class:`StopOnTerminate` held back while a run cleaned up after its own
    error (None if none), forgotten now: under ``python -m monai.bundle`` the error ends the
    process, but a caller that goes on after a failed run (the experiment grid's ``--keep_going``)
    must stop as on any SIGTERM, or the signal (a preemption) is lost."""
    global _held_sigterm
    signum, _held_sigterm = _held_sigterm, None
    return signum


class _TerminatedAtDebug(logging.Filter):
    """A record of a :class:`Terminated` (MONAI's ``StatsHandler.exception_raised``: "Exception:
    stopped by SIGTERM" and the traceback of wherever the signal landed, at ERROR) is logged at
    DEBUG, or not at all where its logger is not enabled for DEBUG: a preemption is not an error
    to read a traceback of, and Ignite's ERROR line and the run's own message say what stopped it.
    Every other record, other errors' tracebacks included, goes on as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.exc_info and isinstance(record.exc_info[1], Terminated)):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        # the logger's level was checked at ERROR already; a handler without a level takes anything
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_TERMINATED_AT_DEBUG = _TerminatedAtDebug()


def _quiet_terminated_in_stats(engine: Engine) -> None:
    """Put :class:`_TerminatedAtDebug` on the loggers of the StatsHandlers attached to ``engine``
    and to its validator (once per logger: the default one, ``StatsHandler``, is shared)."""
    from monai.handlers import StatsHandler

    for handler in _attached(engine):
        logger = getattr(handler, "logger", None) if isinstance(handler, StatsHandler) else None
        if isinstance(logger, logging.Logger) and _TERMINATED_AT_DEBUG not in logger.filters:
            logger.addFilter(_TERMINATED_AT_DEBUG)


def stop_on_terminate(then: str = "resume with --resume true") -> None:
    """Under ``python -m monai.bundle`` (and ``torchrun -m monai.bundle``), from now to the
    process's end a SIGTERM raises :class:`Terminated` (exit status 128 + 15) wherever the main
    thread is, not only while an engine runs (:class:`StopOnTerminate`), and prints what stopped.

    Outside the engines' runs SIGTERM's default action ended the process at once, silently, with
    status -15: while the data were prepared (the slice cache built: its files are written whole
    either way), while the lock was taken, or after the last epoch (an MLflow run still to end, the
    TensorBoard files to close, the ``.training.lock`` to release: a requeued job on another host
    was refused by it, "another training is writing into it", until removed by hand). Now the
    error goes up: handlers end the MLflow run KILLED, and the exit releases the locks. The bundles
    call it at the start of ``initialize``. Not in other processes (notebooks, tests, the experiment
    runner: the handler would outlive the run there), nor where SIGTERM already has a handler;
    the first SIGTERM puts back the default, so that a second ends the process at once."""
    from .workflow import _run_by_monai_bundle

    if not _run_by_monai_bundle() or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    raise_terminated_on_sigterm(then, show=True)


def raise_terminated_on_sigterm(then: str, show: bool = False) -> None:
    """From now on (main thread only) a SIGTERM raises :class:`Terminated` telling ``then`` (and
    prints it first where ``show``: a SystemExit prints nothing); the first puts SIGTERM's default
    back, so that a second ends the process at once (:class:`StopOnTerminate` does the same on
    seeing ``stops_on_terminate``)."""

    def raise_terminated(signum: int, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        error = Terminated(signum, then)
        if show:
            print(f"pam_monai: {error}", file=sys.stderr, flush=True)
        raise error

    raise_terminated.stops_on_terminate = True
    signal.signal(signal.SIGTERM, raise_terminated)


def _attached(engine: Engine, seen: set | None = None) -> list:
    """The handler objects attached to ``engine`` and, through a ``ValidationHandler``, to its
    evaluator (a bound method's object; a filtered event's handler is wrapped by Ignite)."""
    from monai.handlers import ValidationHandler

    seen = set() if seen is None else seen
    seen.add(id(engine))
    found = []
    for handlers in list(_handler_table(engine).values()):
        for func, _, _ in handlers:
            func = getattr(func, "__wrapped__", func)
            owner = getattr(func, "__self__", func)
            found.append(owner)
            validator = getattr(owner, "validator", None) if isinstance(owner, ValidationHandler) else None
            if isinstance(validator, Engine) and id(validator) not in seen:
                found += _attached(validator, seen)
    return found


class CaseMetrics:
    """Per-case IoU, Dice, HD95 (in the case's physical units), FP rate and FN rate for an evaluator.

    On every iteration it reads the binarised ``pred`` and the ``label`` of each case of the batch
    (decollated, MONAI's default, or ``B x C x spatial`` from an evaluator with ``decollate=False``)
    (and the case's ``spacing``; with a ``label_full`` in the batch, see
    :class:`~pam_monai.engines.CaseDataset`, the prediction is put back into the case's own grid,
    zeros outside the crop, and scored against that label; a resized own 2-D image's ``pred``
    arrives on its own pixels already, cut there by :class:`~pam_monai.engines.ForegroundMaskd`
    from bilinearly resized probabilities, as inference cuts it), computes :func:`pam_monai.metrics.case_metrics`
    (over the annotated voxels only, where the label marks unannotated ones), and at the end
    of the run puts the means into ``engine.state.metrics`` as ``<prefix>iou``, ``<prefix>hd95``,
    ... (so checkpoint savers and stats handlers see them) and, with ``output_dir``, writes
    ``metrics.csv`` (one row per case) and ``summary.json`` (mean, std, median, counts of empty
    cases).

    Under ``torch.distributed``, with a ``DistributedSampler`` dealing the cases to the processes
    (``multi_gpu_train.json``), each process scores its own share and every process ends the run
    with all of them: the rows are gathered, each case once (the sampler repeats cases so that
    every process gets as many) and in the data set's order, so all processes hold the metrics of
    one process that scored every case.

    Args:
        prefix: prefix of the metric names in ``engine.state.metrics`` (``"val_"``).
        output_dir: where to write the per-case CSV and the summary; None writes nothing.
        empty_value: HD95 of a case where exactly one mask is empty (None: the image diagonal).
    """

    def __init__(
        self, prefix: str = "val_", output_dir: str | None = None, empty_value: float | None = None
    ) -> None:
        self.prefix = prefix
        self.output_dir = output_dir
        self.empty_value = empty_value
        self.rows: list[dict] = []
        self.unscored: list[str] = []  # cases without an annotated voxel (sparse annotations)
        # where the loader delivered each row and each unscored case (gathered across processes)
        self._row_positions: list[int] = []
        self._unscored_positions: list[int] = []
        self._seen = 0
        # from the epoch's start (after the evaluator's STARTED collectives) until its rows are sent
        self._owes_rows = False

    def attach(self, engine: Engine) -> None:
        table = _handler_table(engine)  # before Ignite is asked to attach anything
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        # first in line at EPOCH_COMPLETED, so savers and loggers see the new values
        table[Events.EPOCH_COMPLETED].insert(0, (self._complete, (engine,), {}))
        clean_up_on_error(engine, self._failed)

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        self.unscored = []
        self._row_positions = []
        self._unscored_positions = []
        self._seen = 0
        self._owes_rows = True

    def _update(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, dict):  # an evaluator with decollate=False: B x C x spatial tensors
            output = [{k: output[k][i] for k in ("pred", "label")} for i in range(len(output["pred"]))]
        items = output if isinstance(output, list) else [output]
        batch = engine.state.batch
        # MONAI decollates the batch into a list of per-case dicts; a collated dict also works
        metas = batch if isinstance(batch, list) else [_pick(batch, i) for i in range(len(items))]
        for item, meta in zip(items, metas):
            position = self._seen
            self._seen += 1
            pred = _numpy(item["pred"])
            label = _numpy(item["label"])
            if pred.shape[0] == 1:  # one channel: the binary mask
                pred, label = pred[0], label[0]
            spacing = meta.get("spacing")
            spacing = (
                None if spacing is None else tuple(float(s) for s in _numpy(spacing).ravel()[: pred.ndim])
            )
            case = str(meta.get("case", len(self.rows)))
            scores = score_case(
                pred, label, meta.get("label_full"), meta.get("restore", "crop"), spacing, self.empty_value
            )
            if scores is None:
                log.warning("%s: no annotated voxel (all 'ignore'): not scored", case)
                self.unscored.append(case)
                self._unscored_positions.append(position)
                continue
            self.rows.append({"case": case, **scores})
            self._row_positions.append(position)

    def _complete(self, engine: Engine) -> None:
        self._gather_ranks(engine)
        if not self.rows and self.unscored:  # else no metric at all: a KeyError in the checkpoint saver
            raise ValueError(
                f"{self.prefix.rstrip('_') or 'evaluation'}: none of its {len(self.unscored)} case(s) "
                f"({', '.join(self.unscored[:5])}{', ...' if len(self.unscored) > 5 else ''}) has an annotated voxel "
                "(all 'ignore'): nothing to score; annotate one of them or choose another fold / split"
            )
        if not self.rows:
            return
        summary = summarize(self.rows)
        for name in METRICS:
            engine.state.metrics[f"{self.prefix}{name}"] = summary[name]["mean"]
        engine.state.metrics[f"{self.prefix}empty_targets"] = summary["target_empty"]
        engine.state.metrics[f"{self.prefix}missed_cases"] = sum(
            1 for r in self.rows if r["pred_empty"] and not r["target_empty"]
        )
        self.summary = summary
        if self.output_dir:
            self.write(self.output_dir)

    def write(self, output_dir: str | os.PathLike) -> None:
        write_case_metrics(self.rows, output_dir, self.summary)

    def _failed(self, engine: Engine, error: BaseException) -> None:
        """Under ``torch.distributed``, a process that failed before sending its rows sends the
        error instead, so the others, waiting for its rows, stop at once with its message rather
        than wait ``dist_timeout_minutes`` (a dead peer is not noticed by NCCL, nor across nodes by
        torchrun); then the error goes on as it would have (:func:`clean_up_on_error`)."""
        # an interrupt (Ctrl-C) or exit is not held up waiting for the others
        if isinstance(error, Exception) and self._distributed(engine) and self._owes_rows:
            self._owes_rows = False
            mine = ([], [], f"{type(error).__name__}: {error}")
            try:
                torch.distributed.all_gather_object([None] * torch.distributed.get_world_size(), mine)
            except Exception as e:  # the others are gone too: the error of this process is the one to see
                log.warning("could not tell the other processes of this error: %s", e)

    @staticmethod
    def _distributed(engine: Engine) -> bool:
        """Whether the cases are dealt to the processes (a ``DistributedSampler`` under ``torch.distributed``)."""
        sampler = getattr(getattr(engine.state, "dataloader", None), "sampler", None)
        dist = torch.distributed
        return isinstance(sampler, DistributedSampler) and dist.is_available() and dist.is_initialized()

    def _gather_ranks(self, engine: Engine) -> None:
        """Every process's rows and unscored cases, in every process, keyed by the data set index
        the loader's ``DistributedSampler`` gave each position (nothing to do without one); a
        process that failed instead (:meth:`_failed`) makes every process raise its error."""
        if not self._distributed(engine):
            return
        sampler = engine.state.dataloader.sampler
        indices = list(sampler)  # the same order the loader drew (same epoch, same seed)
        if len(indices) != self._seen:
            raise RuntimeError(
                f"{self.prefix.rstrip('_') or 'evaluation'}: this process scored {self._seen} case(s), its "
                f"DistributedSampler dealt it {len(indices)}: a run of part of an epoch (epoch_length) "
                "cannot be gathered across processes"
            )
        mine = (
            [(indices[p], row) for p, row in zip(self._row_positions, self.rows)],
            [(indices[p], case) for p, case in zip(self._unscored_positions, self.unscored)],
            None,
        )
        gathered: list = [None] * torch.distributed.get_world_size()
        self._owes_rows = False
        torch.distributed.all_gather_object(gathered, mine)
        failed = [f"process {rank}: {error}" for rank, (_, _, error) in enumerate(gathered) if error]
        if failed:
            raise RuntimeError(
                f"{self.prefix.rstrip('_') or 'evaluation'}: {'; '.join(failed)}; every process stops "
                "(see that process's log for where it failed)"
            )
        rows: dict[int, dict] = {}
        unscored: dict[int, str] = {}
        for their_rows, their_unscored, _ in gathered:
            for index, row in their_rows:
                rows.setdefault(index, row)  # a case dealt twice (the sampler's padding) counts once
            for index, case in their_unscored:
                unscored.setdefault(index, case)
        self.rows = [rows[i] for i in sorted(rows)]
        self.unscored = [unscored[i] for i in sorted(unscored)]


def write_case_metrics(rows: list[dict], output_dir: str | os.PathLike, summary: dict | None = None) -> dict:
    """``metrics.csv`` (one row per case) and ``summary.json`` (:func:`pam_monai.metrics.summarize`)
    of per-case rows into ``output_dir``, atomically, and a log line; returns the summary.

    Two writes, each atomic: a process killed between them leaves the new metrics.csv beside the
    summary of the one before. summary.json's ``metrics_csv_sha256`` (not in the returned summary),
    the SHA-256 of the metrics.csv it summarises, tells them apart. Both are written under one lock
    of the folder (``.metrics.lock``): two evaluations writing there at once left one's summary
    beside (and hashing) the other's metrics.csv; now the second waits, and its pair replaces the first's."""
    out = Path(output_dir)
    summary = summary if summary is not None else summarize(rows)
    fields = ["case", *METRICS, "target_empty", "pred_empty"]
    lines = [",".join(fields)]
    for r in rows:
        lines.append(",".join(_csv(r[k]) for k in fields))
    with folder_lock(out, METRICS_LOCK):
        csv_path = atomic_write_text(out / "metrics.csv", "\n".join(lines) + "\n")
        # the file's bytes as written (a Windows text write turns each \n into \r\n)
        digest = hashlib.sha256(csv_path.read_bytes()).hexdigest()
        atomic_write_text(
            out / "summary.json", json.dumps({**summary, "metrics_csv_sha256": digest}, indent=2) + "\n"
        )
    parts = [f"{m} {summary[m]['mean']:.4g} +- {summary[m]['std']:.3g}" for m in METRICS]
    log.info(
        "%d cases (%d with an empty target, %d with an empty prediction): %s; per-case rows in %s",
        summary["count"],
        summary["target_empty"],
        summary["pred_empty"],
        ", ".join(parts),
        out / "metrics.csv",
    )
    return summary


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pick(batch, i: int) -> dict:
    if not isinstance(batch, dict):
        return {}
    out = {}
    for k in ("case", "spacing", "label_full", "restore"):
        if k in batch:
            out[k] = batch[k][i]
    return out


def _csv(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


class IgnoredVoxelsCheck:
    """Refuse, before the first step, to train on a data set with unannotated voxels (nnU-Net's
    ``ignore`` label) with a loss that does not leave them out.

    Their targets hold :data:`pam_monai.data.ops.IGNORE` (2), which a plain Dice loss would take
    for a foreground of weight 2: a config whose ``loss`` was rewritten without
    ``pam_monai.networks.loss_for(..., ignore=True)`` would train on them silently. Checked once at
    ``STARTED`` (nothing per step).

    Args:
        ignore_label: the data set's ignore label value (``@spec.ignore_label``), None for fully
            annotated data (nothing to check).
    """

    def __init__(self, ignore_label: int | None = None) -> None:
        self.ignore_label = ignore_label

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.ignore_label is None:
            return
        from ..networks.polarity import IgnoredVoxelsLoss

        loss = getattr(engine, "loss_function", None)
        modules = loss.modules() if isinstance(loss, torch.nn.Module) else ()
        if not any(isinstance(m, IgnoredVoxelsLoss) for m in modules):
            raise ValueError(
                f"the data set marks unannotated voxels (dataset.json label 'ignore': {self.ignore_label}), "
                f"but the training loss {type(loss).__name__} does not leave them out and would learn "
                "them as foreground; build it with pam_monai.networks.loss_for(network, loss, ignore=True) "
                "(as the bundles' train.json does)"
            )


def _dropped(loader, per_epoch: int) -> str:
    """What ``drop_last`` leaves out of each epoch (of each rank's under ``torchrun``), for the plan."""
    samples, size = epoch_samples(loader), getattr(loader, "batch_size", None)
    if not getattr(loader, "drop_last", False) or samples is None or not size or samples <= per_epoch * size:
        return ""
    return (
        f" ({samples - per_epoch * size} slices of each epoch dropped: its incomplete last batch, drop_last)"
    )


class TrainingPlan:
    """Say at the start how much training the run holds: slices, optimiser steps per epoch and in
    all; a WARNING when real data gives fewer than ``min_steps`` steps (the paper's defaults, 80
    epochs at batch 50, suit BRATS' ~12,600 training slices per fold, ~20,000 steps; a small own data set gets a few
    hundred steps from them, and nnU-Net trains 250,000).

    At the end of a run to its last epoch it says what came of it and what to type next: the best
    model's path, epoch and score, and the evaluation and inference commands of this bundle.

    Args:
        synthetic: the data are a synthetic stand-in (no warning: a smoke run).
        min_steps: fewer optimiser steps than this on real data are warned about.
        ckpt_dir: the folder of ``model.pt`` and ``model.json`` (None: nothing said at the end).
    """

    def __init__(self, synthetic: bool = False, min_steps: int = 2000, ckpt_dir: str | None = None) -> None:
        self.synthetic = bool(synthetic)
        self.min_steps = int(min_steps)
        self.ckpt_dir = ckpt_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        if self.ckpt_dir is not None:
            engine.add_event_handler(Events.COMPLETED, self.finished)

    def finished(self, engine: Engine) -> None:
        """Log the best model and the next commands (process 0; not after a stop before the last epoch;
        only under ``python -m monai.bundle``: a program that trains, as the experiment runner, which
        evaluates the run itself, was told to type another bundle's commands, without the run's folder)."""
        from .workflow import _run_by_monai_bundle, _running_workflow_configs

        if not _run_by_monai_bundle():
            return
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        # Ctrl-C, SIGTERM (terminate(), in the last epoch too: Ignite still fires COMPLETED): not finished
        if engine.should_terminate or (engine.state.epoch or 0) < (engine.state.max_epochs or 0):
            return
        best = Path(self.ckpt_dir) / "model.pt"
        if not best.is_file():  # no validation ran
            return
        meta = best.with_suffix(".json")
        record = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
        score = f", {record['metric']} {float(record['value']):.4f}" if "value" in record else ""
        epoch = f" (epoch {record['epoch']}{score})" if "epoch" in record else ""
        configs = _running_workflow_configs() or Path("configs")
        log.info(
            "training finished: best model %s%s. Next (with this run's overrides, e.g. --dataset_dir, --bundle_root): "
            "evaluate it: python -m monai.bundle run evaluating --config_file \"['%s','%s']\"; segment new images: "
            "python -m monai.bundle run inferring --config_file %s --input_dir DIR",
            best, epoch, configs / "train.json", configs / "evaluate.json", configs / "inference.json",
        )  # fmt: skip

    def __call__(self, engine: Engine) -> None:
        per_epoch, epochs = engine.state.epoch_length or 0, engine.state.max_epochs or 0
        loader = getattr(engine, "data_loader", None) or engine.state.dataloader  # MONAI's, Ignite's
        slices = len(loader.dataset) if hasattr(getattr(loader, "dataset", None), "__len__") else None
        # under torchrun the steps are each process's: say how the slices are dealt to them
        replicas = getattr(getattr(loader, "sampler", None), "num_replicas", 1)
        shard = epoch_samples(loader) if isinstance(replicas, int) and replicas > 1 else None
        total = per_epoch * epochs
        log.info(
            "training: %s%d optimiser steps per epoch x %d epochs = %d%s",
            ""
            if slices is None
            else f"{slices:,} slices dealt to {replicas} processes ({shard:,} each per epoch), each "
            if shard is not None
            else f"{slices:,} slices, ",
            per_epoch,
            epochs,
            total,
            _dropped(loader, per_epoch),
        )
        if not self.synthetic and 0 < total < self.min_steps:
            log.warning(
                "training: only %d optimiser steps in all (%d per epoch x %d epochs): too few to train a network of "
                "this size well; raise --epochs (or lower --batch_size)",
                total,
                per_epoch,
                epochs,
            )


class EveryIterations:
    """An Ignite event filter for ``ITERATION_COMPLETED``: the first iteration of each epoch, every
    ``n``-th of the epoch and its last.

    The bundles' loss logging and NaN check read the loss through it (``log_every``): reading a
    CUDA tensor's value waits for the GPU, and once per iteration that leaves the GPU idle while
    the host prepares the next step; every ``n`` iterations costs one wait per ``n`` steps.
    """

    def __init__(self, n: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # 0 was silently taken as 1
            raise ValueError(f"EveryIterations: n must be a whole number of iterations, 1 or more, got {n!r}")
        self.n = n

    def __call__(self, engine: Engine, event_num: int | None = None) -> bool:
        length = engine.state.epoch_length or 0
        i = (engine.state.iteration - 1) % length + 1 if length else engine.state.iteration
        return i == 1 or i % self.n == 0 or i == length

    def __repr__(self) -> str:
        return f"EveryIterations({self.n})"


class TrackingEvery:
    """Give ``--tracking mlflow`` (MONAI's ``MLFlowHandler``, appended to the trainer's handlers by
    ``monai.bundle run``) the bundle's ``log_every`` and the run's settings.

    MONAI's settings log the loss (and the learning rate) at every iteration: a wait for the GPU
    and a database write after each step, where the bundles' own loggers read the loss every
    ``log_every`` iterations. At the run's start this re-registers each attached ``MLFlowHandler``'s
    iteration logging through :class:`EveryIterations` and gives it ``params`` to record (MONAI's
    records only ``max_epochs`` and ``epoch_length``). List it before the tracking handler: its
    start runs first. The parameters are logged at the first epoch's start, once the handler has
    its run, those the run has not logged yet: a resumed run (a killed one stays active, and the
    bundles name each run) continues its MLflow run, where a changed value (more ``epochs``) was
    refused ("Changing param values is not allowed") and stopped the training. evaluate.json lists
    it among its evaluator's handlers for the parameters alone (what it evaluated: network, weights,
    data, split, seed, fold): its tracking handler logs no loss. When the engine's run raises, it
    ends the run FAILED, KILLED when Ctrl-C or a SIGTERM stopped it (MONAI's handler ends it on
    completion only; it stayed RUNNING), then lets the error go on (:func:`clean_up_on_error`); a
    resumed training continues its failed or killed run, set back to RUNNING at its start.

    Args:
        every: log the loss every ``every`` iterations (and each epoch's first and last).
        params: the run's settings, logged as MLflow parameters.
        end_run: start a new MLflow run at the engine's start and end it when the engine's run
            completes. MONAI's tracking handler of an evaluator (evaluate.json's, from MONAI's
            validator settings) leaves it active, and continues any named run that is not FINISHED
            (a failed or killed evaluation's): the next evaluation, of other weights, continued it
            and kept the first one's parameters.
    """

    def __init__(self, every: int = 1, params: dict | None = None, end_run: bool = False) -> None:
        self.every = EveryIterations(every)
        self.params = dict(params or {})
        self.end_run = bool(end_run)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.EPOCH_STARTED, self.log_params)
        clean_up_on_error(engine, self.end_failed)

    @staticmethod
    def _trackers(engine: Engine) -> list:
        """The trainer's own MLFlowHandlers (its validator's logs the metrics by epoch, into the
        same run)."""
        from monai.handlers import MLFlowHandler

        ours = [
            h for h in _attached(engine) if isinstance(h, MLFlowHandler) and engine.has_event_handler(h.start)
        ]
        return list({id(h): h for h in ours}.values())

    def __call__(self, engine: Engine) -> None:
        for handler in self._trackers(engine):
            if self.end_run and handler.cur_run is None:
                self._new_run(handler)
            if self.end_run and not engine.has_event_handler(handler.close, Events.COMPLETED):
                engine.add_event_handler(Events.COMPLETED, handler.close)  # after its own, which logs
            if not engine.has_event_handler(self.mark_running, Events.STARTED):
                # after the handler's start, which picks the run: Ignite fires the handlers added
                # while an event fires, so it runs at this start too
                engine.add_event_handler(Events.STARTED, self.mark_running)
            if handler.iteration_log is True and engine.has_event_handler(
                handler.iteration_completed, Events.ITERATION_COMPLETED
            ):
                engine.remove_event_handler(handler.iteration_completed, Events.ITERATION_COMPLETED)
                engine.add_event_handler(
                    Events.ITERATION_COMPLETED(event_filter=self.every), handler.iteration_completed
                )
                handler.iteration_log = self.every

    @staticmethod
    def _new_run(handler) -> None:
        """Give ``handler`` a run of its own before its start: MONAI's continues the latest named
        run that is not FINISHED, a failed (or killed) evaluation's, whose ``ckpt_path`` it kept."""
        _set_experiment(handler)
        name = handler.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"  # MONAI's default name
        handler.cur_run = handler.client.create_run(
            experiment_id=handler.experiment.experiment_id, run_name=name
        )

    def mark_running(self, engine: Engine) -> None:
        """Set each tracking handler's run back to RUNNING when its start continued a run that had
        ended (a failed training's, ended FAILED by :meth:`end_failed`): it stayed FAILED while the
        resumed training ran, FINISHED only at its end."""
        for handler in self._trackers(engine):
            run = handler.cur_run
            if run is not None and run.info.status != "RUNNING":  # as MONAI's start fetched it
                handler.client.update_run(run.info.run_id, status="RUNNING")
                handler.cur_run = handler.client.get_run(run.info.run_id)

    @classmethod
    def _all_trackers(cls, engine: Engine) -> list:
        """The trainer's own MLFlowHandlers, then its validator's (through its ValidationHandler)."""
        from monai.handlers import MLFlowHandler

        found = cls._trackers(engine) + [h for h in _attached(engine) if isinstance(h, MLFlowHandler)]
        return list({id(h): h for h in found}.values())

    def end_failed(self, engine: Engine, error: BaseException) -> None:
        """End each tracking handler's run FAILED when the engine's run raises, KILLED when it was
        stopped (Ctrl-C, a SIGTERM: :class:`StopOnTerminate`) (MONAI's ends it on COMPLETED only: it
        stayed RUNNING), and close the handler, its validator's too (MONAI's validator settings
        never close it: it kept the run, which its close would end FINISHED, and a store of its own
        stayed open). A failure here is logged: the run's error goes on."""
        status = "KILLED" if isinstance(error, (KeyboardInterrupt, Terminated)) else "FAILED"
        ended = set()  # run ids: the trainer's and its validator's handlers log into one run
        for handler in self._all_trackers(engine):
            run, handler.cur_run = handler.cur_run, None  # its close would end the run FINISHED
            try:
                try:
                    if run is not None and run.info.run_id not in ended:
                        ended.add(run.info.run_id)
                        handler.client.set_terminated(run.info.run_id, status)
                finally:
                    handler.close()  # releases its SQLite store, as on COMPLETED
            except Exception as e:  # noqa: BLE001 - the engine's error is the one to report
                log.warning("MLflow: could not end the run as %s (%s: %s)", status, type(e).__name__, e)

    def log_params(self, engine: Engine) -> None:
        """Log ``params`` into each tracking handler's run, but those it has logged (once a run)."""
        for handler in self._trackers(engine):
            run = getattr(handler, "cur_run", None)
            if run is None or getattr(handler, "_params_logged", None) == run.info.run_id:
                continue
            from mlflow.entities import Param  # here: without --tracking mlflow need not be installed

            logged = handler.client.get_run(run.info.run_id).data.params
            params = {k: str(v) for k, v in self.params.items() if k not in (handler.experiment_param or {})}
            kept = {k: v for k, v in params.items() if k in logged and logged[k] != v}
            if kept:
                log.warning(
                    "MLflow run %s (resumed) keeps its parameters %s; this run has %s (a run's parameters "
                    "cannot change: give it another run_name to track it apart)",
                    run.info.run_name,
                    ", ".join(f"{k}={logged[k]}" for k in kept),
                    ", ".join(f"{k}={v}" for k, v in kept.items()),
                )
            new = [Param(k, v) for k, v in params.items() if k not in logged]
            if new:
                handler.client.log_batch(run_id=run.info.run_id, metrics=[], params=new, tags=[])
            handler._params_logged = run.info.run_id


def _set_experiment(handler) -> None:
    """Set a MONAI ``MLFlowHandler``'s ``experiment``, made if need be: MONAI's own (private
    ``_set_experiment``: retries a concurrent creation, refuses a deleted experiment), else, where a
    MONAI dropped it, the same through MLflow's public client (it failed with an AttributeError)."""
    own = getattr(handler, "_set_experiment", None)
    if callable(own):
        own()
        return
    client, name = handler.client, handler.experiment_name
    experiment = handler.experiment or client.get_experiment_by_name(name)
    if experiment is None:
        location = getattr(handler, "artifact_location", None)
        experiment = client.get_experiment(client.create_experiment(name, artifact_location=location))
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted: restore it, or track into another with --experiment_name"
        )
    handler.experiment = experiment


def loss_of(output):
    """The training loss in an Ignite trainer's output (detached): MONAI's dict, or the list of
    per-case dicts of a trainer that decollates (a loss handler's ``output_transform``)."""
    loss = (
        output[0]["loss"]
        if isinstance(output, list)
        else output.get("loss")
        if isinstance(output, dict)
        else output
    )
    return loss.detach() if isinstance(loss, torch.Tensor) else loss


class Bf16WithoutLossScaling:
    """Train bf16 autocast without the loss scaler MONAI's trainers make for any ``amp``.

    Loss scaling keeps float16's small gradients from underflowing; bfloat16 has float32's exponent
    range and needs none. Yet ``SupervisedTrainer(amp=True)`` steps through a
    ``torch.cuda.amp.GradScaler``: each step an inf/NaN pass over every gradient, a scale update
    and Python per parameter, and with an unfused optimizer an ``.item()`` of the inf check (the
    GPU idles until the step is done). On attach, a trainer whose ``amp_kwargs`` say bfloat16 gets a
    disabled scaler instead: autocast stays on, backward and ``optimizer.step()`` run unscaled (the
    same gradients: the scale is a power of two). A non-finite loss still stops the run
    (:class:`NonFiniteLossGuard`); float16 amp keeps its scaler.
    """

    def attach(self, engine: Engine) -> None:
        # MONAI's Trainer.run() makes a new scaler each run, before the run's STARTED event
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        dtype = (getattr(engine, "amp_kwargs", None) or {}).get("dtype")
        if getattr(engine, "scaler", None) is not None and dtype == torch.bfloat16:
            engine.scaler = torch.amp.GradScaler("cuda", enabled=False)


class DecollateKeepingLoss:
    """MONAI's decollation of a trainer's batch and output (``decollate=True``) without its read
    of the loss on the host after every step.

    MONAI's trainers turn their batch and output into lists of per-sample dicts after each step,
    and the 0-d loss into a Python float: on a GPU a wait for the step to finish, every step. The
    bundles' trainer runs with ``decollate=False`` and this handler instead: the same lists (MONAI's
    ``from_engine([...], first=True)`` handlers, e.g. ``--tracking mlflow``, work unchanged), with
    the loss kept a detached 0-d tensor in every item, read by the handlers that log it
    (``log_every``).
    """

    def __init__(self) -> None:
        from monai.transforms import Decollated

        self.decollate = Decollated(keys=None, detach=True)

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if isinstance(engine.state.batch, (list, dict)):
            engine.state.batch = self.decollate(engine.state.batch)
        output = engine.state.output
        if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
            loss = output["loss"].detach()
            items = self.decollate({k: v for k, v in output.items() if k != "loss"})
            engine.state.output = [{**item, "loss": loss} for item in items]
        elif isinstance(output, (list, dict)):
            engine.state.output = self.decollate(output)


class NonFiniteLossGuard:
    """Stop training at the first non-finite loss, naming the epoch, iteration and batch.

    The run raises ``FloatingPointError`` before the optimiser's next step is checkpointed, so
    the last checkpoint on disk is the last good one.

    Args:
        check_every: read the loss on the host every ``check_every`` iterations (and at the end
            of each epoch, before the checkpoint), not after every step: in between, the first
            non-finite loss, its iteration and its batch's cases are kept on the device without
            waiting for it (:class:`EveryIterations`). 1 checks every iteration.
        loader: the training loader; its batch of the bad iteration is then named by its slices
            (:func:`~pam_monai.engines.loaders.batch_samples`, worked out from the sampler's
            order when the run stops: nothing per step). Without it, a batch is named only when
            it carries a ``case`` key.
    """

    def __init__(self, check_every: int = 1, loader=None) -> None:
        self.due = EveryIterations(check_every)
        self.loader = loader
        self._reset()

    def _reset(self) -> None:
        self._first = None  # iteration of the first non-finite loss (-1: none), on the loss's device
        self._value = None
        self._cases: dict[int, list] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        # attached before the checkpoint handlers: an epoch with a non-finite loss is never saved
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def __call__(self, engine: Engine) -> None:
        loss = loss_of(engine.state.output)
        loss = loss if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        loss = loss.float().reshape(())
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._value = torch.zeros((), device=loss.device)
        new = torch.logical_and(~torch.isfinite(loss), self._first < 0)  # no host-device wait here
        self._first.masked_fill_(new, engine.state.iteration)
        self._value = torch.where(new, loss, self._value)
        batch = engine.state.batch
        if isinstance(batch, dict) and "case" in batch:
            self._cases[engine.state.iteration] = list(batch["case"])
        if self.due(engine):
            self.check(engine)

    def check(self, engine: Engine) -> None:
        if self._first is None:
            return
        first = self._first
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process checks at the same iterations: all stop together (a process that
            # stopped alone would leave the others waiting in their next gradient all-reduce)
            first = torch.where(first < 0, torch.iinfo(torch.long).max, first)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.long).max, -1, first)
        first, own, value, cases = int(first), int(self._first), float(self._value), self._cases
        self._reset()
        if first < 0:
            return
        length = engine.state.epoch_length or engine.state.iteration
        in_epoch = (first - 1) % length + 1
        # this process's batch of that iteration is named only when its own loss was the bad one
        named = ""
        if own == first and first in cases:
            named = f" (cases {cases[first]})"
        elif own == first and self.loader is not None:
            from .loaders import batch_samples

            samples = batch_samples(self.loader, in_epoch)
            named = f" (samples: {', '.join(samples)})" if samples else ""
        where = f"non-finite loss {value}" if own == first else "non-finite loss in another process"
        raise FloatingPointError(
            f"{where} at epoch {(first - 1) // length + 1}, iteration {first} "
            f"(batch {in_epoch} of the epoch){named}; the last good checkpoint is kept"
        )


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
        store, key = self._store(), self._key
        self._key = ""  # Ignite fires EXCEPTION_RAISED twice for an error in an iteration: say it once
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
