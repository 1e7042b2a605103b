"""The bundle trainer's step never waits for the device between its loss logs.

A GPU step is queued, not run, by the Python that issues it; anything that needs a tensor's value
on the host (``.item()``, ``float()``, ``bool()``, a NaN check, a data-dependent branch or shape:
``nonzero``, ``unique``, ``masked_select``) waits for every queued kernel and leaves the GPU idle
until the next launch. Those reads go through the aten ops counted here on any device, so the
CPU shows them. The step's only reads of the loss are the ones ``log_every`` schedules (loss log,
progress bar, NaN guard); these tests run iterations between two of them.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import brats_fpa_training
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result the host must wait for (item/float/bool -> _local_scalar_dense)
HOST_READS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "unique_dim"}
HOST_READS |= {"_unique", "_unique2", "unique_consecutive"}
# random_flip_batch draws its flips on the host (a CPU generator) and asks there whether any sample
# flips: a host tensor, no device wait on a GPU, but the same aten op on a CPU run
HOST_DRAW = "random_flip_batch"
# torch's own wrappers, which say nothing about who read the tensor
SKIP_FRAMES = ("torch/utils/_python_dispatch", "torch/_dynamo", "torch/_compile")


class HostReads(TorchDispatchMode):
    """Counts the host reads of tensors while ``on``, by the Python frames that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.reads: Counter = Counter()
        self.ops: Counter = Counter()  # every aten op while on

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if self.on:
            self.ops[name] += 1
        if self.on and name in HOST_READS:
            frames = [
                f for f in traceback.extract_stack()[:-1] if not any(s in f.filename for s in SKIP_FRAMES)
            ]
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-6:]))
            self.reads[f"{name}: {where}"] += 1
        return func(*args, **(kwargs or {}))


def train_reads(tmp_path: Path, iterations: int, **overrides) -> tuple[HostReads, list[float]]:
    """Host reads during ``iterations`` iterations (after a first) of brats_fpa's ``train.json`` on
    its fast path (device loader, channels-last, fused AdamW as on a GPU), logging every 1000, and
    the losses of all iterations run."""
    from ignite.engine import Events

    from pam_monai.engines import loss_of

    settings = {
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "network_options": {"features": [8, 16, 32, 64]},
        "crop_size": [64, 64],
        "log_every": 1000,
        "fast": True,
        "device_data": True,
        "compile": False,
        # the bundle's AdamW on a GPU; the CPU's unfused one keeps its step count in a host tensor
        # and reads it (no device wait on a GPU either, but counted here)
        "optimizer#fused": True,
        "checks": [],
        **overrides,
    }
    workflow = brats_fpa_training(tmp_path, **settings)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch_length is None or trainer.state.epoch_length > iterations + 1
    reads, losses = HostReads(), []
    reads.trainer = trainer

    def started(engine) -> None:
        reads.on = engine.state.iteration > 1  # the first iteration logs (iteration 1 of every log_every)

    def completed(engine) -> None:
        reads.on = False
        losses.append(loss_of(engine.state.output).clone())
        if engine.state.iteration == iterations + 1:
            engine.terminate()  # before the epoch's end, which reads the NaN guard and checkpoints

    trainer.add_event_handler(Events.ITERATION_STARTED, started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
    torch.manual_seed(0)
    with reads:
        trainer.run()
    assert len(losses) == iterations + 1
    return reads, [float(x) for x in losses]


def device_reads(reads: Counter) -> dict[str, int]:
    return {where: n for where, n in reads.items() if HOST_DRAW not in where}


@pytest.mark.parametrize(
    "network, crop, options",
    [("fpa", [64, 64], {"features": [8, 16, 32, 64]}), ("rfna", [128, 128], {})],  # rfna: reversed-label loss
)
def test_training_iterations_between_loss_logs_never_wait_for_the_device(tmp_path, network, crop, options):
    """Iterations between two loss logs read nothing on the host but the flip's host-side draw, for
    the paper's networks (RFNA: its reversed-label loss). An ``.item()``, ``float()``, a NaN check
    or a ``nonzero`` added to the step, loader, flip, network or loss fails here, named by its frames."""
    iterations = 3
    reads = train_reads(tmp_path, iterations, network_name=network, crop_size=crop, network_options=options)[
        0
    ].reads
    assert device_reads(reads) == {}, "host reads in the training step (each one a GPU stall):\n" + "\n".join(
        f"{n}x {where}" for where, n in device_reads(reads).items()
    )
    # the flip's own check: one per step, of its host-side draw
    assert sum(reads.values()) == iterations


def test_bf16_training_scales_no_loss(tmp_path, monkeypatch):
    """MONAI's trainer gives amp a float16 loss scaler; bf16 (the bundles' amp) has float32's range
    and needs none. The scaler would cost each step an inf check over every gradient, a scale update
    and Python per parameter (with an unfused optimizer also a host read of that check): the bundle
    trainer runs bf16 without it, with autocast kept and the same losses as a scaled run."""
    # the scaler MONAI makes on a GPU (torch.cuda.amp.GradScaler), here enabled on the CPU
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", lambda: torch.amp.GradScaler("cpu"))
    reads, losses = train_reads(tmp_path / "amp", 2, amp=True)
    scaler = reads.trainer.scaler  # MONAI's step autocasts only when the trainer has a scaler
    assert scaler is not None and not scaler.is_enabled()
    scaler_ops = {name: n for name, n in reads.ops.items() if name.startswith("_amp_")}
    assert scaler_ops == {}, f"loss-scaling kernels in bf16 training steps: {scaler_ops}"
    # with autocast off on the CPU the step is fp32, where scaling by a power of two is exact
    _, unscaled = train_reads(tmp_path / "fp32", 2, amp=False)
    assert losses == unscaled
