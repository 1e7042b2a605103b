"""Training batches: from a ``DataLoader``, or sampled on the device from samples held there.

:class:`~pam_monai.data.SliceDataset` does the per-volume work once (load, normalise, crop,
cache). What is left per step is picking slices and stacking them: a ``DataLoader`` does that
in Python per sample (about 3,000 slices/s on the H100 machine, as fast as the fastest training
step there), :class:`DeviceSliceLoader` with one ``index_select`` on the device (about 185,000
slices/s). :func:`slice_loader` picks between them: ``device_data="auto"`` (the bundles' default)
uses the device when it is a GPU and the samples take at most a quarter of its free memory.

Both serve the same batches in the same order when they share a sampler (the bundles pass a
``DistributedSampler``, one replica on one GPU, one shard per rank under ``torchrun``), so the
switch changes speed, not the run: ``tests/test_reliability.py`` trains with both and compares
the weights. :class:`LoaderEpoch` hands the epoch to the sampler of a device loader, as MONAI's
workflow does for a ``DataLoader``'s ``DistributedSampler`` (resume depends on it).

With ``drop_last`` (the bundles' default when the network is compiled) both drop an epoch's
incomplete last batch, so that the compiled step sees one batch shape (:func:`drops_last`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.slices import RANK_SEED_STRIDE, seed_worker_transform
from ..progress import progress_bar
from .flags import as_bool

__all__ = [
    "DeviceSliceLoader",
    "LoaderEpoch",
    "batch_samples",
    "device_data_bytes",
    "drops_last",
    "epoch_samples",
    "slice_loader",
]

log = logging.getLogger("pam_monai")

#: ``device_data="auto"`` holds the samples on a GPU when they take at most this share of its free memory.
DEVICE_DATA_FRACTION = 0.25


def _storage_dtype(dataset) -> torch.dtype:
    """The dataset's own image precision (``SliceDataset.cache_dtype``), so that holding the
    samples on the device loses nothing; float32 for datasets that do not say."""
    dtype = getattr(dataset, "cache_dtype", None)
    return torch.float16 if dtype is not None and np.dtype(dtype) == np.float16 else torch.float32


def device_data_bytes(dataset) -> int:
    """Bytes that :class:`DeviceSliceLoader` would hold for ``dataset`` (images and uint8 labels)."""
    first = dataset[0]
    per_sample = (
        first["image"].numel() * torch.finfo(_storage_dtype(dataset)).bits // 8 + first["label"].numel()
    )
    return len(dataset) * per_sample


class DeviceSliceLoader:
    """Random batches of a slice dataset, sampled from tensors held on the training device.

    Copies the dataset's samples to ``device`` once (images in the dataset's cache precision,
    float16 for :class:`~pam_monai.data.SliceDataset` by default; labels as ``uint8``) and then
    serves each batch with one ``index_select`` on the device: no per-sample Python, no worker
    processes, no host-to-device copy per step. The per-step augmentation (random flips) stays
    with :class:`~pam_monai.engines.FlipPrepareBatch`, on the same device.

    It iterates like a ``DataLoader`` (``len()`` batches per epoch, dict batches of ``float32``
    ``image`` / ``label``). The order of each epoch comes from ``sampler`` when one is given (the
    very order a ``DataLoader`` with that sampler would use; :meth:`set_epoch` is passed on to
    it), else from ``(seed, epoch)``; either way a resumed run can :meth:`set_epoch` and continue
    with the same order.

    Memory: ``samples x C x H x W x 2`` bytes for float16 images (BRATS: 205 kB per slice, about
    6 GB for every training slice of BraTS 2018 at the paper's background fraction).

    Args:
        dataset: a map-style dataset of ``{"image", "label"}`` tensors of fixed shapes.
        batch_size: samples per batch.
        device: where the samples live and the batches are made.
        shuffle: a new random order each epoch (else dataset order); without ``sampler`` only.
        drop_last: drop the last incomplete batch.
        seed: seed of the orders; without ``sampler`` only.
        image_dtype: storage dtype of the images on the device (default: the dataset's
            ``cache_dtype`` when it has one, else float32).
        chunk: samples gathered per host-to-device copy while filling.
        sampler: a sampler of dataset indices (e.g. ``DistributedSampler``) that sets the order.

    Example::

        >>> data = [{"image": torch.full((1, 2, 2), float(i)), "label": torch.zeros(1, 2, 2)} for i in range(5)]
        >>> loader = DeviceSliceLoader(data, batch_size=2, shuffle=False)
        >>> [b["image"][:, 0, 0, 0].tolist() for b in loader]
        [[0.0, 1.0], [2.0, 3.0], [4.0]]
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        image_dtype: torch.dtype | None = None,
        chunk: int = 512,
        sampler: Sampler | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if getattr(dataset, "transform", None) is not None:  # it copies each sample once
            raise ValueError(
                "DeviceSliceLoader: the dataset has a per-sample transform, which a device loader would apply "
                "once, when it copies the samples, not at each step: use a DataLoader (the bundles' "
                "device_data false)"
            )
        n = len(dataset)
        if n == 0:
            raise ValueError("DeviceSliceLoader: the dataset is empty")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = as_bool(shuffle)
        self.drop_last = as_bool(drop_last)
        self.seed = int(seed)
        self.sampler = sampler
        self.epoch = 0
        self.dataset = dataset  # the host samples' names (batch_samples), not their data
        first = dataset[0]
        dtype = image_dtype or _storage_dtype(dataset)
        self.images = torch.empty((n, *first["image"].shape), dtype=dtype, device=self.device)
        self.labels = torch.empty((n, *first["label"].shape), dtype=torch.uint8, device=self.device)
        # chunks of samples, one stacked copy each; a bar when it takes a while (BraTS: ~20k slices)
        with progress_bar(
            total=n, desc=f"samples to {self.device}", unit="slice", disable=n < 4 * chunk
        ) as bar:
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                samples = [dataset[i] for i in range(start, stop)]
                self.images[start:stop].copy_(torch.stack([s["image"] for s in samples]))
                self.labels[start:stop].copy_(torch.stack([s["label"] for s in samples]))
                bar.update(stop - start)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        """Device memory held by the samples."""
        return self.images.nbytes + self.labels.nbytes

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` on the next iteration (exact resume); passed on to the sampler."""
        self.epoch = int(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (on the device); the sampler's current order if there is one."""
        if self.sampler is not None:
            return torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)
        n = self.num_samples
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g).to(self.device)

    def __iter__(self):
        order = self.order(self.epoch)
        if self.sampler is None:
            self.epoch += 1  # a sampler's epoch is set from outside, as for a DataLoader
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield {
                "image": self.images.index_select(0, idx).float(),
                "label": self.labels.index_select(0, idx).float(),
            }


def slice_loader(
    dataset,
    batch_size: int,
    device: str | torch.device = "cpu",
    device_data: bool | str = "auto",
    sampler: Sampler | None = None,
    num_workers: int = 0,
    seed: int = 0,
    max_fraction: float = DEVICE_DATA_FRACTION,
    drop_last: bool | str = False,
):
    """The training loader: :class:`DeviceSliceLoader` or a ``DataLoader``, in the same order.

    Args:
        dataset: the training dataset (``{"image", "label"}`` samples of fixed shapes).
        batch_size: samples per batch.
        device: the training device.
        device_data: ``"auto"`` (on a GPU when the samples take at most ``max_fraction`` of its
            free memory), ``true`` (always on ``device``, a CPU too) or ``false`` (a ``DataLoader``).
        sampler: the order of the samples, shared by both loaders (else a seeded shuffle each epoch).
        num_workers: ``DataLoader`` worker processes.
        seed: seed of the shuffle without a sampler (and of the DataLoader's generator).
        max_fraction: share of the GPU's free memory that ``"auto"`` may use.
        drop_last: drop each epoch's incomplete last batch (the bundles do when compiled: one
            batch shape, one compiled graph), unless it is the only batch (:func:`drops_last`).

    Returns:
        A loader for the trainer (``len()`` batches per epoch).
    """
    device = torch.device(device)
    drop_last = drops_last(len(sampler) if sampler is not None else len(dataset), batch_size, drop_last)
    choice = str(device_data).strip().lower()
    transformed = getattr(dataset, "transform", None) is not None
    if transformed and choice != "auto" and as_bool(device_data):
        raise ValueError(
            "device_data true: the training samples have a per-sample transform (the bundles' train_transforms), "
            "which runs as a DataLoader serves each sample; the device loader copies the samples once. Use "
            "device_data auto or false"
        )
    rank = int(getattr(sampler, "rank", 0) or 0)  # torchrun: each rank its own augmentation draws
    if transformed:
        use_device, why = False, "a per-sample transform (train_transforms)"
        if rank and hasattr(dataset, "set_rank"):
            dataset.set_rank(rank)
    elif choice == "auto":
        use_device, why = _fits_on_device(dataset, device, max_fraction)
    else:
        use_device, why = as_bool(device_data), f"device_data={device_data}"
    if use_device:
        try:
            loader = DeviceSliceLoader(
                dataset, batch_size, device=device, seed=seed, sampler=sampler, drop_last=drop_last
            )
        except torch.cuda.OutOfMemoryError as e:  # torch.OutOfMemoryError is 2.5's name (the same class)
            need = device_data_bytes(dataset) / 1e9
            raise RuntimeError(
                f"device_data: the {len(dataset)} training samples ({need:.2f} GB) do not fit on {device}; "
                "use device_data=auto or false (a DataLoader)"
            ) from e
        log.info("training samples held on %s: %.2f GB (%s)", device, loader.nbytes / 1e9, why)
        return loader
    log.info("training samples loaded by a DataLoader with %d workers (%s)", int(num_workers), why)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=sampler is None,
        drop_last=drop_last,
        num_workers=int(num_workers),
        pin_memory=device.type == "cuda",
        # a transformed dataset's workers are made anew each epoch, to seed their draws by it
        # (seed_worker_transform: a resumed run draws as the uninterrupted one)
        persistent_workers=int(num_workers) > 0 and not transformed,
        generator=torch.Generator().manual_seed(int(seed) + (RANK_SEED_STRIDE * rank if transformed else 0)),
        worker_init_fn=seed_worker_transform if transformed and int(num_workers) > 0 else None,
    )


def drops_last(samples: int, batch_size: int, drop_last: bool | str) -> bool:
    """Whether an epoch of ``samples`` (a rank's shard under ``torchrun``) drops its incomplete last
    batch: with ``drop_last``, unless that batch is the epoch's only one (fewer samples than
    ``batch_size``), so that a small data set still trains, at one batch shape all the same.

    Dropping loses no slice for good: the order is shuffled anew each epoch (the sampler's
    ``set_epoch``), so each epoch leaves out other slices.
    """
    if not as_bool(drop_last):
        return False
    if samples < batch_size:
        log.info(
            "drop_last: the %d training samples per epoch are fewer than batch_size %d: they are kept, as "
            "the epoch's one batch",
            samples,
            batch_size,
        )
        return False
    return True


def epoch_samples(loader) -> int | None:
    """Samples in one epoch of ``loader`` (this rank's shard under ``torchrun``) before batching,
    the incomplete last batch included; None for a loader that does not say."""
    sampler = getattr(loader, "sampler", None)
    source = sampler if sampler is not None else getattr(loader, "dataset", None)
    return len(source) if hasattr(source, "__len__") else None


def batch_samples(loader, batch: int) -> list[str] | None:
    """The samples of batch ``batch`` (1-based) of ``loader``'s current epoch, named by the
    dataset's ``slice_info`` (``"Brats18_2013_2_1 slice 77"``), or None when that cannot be told.

    Worked out afterwards from the sampler's order, which a ``DistributedSampler`` (the bundles')
    or a sequential order fixes for the epoch: nothing is recorded per step, so a training that
    stops on a non-finite loss can name the slices that produced it at no cost to the others. A
    ``DataLoader`` shuffling with its own generator has moved on: None.
    """
    dataset = getattr(loader, "dataset", None)
    sampler = getattr(loader, "sampler", None)
    info = getattr(dataset, "slice_info", None)
    size = getattr(loader, "batch_size", None)
    if info is None or not size or batch < 1:
        return None
    if sampler is not None and (
        isinstance(sampler, torch.utils.data.SequentialSampler) or hasattr(sampler, "set_epoch")
    ):
        order = [int(i) for i in sampler]
    elif isinstance(loader, DeviceSliceLoader) and sampler is None:
        # without a sampler its epoch counter moved on when the epoch's iteration began
        order = loader.order(loader.epoch - 1).tolist()
    else:
        return None
    picked = order[(batch - 1) * size : batch * size]
    return [f"{case} slice {z}" for case, z in map(info, picked)] or None


def _fits_on_device(dataset, device: torch.device, max_fraction: float) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, f"device_data=auto on {device.type}"
    need = device_data_bytes(dataset)
    free, _ = torch.cuda.mem_get_info(device)
    share = need / max(free, 1)
    return (
        share <= max_fraction,
        f"device_data=auto: {share:.0%} of the free GPU memory, limit {max_fraction:.0%}",
    )


class LoaderEpoch:
    """Ignite handler: at each epoch start, ``loader.set_epoch(engine.state.epoch)`` for a loader
    that is not a ``DataLoader`` (MONAI's workflow already does this for a ``DataLoader``'s
    ``DistributedSampler``), so a device loader's order follows the epoch, resumed runs too; for a
    ``DataLoader`` whose dataset has a per-sample transform (``train_transforms``), the dataset's
    ``set_epoch``, so that its augmentation draws follow the epoch too.

    Args:
        loader: the trainer's loader (a ``DataLoader`` of an untransformed dataset makes this
            handler do nothing).
    """

    def __init__(self, loader) -> None:
        self.loader = loader

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self._target() is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def _target(self):
        """What follows the epoch: a device loader, or a DataLoader's dataset with a per-sample
        transform (its draws; :meth:`pam_monai.data.SliceDataset.set_epoch`)."""
        if not isinstance(self.loader, DataLoader):
            return self.loader if hasattr(self.loader, "set_epoch") else None
        dataset = self.loader.dataset
        return (
            dataset
            if getattr(dataset, "transform", None) is not None and hasattr(dataset, "set_epoch")
            else None
        )

    def __call__(self, engine) -> None:
        self._target().set_epoch(engine.state.epoch)
