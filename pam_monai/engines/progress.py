"""A progress bar for long loops of the workflows (tqdm, through Ignite)."""

from __future__ import annotations

import inspect
import time
import warnings

from ignite.engine import Engine, Events

try:
    from ignite.handlers import ProgressBar as _IgniteProgressBar
except ImportError:  # pytorch-ignite < 0.5 keeps it in contrib (setup.cfg allows 0.4.11)
    from ignite.contrib.handlers import ProgressBar as _IgniteProgressBar

from ..progress import LOG_FILE_REDRAW_S, LogFileTqdm, to_log_file
from .training import EveryIterations, loss_of

__all__ = ["ProgressBar"]

# what the bar reads of Ignite's: its private ``_reset`` (which makes each epoch's tqdm bar) is
# replaced, with the attributes Ignite's own reads there
_IGNITE_BAR_ATTRIBUTES = ("pbar", "pbar_cls", "persist", "bar_format", "tqdm_kwargs")


def _loss(output) -> dict:
    try:
        return {"loss": float(loss_of(output))}
    except (KeyError, IndexError, TypeError, ValueError):  # an engine without a scalar loss
        return {}


class ProgressBar(_IgniteProgressBar):
    """Ignite's tqdm progress bar with the running loss, attachable by MONAI's handler lists.

    Args:
        desc: the bar's label.
        persist: keep the finished bar on screen.
        loss_every: read the loss for the bar every ``loss_every`` iterations (the bar itself
            moves every iteration): reading a CUDA loss waits for the GPU
            (:class:`~pam_monai.engines.EveryIterations`).

    Written to a file or a pipe (a CI log, a cluster job's output), not a terminal, the bar is
    redrawn at most every ``LOG_FILE_REDRAW_S`` seconds (and at its end), not at every iteration.

    The bar is timed from its epoch's start (Ignite's from its first draw, after the epoch's first
    step: a one-step epoch of 17 s read ``[00:00<?]``) and first drawn with the label it keeps
    (Ignite's was drawn as made, ``train[1/4]``, before it set ``train: [1/4]``); a MONAI evaluator's
    bar is labelled ``desc`` alone (its ``max_epochs`` is the training's epoch, not a count of its own).
    """

    def __init__(self, desc: str = "train", persist: bool = True, loss_every: int = 1, **kwargs) -> None:
        to_file = to_log_file(kwargs.get("file"))
        if to_file:
            kwargs.setdefault("mininterval", LOG_FILE_REDRAW_S)
        super().__init__(persist=persist, desc=desc, **kwargs)
        self._as_read = _reads_ignites_bar(self)
        if to_file:
            self.pbar_cls = LogFileTqdm
        self.loss_every = EveryIterations(loss_every)
        self._epoch_start: float | None = None
        self._drawn = False

    def _reset(self, pbar_total: int | None) -> None:
        """Ignite's bar, not drawn yet (Ignite's handler sets its label next), timed from the epoch's
        start, with the first step counted in its rate (Ignite's own where it changed)."""
        if not self._as_read:
            super()._reset(pbar_total)
            return
        delay = self.tqdm_kwargs.get("delay", 0.0)
        self.pbar = self.pbar_cls(
            total=pbar_total,
            leave=self.persist,
            bar_format=self.bar_format,
            initial=1,
            **{**self.tqdm_kwargs, "delay": float("inf")},
        )
        self.pbar.delay, self._drawn = delay, False
        if self._epoch_start is not None:
            self.pbar.start_t, self.pbar.initial = self._epoch_start, 0

    def _first_draw(self, engine: Engine) -> None:
        """Draw a new bar once Ignite's handler has given it its label and count."""
        if self._as_read and self.pbar is not None and not self._drawn:  # Ignite's own draws itself
            self._drawn = True
            if self.pbar.delay <= 0:
                self.pbar.refresh()

    def _started(self, engine: Engine) -> None:
        self._epoch_start = time.time()  # tqdm's clock

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # MONAI calls attach(engine)
        if "output_transform" not in kwargs:
            shown: dict = {}

            def transform(output) -> dict:
                if self.loss_every(engine):
                    shown.update(_loss(output))
                return dict(shown)

            kwargs["output_transform"] = transform
        bound = inspect.signature(_IgniteProgressBar.attach).bind(self, engine, *args, **kwargs)
        if _runs_one_epoch(engine) and "closing_event_name" not in bound.arguments:
            # closed at its one epoch's end all the same, and labelled without Ignite's "[epoch/max_epochs]"
            kwargs["closing_event_name"] = Events.COMPLETED
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        super().attach(engine, *args, **kwargs)
        # after Ignite's handler of the event that moves the bar
        engine.add_event_handler(
            bound.arguments.get("event_name", Events.ITERATION_COMPLETED), self._first_draw
        )


def _reads_ignites_bar(bar: _IgniteProgressBar) -> bool:
    """Whether Ignite's ``ProgressBar`` has the private ``_reset`` and the attributes the bar's own
    reads; else a warning naming pytorch-ignite's version, and Ignite's bar as it is (an Ignite
    that changed them failed with an AttributeError at an epoch's start, or lost the bar's timing
    without a word)."""
    missing = [f"ProgressBar.{name}" for name in _IGNITE_BAR_ATTRIBUTES if not hasattr(bar, name)]
    if not callable(getattr(_IgniteProgressBar, "_reset", None)):
        missing.insert(0, "ProgressBar._reset")
    if missing:
        from ..internals import changed

        feature = (
            "the progress bar's timing from its epoch's start and its first label and, written to a "
            "file, its redraws every LOG_FILE_REDRAW_S; the bar is Ignite's own"
        )
        warnings.warn(changed("pytorch-ignite", ", ".join(missing), feature), RuntimeWarning, stacklevel=3)
    return not missing


def _runs_one_epoch(engine: Engine) -> bool:
    """MONAI's evaluators: each run is one epoch, with the training's epoch as ``max_epochs`` (Ignite's
    bar labelled the validation after epoch 2 of 5 ``validate [2/2]``, after epoch 1 ``validate``)."""
    from monai.engines import Evaluator

    return isinstance(engine, Evaluator)
