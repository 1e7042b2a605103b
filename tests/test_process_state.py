"""pam-monai as a library inside another program: what it leaves of the process's global state.

Each check runs in a fresh interpreter (the settings it looks at are the process's), from the
repository root so that this checkout's ``pam_monai`` is the one imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; returns its last output line."""
    import os

    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


SETUP_RUN_AFTER_A_DETERMINISTIC_ONE = """
import torch
from pam_monai.engines import setup_run

torch.set_num_threads(2)
torch.cuda.is_available = lambda: True  # the fast path's flags are only set where a GPU is
setup_run(seed=1, deterministic=True)
assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
assert torch.get_num_threads() == 1
setup_run(seed=1, fast=True)
fast = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
        torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
setup_run(seed=1)
plain = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
print(fast, plain)
"""


def test_setup_run_sets_its_flags_from_its_arguments_not_from_the_run_before():
    """A run after a deterministic one in the same process (the experiment runner, a notebook)
    kept deterministic algorithms and one CPU thread; and every seeded run (MONAI's
    ``set_determinism``) restricted cuDNN to its deterministic algorithms, the fast path's too."""
    out = run_python(SETUP_RUN_AFTER_A_DETERMINISTIC_ONE)
    assert out == "(False, False, 2, True, True) (False, False)"
