"""Per-step batch work, done on batched tensors on the training device (not per sample on the CPU)."""

from __future__ import annotations

import torch
from monai.engines import PrepareBatch

from ..data import random_flip_batch
from .flags import as_bool

__all__ = ["FlipPrepareBatch"]


class FlipPrepareBatch(PrepareBatch):
    """Move a ``{"image", "label"}`` batch to the device, then flip random samples left-right.

    The paper's only augmentation is a random horizontal flip; doing it here, once per batch on
    the device, costs a fraction of a per-sample MONAI transform on the CPU.

    Args:
        prob: probability of flipping each sample (0 disables flipping; evaluation uses 0).
        spatial_axis: the tensor axis that a left-right flip reverses (the data set spec's
            ``flip_axis``: -2 for BRATS / ISLES, -1 for CityScapes).
        channels_last: convert the image to ``torch.channels_last`` (fast path on GPUs).
    """

    def __init__(self, prob: float = 0.5, spatial_axis: int = -1, channels_last: bool = False) -> None:
        self.prob = float(prob)
        self.spatial_axis = int(spatial_axis)
        self.channels_last = as_bool(channels_last)

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata["image"].to(device=device, non_blocking=non_blocking)
        label = batchdata["label"].to(device=device, non_blocking=non_blocking)
        if self.prob > 0:
            flipped = random_flip_batch({"image": image, "label": label}, self.prob, self.spatial_axis)
            image, label = flipped["image"], flipped["label"]
        if self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, label
