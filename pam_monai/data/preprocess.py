"""Whole-case loading and preprocessing, shared by the slice cache (training) and inference.

- :func:`load_case`: read a datalist item's files into arrays, as stored.
- :func:`preprocess_case`: the paper's preprocessing of that case, once per volume.
- :func:`restore_prediction`: put a prediction made on the preprocessed grid back into the
  original grid (inverse crop for volumes; for 2-D images a bilinear resize of the foreground
  probabilities), to save it with the input's affine; :func:`restore_mask`: its mask, cut at the
  threshold on the original grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import UnreadableFile, load_png, load_volume
from .intensity import normalize_channels, volume_stats
from .ops import binarize, crop_or_pad_center, resize_2d, resize_probabilities, uncrop_center
from .specs import DatasetSpec, get_spec

__all__ = ["case_name", "load_case", "preprocess_case", "restore_mask", "restore_prediction"]


def case_name(item: dict) -> str:
    """The case ID of a datalist entry as :func:`load_case` gives it: its ``case``, else the first
    image file's name."""
    if "case" in item:
        return str(item["case"])
    first = item["image"][0] if isinstance(item["image"], (list, tuple)) else item["image"]
    return Path(first).name


def _read(reader, case: str, path, **kwargs):
    """``reader(path)``, an unreadable file named: ``<case>: <file>: unreadable or truncated ...``
    (inference lists its problems by case; with several channel files the reason alone does not
    say which one to replace)."""
    try:
        return reader(path, **kwargs)
    except UnreadableFile as e:
        raise UnreadableFile(f"{case}: {os.path.basename(os.fspath(path))}: {e}") from e


def load_case(dataset: str | DatasetSpec, item: dict) -> dict:
    """Read the files of one datalist item (absolute paths, or relative to the working folder).

    Returns a dict with

    - ``image``: ``C x H x W x D`` for BRATS/ISLES (channels in the spec's order, the files' own
      dtype, e.g. int16) or ``3 x H x W`` uint8 for CityScapes (own 2-D images: ``C x H x W``);
    - ``label``: the label map as stored (``H x W x D`` or ``H x W``), or None without a label;
    - ``affine``: the 4x4 affine of the first channel (None for PNGs);
    - ``original_shape``: the spatial shape; ``case``: the case ID.

    Raises ``ValueError`` naming the file when channels or label disagree in shape.
    (:func:`pam_monai.data.check_dataset` reports every such problem up front.)
    """
    spec = get_spec(dataset)
    case = case_name(item)
    label = None
    if spec.volumetric:
        paths = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
        if len(paths) != spec.in_channels:
            raise ValueError(
                f"{case}: expected {spec.in_channels} channel files {spec.channels}, got {len(paths)}"
            )
        arrays, affine = [], None
        for path in paths:
            data, aff = _read(load_volume, case, path)
            if arrays and data.shape != arrays[0].shape:
                raise ValueError(
                    f"{case}: {os.path.basename(path)}: shape {data.shape} differs from {arrays[0].shape}"
                )
            arrays.append(data)
            affine = aff if affine is None else affine
        image = np.stack(arrays)
        if item.get("label") is not None:
            label, _ = _read(load_volume, case, item["label"])
            if label.shape != image.shape[1:]:
                raise ValueError(
                    f"{case}: {os.path.basename(item['label'])}: shape {label.shape} differs from {image.shape[1:]}"
                )
    elif spec.name == "nnunet":  # own 2-D images: grey files, one per channel, or one colour file
        image = _load_images_2d(spec, case, item["image"])
        affine = None
        if item.get("label") is not None:
            label = _read(load_png, case, item["label"], label=True)
            if label.shape != image.shape[1:]:
                raise ValueError(
                    f"{case}: {os.path.basename(item['label'])}: expected a label map of shape {image.shape[1:]}, "
                    f"got {label.shape}"
                )
    else:
        files = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
        if len(files) != 1:  # a list of one file is the decathlon format's usual form (the checker's too)
            raise ValueError(f"{case}: expected one RGB image file, got {len(files)}: {files}")
        rgb = _read(load_png, case, files[0])
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(
                f"{case}: {os.path.basename(files[0])}: expected an RGB image, got shape {rgb.shape}"
            )
        image, affine = np.moveaxis(rgb, -1, 0), None
        if item.get("label") is not None:  # a palette labelIds PNG: its indices, as the checker reads it
            label = _read(load_png, case, item["label"], label=True)
            if label.shape != image.shape[1:]:
                raise ValueError(
                    f"{case}: {os.path.basename(item['label'])}: shape {label.shape} differs from {image.shape[1:]}"
                )
    return {
        "case": case,
        "image": image,
        "label": label,
        "affine": affine,
        "original_shape": tuple(image.shape[1:]),
    }


def channels_first_2d(arrays) -> np.ndarray:
    """``C x H x W`` from a case's 2-D images as read (``H x W`` grey: one channel, ``H x W x 3``
    colour: three), in file order."""
    return np.concatenate([a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0) for a in arrays])


def _load_images_2d(spec: DatasetSpec, case: str, image) -> np.ndarray:
    """``C x H x W`` from a case's 2-D image files (a grey file is one channel, a colour one three)."""
    paths = image if isinstance(image, (list, tuple)) else [image]
    arrays = []
    for path in paths:
        data = _read(load_png, case, path)
        if arrays and data.shape[:2] != arrays[0].shape[:2]:
            raise ValueError(
                f"{case}: {os.path.basename(path)}: size {data.shape[:2]} differs from {arrays[0].shape[:2]}"
            )
        arrays.append(data)
    image = channels_first_2d(arrays)
    if image.shape[0] != spec.in_channels:
        raise ValueError(
            f"{case}: {', '.join(os.path.basename(p) for p in paths)}: {image.shape[0]} channel(s), but the data set "
            f"has {spec.in_channels} {list(spec.channels)}"
        )
    return image


