"""A progress bar for long loops of the workflows (tqdm, through Ignite)."""

from __future__ import annotations

from ignite.engine import Engine
from ignite.handlers import ProgressBar as _IgniteProgressBar

__all__ = ["ProgressBar"]


def _loss(output) -> dict:
    out = output[0] if isinstance(output, list) else output
    if isinstance(out, dict) and "loss" in out:
        return {"loss": float(out["loss"])}
    return {}


class ProgressBar(_IgniteProgressBar):
    """Ignite's tqdm progress bar with the running loss, attachable by MONAI's handler lists."""

    def __init__(self, desc: str = "train", persist: bool = True, **kwargs) -> None:
        super().__init__(persist=persist, desc=desc, **kwargs)

    def attach(self, engine: Engine, *args, **kwargs) -> None:  # MONAI calls attach(engine)
        kwargs.setdefault("output_transform", _loss)
        super().attach(engine, *args, **kwargs)
