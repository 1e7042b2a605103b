"""Run set-up: seeds, the deterministic mode and the GPU fast path.

The fast path (``fast: true`` in the bundles, the default where a GPU is present) is: cuDNN
benchmark and TF32 (:func:`setup_run`), bf16 autocast and ``torch.compile`` (the trainer's ``amp``
and ``compile``), fused AdamW, channels-last tensors and the fusible instance norm
(:func:`fast_network`), and batches sampled from tensors already on the device
(:class:`DeviceSliceLoader`). ``tests/test_fast_path.py`` checks that it computes the same function
as the plain fp32 path; ``python -m pam_monai bench`` measures it."""

from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

__all__ = ["DeviceSliceLoader", "as_bool", "fast_network", "setup_run", "use_fast_norm"]

log = logging.getLogger("pam_monai")


def as_bool(value) -> bool:
    """A command-line flag as a bool: ``--resume true`` arrives as the string "true" (Fire parses
    only ``True``/``False``), and a plain ``bool("false")`` would be True."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean flag: {value!r} (use true or false)")
    return bool(value)


def setup_run(seed: int = 0, deterministic: bool = False, fast: bool = False) -> None:
    """Seed every RNG; optionally make the run bit-reproducible; switch on the fast path's flags.

    Args:
        seed: seed of torch, NumPy and Python's ``random``.
        deterministic: the documented deterministic mode: deterministic algorithms only
            (``torch.use_deterministic_algorithms``), cuDNN benchmark off, one intra-op thread on
            the CPU, so that two runs with the same seed give the same weights.
        fast: cuDNN benchmark and TF32 matmuls (GPU only; ignored with ``deterministic``).
    """
    from monai.utils import set_determinism

    deterministic, fast = as_bool(deterministic), as_bool(fast)
    set_determinism(seed=seed, use_deterministic_algorithms=deterministic or None)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.set_num_threads(1)
        log.info("deterministic mode: seed %d, deterministic algorithms, 1 CPU thread", seed)
    elif fast and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def use_fast_norm(network: nn.Module) -> nn.Module:
    """Replace every ``nn.InstanceNorm{1,2,3}d`` without running statistics by the
    :class:`~pam_monai.networks.blocks.norm.FastInstanceNorm` of the same size, in place.

    The same function (instance normalisation), the same ``weight`` / ``bias`` parameter objects
    (so an optimizer built before or after still holds them), the same state dict; only the
    implementation changes (one that ``torch.compile`` fuses with the ReLU that follows and that
    keeps channels-last / bf16 tensors as they are). Returns ``network``.

    Example::

        >>> from pam_monai.networks import get_network
        >>> net = use_fast_norm(get_network("fpa"))
    """
    from ..networks.blocks.norm import FastInstanceNorm1d, FastInstanceNorm2d, FastInstanceNorm3d

    kinds = {
        nn.InstanceNorm1d: FastInstanceNorm1d,
        nn.InstanceNorm2d: FastInstanceNorm2d,
        nn.InstanceNorm3d: FastInstanceNorm3d,
    }
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            fast_cls = kinds.get(type(child))
            if fast_cls is None or child.track_running_stats:
                continue
            fast = fast_cls(child.num_features, eps=child.eps, affine=False)
            fast.affine = child.affine
            if child.affine:
                fast.weight, fast.bias = child.weight, child.bias  # the same Parameter objects
            fast.train(child.training)
            setattr(parent, name, fast)
    return network


def fast_network(network: nn.Module, channels_last: bool = False, fast_norm: bool = False) -> nn.Module:
    """The network on the fast path: channels-last parameters for 2-D convolutions and/or the
    fusible instance norm (:func:`use_fast_norm`). Both keep the function and the state dict.

    Args:
        network: a network (already on its device).
        channels_last: convert to ``torch.channels_last`` (for GPUs; slower on CPUs).
        fast_norm: swap ``nn.InstanceNorm`` for :class:`~pam_monai.networks.blocks.norm.FastInstanceNorm`.
    """
    if as_bool(fast_norm):
        network = use_fast_norm(network)
    if as_bool(channels_last):
        network = network.to(memory_format=torch.channels_last)
    return network


class DeviceSliceLoader:
    """Random batches of a slice dataset, sampled from tensors held on the training device.

    :class:`~pam_monai.data.SliceDataset` already does the per-volume work once (load,
    normalise, crop, cache); this copies its samples to ``device`` once (images as ``float16``,
    which is the dataset's cache precision, labels as ``uint8``) and then serves each batch with one
    ``index_select`` on the device: no per-sample Python, no worker processes, no host-to-device
    copy per step. The per-step augmentation (random flips) stays with
    :class:`~pam_monai.engines.FlipPrepareBatch`, on the same device.

    It iterates like a ``DataLoader`` (``len()`` batches per epoch, dict batches of ``float32``
    ``image`` / ``label``). Each epoch's order is drawn from ``(seed, epoch)``, so a resumed run can
    :meth:`set_epoch` and continue with the same order.

    Memory: ``samples x C x H x W x 2`` bytes for the images (BRATS: 205 kB per slice, about 6 GB
    for every training slice of BraTS 2018 at the paper's background fraction).

    Args:
        dataset: a map-style dataset of ``{"image", "label"}`` tensors of fixed shapes.
        batch_size: samples per batch.
        device: where the samples live and the batches are made.
        shuffle: a new random order each epoch (else dataset order).
        drop_last: drop the last incomplete batch.
        seed: seed of the orders.
        image_dtype: storage dtype of the images on the device.
        chunk: samples gathered per host-to-device copy while filling.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        image_dtype: torch.dtype = torch.float16,
        chunk: int = 512,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(dataset)
        if n == 0:
            raise ValueError("DeviceSliceLoader: the dataset is empty")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = as_bool(shuffle)
        self.drop_last = as_bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        first = dataset[0]
        self.images = torch.empty((n, *first["image"].shape), dtype=image_dtype, device=self.device)
        self.labels = torch.empty((n, *first["label"].shape), dtype=torch.uint8, device=self.device)
        for start in range(0, n, chunk):  # chunks of samples, one stacked copy each
            stop = min(n, start + chunk)
            samples = [dataset[i] for i in range(start, stop)]
            self.images[start:stop].copy_(torch.stack([s["image"] for s in samples]), non_blocking=False)
            self.labels[start:stop].copy_(torch.stack([s["label"] for s in samples]), non_blocking=False)

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next iteration (exact resume)."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (on the device)."""
        n = self.num_samples
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g).to(self.device)

    def __iter__(self):
        order = self.order(self.epoch)
        self.epoch += 1
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield {
                "image": self.images.index_select(0, idx).float(),
                "label": self.labels.index_select(0, idx).float(),
            }
