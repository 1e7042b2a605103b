"""Progress bars that suit a terminal and a log file alike (tqdm).

In a terminal a bar redraws itself in place. Written to a file or a pipe (a CI log, ``nohup``, a
cluster job's output) it is redrawn at most every ``LOG_FILE_REDRAW_S`` seconds and at its end,
each time as a whole line: carriage returns and cursor moves there glued the log's own lines onto
a bar's text and filled files with redraws.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["LOG_FILE_REDRAW_S", "LogFileTqdm", "is_terminal", "progress_bar", "to_log_file"]

# how often a bar written to a file or a pipe (not a terminal) is redrawn, in seconds
LOG_FILE_REDRAW_S = 30.0


class LogFileTqdm(tqdm):
    """tqdm for a log file: Ignite's bar sets its description and postfix at every iteration, each a
    forced redraw (a line of text in a file, twice per step); here they wait for the next redraw
    that ``mininterval`` allows. Each redraw is a whole line: a terminal's carriage returns and
    cursor moves (a closing bar's ``ESC[A``) left the log's own lines glued to a bar's text."""

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def __init__(self, *args, **kwargs):
        # tqdm's monitor thread redraws a fast bar every maxinterval (10 s): not before mininterval
        kwargs["maxinterval"] = max(kwargs.get("maxinterval", 10.0), kwargs.get("mininterval", 0.1))
        super().__init__(*args, **kwargs)
        if not self.disable:  # a disabled bar has no stream
            self.fp = _WholeLines(self.fp)

    def display(self, msg=None, pos=None):
        text = self.__str__() if msg is None else msg
        self.fp.write(text + "\n" if text else "")  # an empty message clears a closing bar: nothing
        self.fp.flush()
        return False  # nothing on screen to clear with a carriage return

    def clear(self, nolock=False):  # (before tqdm.write's messages) a line in a file stays
        pass

    def moveto(self, n):  # nested bars' cursor moves: lines in a file do not move
        pass


class _WholeLines:
    """The bar's stream in a file: carriage returns and escape sequences dropped, and no empty line
    after the bar's own last line (tqdm's close ends a kept bar with a newline of its own)."""

    def __init__(self, fp) -> None:
        self.fp, self.at_line_start = fp, True

    def write(self, text: str) -> None:
        text = text.replace("\r", "")
        if not text or "\x1b" in text or (text == "\n" and self.at_line_start):
            return
        self.fp.write(text)
        self.at_line_start = text.endswith("\n")

    def flush(self) -> None:
        self.fp.flush()


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(*args, **kwargs) -> tqdm:
    """``tqdm(*args, **kwargs)`` in a terminal; in a file or a pipe a :class:`LogFileTqdm` redrawn at
    most every ``LOG_FILE_REDRAW_S`` seconds (``mininterval``), each redraw a whole line.

    Example::

        >>> import io
        >>> out = io.StringIO()
        >>> for _ in progress_bar(range(3), desc="cases", file=out):
        ...     pass
        >>> out.getvalue().splitlines()[-1].startswith("cases: 100%")
        True
    """
    if not to_log_file(kwargs.get("file")):
        from tqdm.auto import tqdm as auto  # a notebook's widget, else the terminal's bar

        return auto(*args, **kwargs)
    kwargs.setdefault("mininterval", LOG_FILE_REDRAW_S)
    return LogFileTqdm(*args, **kwargs)


def to_log_file(stream=None) -> bool:
    """Whether a bar on ``stream`` (default ``sys.stderr``) goes to a file or a pipe: not a
    terminal, and not a notebook (whose bars are widgets: ``tqdm.auto``)."""
    if is_terminal(stream or sys.stderr):
        return False
    from tqdm.auto import tqdm as auto  # tqdm.notebook's in a notebook, else a plain bar's subclass

    return not auto.__module__.startswith("tqdm.notebook")
