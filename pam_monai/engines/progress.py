"""A progress bar for long loops of the workflows (tqdm, through Ignite)."""

from __future__ import annotations

import inspect
import time

from ignite.engine import Engine, Events

try:
    from ignite.handlers import ProgressBar as _IgniteProgressBar
except ImportError:  # pytorch-ignite < 0.5 keeps it in contrib (setup.cfg allows 0.4.11)
    from ignite.contrib.handlers import ProgressBar as _IgniteProgressBar

from ..progress import LOG_FILE_REDRAW_S, LogFileTqdm, to_log_file
from .handlers import EveryIterations, loss_of

__all__ = ["ProgressBar"]


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
        if to_file:
            self.pbar_cls = LogFileTqdm
        self.loss_every = EveryIterations(loss_every)
        self._epoch_start: float | None = None
        self._drawn = False

    def _reset(self, pbar_total: int | None) -> None:
        """Ignite's bar, not drawn yet (Ignite's handler sets its label next), timed from the epoch's
        start, with the first step counted in its rate."""
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
        if self.pbar is not None and not self._drawn:
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


def _runs_one_epoch(engine: Engine) -> bool:
    """MONAI's evaluators: each run is one epoch, with the training's epoch as ``max_epochs`` (Ignite's
    bar labelled the validation after epoch 2 of 5 ``validate [2/2]``, after epoch 1 ``validate``)."""
    from monai.engines import Evaluator

    return isinstance(engine, Evaluator)
