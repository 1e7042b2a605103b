"""Inference on a finished run's test cases, for what the bundle's evaluation does not write:
the paper protocol (per-slice aggregation) and the figures (overlays, attention maps).

The prediction is the bundle evaluator's: ``models/model.pt`` (best validation IoU) in the run's
network, every axial slice through :class:`pam_monai.engines.SliceWiseInferer`, foreground where
``sigmoid(logit) > threshold`` (the grid's ``--threshold``, as the evaluation's; 0.5 by default; RFNA
returns foreground logits; :func:`pam_monai.engines.foreground_mask`),
on the network's grid; ``case_iou`` puts it back into the case's own grid, where
``eval/metrics.csv`` is computed.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..engines import CaseDataset, SliceWiseInferer, atomic_write_text, foreground_mask, load_checkpoint
from ..engines.case_metrics import score_case
from ..metrics import split_ignored
from ..metrics.paper_protocol import authors_code_metrics, paper_protocol_metrics
from ..networks import as_foreground, get_network

log = logging.getLogger("pam_monai")

__all__ = [
    "PAPER_PROTOCOL_FIELDS",
    "attention_map",
    "load_network",
    "paper_protocol_rows",
    "predict_case",
    "read_paper_protocol",
    "write_paper_protocol",
]

PAPER_PROTOCOL_FIELDS = (
    "case",
    "slices",
    "target_empty_slices",
    "pred_empty_slices",
    "iou",
    "dice",
    "hd95",
    "fp_rate",
    "fn_rate",
    "authors_iou",
    "authors_hd95",
    "authors_hd95_slices",
    "authors_fp_rate",
    "authors_fn_rate",
    "case_iou",
)


def load_network(
    network: str, options: dict, in_channels: int, ckpt: str | os.PathLike, device="cpu"
) -> torch.nn.Module:
    """The run's network with the weights of ``ckpt`` (``models/model.pt``), in eval mode."""
    net = get_network(network, spatial_dims=2, in_channels=in_channels, out_channels=1, options=options)
    net.load_state_dict(load_checkpoint(ckpt, map_location="cpu"))
    return net.to(device).eval()


@torch.no_grad()
def predict_case(
    net: torch.nn.Module,
    image: torch.Tensor,
    slice_batch_size: int = 32,
    device="cpu",
    roi_size=None,
    probabilities: bool = False,
    threshold: float = 0.5,
) -> np.ndarray:
    """Binary foreground mask (``H x W [x D]``, bool) of one preprocessed case ``C x H x W [x D]``
    (slices larger than ``roi_size``, the trained crop, through a sliding window, as the bundles);
    with ``probabilities``, the foreground probabilities (float32) the mask is cut from
    (``> threshold``, the bundles' ``threshold``)."""
    # foreground polarity whatever the network returns (RFNA built with foreground_output=False)
    logits = SliceWiseInferer(slice_batch_size, roi_size=roi_size)(image[None].to(device), as_foreground(net))
    if probabilities:
        return torch.sigmoid(logits[0, 0].float()).cpu().numpy()
    # the bundles' rule (ForegroundMaskd): sigmoid(logit) > threshold
    return foreground_mask(logits[0, 0], threshold).cpu().numpy()


def score_on_case_grid(
    pred: np.ndarray, sample: dict, probabilities: np.ndarray | None = None, threshold: float = 0.5
) -> dict | None:
    """:func:`~pam_monai.engines.case_metrics.score_case` of a :func:`predict_case` mask of a
    :class:`~pam_monai.engines.CaseDataset` sample: on the case's own grid (``label_full``: the
    lesion outside the crop counts), as the evaluation's ``metrics.csv`` scores it; None for a case
    without an annotated voxel. A resized own 2-D image (``restore`` ``"resize"``) is scored from the
    mask's ``probabilities`` resized to its pixels and cut there, as the evaluation cuts them (the
    0/1 mask resized would come back with the small grid's steps), cut at ``threshold``; without
    them, from the mask."""
    spacing = tuple(float(s) for s in sample["spacing"][: pred.ndim])
    label = sample["label"][0].numpy()
    if (
        probabilities is not None
        and sample.get("label_full") is not None
        and sample.get("restore") == "resize"
    ):
        pred = probabilities  # on_case_grid resizes them to label_full's pixels and cuts them
    return score_case(
        pred, label, sample.get("label_full"), sample.get("restore", "crop"), spacing, threshold=threshold
    )


