"""Clean-up after an engine's run raised (an error, Ctrl-C, a SIGTERM): :func:`clean_up_on_error`,
through which every handler's clean-up runs, :class:`CloseWritersOnError` and
:class:`ReleaseTrainingLocksOnError`; :func:`close_writers`, which the bundles' ``finalize`` calls
too; and the look-ups in Ignite's table of an engine's handlers that they need."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

__all__ = ["CloseWritersOnError", "ReleaseTrainingLocksOnError", "clean_up_on_error", "close_writers"]

log = logging.getLogger("pam_monai")


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
    every later SIGTERM), before that clean-up's error goes on. Each clean-up runs once per failure
    (:func:`_first_time`), though Ignite hands one failure to these handlers twice."""

    def handler(engine: Engine, error: BaseException) -> None:
        if _first_time(handler, error):
            try:
                clean_up(engine, error)
            except BaseException as failure:
                if not last:
                    _run_last_clean_ups(engine, error)
                _mark(failure, getattr(error, _CLEANED_UP, frozenset()))  # Ignite hands it on next
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


_CLEANED_UP = "_pam_monai_cleaned_up"  # on an error: the ids of the clean-up handlers run after it


def _first_time(handler, error: BaseException) -> bool:
    """Whether ``handler`` (:func:`clean_up_on_error`) has not run yet after ``error``; marks it run.

    Ignite hands one failure to the ``EXCEPTION_RAISED`` handlers twice: the loop over the data
    catches an iteration's error and fires them, the last re-raises it, and the run around the loop
    catches it and fires them again, with a clean-up's own error where one raised (that error takes
    the marks of the clean-ups run before it): every clean-up ran twice (an MLflow run ended twice,
    StopOnTerminate's restore twice). The mark is on the error, not the engine, nor read through the
    error's ``__context__``: the engine's next run (a retry in an ``except`` block too) fails with
    another error, cleaned up again. Ids, not the handlers: an error kept by a caller (a failed
    grid run) holds nothing of them."""
    if id(handler) in getattr(error, _CLEANED_UP, ()):
        return False
    _mark(error, {id(handler)})
    return True


def _mark(error: BaseException, handlers) -> None:
    """Record on ``error`` that the clean-up handlers whose ids are ``handlers`` ran after its failure."""
    setattr(error, _CLEANED_UP, getattr(error, _CLEANED_UP, frozenset()) | frozenset(handlers))


def _run_last_clean_ups(engine: Engine, error: BaseException) -> None:
    """The ``last`` clean-ups of ``engine`` (:func:`clean_up_on_error`), after one before them
    raised: each is taken, its own failure logged (the first clean-up's error goes on)."""
    for entry, _, _ in list(_handler_table(engine)[Events.EXCEPTION_RAISED]):
        clean_up = getattr(entry, "last_clean_up", None)
        if clean_up is None or not _first_time(entry, error):
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
