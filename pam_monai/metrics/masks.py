"""Input handling shared by every metric: masks, spacing, bounding boxes, the image diagonal.

Inputs are binary masks given as numpy arrays or torch tensors of any dtype. A voxel is
foreground where its value is greater than 0.5: that is the non-zero voxels of a ``bool``,
integer (labels >= 1) or 0/1 float mask, and the usual 0.5 threshold for probabilities.
Negative values count as background.

A binary target of sparsely annotated data (nnU-Net's ``ignore`` label) holds
:data:`pam_monai.data.ops.IGNORE` (2) on unannotated voxels: :func:`split_ignored` turns it into
the target and the mask of annotated voxels that :func:`~pam_monai.metrics.case_metrics` takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "as_mask",
    "split_ignored",
    "mask_pair",
    "array_pair",
    "normalize_spacing",
    "image_diagonal",
    "bounding_box",
    "foreground_box",
]


def as_mask(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``x`` as a numpy ``bool`` array (foreground = value > 0.5).

    Args:
        x: a numpy array or torch tensor (any device, any dtype).

    Returns:
        A ``bool`` numpy array of the same shape (no copy when ``x`` is already ``bool`` on CPU).

    Example:
        >>> as_mask(np.array([0.2, 0.7, 1.0])).tolist()
        [False, True, True]
    """
    x = _as_array(x)
    return x if x.dtype == bool else x > 0.5


def split_ignored(target) -> tuple[np.ndarray, np.ndarray | None]:
    """``(target, annotated)``: a binary target that may mark unannotated voxels with
    :data:`~pam_monai.data.ops.IGNORE` as a ``bool`` target (1 = foreground) and the ``bool`` mask of
    the annotated voxels, or ``(target, None)`` when every voxel is annotated."""
    from ..data.ops import IGNORE

    x = _as_array(target)
    if x.dtype == bool:
        return x, None
    unannotated = x == IGNORE
    if not unannotated.any():
        return x, None
    return x == 1, ~unannotated


def mask_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Convert a prediction and a target to ``bool`` masks of the same shape.

    Args:
        pred: predicted mask (numpy or torch).
        target: reference mask (numpy or torch).

    Returns:
        ``(pred, target)`` as ``bool`` numpy arrays.

    Raises:
        ValueError: when the shapes differ or the masks are 0-dimensional.
    """
    a, b = array_pair(pred, target)
    return as_mask(a), as_mask(b)


def array_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`mask_pair`, but without thresholding: numpy arrays of the inputs' values.

    Lets a metric that needs the foreground of a small region only (HD95 needs the bounding box
    and what lies inside it) avoid writing a whole-volume ``bool`` mask. Tensors come to the CPU;
    dtypes numpy lacks (bfloat16) are thresholded there.

    Args:
        pred: predicted mask (numpy or torch, foreground = value > 0.5).
        target: reference mask (numpy or torch).

    Returns:
        ``(pred, target)`` as numpy arrays of the same shape.

    Raises:
        ValueError: when the shapes differ or the masks are 0-dimensional.
    """
    a, b = _as_array(pred), _as_array(target)
    if a.shape != b.shape:
        raise ValueError(f"pred and target must have the same shape, got {a.shape} and {b.shape}.")
    if a.ndim == 0:
        raise ValueError("masks must have at least one spatial dimension.")
    return a, b


def _as_array(x) -> np.ndarray:
    """A numpy view of ``x``; tensors on a GPU or in bfloat16 (which numpy lacks) are thresholded
    first (on the GPU that also makes the copy to the host 4x smaller)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype != torch.bool and (x.device.type != "cpu" or x.dtype == torch.bfloat16):
            x = x > 0.5
        return x.cpu().numpy()
    return np.asarray(x)


def normalize_spacing(spacing: float | Sequence[float] | np.ndarray | None, ndim: int) -> tuple[float, ...]:
    """Spacing per axis: ``None`` -> 1.0 everywhere, a number -> isotropic, a sequence -> per axis.

    Args:
        spacing: ``None``, a positive number, or ``ndim`` positive numbers.
        ndim: number of spatial axes.

    Returns:
        A tuple of ``ndim`` positive floats.

    Raises:
        ValueError: on a wrong length or a non-positive / non-finite value.

    Example:
        >>> normalize_spacing(None, 2)
        (1.0, 1.0)
    """
    if spacing is None:
        return (1.0,) * ndim
    values = np.atleast_1d(np.asarray(spacing, dtype=float)).ravel()
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim:
        raise ValueError(f"spacing must have 1 or {ndim} values, got {values.size}.")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing values must be positive and finite, got {values.tolist()}.")
    return tuple(float(v) for v in values)


def image_diagonal(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """Length of the image diagonal in physical units: ``sqrt(sum((n_i * s_i) ** 2))``.

    This is the HD95 of a case where exactly one of the two masks is empty. It is larger than
    any distance between two voxel centres of the image, so a missed lesion never scores better
    than a detected one.

    Args:
        shape: spatial shape of the image.
        spacing: voxel spacing (see :func:`normalize_spacing`).

    Returns:
        The diagonal length, e.g. 373.13 for a 155x240x240 volume at 1 mm.

    Example:
        >>> round(image_diagonal((155, 240, 240)), 2)
        373.13
    """
    sp = normalize_spacing(spacing, len(shape))
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp)))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of the foreground of a ``bool`` mask, or ``None`` when it is empty.

    Finds the extent along the first axis from whole rows (read as 64-bit words where they
    can be), then recurses into the projection of that slab only.

    Args:
        mask: a ``bool`` numpy array with at least one axis.

    Returns:
        One ``slice`` per axis, or ``None`` for an empty mask (also one with an axis of length 0).

    Example:
        >>> bounding_box(np.array([[0, 0, 0], [0, 1, 1]], dtype=bool))
        (slice(1, 2, None), slice(1, 3, None))
    """
    if mask.size == 0:  # an axis of length 0 (a crop past the edge): no foreground, as all-zero
        return None
    if mask.ndim == 1:
        idx = np.flatnonzero(mask)
        return (slice(int(idx[0]), int(idx[-1]) + 1),) if idx.size else None
    rows = mask.reshape(mask.shape[0], -1)
    if mask.dtype == bool and rows.flags.c_contiguous and rows.shape[1] % 8 == 0:
        words = rows.view(np.uint64)  # 8 voxels per comparison; max: twice as fast as any
        idx = np.flatnonzero(words.max(axis=1))
        if not idx.size:
            return None
        first = slice(int(idx[0]), int(idx[-1]) + 1)
        # OR of bytes that are 0 or 1 is 0 or 1: the slab's projection as a bool array, word-wise
        projection = np.bitwise_or.reduce(words[first], axis=0).view(bool).reshape(mask.shape[1:])
        return (first, *bounding_box(projection))
    idx = np.flatnonzero(rows.any(axis=1))
    if not idx.size:
        return None
    first = slice(int(idx[0]), int(idx[-1]) + 1)
    return (first, *bounding_box(mask[first].any(axis=0)))


