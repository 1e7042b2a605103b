"""FPA or RFNA in your own MONAI training loop, on your own NIfTI volumes (no bundle, no CLI).

Trains a 2-D network on axial slices of 3-D volumes (the paper's setting), segments a held-out
volume slice by slice, scores it with pam_monai's metrics, and saves and reloads the weights::

    python examples/own_training_loop.py --network rfna   # synthetic volumes: 1-2 minutes on 2 CPU cores
    python examples/own_training_loop.py --network fpa --data_dir /data/nnUNet_raw/Dataset501_Lesion \
        --foreground 1 --features 32,64,128,256 --steps 20000 --output runs/fpa

``--data_dir`` is a folder in the nnU-Net raw layout (``imagesTr/<case>_0000.nii.gz``, ...,
``labelsTr/<case>.nii.gz``); for another layout, build the list of ``{"image": [channel files],
"label": file}`` dicts yourself. The transforms below are where your data's differ (intensities,
crop size, which labels are foreground).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import SliceInferer
from monai.losses import DiceLoss
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    RandCropByPosNegLabeld,
    RandFlipd,
    SpatialPadd,
    SqueezeDimd,
)
from monai.utils import set_determinism

from pam_monai.atomic import atomic_path
from pam_monai.data import BinarizeLabeld, discover_cases, synth
from pam_monai.metrics import case_metrics
from pam_monai.networks import NETWORKS, get_network, loss_for


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--network", default="rfna", choices=list(NETWORKS))
    p.add_argument("--data_dir", help="nnU-Net raw layout; default: a small synthetic set")
    p.add_argument(
        "--foreground", default="1,2,3", help="label values of the target (synthetic: whole tumour)"
    )
    p.add_argument("--features", default="8,16,32,64", help="widths per stage (paper: 32,64,128,256)")
    p.add_argument("--crop", type=int, default=96, help="slice size trained on (RFNA needs > 64)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW's (paper: 1e-4 BraTS, 1e-3 ISLES)")
    p.add_argument("--output", default=None, help="weights and the held-out mask; default: a temp folder")
    return p.parse_args(argv)


def transforms(crop: int, foreground: list[int], train: bool) -> Compose:
    """Whole volumes C x H x W x D; for training, random 2-D slices C x crop x crop of them."""
    keys = ["image", "label"]
    steps = [
        LoadImaged(keys),  # a list of channel files is stacked into channels
        EnsureChannelFirstd(keys),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),  # the paper's z-score (MRI)
        BinarizeLabeld("label", foreground=foreground),  # 1 = foreground, as every network is trained
    ]
    if train:
        steps += [
            SpatialPadd(keys, (crop, crop, -1)),  # a smaller volume is padded, never cut
            # half the slices through foreground, 4 per volume; (crop, crop, 1): one axial slice
            RandCropByPosNegLabeld(keys, "label", (crop, crop, 1), pos=1, neg=1, num_samples=4),
            SqueezeDimd(keys, dim=-1),  # C x crop x crop x 1 -> C x crop x crop
            RandFlipd(keys, prob=0.5, spatial_axis=0),  # left-right, as the paper augments
        ]
    return Compose(steps)


def build(args, in_channels: int) -> torch.nn.Module:
    features = tuple(int(f) for f in args.features.split(","))
    return get_network(
        args.network, spatial_dims=2, in_channels=in_channels, out_channels=1, features=features
    )


def train(net, cases, args, foreground) -> None:
    data = CacheDataset(cases, transforms(args.crop, foreground, train=True), progress=False)
    loader = DataLoader(data, batch_size=2, shuffle=True)  # 2 volumes x 4 slices per step
    # RFNA learns the REVERSED labels (1 = background): loss_for wraps the loss so that it does;
    # passing foreground labels to a plain DiceLoss is the classic mistake. FPA: the loss itself.
    loss_fn = loss_for(net, DiceLoss(sigmoid=True, batch=True))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    net.train()
    step = 0
    while step < args.steps:
        for batch in loader:
            loss = loss_fn(net(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 20 == 0 or step == args.steps:
                print(f"step {step}: loss {loss.item():.3f}")
            if step == args.steps:
                return


def evaluate(net, case, args, foreground) -> tuple[dict, np.ndarray]:
    """The held-out volume segmented slice by slice, and its metrics on the volume's grid."""
    sample = transforms(args.crop, foreground, train=False)(case)
    image, label = sample["image"][None], sample["label"][0]
    # 2-D windows of crop x crop over every slice along the third axis (padded, Gaussian-blended)
    inferer = SliceInferer(
        roi_size=(args.crop, args.crop), spatial_dim=2, sw_batch_size=8, overlap=0.5, mode="gaussian"
    )
    net.eval()
    with torch.no_grad():
        logits = inferer(image.as_tensor(), net)
    # every network returns FOREGROUND logits, RFNA too (RFNAUNet negates its reversed output; one
    # built with foreground_output=False is wrapped with pam_monai.networks.as_foreground first)
    mask = (logits[0, 0].sigmoid() > 0.5).numpy()
    spacing = [float(s) for s in sample["label"].pixdim]  # HD95 in mm
    return case_metrics(mask, label, spacing=spacing), mask


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.output or tempfile.mkdtemp(prefix="pam_example_"))
    root = Path(args.data_dir) if args.data_dir else synth("nnunet", out / "data", cases=5, seed=0)
    cases = discover_cases("nnunet", root)  # [{"case", "image": [channel files], "label"}, ...]
    if len(cases) < 2:
        raise SystemExit(
            f"{root}: {len(cases)} labelled case(s) in imagesTr/ and labelsTr/; the example needs 2 or more"
        )
    foreground = [int(v) for v in args.foreground.split(",")]
    train_cases, held_out = cases[:-1], cases[-1]  # use a proper split for real results
    set_determinism(seed=0)  # the same weights, slices and flips at every run

    net = build(args, in_channels=len(cases[0]["image"]))
    train(net, train_cases, args, foreground)

    weights = out / f"{args.network}.pt"
    with atomic_path(weights) as tmp:  # a killed run leaves the old file or the new, never half
        torch.save(net.state_dict(), tmp)
    net = build(args, in_channels=len(cases[0]["image"]))
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))  # tensors only

    metrics, mask = evaluate(net, held_out, args, foreground)
    seg = out / f"{held_out['case']}_seg.nii.gz"
    with atomic_path(seg, suffix=".nii.gz") as tmp:  # on the input's grid: its affine
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nib.load(held_out["label"]).affine), tmp)
    print(
        f"{args.network} on {held_out['case']}: "
        + ", ".join(f"{k} {metrics[k]:.3f}" for k in ("iou", "dice", "hd95", "fp_rate", "fn_rate"))
    )
    print(f"weights: {weights}; mask: {seg}")


if __name__ == "__main__":
    main()
