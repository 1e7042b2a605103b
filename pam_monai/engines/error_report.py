"""How an uncaught error of a bundle run is reported: its cause at the end of the traceback
(:func:`show_error_cause`) and, under torchrun, in the process's error file that torchrun's
summary shows."""

from __future__ import annotations

import os
import sys

from .workflow import _run_by_monai_bundle

__all__ = ["show_error_cause"]


def show_error_cause() -> None:
    """Under ``python -m monai.bundle`` (and ``torchrun -m monai.bundle``), end an uncaught error's
    traceback with its cause. MONAI wraps every error of a config expression in a ``RuntimeError``
    ("Failed to evaluate ConfigExpression: ...") that quotes the expression, so the message naming the
    file and the fix sat in the middle of the traceback and the last lines showed config code. Other
    processes (Python, notebooks, tests, the experiment runner) keep their hook.

    Under torchrun the cause also goes into the process's error file, so that torchrun's summary
    of the failure, the last lines it prints, names it for the process that failed (it said "To
    enable traceback see: ..." beside the other processes' secondary errors)."""
    hook = sys.excepthook
    if getattr(hook, "shows_cause", False) or not _run_by_monai_bundle():
        return

    def excepthook(kind, error, traceback):
        hook(kind, error, traceback)
        from ..cli import _root_cause

        cause = _root_cause(error)
        if cause is not error:
            print(f"\n{type(cause).__name__}: {cause}", file=sys.stderr)
        _write_torchrun_error_file(cause)

    excepthook.shows_cause = True
    sys.excepthook = excepthook


def _write_torchrun_error_file(cause: BaseException) -> None:
    """Write ``cause`` into the error file torchrun gives each process (``TORCHELASTIC_ERROR_FILE``)
    in the format of torch's ``@record``, which torchrun's summary reads, with the cause's own
    traceback (MONAI's wrapping quotes config code), or the error of the process that failed first
    when this one failed after it (:class:`~pam_monai.engines.StopEveryProcessOnError`); nothing
    outside torchrun."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    import traceback as tb

    from .distributed import StopEveryProcessOnError

    text = f"{type(cause).__name__}: {cause}"
    first = StopEveryProcessOnError.failed_first_elsewhere
    # torchrun takes the failure with the earliest whole second for the root cause, the lowest
    # rank on a tie: a process that failed second may be shown as the root, with the first's error
    text = f"{first}; this process failed then, {text}" if first else text
    # the summary shows the traceback, not the message: its last line is the one to read
    callstack = "".join(tb.format_exception(cause)) + (
        f"(this process failed after {first})\n" if first else ""
    )
    _write_error_file(text, callstack)


def _write_error_file(message: str, callstack: str) -> None:
    """Write ``message`` into torchrun's error file of this process (``TORCHELASTIC_ERROR_FILE``,
    ``@record``'s format), which its agent's closing summary shows (``callstack``); nothing outside
    torchrun. For a process that ends without an exception of its own too (os._exit)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    from ..atomic import atomic_write_text

    error = {"message": message, "extraInfo": {"py_callstack": callstack, "timestamp": str(int(time.time()))}}
    try:  # whole or not at all: the agent reads it once the process has ended
        atomic_write_text(path, json.dumps({"message": error}))
    except OSError as e:  # the summary then says less; the log names the error anyway
        print(f"could not write torchrun's error file {path}: {e}", file=sys.stderr)