def paper_protocol_rows(
    net: torch.nn.Module,
    dataset: CaseDataset,
    slice_batch_size: int = 32,
    device="cpu",
    threshold: float = 0.5,
) -> list[dict]:
    """Per test case: per-slice means with the project's definitions and with the authors' code's.

    ``iou`` .. ``fn_rate`` are the means over the case's axial slices (of the network's crop, as the
    paper evaluated) of the honest metrics (empty-mask rule included, HD95 in-plane in mm); ``authors_*`` are the authors' code's
    (defective) definitions, ``authors_hd95`` over its ``authors_hd95_slices`` eligible slices
    (empty when none); ``case_iou`` is the per-case 3-D IoU of the same prediction on the case's own
    grid (it equals the evaluator's ``metrics.csv`` value: a check that this is the bundle's prediction).
    A sparsely annotated case with no annotated voxel in the crop has no slice to score: no row
    (a WARNING names it), although ``metrics.csv`` scores it on its own grid. The masks are cut at
    ``threshold`` (the bundles' ``threshold``), as the evaluation's.
    """
    rows = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if "label" not in sample:
            raise ValueError(f"{sample['case']}: a test case without a label")
        pred = predict_case(
            net, sample["image"], slice_batch_size, device, dataset.spec.crop_size, threshold=threshold
        )
        label, annotated = split_ignored(sample["label"][0].numpy())  # sparse annotations: their voxels only
        if pred.ndim != 3:
            raise ValueError(
                "the paper protocol needs volumes (per-slice aggregation); 2-D images have one 'slice'"
            )
        spacing = tuple(float(s) for s in sample["spacing"][:3])
        case_scores = score_on_case_grid(pred, sample)
        if case_scores is None:
            log.warning("%s: no annotated voxel (all 'ignore'): not scored", sample["case"])
            continue
        if annotated is not None and not annotated.any():  # annotated outside the crop alone
            log.warning(
                "%s: no annotated voxel in the network's crop: no per-slice (paper protocol) row",
                sample["case"],
            )
            continue
        honest = paper_protocol_metrics(pred, label, axis=-1, spacing=spacing, annotated=annotated)
        # the authors' definitions over the annotated voxels and slices, as the honest ones above
        authors = authors_code_metrics(pred, label, axis=-1, annotated=annotated)
        rows.append(
            {
                "case": sample["case"],
                "slices": honest["count"],
                "target_empty_slices": honest["target_empty"],
                "pred_empty_slices": honest["pred_empty"],
                **{m: honest[m]["mean"] for m in ("iou", "dice", "hd95", "fp_rate", "fn_rate")},
                "authors_iou": authors["authors_code_iou"],
                "authors_hd95": authors["authors_code_hd95"],
                "authors_hd95_slices": authors["authors_code_hd95_slices"],
                "authors_fp_rate": authors["authors_code_fp_rate"],
                "authors_fn_rate": authors["authors_code_fn_rate"],
                "case_iou": case_scores["iou"],
            }
        )
    return rows


def write_paper_protocol(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    from .results import rows_csv

    return atomic_write_text(path, rows_csv(rows, PAPER_PROTOCOL_FIELDS))


def read_paper_protocol(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row: dict = {"case": r["case"]}
        for k in PAPER_PROTOCOL_FIELDS[1:]:
            if k.endswith("slices") or k == "slices":
                row[k] = int(r[k])
            else:
                row[k] = float(r[k]) if r[k] != "" else None
        out.append(row)
    return out


@torch.no_grad()
def attention_map(net: torch.nn.Module, image2d: torch.Tensor, block: str = "bridge") -> np.ndarray | None:
    """Channel-averaged attention map of ``net.<block>`` (an FPA / RFNA block) for one slice.

    The block's input is caught with a forward pre-hook during a normal forward pass; FPA's
    attention is computed from that input (``block.attention(x)``), RFNA's from its main branch's
    output (``block.attention(block.main(x))``), as in their ``forward``. Returns the map
    (``h x w`` at the block's resolution, values in (0, 1)) or None when the block has no
    ``attention`` method (a network without FPA / RFNA).
    """
    module = getattr(net, block, None)
    if module is None or not callable(getattr(module, "attention", None)):
        return None
    caught: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: caught.append(args[0]))
    try:
        net(image2d[None])
    finally:
        handle.remove()
    x = caught[0]
    from ..networks import RFNABlock

    a = module.attention(module.main(x)) if isinstance(module, RFNABlock) else module.attention(x)
    return a[0].mean(0).float().cpu().numpy()
