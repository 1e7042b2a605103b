"""Does the batched flip wait for queued GPU work? (CUDA only; the stage ``flip_sync`` of gpu_check.sh)

The training flips each batch on the device with a per-sample choice drawn on the CPU
(:func:`pam_monai.data.random_flip_batch`); that choice is copied to the GPU from pinned memory,
since from pageable memory the driver may synchronise with the stream to stage the copy, idling
the host once per step. Here a second of GPU work is queued, then one flip is timed: the call must
return long before that work ends (:func:`pam_monai.bench.pipeline.flip_wait`, which
``tests/test_fast_path.py``'s ``test_batched_flip_does_not_wait_for_the_gpu`` runs too), for a
machine without pytest.

    python benchmarks/flip_sync_check.py [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pam_monai.atomic import atomic_write_text
from pam_monai.bench.pipeline import flip_wait


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=None, help="JSON file of the result")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("flip_sync: no CUDA device, nothing to check")
        return 0
    returned, waited = flip_wait()
    ok = returned < 0.1 < waited
    result = {"flip_returned_s": returned, "gpu_work_done_s": waited, "ok": ok}
    print(
        f"flip_sync: the flip returned after {returned * 1e3:.2f} ms, the queued GPU work ended after "
        f"{waited * 1e3:.0f} ms: {'does not wait' if ok else 'WAITED for the GPU'}"
    )
    if args.output:
        atomic_write_text(args.output, json.dumps(result))  # whole or not at all, under a time box
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
