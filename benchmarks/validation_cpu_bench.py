"""Validation during training on the CPU: ``KeepFreedMemory`` off / on, interleaved in one process.

The bundles' ``train.json`` evaluator (``SupervisedEvaluator``, ``SliceWiseInferer`` over whole
cases, ``ForegroundMaskd``) over every case of a BraTS folder, once per variant and round, the
variants alternating so that the load of a shared machine hits both alike; then the median
seconds per case and the per-round ratios (the first round is a warm-up).

    python benchmarks/validation_cpu_bench.py --data ../shared/data/brats2018 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.engines import SupervisedEvaluator

from pam_monai.data import get_spec, scan_cases
from pam_monai.engines import CaseDataset, ForegroundMaskd, SliceWiseInferer
from pam_monai.engines.memory import KeepFreedMemory
from pam_monai.networks import as_foreground, get_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a BraTS folder (cases in the published layout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--network", default="fpa")
    parser.add_argument("--slice_batch_size", type=int, default=50, help="train.json: @batch_size")
    args = parser.parse_args()
    spec = get_spec("brats")
    dataset = CaseDataset([c.to_item() for c in scan_cases(spec, args.data).cases], spec)
    torch.manual_seed(0)
    net = get_network(args.network, spatial_dims=2, in_channels=4, out_channels=1).eval()
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for variant in times:
            evaluator = SupervisedEvaluator(
                device=torch.device("cpu"),
                val_data_loader=torch.utils.data.DataLoader(dataset, batch_size=1),
                network=as_foreground(net),
                inferer=SliceWiseInferer(args.slice_batch_size, roi_size=spec.crop_size),
                postprocessing=ForegroundMaskd(keys="pred"),
                val_handlers=[KeepFreedMemory("cpu", enabled=variant == "on")],
            )
            start = time.perf_counter()
            evaluator.run()
            seconds = (time.perf_counter() - start) / len(dataset)
            if r:  # the first round warms up
                times[variant].append(seconds)
            print(f"round {r} {variant}: {seconds:.1f} s per case", flush=True)
    if times["off"]:
        ratios = [a / b for a, b in zip(times["off"], times["on"])]
        print(
            f"median s per case: off {statistics.median(times['off']):.1f}, on {statistics.median(times['on']):.1f}; "
            f"off / on per round: {', '.join(f'{x:.2f}' for x in ratios)}"
        )


if __name__ == "__main__":
    main()
