"""2-D training samples from 3-D volumes, preprocessed once and cached.

:class:`SliceDataset` preprocesses every case exactly once (:func:`~.preprocess.preprocess_case`:
load, non-zero z-score per channel, centre crop, binary label), keeps the result in a
slice-major layout (``D x C x h x w`` image, ``D x 1 x h x w`` uint8 label) and serves axial slices
by indexing it. ``__getitem__`` is an array slice and a dtype conversion, nothing more: per-slice
MONAI transform chains cost ~6 ms per slice and cannot feed a GPU.

With ``cache_dir`` the preprocessed volumes are written as ``.npy`` files (temporary file, then
``os.replace``) and memory-mapped: a second run, and every DataLoader worker, reads them from the
OS page cache instead of recomputing or copying them. Without it they stay in memory (moved to
shared memory when DataLoader workers are spawned, so that they are not copied into each). Under
``torch.distributed`` (torchrun) rank 0 writes the cache while the other ranks wait, then they map
its files (so every rank must make the dataset, as the bundles' multi_gpu_train.json does).

Which slices: every slice with foreground plus a seeded ``keep_background_fraction`` of the
others, drawn per case (the authors kept all enhancing-tumour slices and half of the rest).
Slices without an annotated voxel (own data with an ``ignore`` label) teach nothing and are left out.
:meth:`SliceDataset.resample` draws another background subset, e.g. per epoch.
CityScapes frames are single-slice "volumes"; all of them are kept.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import multiprocessing.context
import os
import threading
import warnings
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions of tensors)

from ..atomic import WRITE_DENIED, remove_orphaned_temps
from ..progress import progress_bar
from ..ranks import rank0_first
from .files import save_atomic_npy
from .ops import IGNORE
from .preprocess import preprocess_case
from .specs import DatasetSpec, get_spec

__all__ = ["CACHE_VERSION", "SliceDataset", "seed_worker_transform", "transform_seed"]

log = logging.getLogger("pam_monai")

CACHE_VERSION = 1  # bump when preprocessing changes, to invalidate old cache files
_PARTS = ("image", "label", "fg")  # cache files per case; "fg" (per-slice foreground counts) is written last


# numpy reads a .npy header with ast.literal_eval, and CPython 3.11's AST builder keeps its recursion
# depth in state the preparing threads share: two threads parsing at once could raise a rare
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905), seen in CI
_NPY_HEADER_LOCK = threading.Lock()


def _open_cached(path: str | os.PathLike) -> np.ndarray:
    """A cache file, memory-mapped (its header parsed by one thread at a time)."""
    with _NPY_HEADER_LOCK:
        return np.load(path, mmap_mode="r")


def _open_all_cached(paths: dict[str, Path]) -> tuple[np.ndarray, ...] | None:
    """The cache files of a volume, memory-mapped; None when one is missing, or unreadable: cut
    short by a crash after its rename, before its data reached the disk (the writes are atomic for
    a killed process, not for a lost page cache), it is then written again (a warning names it)."""
    if not all(p.is_file() for p in paths.values()):
        return None
    opened = []
    for part in _PARTS:
        try:
            opened.append(_open_cached(paths[part]))
        except (ValueError, EOFError) as e:  # numpy's for a truncated or empty .npy
            log.warning(
                "%s: unreadable cache file (%s), cut short by a crash?; preparing the volume again",
                paths[part],
                e,
            )
            return None
    return tuple(opened)


# files the rest of the process may hold open beside the memory-mapped cache (libraries, logs,
# DataLoader pipes, checkpoints): room left when the limit is raised for the cache
_SPARE_OPEN_FILES = 256


def _allow_open_files(mapped: int, where: str) -> None:
    """Let this process hold ``mapped`` memory-mapped files open at once.

    Python's ``mmap`` keeps a duplicate of the file's descriptor while the map lives (before 3.13
    unconditionally), so every cache file counts against ``ulimit -n``: 3 per case, and the soft
    limit is often 1024 (macOS: 256), which a BraTS 2019+ training set (335 cases and more) passed
    with ``OSError: [Errno 24] Too many open files`` in numpy's memmap. The soft limit is raised
    towards the hard one (as far as needed); a hard limit too low is refused before any work."""
    try:
        import resource
    except ImportError:  # Windows: file mappings hold handles, not C descriptors
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = mapped + _SPARE_OPEN_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if limit > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            log.info(
                "raised the open-file limit from %d to %d for %d memory-mapped cache files",
                soft,
                limit,
                mapped,
            )
        except (ValueError, OSError):  # e.g. macOS beyond OPEN_MAX: below, if too few
            limit = soft
    if limit < wanted:
        raise OSError(
            errno.EMFILE,
            f"{where}: the slice cache memory-maps {mapped} files, each held open, but this process may open only "
            f"{limit} files (ulimit -n; hard limit {hard}): raise the hard limit to {wanted} or more (e.g. "
            f"`ulimit -Hn {wanted}` as root, or nofile in /etc/security/limits.conf), or train on fewer cases",
        )


def _item_files(item: dict) -> list[str]:
    images = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
    return [*map(str, images), str(item["label"])]


def _share(arrays: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, tuple[int, ...]]]]:
    """The arrays copied into one flat shared-memory tensor, and each one's (offset, shape) in it;
    each list entry is replaced by its view as soon as it is copied, so the peak is one case above
    the volumes themselves.

    One buffer per part, not one per case: every shared CPU storage holds a file descriptor (torch's
    default ``file_descriptor`` strategy on Linux), which hundreds of cases would spend."""
    dtype = torch.from_numpy(np.empty(0, arrays[0].dtype if arrays else np.float32)).dtype
    flat = torch.empty(sum(a.size for a in arrays), dtype=dtype)
    try:
        flat.share_memory_()
    except RuntimeError as e:  # torch names its /dev/shm file, not the way out
        if "shared memory" not in str(e):
            raise
        raise OSError(
            errno.ENOSPC,
            f"SliceDataset: spawned DataLoader workers share the in-memory volumes through shared memory, "
            f"which cannot hold {flat.nbytes / 2**20:.0f} MiB more ({e}): pass cache_dir (--cache_dir DIR) "
            "to memory-map them from disk, give /dev/shm more room (Docker: --shm-size), or use num_workers=0",
        ) from e
    layout, offset = [], 0
    for i, a in enumerate(arrays):
        flat[offset : offset + a.size] = torch.from_numpy(np.ascontiguousarray(a).reshape(-1))
        layout.append((offset, tuple(a.shape)))
        offset += a.size
        arrays[i] = _shared_views(flat, layout[-1:])[0]
    return flat, layout


def _shared_views(flat: torch.Tensor, layout: Sequence[tuple[int, tuple[int, ...]]]) -> list[np.ndarray]:
    """Numpy views of the arrays :func:`_share` put in ``flat``."""
    values = flat.numpy()
    return [values[offset : offset + int(np.prod(shape))].reshape(shape) for offset, shape in layout]


def data_argument(data: Sequence[dict] | None, items: Sequence[dict] | None, who: str) -> Sequence[dict]:
    """The entries given as ``data`` or, with a FutureWarning, by the argument's former name
    ``items`` (bundles written before the rename say ``train#dataset#items``: they still run)."""
    if items is not None and data is not None:
        raise TypeError(f"{who}: give the entries as data, not also as items (its former name)")
    if items is not None:
        warnings.warn(
            f"{who}: items= is now data= (as MONAI's datasets name it); a bundle written before says "
            "#dataset#items in configs/train.json: rename it #dataset#data, or write the bundle again",
            FutureWarning,
            stacklevel=3,
        )
        return items
    if data is None:
        raise TypeError(f"{who}: missing the datalist entries (data)")
    return data


def _plain_float32(x) -> torch.Tensor:
    """A transform's output as a plain float32 tensor (a MetaTensor's data, a numpy array's)."""
    t = (
        x.as_tensor()
        if hasattr(x, "as_tensor")
        else torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    )
    return t.to(torch.float32)


RANK_SEED_STRIDE = 1_000_003  # a rank's augmentation seeds: seed + stride x rank (no rank repeats another's)


def transform_seed(base: int, epoch: int, worker: int) -> int:
    """The seed of a per-sample transform's random state in ``epoch`` (``worker`` 0: the main
    process, ``k + 1``: DataLoader worker ``k``): a function of the three alone, so that a resumed
    run draws what the uninterrupted one drew from its epoch on."""
    return int(np.random.SeedSequence([int(base) % 2**63, int(epoch), int(worker)]).generate_state(1)[0])


def seed_worker_transform(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: seed the worker's copy of its dataset's ``transform``, so
    that workers draw different augmentations (each worker otherwise starts from the main process's
    copy, and all of them draw the same values). With the dataset's epoch set
    (:meth:`SliceDataset.set_epoch`; the bundles' :class:`~pam_monai.engines.LoaderEpoch`, workers
    made anew each epoch) the seed is :func:`transform_seed` of its rank's seed, the epoch and the
    worker: a resumed run draws as the uninterrupted one. Else it is the worker's own seed
    (the loader's generator and the worker's number): the same run after run, not on a resume."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset if info is not None else None
    transform = getattr(dataset, "transform", None)
    if not hasattr(transform, "set_random_state"):
        return
    epoch = getattr(dataset, "epoch", None)
    if epoch is None:
        transform.set_random_state(seed=info.seed % 2**32)
    else:
        transform.set_random_state(seed=transform_seed(dataset.rank_seed, epoch, worker_id + 1))


def _background_share(value) -> float:
    """``keep_background_fraction`` as a float in [0, 1]; else a ``ValueError`` naming the bundles'
    override, as the other refused values do."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = None
    if share is None or not 0.0 <= share <= 1.0 or isinstance(value, bool):
        raise ValueError(
            f"--keep_background_fraction {value!r}: not a share in [0, 1] (of the slices without foreground "
            "kept); pass e.g. --keep_background_fraction 0.5"
        )
    return share


class SliceDataset(torch.utils.data.Dataset):
    """Axial 2-D slices (or CityScapes frames) as ``{"image": C x H x W float32, "label":
    1 x H x W float32 in {0, 1} (and ``IGNORE`` on unannotated voxels)}`` tensors in the paper's shapes (BRATS 4 x 160 x 160, ISLES
    4 x 224 x 224, CityScapes 3 x 128 x 256).

    Args:
        data: datalist entries with absolute (or working-folder relative) ``image`` and
            ``label`` paths, e.g. from :func:`~pam_monai.data.get_split` with ``root=`` (named as
            MONAI's datasets name it: the bundles' ``train#dataset#data``).
        dataset: "brats", "isles" or "cityscapes".
        cache_dir: where to keep the preprocessed volumes as ``.npy`` (in a ``<dataset>``
            sub-folder); None keeps them in memory only.
        keep_background_fraction: share of slices without foreground to keep (all foreground
            slices are always kept); 1.0 keeps every slice. Volumes only.
        seed: seed of the background-slice draw.
        foreground_label: BRATS enhancing-tumour label, 4 (2018, default) or 3 (BraTS 2021+).
        cache_dtype: dtype of the cached images: float16 halves memory and disk; the z-scores
            lose nothing that matters for training (relative error < 5e-4). float32 gives exactly
            :func:`~pam_monai.data.preprocess_case`'s values. None (default): float16, unless a
            channel keeps its stored values (``"noNorm"``: any range, which float16 would round
            or turn into inf above 65504), then float32.
        num_workers: threads preprocessing cases in parallel (decompression and numpy release
            the GIL); None = up to 4, as many as CPU cores.
        progress: show a tqdm progress bar while preparing the cases.
        transform: a callable applied to each sample dict as it is served (MONAI dictionary
            transforms on the keys ``image`` and ``label``, e.g. ``RandGaussianNoised``): per-step
            augmentation after the cached preprocessing (the bundles' ``train_transforms``). It must
            return one sample dict of the slice's shapes (batches are stacked) and a label that stays
            0/1 (nearest interpolation); a sample that does not is refused, naming its slice. Its
            random state is seeded by ``seed`` here, by :meth:`set_epoch` at each epoch and, in
            each ``DataLoader`` worker, by :func:`seed_worker_transform`
            (:func:`~pam_monai.engines.slice_loader` passes it). MetaTensors come back as plain
            float32 tensors.

    Example::

        >>> from monai.transforms import RandScaleIntensityd
        >>> import tempfile
        >>> from pam_monai.data import discover_cases, synth
        >>> root = synth("brats", tempfile.mkdtemp(), cases=1, slices=8)
        >>> cases = discover_cases("brats", root)
        >>> ds = SliceDataset(cases, "brats", progress=False,
        ...                   transform=RandScaleIntensityd("image", factors=0.1, prob=1.0))
        >>> ds[0]["image"].shape, type(ds[0]["image"]).__name__
        (torch.Size([4, 160, 160]), 'Tensor')
    """

    def __init__(
        self,
        data: Sequence[dict] | None = None,
        dataset: str | DatasetSpec = "brats",
        cache_dir: str | os.PathLike | None = None,
        keep_background_fraction: float = 0.5,
        seed: int = 0,
        foreground_label: int | Sequence[int] | None = None,
        cache_dtype: str | np.dtype | None = None,
        num_workers: int | None = None,
        progress: bool = True,
        items: Sequence[dict] | None = None,
        transform=None,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(
                f"{type(self).__name__}: transform must be callable (a MONAI transform), got {transform!r}"
            )
        self.transform = transform
        self.transform_seed = int(seed)
        self.transform_rank = 0  # torchrun: slice_loader sets the rank, each rank its own draws
        self.epoch: int | None = None  # set_epoch: the transform's draws follow the epoch
        self._seed_transform()
        self.spec = get_spec(dataset)
        self.items = [dict(it) for it in data_argument(data, items, type(self).__name__)]
        keep_background_fraction = _background_share(keep_background_fraction)
        for it in self.items:
            if it.get("label") is None:
                raise ValueError(f"{it.get('case', it['image'])}: a training item needs a label")
        self.keep_background_fraction = keep_background_fraction
        self.foreground_labels, _ = self.spec.resolve_labels(foreground_label)
        if cache_dtype is None:
            stored = any(norm.scheme == "nonorm" for norm in self.spec.channel_norms)
            cache_dtype = "float32" if stored else "float16"
        self.cache_dtype = np.dtype(cache_dtype)
        if self.cache_dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"cache_dtype must be float16 or float32, got {cache_dtype}")
        self.cache_dir = Path(cache_dir) / self.spec.name if cache_dir is not None else None
        self.cases = [str(it.get("case", Path(_item_files(it)[0]).name)) for it in self.items]
        workers = min(4, os.cpu_count() or 1) if num_workers is None else max(int(num_workers), 1)
        prepare = functools.partial(self._prepare_all, workers, progress)
        # torchrun: rank 0 writes the cache while the others wait, then they map its files
        volumes = rank0_first(prepare) if self.cache_dir is not None else prepare()
        self._images = [v[0] for v in volumes]
        self._labels = [v[1] for v in volumes]
        self._shared = None  # in-memory volumes moved to shared memory for spawned workers
        self.foreground_per_slice = [np.asarray(v[2]) for v in volumes]
        # slices with an annotated voxel (all, unless the data set marks unannotated voxels)
        self.annotated_per_slice = [
            np.ones(len(fg), bool)
            if self.spec.ignore_label is None
            else (np.asarray(lab).reshape(len(fg), -1) != IGNORE).any(1)
            for lab, fg in zip(self._labels, self.foreground_per_slice)
        ]
        self._check_foreground()
        self.resample(seed)

    def _check_foreground(self) -> None:
        """Refuse a training set without any foreground voxel: a label convention that does not
        match (BraTS 2021+ labels the enhancing tumour 3, not 4; a mask saved as 0/255 through a
        datalist) would otherwise train on empty targets without a word."""
        empty = [c for c, fg in zip(self.cases, self.foreground_per_slice) if int(fg.sum()) == 0]
        if self.cases and len(empty) == len(self.cases):
            if self.spec.name == "nnunet":  # own data: its dataset.json names the labels
                advice = (
                    "the bundles' --foreground_label takes the values or names of dataset.json's labels"
                    + (
                        "; small foreground may vanish in the resize: a larger --crop_size keeps it"
                        if not self.spec.volumetric
                        else ""
                    )
                )
            else:
                advice = (
                    "the bundles' --foreground_label; BraTS 2021+ labels the enhancing tumour 3; a binary 0/1 mask "
                    "belongs in the ISLES layout, see the README"
                )
            raise ValueError(
                f"{self.spec.name}: none of the {len(self.cases)} training cases has a voxel of foreground label(s) "
                f"{list(self.foreground_labels)} inside the preprocessed grid (e.g. {', '.join(empty[:3])}); check the "
                f"label convention ({advice}) and the label files (`python -m pam_monai check`)"
            )
        if empty:
            log.warning(
                "%s: %d of %d training cases have no foreground (%s%s)",
                self.spec.name,
                len(empty),
                len(self.cases),
                ", ".join(empty[:5]),
                ", ..." if len(empty) > 5 else "",
            )

    # ------------------------------------------------------------------ cache
    def cache_paths(self, item: dict) -> dict[str, Path] | None:
        """The cache files of one item (None without ``cache_dir``). Their names hold a hash of
        the input files (path, size, modification time) and of the preprocessing settings."""
        if self.cache_dir is None:
            return None
        files = _item_files(item)
        stamp = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        key = {
            "version": CACHE_VERSION,
            "dataset": self.spec.name,
            "files": stamp,
            "foreground": list(self.foreground_labels),
            "size": list(self.spec.spatial_size),
            "dtype": self.cache_dtype.str,
        }
        if self.spec.ignore_label is not None:  # (absent otherwise: earlier caches stay valid)
            key["ignore"] = self.spec.ignore_label
        if self.spec.normalization:  # own data's schemes and CT statistics (absent: the z-score)
            key["normalization"] = [list(n) for n in self.spec.normalization]
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        case = "".join(
            ch if ch.isalnum() or ch in "._-" else "_" for ch in str(item.get("case", Path(files[0]).name))
        )
        return {part: self.cache_dir / f"{case}-{digest}.{part}.npy" for part in _PARTS}

    def _prepare_all(self, workers: int, progress: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self.cache_dir is not None:  # a killed preparation's half-written volumes (large)
            _allow_open_files(len(_PARTS) * len(self.items), str(self.cache_dir))
            for path in remove_orphaned_temps(self.cache_dir):
                log.info("removed %s, left by a killed writer", path)
        bar = progress_bar(
            total=len(self.items),
            desc=f"{self.spec.name}: preparing volumes",
            unit="case",
            disable=not progress,
        )
        with ThreadPoolExecutor(max_workers=workers) as pool:
            volumes = []
            for volume in pool.map(self._prepare, self.items):
                volumes.append(volume)
                bar.update()
        bar.close()
        return volumes

    def _prepare(self, item: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        paths = self.cache_paths(item)
        cached = _open_all_cached(paths) if paths is not None else None
        if cached is not None:
            return cached
        case = preprocess_case(self.spec, item, self.foreground_labels)
        image, label = case["image"], case["label"]
        if self.spec.volumetric:  # C x h x w x D -> D x C x h x w: one slice is one contiguous block
            image, label = np.moveaxis(image, -1, 0), np.moveaxis(label, -1, 0)
        else:
            image, label = image[None], label[None]
        if self.cache_dtype == np.float16 and image.size:
            peak = float(np.nanmax(np.abs(image)))
            if peak > float(np.finfo(np.float16).max):  # would be cached as inf, silently
                raise ValueError(
                    f"{_item_files(item)[0]}: preprocessed intensities reach {peak:g}, beyond float16's range "
                    f"(65504), so the float16 slice cache would hold inf; normalise the channel (e.g. not "
                    f"'noNorm') or pass cache_dtype='float32'"
                )
        image = np.ascontiguousarray(image, dtype=self.cache_dtype)
        label = np.ascontiguousarray(label, dtype=np.uint8)
        fg = (label.reshape(label.shape[0], -1) == 1).sum(1, dtype=np.int64)  # IGNORE is not foreground
        if paths is None:
            return image, label, fg
        try:
            for part, array in zip(_PARTS, (image, label, fg)):
                save_atomic_npy(paths[part], array)
        except OSError as e:  # a read-only cache serves the volumes it holds, and only those
            if e.errno not in WRITE_DENIED:
                raise
            what = e.strerror if e.filename is None else f"{e.filename}: {e.strerror}"
            raise OSError(
                e.errno, f"{what}; pass --cache_dir DIR (cache_dir) to cache the volumes elsewhere"
            ) from None
        return tuple(_open_cached(paths[p]) for p in _PARTS)  # type: ignore[return-value]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.cache_dir is not None:  # memory-mapped volumes travel as file names, not data
            state["_images"] = [str(a.filename) for a in self._images]
            state["_labels"] = [str(a.filename) for a in self._labels]
        elif multiprocessing.context.get_spawning_popen() is not None:
            # a spawned DataLoader worker (macOS', Windows' default) would get a copy of every
            # volume: it gets handles of one shared-memory buffer per part, made on the first start
            if self._shared is None:
                self._shared = (_share(self._images), _share(self._labels))
            state["_images"] = state["_labels"] = None
            state["_shared"] = self._shared
        else:  # plain pickling (copy.deepcopy, a file) copies the volumes, as it says
            state["_shared"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_shared": None, **state})  # (a state pickled before _shared: None)
        if self.cache_dir is not None:
            self._images = [_open_cached(f) for f in self._images]
            self._labels = [_open_cached(f) for f in self._labels]
        elif self._shared is not None:
            self._images, self._labels = (_shared_views(*part) for part in self._shared)

    # ------------------------------------------------------------------ slice selection
    def resample(self, seed: int) -> None:
        """Choose the slices: all foreground slices plus ``keep_background_fraction`` of the
        others in each case, drawn with ``seed`` (independently per case, so adding a case does
        not change the slices of the others)."""
        self.seed = int(seed)
        index = []
        for v, (case, fg, annotated) in enumerate(
            zip(self.cases, self.foreground_per_slice, self.annotated_per_slice)
        ):
            keep = np.flatnonzero(annotated)
            if self.spec.volumetric and self.keep_background_fraction < 1.0:
                background = np.flatnonzero((fg == 0) & annotated)
                rng = np.random.default_rng([self.seed, zlib.crc32(case.encode())])
                n_keep = int(np.floor(self.keep_background_fraction * len(background) + 0.5))  # half up
                chosen = rng.choice(background, size=n_keep, replace=False)
                keep = np.sort(np.concatenate([np.flatnonzero(fg > 0), chosen]))
            index.append(np.stack([np.full(len(keep), v), keep], axis=1))
        self._index = np.concatenate(index).astype(np.int64) if index else np.zeros((0, 2), np.int64)

    # ------------------------------------------------------------------ Dataset
    def set_epoch(self, epoch: int) -> None:
        """Seed the transform's draws of ``epoch`` (:func:`transform_seed`): in this process now,
        in DataLoader workers as they start (:func:`seed_worker_transform`, with workers made anew
        each epoch, as :func:`~pam_monai.engines.slice_loader` makes them for a transformed
        dataset). The bundles call it at each epoch's start (:class:`~pam_monai.engines.LoaderEpoch`),
        so that a resumed run draws what the uninterrupted one drew."""
        self.epoch = int(epoch)
        self._seed_transform()

    def set_rank(self, rank: int) -> None:
        """Under ``torchrun``: this rank draws its own augmentation values (its seeds are
        ``seed`` + a stride x ``rank``; :func:`~pam_monai.engines.slice_loader` calls it)."""
        self.transform_rank = int(rank)
        self._seed_transform()

    @property
    def rank_seed(self) -> int:
        """The seed of this rank's transform draws (``seed`` + a stride x the rank)."""
        return self.transform_seed + RANK_SEED_STRIDE * self.transform_rank

    def _seed_transform(self) -> None:
        """Seed the transform (MONAI's Randomizable / Compose) in this process by the rank's seed and
        the epoch (0 before the first): reproducible runs, and resumed ones."""
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=transform_seed(self.rank_seed, self.epoch or 0, 0))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v, z = self._index[i]
        image = torch.from_numpy(np.array(self._images[v][z], dtype=np.float32))
        label = torch.from_numpy(np.array(self._labels[v][z], dtype=np.float32))
        sample = {"image": image, "label": label}
        if self.transform is None:
            return sample
        return self._checked(self.transform(sample), sample, i)

    def _checked(self, out, sample: dict, i: int) -> dict:
        """The transform's output with its image and label as plain float32 tensors (a MetaTensor
        would carry its metadata into the trainer, the compiled network and the stacked batches),
        refused (naming the slice and the fix) when it is not one sample
        of the slice's shapes with a 0/1 label: a MONAI crop's list of samples failed with
        "'list' object is not a mapping", a size change at the batch's stacking or in the network,
        and a label interpolated bilinearly (MONAI's default mode) trained on fractions silently."""
        case, z = self.slice_info(i)
        where = f"SliceDataset: the transform (train_transforms) on slice {z} of {case}"
        if not isinstance(out, Mapping):
            got = f"a list of {len(out)} samples" if isinstance(out, (list, tuple)) else type(out).__name__
            raise ValueError(
                f"{where} returned {got}, not one sample dict: transforms that return several samples (MONAI's "
                "crops with num_samples, e.g. RandCropByPosNegLabeld) cannot be used; set crop_size to train on "
                "another size"
            )
        for key, before in sample.items():
            if key not in out:
                raise ValueError(f"{where} dropped the key {key!r}: keep 'image' and 'label'")
            shape = tuple(out[key].shape)
            if shape != tuple(before.shape):
                raise ValueError(
                    f"{where} changed the {key}'s shape from {tuple(before.shape)} to {shape}: the batch is stacked "
                    "from slices of one shape and the network was checked at it; keep it (e.g. RandZoomd "
                    "keep_size=True, a crop padded back), or set crop_size to train on another size"
                )
        plain = {k: _plain_float32(out[k]) for k in sample}
        label = plain["label"]
        allowed = (label == 0) | (label == 1)
        if self.spec.ignore_label is not None:
            allowed |= label == IGNORE
        if not bool(allowed.all()):
            odd = label[~allowed].flatten()[:3].tolist()
            raise ValueError(
                f"{where} made label values other than 0 / 1{' / ignore' if self.spec.ignore_label is not None else ''} "
                f"({', '.join(f'{v:g}' for v in odd)}, ...): interpolate labels with mode 'nearest' "
                "(e.g. RandAffined mode ['bilinear', 'nearest']; MONAI's default, bilinear, blends them)"
            )
        return {**out, **plain}

    def slice_info(self, i: int) -> tuple[str, int]:
        """``(case, slice index in the volume)`` of sample ``i``."""
        v, z = self._index[i]
        return self.cases[v], int(z)

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the preprocessed volumes (in memory or in the cache files)."""
        return int(sum(a.nbytes for a in self._images) + sum(a.nbytes for a in self._labels))

    def summary(self) -> dict:
        """Counts: cases, slices in all volumes, slices with foreground, slices served."""
        return {
            "cases": len(self.cases),
            "slices": int(sum(len(f) for f in self.foreground_per_slice)),
            "foreground_slices": int(sum(int((f > 0).sum()) for f in self.foreground_per_slice)),
            "unannotated_slices": int(sum(int((~a).sum()) for a in self.annotated_per_slice)),
            "samples": len(self),
            "cache_bytes": self.cache_bytes,
        }
