"""Symmetric surface HD95 in physical units (medpy convention), cropped for speed.

Definition (``medpy.metric.binary.hd95`` with connectivity 1):

- surface of a mask = mask XOR its binary erosion by the connectivity-1 structure (a cross),
  with everything outside the image counted as background;
- directed distances A -> B = for every surface voxel of A, the Euclidean distance (with the
  voxel spacing) to the nearest surface voxel of B;
- HD95 = the 95th percentile (numpy's linear interpolation) of the UNION of both directed sets.

MONAI's ``compute_hausdorff_distance(percentile=95)`` instead takes the larger of the two
directed 95th percentiles; the distances are the same, the figures differ by a few percent for
two-sided errors (a shift), by up to 70 % for one-sided ones (a real tumour eroded or dilated by 2
voxels, where one directed set is much longer than the other), and far more for a small far-away
false positive, which holds a smaller share of the union than of the prediction's surface
(README.md).
The BraTS 2023 evaluation (whose empty-mask rule is the one below) uses DeepMind's surface-distance
``compute_robust_hausdorff``: the larger of the two directed 95th percentiles, each weighted by
surface-element area, closer to MONAI's statistic than to this one.

Speed: the bounding box of each mask's foreground is found without writing a volume-sized mask
(:func:`~pam_monai.metrics.masks.foreground_box`), and only the union box is thresholded, eroded
and searched. Cropping is exact, not an approximation: outside that box both masks are
background, as the erosion already assumes outside the image. The directed distances are then
found without a distance transform: surface voxels sit mostly within a few voxels of the other
surface, so each looks up the other surface at the offsets of a small ball in order of
increasing physical length (one vectorised gather per distance shell); the first shell that
hits gives the exact distance. The few voxels left beyond the ball get exact distances by brute
force or a KD-tree. On a 155x240x240 BraTS float32 pair this takes about 5 ms on 2 CPU cores
(2 ms on ``bool`` masks), most of it reading the two volumes, 13.5-16.6x less than MONAI 1.6.1's
``compute_hausdorff_distance`` in a fresh process (11.2-13.2x for real enhancing-tumour rings),
8-11x with freed memory kept in the process (``benchmarks/hd95_bench.py``).

Empty masks (BraTS 2023 evaluation): both empty -> 0.0; exactly one empty -> ``empty_value``,
by default the image diagonal in physical units (:func:`pam_monai.metrics.image_diagonal`,
373.13 for 155x240x240 at 1 mm), which is larger than any achievable distance. Never NaN or inf.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from .masks import array_pair, as_mask, foreground_box, image_diagonal, normalize_spacing

__all__ = ["directed_surface_distances", "hd95"]


def _check_spatial(shape: tuple[int, ...]) -> None:
    """Refuse masks with more than 3 axes: a channel axis (``1 x H x W x D``, MONAI's layout) would
    count as a 4th spatial axis, along whose length 1 every voxel is a surface voxel (a different
    HD95, and a different empty-mask diagonal)."""
    if len(shape) > 3:
        raise ValueError(
            f"HD95 needs 2-D or 3-D masks, got shape {tuple(shape)}: pass the spatial axes only "
            "(drop the channel axis)."
        )


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: foreground with a face neighbour in the background or outside the image."""
    inner = mask.copy()
    for axis in range(mask.ndim):
        inner[_along(axis, mask.ndim, slice(1, None))] &= mask[_along(axis, mask.ndim, slice(None, -1))]
        inner[_along(axis, mask.ndim, slice(None, -1))] &= mask[_along(axis, mask.ndim, slice(1, None))]
        inner[_along(axis, mask.ndim, 0)] = False
        inner[_along(axis, mask.ndim, -1)] = False
    return mask ^ inner


def _along(axis: int, ndim: int, index) -> tuple:
    return (slice(None),) * axis + (index,) + (slice(None),) * (ndim - axis - 1)


#: Radius of the offset ball, in units of the smallest voxel spacing (257 offsets when isotropic).
BALL_RADIUS = 4.0
#: Brute force over at most this many (left-over voxel, surface voxel) pairs, else a KD-tree.
BRUTE_FORCE_PAIRS = 1 << 18


@lru_cache(maxsize=32)
def _ball(sp: tuple[float, ...], radius_voxels: float) -> tuple[list[tuple[float, np.ndarray]], list[int]]:
    """The ball's shells in order of physical length, as ``(length, offsets)``, and its reach per axis.

    Each shell of several offsets is padded to a multiple of 8 by repeating its first one, so that
    the ``bool`` lookups of a voxel read as whole 64-bit words (one comparison per 8 lookups).
    """
    radius = radius_voxels * min(sp)
    reach = [int(radius // s) for s in sp]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    lengths = _lengths(offsets, sp)
    keep = lengths <= radius
    order = np.argsort(lengths[keep], kind="stable")
    offsets, lengths = offsets[keep][order], lengths[keep][order]
    # one shell per distinct length (a relative tolerance groups lengths equal up to rounding)
    bounds = np.r_[np.flatnonzero(np.r_[True, np.diff(lengths) > 1e-9 * lengths[1:]]), len(lengths)]
    shells = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        shell = offsets[lo:hi]
        if len(shell) > 1:
            shell = np.concatenate([shell, shell[:1].repeat(-len(shell) % 8, axis=0)])
        shells.append((float(lengths[lo]), shell))
    return shells, reach


def _lengths(diffs: np.ndarray, sp: tuple[float, ...]) -> np.ndarray:
    """Physical lengths of integer voxel offsets (one formula, so equal offsets give equal floats)."""
    return np.sqrt(((diffs * np.asarray(sp)) ** 2).sum(axis=-1))


def _nearest(
    index: np.ndarray, dst: np.ndarray, dst_index: np.ndarray, shells: list, sp: tuple[float, ...]
) -> np.ndarray:
    """Exact physical distances from voxels to the nearest voxel of ``dst``.

    Args:
        index: flat indices of the source voxels in ``dst``'s (padded) grid.
        dst: the other surface, zero-padded by the ball's reach (so no lookup leaves the array).
        dst_index: flat indices of ``dst``'s voxels.
        shells: the ball's shells (:func:`_ball`).
        sp: voxel spacing.
    """
    flat, strides = dst.ravel(), np.asarray(dst.strides, dtype=np.intp)  # bool: strides in voxels
    out = np.empty(len(index))
    pending = np.arange(len(index))
    for shell, (length, offsets) in enumerate(shells):
        if len(offsets) == 1:
            hit = flat[index + offsets[0] @ strides]
        else:
            words = flat[index[:, None] + offsets @ strides].view(np.uint64)
            hit = words[:, 0] != 0 if words.shape[1] == 1 else words.any(axis=1)
        out[pending[hit]] = length
        pending, index = pending[~hit], index[~hit]
        # far apart masks: most voxels are beyond distance one, go to the exact fallback at once
        if not pending.size or (shell == 1 and 2 * pending.size > len(out)):
            break
    if pending.size:
        out[pending] = _far_distances(_coords(index, dst.shape), _coords(dst_index, dst.shape), sp)
    return out


def _coords(flat_index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.unravel_index(flat_index, shape), axis=1)


def _far_distances(points: np.ndarray, targets: np.ndarray, sp: tuple[float, ...]) -> np.ndarray:
    if len(points) * len(targets) <= BRUTE_FORCE_PAIRS:
        chunk = max(1, BRUTE_FORCE_PAIRS // (4 * len(targets)))
        return np.concatenate(
            [
                _lengths(points[i : i + chunk, None] - targets[None], sp).min(axis=1)
                for i in range(0, len(points), chunk)
            ]
        )
    spacing = np.asarray(sp)
    nearest = cKDTree(targets * spacing).query(points * spacing)[1]
    return _lengths(points - targets[nearest], sp)  # the same formula as the other routes


def _directed(x: np.ndarray, y: np.ndarray, box_a: tuple, box_b: tuple, sp: tuple[float, ...], crop: bool):
    """Directed distance sets of two non-empty masks (any dtype, foreground > 0.5) given their
    foreground boxes (:func:`~pam_monai.metrics.masks.foreground_box`)."""
    if crop:  # only the union box is ever thresholded
        box = tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(box_a, box_b))
        x, y = x[box], y[box]
    shells, reach = _ball(sp, BALL_RADIUS)
    pad = [(r, r) for r in reach]
    sa, sb = np.pad(_surface(as_mask(x)), pad), np.pad(_surface(as_mask(y)), pad)
    ia, ib = np.flatnonzero(sa), np.flatnonzero(sb)
    return _nearest(ia, sb, ib, shells, sp), _nearest(ib, sa, ia, shells, sp)


def directed_surface_distances(
    pred, target, spacing=None, crop: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The two directed surface-distance sets of two non-empty masks.

    Args:
        pred: predicted binary mask (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.
        spacing: voxel spacing, a number or one value per axis (default 1.0).
        crop: crop to the union bounding box first (exact; ``False`` only for checking that).

    Returns:
        ``(pred_to_target, target_to_pred)``: one distance per surface voxel of ``pred`` and of
        ``target`` respectively, in physical units.

    Raises:
        ValueError: when either mask is empty (the distances are undefined), or has more than 3
            axes (a channel axis).

    Example:
        >>> a = np.zeros((5, 5)); a[1, 1] = 1
        >>> b = np.zeros((5, 5)); b[4, 1] = 1
        >>> directed_surface_distances(a, b, spacing=(2.0, 1.0))[0].tolist()
        [6.0]
    """
    a, b = array_pair(pred, target)
    _check_spatial(a.shape)
    box_a, box_b = foreground_box(a), foreground_box(b)
    if box_a is None or box_b is None:
        raise ValueError("surface distances need two non-empty masks.")
    return _directed(a, b, box_a, box_b, normalize_spacing(spacing, a.ndim), crop)


def hd95(pred, target, spacing=None, empty_value: float | None = None, crop: bool = True) -> float:
    """Symmetric 95th-percentile surface Hausdorff distance in physical units.

    Args:
        pred: predicted binary mask, 2D or 3D (numpy or torch, foreground = value > 0.5).
        target: reference binary mask of the same shape.
        spacing: voxel spacing, a number or one value per axis (default 1.0).
        empty_value: value when exactly one mask is empty; ``None`` -> the image diagonal in
            physical units. Both masks empty always gives 0.0.
        crop: crop to the union bounding box first (exact; ``False`` only for checking that).

    Returns:
        HD95 >= 0, finite.

    Example:
        >>> a = np.zeros((8, 8)); a[2:5, 2:5] = 1
        >>> hd95(a, a)
        0.0
        >>> round(hd95(a, np.zeros((8, 8))), 3)  # one empty: the 8x8 diagonal
        11.314
    """
    a, b = array_pair(pred, target)
    _check_spatial(a.shape)
    return _hd95(a, b, normalize_spacing(spacing, a.ndim), empty_value, crop)


def _hd95(x: np.ndarray, y: np.ndarray, sp: tuple[float, ...], empty_value: float | None, crop: bool = True):
    box_a, box_b = foreground_box(x), foreground_box(y)
    if box_a is not None and box_b is not None:
        return float(np.percentile(np.concatenate(_directed(x, y, box_a, box_b, sp, crop)), 95))
    if box_a is None and box_b is None:
        return 0.0
    return float(image_diagonal(x.shape, sp) if empty_value is None else empty_value)
