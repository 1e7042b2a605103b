"""The process's settings for a run: seeds, the deterministic mode and the fast path's flags
(:func:`setup_run`), and the caller's settings put back after bundles run in the same process
(:func:`kept_process_settings`, :func:`run_every_step`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import torch

from .flags import as_bool

__all__ = ["kept_process_settings", "run_every_step", "setup_run"]

log = logging.getLogger("pam_monai")


_threads_before_deterministic: int | None = None  # the intra-op threads a deterministic run set to 1


def setup_run(seed: int = 0, deterministic: bool = False, fast: bool = False, rank: int = 0) -> None:
    """Seed every RNG; optionally make the run bit-reproducible; switch on the fast path's flags.

    This configures the process (the bundles call it first): every flag below is set both ways,
    from the arguments alone, so that a run in a process where another ran before (the experiment
    runner, a notebook) gets its own settings, not the last run's.

    Args:
        seed: seed of torch, NumPy and Python's ``random``.
        deterministic: the documented deterministic mode: deterministic algorithms only
            (``torch.use_deterministic_algorithms``, ``cudnn.deterministic``; with
            ``CUBLAS_WORKSPACE_CONFIG`` set where unset), cuDNN benchmark off, one intra-op thread on
            the CPU, so that two runs with the same seed give the same weights. Without it,
            deterministic algorithms are off (MONAI's ``set_determinism`` restricted cuDNN to its
            deterministic algorithms in every seeded run, the fast path's too), and the thread count
            a deterministic run before it set to 1 comes back.
        fast: cuDNN benchmark and TF32 matmuls (GPU only; ignored with ``deterministic``); without
            it, both off.
        rank: the process's rank under ``torchrun``: its RNGs are seeded with ``seed + rank``, so
            that each process draws its own random flips (with one seed, every process flipped
            the same positions of its batch). What must agree needs no shared seed: DDP starts
            every process from rank 0's weights, the ``DistributedSampler`` shards by its own seed.
    """
    from monai.utils import set_determinism

    deterministic, fast = as_bool(deterministic), as_bool(fast)
    set_determinism(seed=int(seed) + int(rank), use_deterministic_algorithms=deterministic)
    fast = fast and not deterministic and torch.cuda.is_available()
    torch.backends.cudnn.deterministic = deterministic  # set_determinism sets it True for any seed
    torch.backends.cudnn.benchmark = fast
    torch.backends.cuda.matmul.allow_tf32 = fast
    if fast:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default already; a user's False is kept otherwise
    _set_deterministic_threads(deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        log.info("deterministic mode: seed %d, deterministic algorithms, 1 CPU thread", seed)


def _set_deterministic_threads(deterministic: bool) -> None:
    """One intra-op thread in deterministic mode; the count from before it once a run is not."""
    global _threads_before_deterministic
    if deterministic:
        if _threads_before_deterministic is None:
            _threads_before_deterministic = torch.get_num_threads()
        torch.set_num_threads(1)
    elif _threads_before_deterministic is not None:
        if torch.get_num_threads() == 1:  # not changed by the caller since
            torch.set_num_threads(_threads_before_deterministic)
        _threads_before_deterministic = None


@contextlib.contextmanager
def kept_process_settings() -> Iterator[None]:
    """Restore after the block what :func:`setup_run` and MONAI's ``ConfigWorkflow`` change in the
    process: intra-op threads, deterministic algorithms, the cuDNN and TF32 flags,
    ``CUBLAS_WORKSPACE_CONFIG``, the RNG states of torch (CUDA's too: one not started before the
    block is seeded as the caller's ``torch.manual_seed`` left it), NumPy and ``random``, MONAI's
    global seed (which seeds every ``Compose`` made after ``set_determinism``), and ``sys.path`` (a
    workflow adds its bundle's folder at every run). For library calls that run bundles in this
    process (:func:`pam_monai.experiments.run_experiment`): the caller's program goes on as before.
    So does its SIGTERM handler (the runner's stops the grid while it runs), in the main thread.
    """
    import random
    import signal
    import threading

    import monai.utils.misc as monai_misc
    import numpy as np

    saved = _flags()
    threads_before_deterministic = _threads_before_deterministic
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    # CUDA not started: it takes the seed of the caller's last ``torch.manual_seed`` when it starts
    cuda_seed = torch.initial_seed()
    path = list(sys.path)
    monai_seed = monai_misc.get_seed()
    main = threading.current_thread() is threading.main_thread()  # Python's rule for handlers
    sigterm = signal.getsignal(signal.SIGTERM) if main else None

    def put_back_sigterm() -> None:
        if main:  # None: a handler set outside Python, which cannot be put back; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if sigterm is None else sigterm)

    def put_back_flags() -> None:
        global _threads_before_deterministic
        _set_flags(saved)
        _threads_before_deterministic = threads_before_deterministic
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas

    def put_back_rngs() -> None:
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        else:  # set_determinism's torch.manual_seed (a random seed where MONAI had none) replaced it
            torch.cuda.manual_seed_all(cuda_seed)

    steps = {
        "the SIGTERM handler": put_back_sigterm,
        # MONAI's public setter (its ``_seed`` is private); the RNGs and cuDNN flags it sets too
        # are put back after it
        "MONAI's global seed": lambda: monai_misc.set_determinism(seed=monai_seed),
        "the threads and deterministic, cuDNN and TF32 flags": put_back_flags,
        "the RNG states": put_back_rngs,
        "sys.path": lambda: sys.path.__setitem__(slice(None), path),
    }
    try:
        yield
    except BaseException:
        _put_back(steps, raised=True)
        raise
    _put_back(steps, raised=False)


def _put_back(steps: dict, raised: bool) -> None:
    """Run each of :func:`kept_process_settings`' ``steps``, every one even where another fails.
    After a block that raised (a SIGTERM in the middle of an import leaves it half done, and
    ``torch.use_deterministic_algorithms`` imports ``torch._inductor`` again), a failure is
    warned about: the block's error goes on (it ended the grid on an unrelated ImportError, status
    1 instead of 143); otherwise the first failure is raised."""
    run_every_step(steps, raised, "the caller's %s could not be put back after the run that raised: %s: %s")


def run_every_step(steps: dict, raised: bool, after_error: str, logger: logging.Logger = log) -> None:
    """Run each of ``steps`` (``{what: callable}``), every one even where another fails. After a
    block that raised (``raised``) a failure is logged to ``logger`` with ``after_error`` % (what,
    error type, error) and the block's own error goes on; otherwise the first failure is raised."""
    failed = []
    for what, step in steps.items():
        try:
            step()
        except Exception as e:
            failed.append((what, e))
    if failed and not raised:
        raise failed[0][1]
    for what, e in failed:
        logger.warning(after_error, what, type(e).__name__, e)


def _flags() -> dict:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return {
        "threads": torch.get_num_threads(),
        "deterministic": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "cudnn": (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32),
        "matmul_tf32": matmul.allow_tf32,
    }


def _set_flags(flags: dict) -> None:
    cudnn = torch.backends.cudnn
    torch.set_num_threads(flags["threads"])
    on, warn_only = flags["deterministic"]
    torch.use_deterministic_algorithms(on, warn_only=warn_only)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = flags["cudnn"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
