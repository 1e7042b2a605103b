"""Array operations of the paper's preprocessing and augmentation (numpy and torch, no MONAI).

Used once per volume by :mod:`.preprocess` and the slice cache, by inference to undo the crop,
and on collated batches for flips. :mod:`.transforms` offers the same steps as MONAI transforms.

- :func:`normalize_nonzero`: per channel, ``(x - mean) / std`` over the channel's non-zero
  voxels; zeros stay zero; a zero std divides by 1 (only the mean is removed); an all-zero
  channel is left unchanged. Same as MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)``.
- :func:`crop_or_pad_center` / :func:`uncrop_center`: centre crop or zero-pad trailing axes to a
  size, and its exact inverse. Same offsets as MONAI's ``ResizeWithPadOrCrop`` (crop start
  ``n // 2 - size // 2``; padding ``(size - n) // 2`` before, the rest after).
- :func:`resize_2d`: ``torch.nn.functional.interpolate`` on a ``C x H x W`` array, as MONAI's
  ``Resize`` does (CityScapes: ``area`` for images, ``nearest-exact`` for labels).
- :func:`resize_probabilities`: the way back of 2-D predictions: foreground probabilities resized
  bilinearly to the image's own size (cut at the threshold there, not before).
- :func:`binarize`: uint8 foreground mask (``IGNORE`` where the label is unannotated).
- :func:`random_flip_batch`: per-sample random flips of a collated batch, on any device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "IGNORE",
    "binarize",
    "center_offsets",
    "crop_or_pad_center",
    "nonzero_stats",
    "normalize_nonzero",
    "random_flip_batch",
    "resize_2d",
    "resize_probabilities",
    "uncrop_center",
    "zscore_nonzero_",
]


def nonzero_stats(channel: np.ndarray) -> tuple[float, float] | None:
    """``(mean, std)`` of the non-zero voxels of one channel (std 0 -> 1); None when all are 0."""
    values = channel[channel != 0]
    if values.size == 0:
        return None
    values = values.astype(np.float64, copy=False)
    mean = float(values.mean())
    std = float(values.std())
    return mean, (std if std > 0 else 1.0)


def normalize_nonzero(
    image: np.ndarray, stats: Sequence[tuple[float, float] | None] | None = None
) -> np.ndarray:
    """Channel-wise z-score over non-zero voxels of a channel-first array (float32 result).

    ``stats`` (one ``(mean, std)`` or None per channel) lets a caller compute the statistics on
    the whole volume and apply them to a crop of it; by default they come from ``image``.
    """
    out = np.asarray(image, dtype=np.float32).copy()
    for c in range(out.shape[0]):
        zscore_nonzero_(out[c], nonzero_stats(image[c]) if stats is None else stats[c])
    return out


def zscore_nonzero_(channel: np.ndarray, stats: tuple[float, float] | None) -> None:
    """In place on one float32 channel: ``(x - mean) / std`` where ``x != 0`` (None: unchanged)."""
    if stats is None:
        return
    mask = channel != 0
    channel[mask] = (channel[mask] - np.float32(stats[0])) / np.float32(stats[1])


def center_offsets(size: int, target: int) -> tuple[int, int, int]:
    """``(source start, destination start, length)`` of a centre crop/pad from ``size`` to ``target``."""
    if size >= target:
        return size // 2 - target // 2, 0, target
    return 0, (target - size) // 2, size


def _spatial(shape: Sequence[int], size: Sequence[int | None]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n = len(size)
    if n > len(shape):
        raise ValueError(f"size {tuple(size)} has more axes than the array {tuple(shape)}")
    lead = tuple(shape[: len(shape) - n])
    return lead, tuple(
        int(s) if s is not None and s > 0 else int(d) for s, d in zip(size, shape[len(shape) - n :])
    )


def crop_or_pad_center(array: np.ndarray, size: Sequence[int | None], pad_value: float = 0) -> np.ndarray:
    """Centre crop or pad the trailing ``len(size)`` axes of ``array`` to ``size``.

    A size of ``None`` or ``-1`` keeps that axis. E.g. ``crop_or_pad_center(vol, (160, 160, -1))``
    on ``4 x 240 x 240 x 155`` gives ``4 x 160 x 160 x 155`` (rows and columns 40:200).
    """
    lead, target = _spatial(array.shape, size)
    spatial = tuple(array.shape[len(lead) :])
    if spatial == target:
        return array
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for n, t in zip(spatial, target):
        s0, d0, length = center_offsets(n, t)
        src.append(slice(s0, s0 + length))
        dst.append(slice(d0, d0 + length))
    out = np.full(lead + target, pad_value, dtype=array.dtype)
    out[tuple(dst)] = array[tuple(src)]
    return out


def uncrop_center(array: np.ndarray, original_size: Sequence[int], pad_value: float = 0) -> np.ndarray:
    """Inverse of :func:`crop_or_pad_center`: put ``array`` back into a grid of ``original_size``
    (its trailing axes), filling what the crop removed with ``pad_value`` and dropping what the
    pad added. ``uncrop_center(crop_or_pad_center(x, s), x.shape)`` equals ``x`` inside the crop."""
    n = len(original_size)
    lead, spatial = tuple(array.shape[: array.ndim - n]), tuple(array.shape[array.ndim - n :])
    original = tuple(int(o) for o in original_size)
    if spatial == original:
        return array
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for o, t in zip(original, spatial):
        s0, d0, length = center_offsets(o, t)  # forward: original[s0:s0+len] -> cropped[d0:d0+len]
        src.append(slice(d0, d0 + length))
        dst.append(slice(s0, s0 + length))
    out = np.full(lead + original, pad_value, dtype=array.dtype)
    out[tuple(dst)] = array[tuple(src)]
    return out


def resize_2d(array: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Resize a ``C x H x W`` array to ``C x size[0] x size[1]`` with ``torch`` interpolation
    (float32 result), as MONAI's ``Resize`` (without anti-aliasing) does."""
    if tuple(array.shape[-2:]) == tuple(size):
        return np.asarray(array, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    kwargs = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(t, size=tuple(size), mode=mode, **kwargs)[0].numpy()


def resize_probabilities(probabilities, size: tuple[int, int]) -> np.ndarray:
    """Foreground probabilities ``... x h x w`` (numpy or torch, on any device) resized
    bilinearly to ``... x size[0] x size[1]``: float32 numpy, within [0, 1].

    The way back of a 2-D prediction made on a downsized grid (CityScapes' 128 x 256, own 2-D
    images): the mask is ``resize_probabilities(p, size) > threshold`` on the image's own pixels,
    as mmsegmentation and nnU-Net do, instead of a nearest-neighbour resize of the mask cut on the
    small grid (8 x 8 pixel steps along every boundary of a 1024 x 2048 frame). Always on the CPU
    (``align_corners=False``, as :func:`resize_2d`): inference and evaluation give the same mask for
    the same probabilities, bit for bit.
    """
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().float().cpu().numpy()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    lead, size = probabilities.shape[:-2], tuple(int(n) for n in size)
    if tuple(probabilities.shape[-2:]) == size:
        return np.clip(probabilities, 0.0, 1.0)  # a new array: the caller's stays as it is
    flat = probabilities.reshape(-1, *probabilities.shape[-2:])
    out = resize_2d(flat, size, "bilinear").reshape(*lead, *size)
    # a convex combination of values in [0, 1], but float rounding may step past 1 by an ulp
    return np.clip(out, 0.0, 1.0, out=out)


# The binary target's value for unannotated voxels (nnU-Net's "ignore" label). It is above 1 on
# purpose: code that forgets it counts those voxels as foreground, which tests see at once,
# instead of quietly calling them background.
IGNORE = 2


def binarize(label: np.ndarray, foreground: Sequence[int], ignore: int | None = None) -> np.ndarray:
    """uint8 mask: 1 where ``label`` is one of ``foreground``, :data:`IGNORE` where it is the
    ``ignore`` label value (unannotated voxels, which the loss and the metrics leave out), else 0."""
    out = np.isin(label, np.asarray(foreground)).astype(np.uint8)
    if ignore is not None:
        out[np.asarray(label) == ignore] = IGNORE
    return out


def random_flip_batch(
    batch: Mapping[str, torch.Tensor],
    prob: float = 0.5,
    spatial_axis: int | Sequence[int] = -1,
    generator: torch.Generator | None = None,
    keys: Sequence[str] = ("image", "label"),
) -> dict[str, torch.Tensor]:
    """Flip each sample of a collated batch with probability ``prob`` (one decision per sample,
    the same for all ``keys``), on whatever device the tensors live.

    ``spatial_axis`` is a tensor axis of the ``B x C x H x W`` batch: -1 flips the width
    (CityScapes), -2 the height (BRATS and ISLES slices, whose axis -2 is the patient's left-right
    axis; see ``DATASETS[name].flip_axis``). Random numbers come from ``generator`` (a CPU
    generator is fine for GPU tensors). Returns a new dict; other entries pass through.
    """
    out = dict(batch)
    present = [k for k in keys if k in batch]
    if not present:
        return out
    first = batch[present[0]]
    n = first.shape[0]
    draw = torch.rand(n, generator=generator, device=generator.device if generator is not None else "cpu")
    chosen = draw < prob
    if not bool(chosen.any()):  # decided where the draw lives (CPU): no device sync per step
        return out
    if first.device.type == "cuda":  # from pageable memory the driver may wait for the stream to stage it
        chosen = chosen.pin_memory()
    flip = chosen.to(first.device, non_blocking=True)
    axes = [int(a) for a in np.atleast_1d(spatial_axis)]
    for key in present:
        x = batch[key]
        if x.shape[0] != n:
            raise ValueError(f"batch['{key}'] has {x.shape[0]} samples, batch['{present[0]}'] has {n}")
        dims = [a % x.ndim for a in axes]
        if 0 in dims:
            raise ValueError("spatial_axis must not be the batch axis")
        mask = flip.view(n, *([1] * (x.ndim - 1)))
        out[key] = torch.where(mask, x.flip(dims), x)
    return out
