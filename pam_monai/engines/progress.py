"""A progress bar for long loops of the workflows (tqdm, through Ignite)."""

from __future__ import annotations

from ignite.engine import Engine
from ignite.handlers import ProgressBar as _IgniteProgressBar

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
    """

    def __init__(self, desc: str = "train", persist: bool = True, loss_every: int = 1, **kwargs) -> None:
        to_file = to_log_file(kwargs.get("file"))
        if to_file:
            kwargs.setdefault("mininterval", LOG_FILE_REDRAW_S)
        super().__init__(persist=persist, desc=desc, **kwargs)
        if to_file:
            self.pbar_cls = LogFileTqdm
        self.loss_every = EveryIterations(loss_every)

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # MONAI calls attach(engine)
        if "output_transform" not in kwargs:
            shown: dict = {}

            def transform(output) -> dict:
                if self.loss_every(engine):
                    shown.update(_loss(output))
                return dict(shown)

            kwargs["output_transform"] = transform
        super().attach(engine, *args, **kwargs)
