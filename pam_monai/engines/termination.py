"""A SIGTERM (a cluster's preemption, ``kill``) stops a run as Ctrl-C does, so that its clean-ups
run: :class:`Terminated`, raised while an engine runs (:class:`StopOnTerminate`) or, under
``python -m monai.bundle``, from the start of ``initialize`` (:func:`stop_on_terminate`)."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from ignite.engine import Engine, Events

from .cleanup import _attached, _handler_table, clean_up_on_error

__all__ = [
    "StopOnTerminate",
    "Terminated",
    "raise_terminated_on_sigterm",
    "stop_on_terminate",
    "take_held_sigterm",
]

log = logging.getLogger("pam_monai")


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
        clean_up_on_error(engine, self._after_error, last=True)

    def _after_error(self, engine: Engine, error: BaseException) -> None:
        self.restore()
        if isinstance(error, KeyboardInterrupt):
            _say_what_next(error, self.then)

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


def _say_what_next(error: KeyboardInterrupt, then: str) -> None:
    """End a Ctrl-C's traceback under ``python -m monai.bundle`` (``torchrun`` too) with what to do
    next, as a SIGTERM's :class:`Terminated` says it: a bare ``KeyboardInterrupt`` (under torchrun,
    which hands the Ctrl-C on, one per process) left out that the run continues with ``then``. Not
    in other processes (the experiment runner says its own)."""
    from .workflow import _run_by_monai_bundle

    if not _run_by_monai_bundle():
        return
    message = f"pam_monai: interrupted (Ctrl-C); {then}"
    if hasattr(error, "add_note"):  # Python 3.11+: printed after the traceback's last line
        if message not in getattr(error, "__notes__", ()):
            error.add_note(message)
    else:
        log.warning("%s", message)


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