def preprocess_case(
    dataset: str | DatasetSpec,
    case: dict,
    foreground_label: int | Sequence[int] | None = None,
    whole: bool = False,
) -> dict:
    """The paper's preprocessing of one whole case (a :func:`load_case` dict, or a datalist item,
    which is loaded first).

    BRATS / ISLES: z-score each channel over its non-zero voxels of the whole volume, centre crop
    (or zero-pad) in-plane to the spec's ``crop_size`` (axial axis unchanged), binarise the label.
    Own data: each channel as its name says (:mod:`.intensity`: CT clipped and standardised with the
    training set's statistics, ...); padding is 0 after normalisation.
    CityScapes: scale RGB to [0, 1], resize to 128 x 256 (``area``; labels ``nearest-exact``),
    binarise vehicles (labelIds 26-33). Own 2-D images: normalise each channel as its name says,
    resize to the spec's size (``area`` when shrinking, ``bilinear`` when enlarging; labels
    ``nearest-exact``).

    ``whole``: volumes larger in-plane than the crop keep their size (only smaller axes are padded):
    own data's evaluation and inference segment them whole, with a sliding window of the crop's
    size (:class:`~pam_monai.engines.SliceWiseInferer`'s ``roi_size``).

    Returns ``image`` float32 (``C x h x w x D`` or ``C x h x w``), ``label`` float32 in {0, 1}
    with one channel (:data:`~.ops.IGNORE` on unannotated voxels of a set with an ``ignore``
    label; None without a label), and ``affine``, ``original_shape``, ``case`` and
    ``foreground_labels`` for the way back (:func:`restore_prediction`, :func:`restore_mask`).
    """
    spec = get_spec(dataset)
    if not isinstance(case.get("image"), np.ndarray):
        case = load_case(spec, case)
    fg, _ = spec.resolve_labels(foreground_label)
    image, label = case["image"], case["label"]
    if spec.volumetric:
        fit = spec.spatial_size
        if whole:
            fit = tuple(max(n, s) for n, s in zip(image.shape[1:3], fit))
        size = (*fit, -1)
        inside = tuple(min(n, s) for n, s in zip(image.shape[1:3], fit))
        # statistics over the whole volume, applied to the crop only: the same as normalising
        # first and cropping after, for a fraction of the work; padding after normalising keeps
        # it 0 whatever the scheme (z-score leaves zeros at 0 anyway)
        stats = volume_stats(image, spec.channel_norms)
        cropped = crop_or_pad_center(image, (*inside, -1))
        image = crop_or_pad_center(normalize_channels(cropped, spec.channel_norms, stats), size)
        if label is not None:  # padding is not annotated where the data set marks unannotated voxels
            label = binarize(crop_or_pad_center(label, size, spec.ignore_label or 0), fg, spec.ignore_label)[
                None
            ].astype(np.float32)
    else:
        if spec.normalization:  # own 2-D images: each channel as its name says
            image = normalize_channels(image, spec.channel_norms)
        else:  # CityScapes: RGB / 255
            image = image.astype(np.float32) / np.float32(255.0)
        # 'area' averages when shrinking (CityScapes); own images smaller than the size are interpolated
        smaller = spec.name == "nnunet" and any(n < s for n, s in zip(image.shape[1:], spec.spatial_size))
        image = resize_2d(image, spec.spatial_size, "bilinear" if smaller else "area")
        if label is not None:
            label = binarize(
                resize_2d(label[None], spec.spatial_size, "nearest-exact"), fg, spec.ignore_label
            ).astype(np.float32)
    return {
        "case": case["case"],
        "image": image,
        "label": label,
        "affine": case["affine"],
        "original_shape": case["original_shape"],
        "foreground_labels": fg,
    }


def restore_prediction(
    dataset: str | DatasetSpec, prediction: np.ndarray, original_shape: Sequence[int]
) -> np.ndarray:
    """Map a prediction on the preprocessed grid (``... x h x w [x D]``) back to the case's
    original spatial shape: the inverse centre crop (zeros outside, dtype kept) for volumes
    (BRATS, ISLES, own volumes), a bilinear resize (float32, :func:`~.ops.resize_probabilities`)
    for 2-D images (CityScapes, own PNGs).

    For 2-D images pass foreground *probabilities* and cut the result at the threshold on the
    original grid (:func:`restore_mask`): that is how inference writes its masks and probability
    maps and how evaluation scores own 2-D images on their pixels. A 0/1 mask cut on the small
    grid comes back blurred at its steps (values between 0 and 1), not as a smooth outline."""
    spec = get_spec(dataset)
    if spec.volumetric:
        return uncrop_center(prediction, original_shape)
    return resize_probabilities(prediction, tuple(original_shape))


def restore_mask(
    dataset: str | DatasetSpec,
    probabilities: np.ndarray,
    original_shape: Sequence[int],
    threshold: float = 0.5,
) -> np.ndarray:
    """The uint8 0/1 mask on the case's original grid of foreground ``probabilities`` on the
    preprocessed grid: ``restore_prediction(probabilities) > threshold``.

    2-D images: the probabilities resized bilinearly to the image's size and cut there (smooth
    outlines, not the 8 x 8 pixel steps of a nearest-neighbour resize of the small mask on a
    CityScapes frame). Volumes: cut on the network's grid and uncropped, the same mask without a
    float copy of the acquired volume."""
    spec = get_spec(dataset)
    if spec.volumetric:
        cut = (np.asarray(probabilities) > threshold).astype(np.uint8)
        return uncrop_center(cut, original_shape)
    return (restore_prediction(spec, probabilities, original_shape) > threshold).astype(np.uint8)
