"""The batch Dice loss: MONAI's in one process, the one global batch Dice under torchrun (DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.losses import DiceLoss
from torch import nn

from pam_monai.data.ops import IGNORE
from pam_monai.networks import BatchDiceLoss, IgnoredVoxelsLoss, ReversedLabelLoss

ROOT = Path(__file__).resolve().parents[1]
SMOOTH = {"smooth_nr": 1.0, "smooth_dr": 1.0}
# the bundles' loss around the Dice: as it is, RFNA's reversed labels, unannotated voxels left out
WRAPPERS = {
    "plain": lambda dice: dice,
    "rfna": lambda dice: ReversedLabelLoss(dice),
    "ignore": lambda dice: IgnoredVoxelsLoss(dice),
    "rfna_ignore": lambda dice: ReversedLabelLoss(IgnoredVoxelsLoss(dice), ignore=True),
}


def batch(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and binary targets with some unannotated voxels (IGNORE), the samples' foreground
    fractions far apart (the per-sample Dice differ, as real slices' do)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    fractions = torch.linspace(0.02, 0.6, shape[0], dtype=torch.float64).view(-1, *[1] * (len(shape) - 1))
    target = (torch.rand(shape, generator=g, dtype=torch.float64) < fractions).double()
    ignored = torch.rand(shape, generator=g) > 0.8
    return logits, target.masked_fill(ignored, IGNORE)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("shape", [(6, 1, 9, 7), (3, 2, 5, 4, 6)])
def test_batch_dice_is_monais_in_one_process(wrapper, shape):
    """Without a process group, BatchDiceLoss is MONAI's DiceLoss(batch=True): value and gradients,
    inside the bundles' wrappers, 2D and 3D, one Dice per channel averaged."""
    logits, target = batch(shape)
    if "ignore" not in wrapper:
        target = target.clamp(max=1.0)  # IGNORE would be foreground of weight 2 to either loss
    wrap = WRAPPERS[wrapper]
    values, grads = [], []
    for dice in (DiceLoss(sigmoid=True, batch=True, **SMOOTH), BatchDiceLoss(sigmoid=True, **SMOOTH)):
        x = logits.clone().requires_grad_(True)
        loss = wrap(dice)(x, target)
        loss.backward()
        values.append(loss)
        grads.append(x.grad)
    assert values[1].dtype == torch.float64 and values[1].shape == ()
    torch.testing.assert_close(values[1], values[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-14)
    assert grads[1].abs().max() > 0


def test_batch_dice_sums_bf16_outputs_in_float32():
    """The fast path's network returns bf16 logits under autocast; the loss's sums over the batch
    are taken in float32 (bf16's 8-bit mantissa would round a sum over thousands of voxels by
    percent), so the loss is the float32 loss of those logits and is itself float32."""
    logits, target = batch((8, 1, 64, 64))
    target = target.clamp(max=1.0).float()
    logits = logits.to(torch.bfloat16).requires_grad_(True)
    dice = BatchDiceLoss(sigmoid=True, **SMOOTH)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dice(logits, target)
    reference = DiceLoss(sigmoid=True, batch=True, **SMOOTH)(logits.detach().float(), target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["bce", "dice_ce", "dice_focal"])
def test_ignored_voxels_give_voxel_wise_losses_a_zero_not_nan(name, dtype):
    """IgnoredVoxelsLoss around a voxel-wise loss (BCE, MONAI's DiceCE / DiceFocal, a library user's
    choice with ``loss_for(..., ignore=True)``): an unannotated voxel adds nothing and gets no
    gradient. Its logit was -inf, where BCE's ``(1 - t) x + max(-x, 0)`` is -inf + inf: NaN."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    losses = {
        "bce": nn.BCEWithLogitsLoss(reduction="sum"),
        "dice_ce": DiceCELoss(sigmoid=True),
        "dice_focal": DiceFocalLoss(sigmoid=True),
    }
    logits, target = batch((4, 1, 9, 7))
    logits = logits.to(dtype).requires_grad_(True)
    target = target.to(dtype)
    ignored = target == IGNORE
    loss = IgnoredVoxelsLoss(losses[name])(logits, target)
    assert torch.isfinite(loss), f"{name}: {loss}"
    loss.backward()
    assert logits.grad[ignored].abs().max() == 0 and logits.grad[~ignored].abs().max() > 0
    if name == "bce":  # the sum over the annotated voxels alone
        annotated = nn.BCEWithLogitsLoss(reduction="sum")(logits[~ignored].float(), target[~ignored].float())
        torch.testing.assert_close(
            loss.float(), annotated, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0
        )


def test_reversed_label_loss_refuses_an_ignore_flag_its_loss_does_not_match():
    """``ignore=True`` only keeps IGNORE targets as they are, for an IgnoredVoxelsLoss inside to
    leave out: without one, a Dice took them as foreground of weight 2; with one but ``ignore=False``,
    they were reversed to 1 - 2 = -1, which it no longer recognises. Both trained silently."""
    dice = DiceLoss(sigmoid=True, batch=True)
    with pytest.raises(ValueError, match=r"ignore=True.*DiceLoss does not leave.*IgnoredVoxelsLoss\(loss\)"):
        ReversedLabelLoss(dice, ignore=True)
    with pytest.raises(ValueError, match=r"holds an IgnoredVoxelsLoss but ignore=False.*pass ignore=True"):
        ReversedLabelLoss(IgnoredVoxelsLoss(dice))
    ReversedLabelLoss(IgnoredVoxelsLoss(dice), ignore=True)  # the bundles' (loss_for's) combination
    ReversedLabelLoss(dice)


def test_reversed_label_loss_refuses_losses_over_exclusive_classes():
    """RFNA's reversal is per binary sigmoid channel: a softmax loss or class-index targets failed
    with "index -1 is out of bounds" (1 - class index), or trained silently on 1 - one-hot."""
    from monai.losses import DiceCELoss, FocalLoss

    from pam_monai.networks import get_network, loss_for

    rfna = get_network("rfna", spatial_dims=2, in_channels=1, out_channels=3, features=(4, 8, 8, 16))
    exclusive = [
        DiceLoss(softmax=True, to_onehot_y=True),
        DiceLoss(softmax=True),
        DiceLoss(sigmoid=True, to_onehot_y=True),
        DiceCELoss(softmax=True, to_onehot_y=True),
        nn.CrossEntropyLoss(),
        FocalLoss(use_softmax=True),  # MONAI's focal loss names its softmax use_softmax
    ]
    for loss in exclusive:
        with pytest.raises(
            ValueError, match=r"ReversedLabelLoss: the loss \w+ is over mutually exclusive.*sigmoid"
        ):
            loss_for(rfna, loss)
    x, y = torch.randn(2, 3, 16, 16), (torch.rand(2, 3, 16, 16) > 0.5).float()
    for loss in (
        DiceLoss(sigmoid=True, batch=True),
        nn.BCEWithLogitsLoss(),
        FocalLoss(),
    ):
        wrapped = loss_for(rfna, loss)
        assert isinstance(wrapped, ReversedLabelLoss)  # per-channel binary: reversible
        assert torch.isfinite(wrapped(x, y))
    # MONAI's DiceCELoss(sigmoid=True) is binary on one channel, a softmax cross-entropy on three
    one = get_network("rfna", spatial_dims=2, in_channels=1, out_channels=1, features=(4, 8, 8, 16))
    assert torch.isfinite(loss_for(one, DiceCELoss(sigmoid=True))(x[:, :1], y[:, :1]))
    with pytest.raises(ValueError, match="DiceCELoss on 3 channels takes a softmax cross-entropy"):
        loss_for(rfna, DiceCELoss(sigmoid=True))(x, y)
    assert loss_for(get_network("unet"), exclusive[0]) is exclusive[0]  # plain networks: any loss


def test_a_wrapped_rfna_still_trains_on_reversed_labels():
    """The multi-GPU bundle builds its loss on the DDP-wrapped network, whose RFNA is its ``.module``
    (as DataParallel's, which needs no process group): ``loss_for`` and ``as_foreground`` must see the
    RFNA inside, else it trains on foreground labels under torchrun, silently. (``torch.compile``'s
    wrapper hands attribute look-ups to the network by itself.)"""
    from pam_monai.networks import as_foreground, get_network, loss_for
    from pam_monai.networks.polarity import ForegroundOutput

    small = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "features": (4, 8, 8, 16)}
    dice = DiceLoss(sigmoid=True, batch=True, **SMOOTH)
    loss = loss_for(nn.DataParallel(get_network("rfna", **small)), dice)
    assert isinstance(loss, ReversedLabelLoss) and loss.input_is_foreground
    raw = nn.DataParallel(get_network("rfna", foreground_output=False, **small))
    assert not loss_for(raw, dice).input_is_foreground
    assert isinstance(as_foreground(raw), ForegroundOutput)
    assert loss_for(nn.DataParallel(get_network("unet", **small)), dice) is dice


def test_batch_dice_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"BatchDiceLoss: the target's shape \(2, 1, 4, 4\) differs"):
        BatchDiceLoss()(torch.zeros(2, 2, 4, 4), torch.zeros(2, 1, 4, 4))


DDP_RANKS = """
import json, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from monai.bundle import ConfigParser
from torch import nn
from torch.nn.parallel import DistributedDataParallel
import pam_monai.engines, pam_monai.networks
from pam_monai.networks import IgnoredVoxelsLoss, ReversedLabelLoss

WORLD, PER_RANK = 2, 4
WRAPPERS = {"plain": lambda d: d, "rfna_ignore": lambda d: ReversedLabelLoss(IgnoredVoxelsLoss(d), ignore=True)}

def dice_loss(files):
    parser = ConfigParser()
    parser.read_config(json.loads(files))
    return parser.get_parsed_content("dice_loss")

def step(network, loss, x, y):
    network.zero_grad()
    value = loss(network(x), y)
    value.backward()
    grads = torch.cat([p.grad.flatten() for p in network.parameters()])
    return {"loss": value.detach(), "grads": grads}

def target(name, y):
    return y if "ignore" in name else y.clamp(max=1.0)  # IGNORE: unannotated

def run(rank, folder, one, several, network, x, y):
    dist.init_process_group("gloo", init_method="file://" + folder + "/store", rank=rank, world_size=WORLD)
    network = DistributedDataParallel(network)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)  # what the DistributedSampler would give
    x, y = x[mine], y[mine]
    out = {}
    for config, files in (("one", one), ("several", several)):
        dice = dice_loss(files)
        for name, wrap in WRAPPERS.items():
            out[config + "/" + name] = step(network, wrap(dice), x, target(name, y))
    # a non-finite output in one process: every process's loss is non-finite (the guard stops all)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan") if rank == 1 else 0.0
    out["nan"] = step(network, dice_loss(several), nan, target("plain", y))["loss"]
    torch.save(out, f"{folder}/rank{rank}.pt")
    del network  # the DDP reducer before its process group: freed after it, it can hang on exit
    dist.destroy_process_group()

if __name__ == "__main__":
    folder, one, several = sys.argv[1:]
    torch.manual_seed(0)
    # a tiny network with per-sample (instance) normalisation, as the paper's networks have
    network = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.ReLU(), nn.Conv2d(4, 1, 1)
    ).double()
    x = torch.randn(WORLD * PER_RANK, 2, 12, 12, dtype=torch.float64)
    # rank 0's slices have little foreground, rank 1's much: their Dice differ
    fractions = torch.linspace(0.01, 0.9, WORLD * PER_RANK, dtype=torch.float64).view(-1, 1, 1, 1)
    y = (torch.rand(WORLD * PER_RANK, 1, 12, 12, dtype=torch.float64) < fractions).double()
    y[torch.rand(y.shape) > 0.8] = pam_monai.data.ops.IGNORE
    # one process with all the slices, the one-process bundle's loss
    single = {name: step(network, wrap(dice_loss(one)), x, target(name, y)) for name, wrap in WRAPPERS.items()}
    torch.save(single, folder + "/single.pt")
    # forked: the ranks start with MONAI imported (spawned, each imports it again: slow on 2 cores)
    mp.start_processes(run, args=(folder, one, several, network, x, y), nprocs=WORLD, start_method="fork")