def _above_half(values: np.ndarray, axis: int) -> np.ndarray:
    """Whether a float array holds a value above 0.5 along ``axis`` (NaN ignored): ``np.fmax``'s
    answer at an integer reduction's speed.

    The maxima are taken over the values' bits read as signed integers of the same width: for IEEE
    floats that order is the floats' own among non-negative values, and every negative value reads
    as a negative integer (below 0.5's bits). 1.6x faster on a BraTS volume, where this is the
    largest part of :func:`~pam_monai.metrics.hd95`'s time. Where the integer maximum lies above
    infinity's bits the values hold a NaN, and those are reduced as floats instead."""
    size = values.dtype.itemsize
    if not values.dtype.isnative or size not in (2, 4, 8) or not values.flags.c_contiguous:
        return np.fmax.reduce(values, axis=axis) > 0.5
    ints = np.dtype(f"i{size}")
    half, inf = (np.array(v, values.dtype).view(ints) for v in (0.5, np.inf))
    peak = _int_max(values.view(ints), axis)
    found = (peak > half) & (peak <= inf)
    nan = peak > inf  # positive NaNs sort above infinity
    if nan.any():
        found[nan] = (np.fmax.reduce(values, axis=axis) > 0.5)[nan]
    return found


#: Arrays of at least this many values are reduced by torch (:func:`_int_max`), smaller by numpy.
TORCH_REDUCE_MIN = 1 << 18


def _int_max(ints: np.ndarray, axis: int) -> np.ndarray:
    """``ints.max(axis)``; large arrays through torch, whose integer maximum reads a BraTS volume
    1.2x faster than numpy's on one thread and uses torch's intra-op threads besides (2 cores: 1.9x).
    Reading the volumes is most of :func:`~pam_monai.metrics.hd95`'s time."""
    # read-only (a memory map): torch.from_numpy would warn that writes fail, and silencing that
    # warning changes the process's warning filters, which is not thread-safe; numpy reads it
    if ints.size < TORCH_REDUCE_MIN or not ints.flags.writeable:
        return ints.max(axis=axis)
    return torch.from_numpy(ints).amax(dim=axis).numpy()


def foreground_box(x: np.ndarray) -> tuple[slice, ...] | None:
    """:func:`bounding_box` of ``x > 0.5`` without writing a mask of the whole array.

    The extent along the first axis comes from each slice's maximum (a reduction that reads the
    values once and writes nothing; NaN is ignored, as ``as_mask`` counts it as background); the
    slab between the first and the last slice with foreground is then reduced across its slices
    (floats, likewise) or thresholded (integers). On a BraTS
    volume this is about twice as fast as ``as_mask`` then ``bounding_box``, and no volume-sized
    array is allocated.

    Args:
        x: a numpy array (any real dtype; ``bool`` masks go straight to :func:`bounding_box`).

    Returns:
        One ``slice`` per axis, or ``None`` when nothing is above 0.5 (also for an array with an
        axis of length 0).

    Example:
        >>> foreground_box(np.array([[0.0, 0.2, 0.0], [0.0, 0.9, 0.7]]))
        (slice(1, 2, None), slice(1, 3, None))
    """
    if x.dtype == bool or x.ndim < 2 or x.size == 0:  # size 0: the maxima below have no identity
        return bounding_box(as_mask(x))
    rows = x.reshape(x.shape[0], -1)
    floating = np.issubdtype(x.dtype, np.floating)
    idx = np.flatnonzero(_above_half(rows, 1) if floating else rows.max(axis=1) > 0.5)
    if not idx.size:
        return None
    first = slice(int(idx[0]), int(idx[-1]) + 1)
    if floating:  # the slab's maximum across its slices: read once more, nothing written
        slab = x[first].reshape(first.stop - first.start, -1)
        return (first, *bounding_box(_above_half(slab, 0).reshape(x.shape[1:])))
    return (first, *bounding_box((x[first] > 0.5).any(axis=0)))
