"""Keep freed memory in the process while the CPU predicts whole volumes (glibc's ``mallopt``).

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its ``mmap`` threshold
(128 KiB, raised at most to 32 MiB as large blocks are freed) with a fresh ``mmap`` and returns it
to the kernel on ``free``; smaller freed blocks at the top of the heap are returned too once they
exceed the trim threshold. Slice-wise inference of a BRATS case allocates and frees tensors of
tens to hundreds of MB in every network call (FPA at 64 slices x 160 x 160: 96-channel maps of
630 MB), so the kernel maps and zeroes fresh pages for nearly every operation: 950,000 minor page
faults and 1.7 s of system time per 16 slices here, on a 2-core VM whose page faults are slow.

:func:`reuse_freed_memory` switches both off for its block (``M_MMAP_MAX = 0``: large blocks
come from the heap too; ``M_TRIM_THRESHOLD`` at 2 GiB: freed memory stays there), so every
network call after the first reuses the pages of the one before: no page faults and no zeroing.
It changes where tensors live, never what is computed (the masks are bit-identical,
``tests/test_fast_path.py``). The process keeps its peak memory until the block ends; on exit
the free memory is handed back (``malloc_trim``) and the thresholds are set to what glibc's own
dynamic adjustment reaches after large frees (32 MiB for ``mmap``, 64 MiB for trimming), since
any ``mallopt`` turns that adjustment off for good and its 128 KiB starting values, fixed, would
make the rest of the process slower than before (a training step after an inference). A no-op where the C library is not glibc (macOS, Windows, musl) and when
``PAM_MONAI_KEEP_MEMORY=0``.

Measured here (FPA, whole real BraTS cases, fp32, 2 threads): 1.64x faster inference, 30.5 against
18.6 s per case (``benchmarks/infer_cpu_bench.py``, ``benchmarks/README.md``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Iterator

__all__ = ["KeepFreedMemory", "reuse_freed_memory", "run_keeping_memory"]

log = logging.getLogger("pam_monai")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# What glibc's own dynamic thresholds reach once large blocks have been freed (64-bit: the mmap
# threshold's ceiling, 32 MiB, and twice that for trimming). Any mallopt turns that adjustment off
# for good, so these are set when the block ends: its 128 KiB starting values, fixed, would send
# every tensor above 128 KiB to mmap for the rest of the process (a later CPU training step 1.6-2.2x
# slower here, U-Net and FPA at batch 4 x 80 x 80).
_AFTER_MMAP_THRESHOLD, _AFTER_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 32 * 2**20, 64 * 2**20, 65536
_KEEP_TRIM = 2**31 - 1  # mallopt takes an int
_lock = threading.Lock()
_depth = 0


def _glibc():
    """The C library if it is glibc (the only one whose ``mallopt`` parameters are used here)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (absent outside glibc)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed memory stays in the process for the next tensors (see the module
    docstring); yields whether the setting is in force. Re-entrant and thread-safe: the defaults
    come back when the outermost block ends."""
    global _depth
    on = bool(enabled) and _LIBC is not None and os.environ.get("PAM_MONAI_KEEP_MEMORY", "1") != "0"
    if not on:
        yield False
        return
    with _lock:
        if _depth == 0:
            ok = _LIBC.mallopt(_M_MMAP_MAX, 0) == 1 and _LIBC.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM) == 1
            if not ok:
                log.debug("mallopt refused; freed memory is returned to the system as usual")
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)
                _LIBC.malloc_trim(0)


def run_keeping_memory(engine, device="cpu", enabled: bool = True):
    """``engine.run()`` within :func:`reuse_freed_memory` when ``device`` is the CPU (the bundles'
    evaluation: whole volumes through the network, as inference); else a plain ``engine.run()``."""
    import torch

    with reuse_freed_memory(bool(enabled) and torch.device(device).type == "cpu"):
        return engine.run()


class KeepFreedMemory:
    """Ignite handler: each run of the engine it is attached to within :func:`reuse_freed_memory`
    when ``device`` is the CPU. The bundles' validation during training (``train.json``) predicts
    whole volumes as evaluation and inference do, and gains as much; the trainer's steps run with
    glibc's defaults. The block ends at ``COMPLETED``, ``TERMINATE`` or ``EXCEPTION_RAISED`` (a
    validation that raised would leave it on for whatever the process runs next: the experiment
    runner's next run under ``--keep_going``).

    Example::

        evaluator = SupervisedEvaluator(..., val_handlers=[KeepFreedMemory("cpu"), ...])
    """

    def __init__(self, device="cpu", enabled: bool = True) -> None:
        import torch

        self.on = bool(enabled) and torch.device(device).type == "cpu"
        self._block = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        from .cleanup import clean_up_on_error

        engine.add_event_handler(Events.STARTED, self._enter)
        engine.add_event_handler(Events.COMPLETED, self._exit)
        engine.add_event_handler(Events.TERMINATE, self._exit)
        clean_up_on_error(engine, lambda engine, error: self._exit())

    def _enter(self, engine=None) -> None:
        self._exit()  # a block left open by a run that raised
        self._block = reuse_freed_memory(self.on)
        self._block.__enter__()

    def _exit(self, engine=None) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.__exit__(None, None, None)
