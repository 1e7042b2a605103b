"""pam-monai as a library inside another program: what it leaves of the process's global state.

Each check runs in a fresh interpreter (the settings it looks at are the process's), from the
repository root so that this checkout's ``pam_monai`` is the one imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env) -> str:
    """Run ``code`` in a fresh interpreter at the repository root; returns its last output line."""
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


MONAI_SEED_AFTER_KEPT_SETTINGS = """
from monai.transforms import Compose, RandFlip
from monai.utils import get_seed
from pam_monai.engines import kept_process_settings, setup_run

before = get_seed()
with kept_process_settings():
    setup_run(seed=3)  # MONAI's set_determinism: every Compose made later is seeded with 3
states = {tuple(Compose([RandFlip(prob=0.5)]).R.get_state()[1][:4]) for _ in range(2)}
print(before, get_seed(), len(states))
"""


def test_kept_process_settings_restores_monais_global_seed():
    """A run in the block (``setup_run``: MONAI's ``set_determinism``) left MONAI's global seed set:
    every ``Compose`` the program made afterwards started from that seed, the same random transforms
    in each (a caller's own pipeline after ``run_experiment``); unset before, it is unset after."""
    assert run_python(MONAI_SEED_AFTER_KEPT_SETTINGS) == "None None 2"


GRID_IN_A_PROGRAM = """
import os, random, sys, tempfile
import numpy as np, torch
from pam_monai.data import ensure_dataset
from pam_monai.experiments import run_experiment

tmp = tempfile.mkdtemp(dir=sys.argv[1])
data, _ = ensure_dataset("brats", tmp + "/none", output=tmp + "/synthetic", slices=8)
torch.set_num_threads(2)

def state():
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            torch.get_rng_state().sum().item(), float(np.random.random()), random.random(), list(sys.path))

torch.manual_seed(7); np.random.seed(7); random.seed(7)
before = state()
torch.manual_seed(7); np.random.seed(7); random.seed(7)
run_experiment(dataset="brats", networks="unet", epochs=1, batch_size=8, num_workers=0, figures=False,
               network_options={"features": [8, 16, 32, 64]}, dataset_dir=str(data), output=tmp + "/exp",
               deterministic=True)
after = state()
print([name for name, a, b in zip(
    ["threads", "deterministic", "cudnn", "CUBLAS", "torch RNG", "numpy RNG", "random", "sys.path"],
    before, after) if a != b])
"""


@pytest.mark.slow
def test_an_experiment_grid_leaves_the_calling_program_as_it_was(tmp_path):
    """``run_experiment`` runs the bundles in this process: a deterministic grid left the caller's
    program in deterministic mode (cuDNN's too, ``CUBLAS_WORKSPACE_CONFIG`` set), its RNGs seeded by
    the last run, and ``sys.path`` two bundle folders longer per run."""
    code = GRID_IN_A_PROGRAM.replace("sys.argv[1]", repr(str(tmp_path)))
    assert run_python(code) == "[]"


FIGURE_IN_A_PROGRAM = """
import sys
import matplotlib
import numpy as np
from pam_monai.experiments.figures import attention_figure

backend = matplotlib.get_backend()
image, target = np.random.rand(4, 32, 32), np.zeros((32, 32), bool)
attention_figure(image, target, {"fpa": np.random.rand(8, 8)}, sys.argv[1])
print(backend, matplotlib.get_backend())
"""


def test_figures_leave_the_matplotlib_backend_alone(tmp_path):
    """The figures switched the whole program to the Agg backend (``matplotlib.use``): a program
    drawing its own plots afterwards (``plt.show()``) got no window. Now a Figure outside pyplot."""
    pytest.importorskip("matplotlib")
    code = FIGURE_IN_A_PROGRAM.replace("sys.argv[1]", repr(str(tmp_path / "fig4.png")))
    assert run_python(code, MPLBACKEND="pdf") == "pdf pdf"
    assert (tmp_path / "fig4.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


BENCH_IN_A_PROGRAM = """
import logging
import torch
from torch._inductor import config
from pam_monai.bench import run_bench

torch.set_num_threads(2)
torch.manual_seed(5)

def state():
    root = logging.getLogger()
    return (len(root.handlers), root.level, torch.get_num_threads(), config.split_reductions,
            torch.get_rng_state().sum().item())

before = state()
run_bench(device="cpu", stages="train", quick=True, networks="unet", modes="fp32", reference=False,
          threads=1, inductor=f"split_reductions={not config.split_reductions}", verbose=True, output=None)
print([name for name, a, b in zip(["root handlers", "root level", "threads", "inductor", "torch RNG"],
                                   before, state()) if a != b])
"""


@pytest.mark.slow
def test_a_benchmark_leaves_the_calling_program_as_it_was():
    """``run_bench`` configured the root logger, kept its ``threads`` and ``inductor`` settings
    and reseeded torch's RNG for the program that called it."""
    assert run_python(BENCH_IN_A_PROGRAM) == "[]"


UMASK_SET_AFTER_THE_IMPORT = """
import os, sys
from pathlib import Path
from pam_monai.atomic import atomic_write_text, sibling_temp_dir

os.umask(0o077)  # e.g. a service that keeps its outputs private, set after its imports
out = Path(sys.argv[1])
atomic_write_text(out / "a.txt", "a")
print(oct((out / "a.txt").stat().st_mode & 0o777), oct(sibling_temp_dir(out / "b").stat().st_mode & 0o777))
"""


def test_atomic_writes_follow_the_umask_of_the_moment(tmp_path):
    """The umask was read once, at import (by setting it: a thread creating a file then got
    0o022): files written after the program set another umask got the import's permissions."""
    code = UMASK_SET_AFTER_THE_IMPORT.replace("sys.argv[1]", repr(str(tmp_path)))
    assert run_python(code) == "0o600 0o700"


def test_a_stop_in_the_block_is_not_hidden_by_a_setting_that_cannot_be_put_back(monkeypatch, caplog):
    """A SIGTERM that stopped an experiment grid while a library was imported left that import
    half done; putting the caller's settings back then imported it again (``torch.use_deterministic_
    algorithms`` imports ``torch._inductor.config``) and failed: the grid ended on that ImportError,
    exit status 1 instead of 143, its "stopped by SIGTERM" under an unrelated traceback, and the
    settings after it (RNGs, ``sys.path``) were not put back. Now the block's own error goes on and
    every other setting comes back, with a warning naming the one that could not."""
    import logging

    import torch

    from pam_monai.engines import Terminated, kept_process_settings, process_settings

    def half_imported(flags):
        raise ImportError("cannot import name '_inductor' from 'torch'")

    monkeypatch.setattr(process_settings, "_set_flags", half_imported)
    path = list(sys.path)
    state = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="pam_monai"), pytest.raises(Terminated):
        with kept_process_settings():
            sys.path.insert(0, "/a/bundle")
            torch.manual_seed(123)
            raise Terminated()
    assert sys.path == path and torch.equal(torch.get_rng_state(), state)
    assert "cannot import name '_inductor'" in caplog.text, caplog.text
    with pytest.raises(ImportError):  # after a block that ended well, the failure is the error
        with kept_process_settings():
            pass
