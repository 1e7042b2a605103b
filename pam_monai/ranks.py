"""Work that one process does for all under ``torch.distributed`` (torchrun): the synthetic
stand-in, the data check and the slice cache are made by rank 0 while the others wait, then
shared (as files on disk, or as the result sent to them), instead of every process doing the same
reading and writing at once."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["on_rank0", "rank0_first"]

T = TypeVar("T")


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank0_first(fn: Callable[[], T]) -> T:
    """Under ``torch.distributed``, let rank 0 do ``fn`` (e.g. write files) before the other ranks,
    which then find its result on disk instead of racing to write it."""
    if not _distributed():
        return fn()
    dist = torch.distributed
    if dist.get_rank() == 0:
        try:
            return fn()
        finally:  # on an error too: the others then meet it themselves instead of waiting for a timeout
            dist.barrier()
    dist.barrier()
    return fn()


def on_rank0(fn: Callable[[], T]) -> T:
    """Under ``torch.distributed``, ``fn()`` on rank 0 alone, its result (pickled) sent to the other
    ranks; an exception on rank 0 is raised on every rank (on the others, a copy of it), so none is
    left waiting."""
    if not _distributed():
        return fn()
    dist = torch.distributed
    message: list = [None]
    if dist.get_rank() == 0:
        try:
            message = [(True, fn())]
        except Exception as e:
            try:  # rebuilt too: one whose __init__ takes other arguments pickles, then fails to unpickle
                pickle.loads(pickle.dumps(e))
                copy = e
            except Exception:  # an exception that does not travel: its type and message do
                copy = RuntimeError(f"on rank 0: {type(e).__name__}: {e}")
            dist.broadcast_object_list([(False, copy)], src=0)
            raise
    dist.broadcast_object_list(message, src=0)
    ok, value = message[0]
    if not ok:
        raise value
    return value
