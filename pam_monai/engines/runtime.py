"""Run set-up: seeds, the deterministic mode and the GPU fast path."""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["as_bool", "fast_network", "setup_run"]

log = logging.getLogger("pam_monai")


def as_bool(value) -> bool:
    """A command-line flag as a bool: ``--resume true`` arrives as the string "true" (Fire parses
    only ``True``/``False``), and a plain ``bool("false")`` would be True."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean flag: {value!r} (use true or false)")
    return bool(value)


def setup_run(seed: int = 0, deterministic: bool = False, fast: bool = False) -> None:
    """Seed every RNG; optionally make the run bit-reproducible; switch on the fast path's flags.

    Args:
        seed: seed of torch, NumPy and Python's ``random``.
        deterministic: the documented deterministic mode: deterministic algorithms only
            (``torch.use_deterministic_algorithms``), cuDNN benchmark off, one intra-op thread on
            the CPU, so that two runs with the same seed give the same weights.
        fast: cuDNN benchmark and TF32 matmuls (GPU only; ignored with ``deterministic``).
    """
    from monai.utils import set_determinism

    deterministic, fast = as_bool(deterministic), as_bool(fast)
    set_determinism(seed=seed, use_deterministic_algorithms=deterministic or None)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.set_num_threads(1)
        log.info("deterministic mode: seed %d, deterministic algorithms, 1 CPU thread", seed)
    elif fast and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def fast_network(network: torch.nn.Module, channels_last: bool = False) -> torch.nn.Module:
    """The network in the fast path's memory layout (channels-last for 2-D convolutions)."""
    if as_bool(channels_last):
        network = network.to(memory_format=torch.channels_last)
    return network