"""


def labelled(name: str):
    """An ``assert_close`` message naming the case before the mismatch's numbers."""
    return lambda message: f"{name}: {message}"


def test_ddp_gradients_are_those_of_one_process_with_the_whole_batch(tmp_path):
    """Under torchrun each process pooled MONAI's batch Dice over its own slices and DDP averaged
    the gradients: 2 processes x 4 slices trained on the mean of two 4-slice Dice losses, not the
    paper's one 8-slice batch Dice. multi_gpu_train.json's BatchDiceLoss sums the Dice's sums over
    the processes: every process's loss is the 8-slice loss, and DDP's parameter gradients are
    those of one process with all 8 slices (RFNA's reversal and unannotated voxels included)."""
    configs = ROOT / "bundles" / "brats_fpa" / "configs"
    one = json.dumps([str(configs / "train.json")])
    several = json.dumps([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    script = tmp_path / "ranks.py"
    script.write_text(DDP_RANKS)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, str(script), str(tmp_path), one, several]
    subprocess.run(cmd, check=True, timeout=120, cwd=ROOT, env=env)
    single = torch.load(tmp_path / "single.pt")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name, want in single.items():
        named = labelled(name)
        for rank in ranks:
            got = rank["several/" + name]
            assert got["loss"].shape == () and torch.isfinite(got["loss"])  # what the guard and logs read
            torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-12, atol=1e-12, msg=named)
            torch.testing.assert_close(got["grads"], want["grads"], rtol=1e-9, atol=1e-12, msg=named)
            # the one-process loss under DDP: the mean of the processes' own Dice losses
            old = rank["one/" + name]["grads"]
            assert (old - want["grads"]).norm() > 0.02 * want["grads"].norm(), name
    assert all(not torch.isfinite(rank["nan"]) for rank in ranks)
