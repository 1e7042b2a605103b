"""pam_monai.ranks: work rank 0 does for every process under torch.distributed (two forked gloo ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RANKS = """
import json, sys, torch.distributed as dist, torch.multiprocessing as mp
from pam_monai.ranks import on_rank0

class NeedsTwo(Exception):  # pickles, but unpickling calls __init__ with its one message
    def __init__(self, case, problem):
        super().__init__(f"{case}: {problem}")

def fail(kind):
    if kind == "plain":
        raise ValueError("case 7: 1 NaN voxel")
    raise NeedsTwo("case 7", "1 NaN voxel")

def run(rank, folder, kind):
    dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=2)
    try:
        on_rank0(lambda: fail(kind))
        result = {"error": None}
    except Exception as e:
        result = {"type": type(e).__name__, "error": str(e)}
    json.dump(result, open(f"{folder}/rank{rank}.json", "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.start_processes(run, args=tuple(sys.argv[1:]), nprocs=2, start_method="fork")
"""


def _ranks(folder: Path, kind: str) -> list[dict]:
    folder.mkdir()
    script = folder / "ranks.py"
    script.write_text(RANKS)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, str(script), str(folder), kind], check=True, timeout=120, env=env)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_on_rank0_raises_rank_0s_problem_on_every_rank(tmp_path):
    """The other ranks raise a copy of rank 0's exception; one that pickles but cannot be rebuilt
    (an ``__init__`` with other arguments than its message) made them raise unpickling's TypeError
    instead, and torchrun's summary may name that rank's error as the first failure: they raise a
    RuntimeError with rank 0's type and message."""
    zero, one = _ranks(tmp_path / "plain", "plain")
    assert zero == one == {"type": "ValueError", "error": "case 7: 1 NaN voxel"}, (zero, one)
    zero, one = _ranks(tmp_path / "two", "two")
    assert zero == {"type": "NeedsTwo", "error": "case 7: 1 NaN voxel"}, zero
    assert one == {"type": "RuntimeError", "error": "on rank 0: NeedsTwo: case 7: 1 NaN voxel"}, one
