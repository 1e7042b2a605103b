"""The paper's preprocessing as MONAI dictionary transforms, for users' own configs.

- :class:`NormalizeNonZerod`: ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, float32:
  per channel z-score over the non-zero voxels, zeros stay zero, zero variance divides by 1.
- :class:`NormalizeChannelsd`: own data's normalisation per channel (:mod:`.intensity`) from MONAI
  pieces: CT is a clip and ``NormalizeIntensity(subtrahend=mean, divisor=std)``,
  ``rescale_to_0_1`` is ``ScaleIntensity``, the z-score is ``NormalizeIntensity(nonzero=True)``.
- :class:`CenterCropOrPadd`: ``ResizeWithPadOrCrop`` on the first ``len(roi_size)`` spatial axes
  only (other spatial axes, e.g. the axial one of a volume, keep their size), so one config works
  for 2-D slices and 3-D volumes.
- :class:`BinarizeLabeld`: float32 ``1`` where the label is one of ``foreground``, ``IGNORE`` (2) where
  it is the ``ignore`` label (unannotated), else ``0``.
- Random horizontal flips: MONAI's ``RandFlipd(prob=0.5, spatial_axis=...)`` per sample, or
  :func:`~pam_monai.data.ops.random_flip_batch` on collated batches (any device).

:func:`get_preprocess_transforms` composes the whole chain for a data set from its file paths.
It is the readable reference that the fast numpy path (:mod:`.ops`, :mod:`.preprocess`) is
tested against; training uses :class:`~pam_monai.data.slices.SliceDataset` instead, because
per-slice MONAI chains cost ~6 ms per slice.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor, PILReader, get_track_meta
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Identity,
    LoadImaged,
    MapTransform,
    NormalizeIntensity,
    NormalizeIntensityd,
    RandFlipd,
    Resize,
    Resized,
    ResizeWithPadOrCrop,
    ScaleIntensity,
    ScaleIntensityRange,
    ScaleIntensityRanged,
)
from monai.utils import MetaKeys, SpaceKeys, convert_to_tensor, ensure_tuple

from .files import as_read_mode
from .intensity import ChannelNorm
from .ops import IGNORE
from .specs import DatasetSpec, get_spec

__all__ = [
    "BinarizeLabeld",
    "CenterCropOrPadd",
    "NormalizeChannelsd",
    "NormalizeNonZerod",
    "get_preprocess_transforms",
    "get_train_transforms",
]


class NormalizeNonZerod(NormalizeIntensityd):
    """Per-channel z-score over the non-zero voxels (float32), guarding zero variance.

    MONAI's ``NormalizeIntensityd(keys, nonzero=True, channel_wise=True)``: zeros (background)
    stay zero, a channel of one constant non-zero value becomes 0 there (std 0 -> divide by 1),
    an all-zero channel is unchanged.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(
            keys, nonzero=True, channel_wise=True, dtype=np.float32, allow_missing_keys=allow_missing_keys
        )


class _ClipStandardise:
    """CT: clip to ``[lower, upper]``, then ``(x - mean) / std``. A class, not a closure: transforms
    must pickle to reach DataLoader workers that are spawned (the default on macOS and Windows)."""

    def __init__(self, norm: ChannelNorm) -> None:
        self.lower, self.upper = norm.lower, norm.upper
        self.standardise = NormalizeIntensity(subtrahend=norm.mean, divisor=norm.std, dtype=np.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardise(torch.clamp(x, self.lower, self.upper))


def _channel_transform(norm: ChannelNorm):
    if norm.scheme == "zscore":
        return NormalizeIntensity(nonzero=True, dtype=np.float32)
    if norm.scheme == "zscore_all":
        return NormalizeIntensity(nonzero=False, dtype=np.float32)
    if norm.scheme == "ct":
        return _ClipStandardise(norm)
    if norm.scheme == "rescale_to_0_1":
        return ScaleIntensity(minv=0.0, maxv=1.0, dtype=np.float32)
    if norm.scheme == "rgb_to_0_1":
        return ScaleIntensityRange(0.0, 255.0, 0.0, 1.0, dtype=np.float32)
    return Identity()  # nonorm


class NormalizeChannelsd(MapTransform):
    """Normalise each channel as its :class:`~pam_monai.data.intensity.ChannelNorm` says (a
    spec's ``channel_norms``; own data: chosen by the channel names, as nnU-Net does)."""

    def __init__(
        self, keys: KeysCollection, norms: Sequence[ChannelNorm], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.norms = tuple(ChannelNorm(*n) for n in norms)
        self.transforms = [_channel_transform(n) for n in self.norms]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], dtype=torch.float32, track_meta=True)
            if image.shape[0] != len(self.norms):
                raise ValueError(f"{key}: {image.shape[0]} channels, but {len(self.norms)} normalisations")
            out = image.clone()  # keeps the MetaTensor's affine
            for c, transform in enumerate(self.transforms):
                out[c : c + 1] = convert_to_tensor(transform(image[c : c + 1]), dtype=torch.float32)
            d[key] = out
        return d


class ResizeImaged(MapTransform):
    """MONAI's ``Resize`` to ``spatial_size`` with ``area`` when shrinking and ``bilinear`` when
    enlarging (own 2-D images of varying size)."""

    def __init__(
        self, keys: KeysCollection, spatial_size: Sequence[int], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(v) for v in spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            smaller = any(n < s for n, s in zip(d[key].shape[1:], self.spatial_size))
            mode = "bilinear" if smaller else "area"
            d[key] = Resize(self.spatial_size, mode=mode, anti_aliasing=False)(d[key])
        return d


class CenterCropOrPadd(MapTransform):
    """Centre crop (or pad with ``pad_value``, default 0, when smaller) the first ``len(roi_size)``
    spatial axes.

    Wraps MONAI's ``ResizeWithPadOrCrop``; spatial axes beyond ``roi_size`` keep their size, so
    ``roi_size=(160, 160)`` crops a ``C x 240 x 240`` slice and a ``C x 240 x 240 x 155`` volume
    alike (BRATS rows and columns 40:200).
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        pad_value: float = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.roi_size = tuple(int(s) for s in roi_size)
        self.pad_value = pad_value

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            extra = d[key].ndim - 1 - len(self.roi_size)
            size = (*self.roi_size, *([-1] * extra))
            d[key] = ResizeWithPadOrCrop(spatial_size=size, value=self.pad_value)(d[key])
        return d


class BinarizeLabeld(MapTransform):
    """Binary float32 target: 1 where the label is one of ``foreground`` (e.g. ``(4,)`` for the
    BRATS 2018 enhancing tumour, ``(3,)`` from BraTS 2021, ``range(26, 34)`` for CityScapes
    vehicles), :data:`~pam_monai.data.ops.IGNORE` where it is ``ignore`` (unannotated voxels of
    own data), 0 elsewhere. A MetaTensor label keeps its metadata (affine, spacing)."""

    def __init__(
        self,
        keys: KeysCollection,
        foreground: int | Sequence[int],
        ignore: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.foreground = tuple(int(v) for v in np.atleast_1d(np.asarray(foreground)))
        self.ignore = ignore

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            # a MetaTensor stays one, with its affine, as MONAI's transforms keep it
            label = convert_to_tensor(d[key], track_meta=isinstance(d[key], MetaTensor) and get_track_meta())
            fg = torch.as_tensor(self.foreground, dtype=label.dtype, device=label.device)
            out = torch.isin(label, fg).to(torch.float32)
            if self.ignore is not None:
                out = out.masked_fill(label == self.ignore, float(IGNORE))
            d[key] = out
        return d


class SimpleITKVolumeReader(ImageReader):
    """MONAI image reader of MetaImage / NRRD volumes through SimpleITK (MONAI's own ITKReader
    needs the ``itk`` package): the arrays and RAS affine of :func:`~pam_monai.data.files.load_volume`,
    i.e. what ``NibabelReader`` gives for the same image as NIfTI; several files stack as channels."""

    def verify_suffix(self, filename) -> bool:
        from .files import SITK_SUFFIXES

        return all(str(f).lower().endswith(SITK_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        from .files import load_volume

        return [load_volume(f) for f in ensure_tuple(data)]

    def get_data(self, img):
        arrays, affine = [a for a, _ in img], img[0][1]
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0 if len(arrays) > 1 else "no_channel",
            MetaKeys.SPACE: SpaceKeys.RAS,
        }
        return (np.stack(arrays) if len(arrays) > 1 else arrays[0]), meta


def _volume_reader(spec: DatasetSpec):
    from .files import SITK_SUFFIXES

    return SimpleITKVolumeReader() if spec.file_ending.lower() in SITK_SUFFIXES else "NibabelReader"


def get_preprocess_transforms(
    dataset: str | DatasetSpec,
    foreground_label: int | Sequence[int] | None = None,
    keys: tuple[str, str] = ("image", "label"),
) -> Compose:
    """The paper's preprocessing of one datalist item as a MONAI chain (load -> normalise ->
    crop/resize -> binarise). Output: image ``C x H x W x D`` (volumes; ``C x H x W`` for
    CityScapes) float32, label ``1 x ...`` float32 in {0, 1}.

    This is the readable reference; training uses :class:`~pam_monai.data.slices.SliceDataset`,
    which computes the same result once per volume with numpy (a test checks they agree).
    """
    spec = get_spec(dataset)
    image_key, label_key = keys
    fg, _ = spec.resolve_labels(foreground_label)
    if spec.volumetric:
        return Compose(
            [
                # own .mha / .nrrd volumes: SimpleITK, as the numpy path reads them
                LoadImaged(keys, image_only=True, ensure_channel_first=True, reader=_volume_reader(spec)),
                EnsureTyped(keys, dtype=torch.float32, track_meta=True),
                NormalizeChannelsd(image_key, spec.normalization)
                if spec.normalization
                else NormalizeNonZerod(image_key),
                CenterCropOrPadd(image_key, roi_size=spec.spatial_size),
                # padding is not annotated: the ignore label's value where the data set has one
                CenterCropOrPadd(label_key, roi_size=spec.spatial_size, pad_value=spec.ignore_label or 0),
                BinarizeLabeld(label_key, foreground=fg, ignore=spec.ignore_label),
            ]
        )
    if spec.name == "nnunet":  # own 2-D images: grey files stacked as channels, or one colour file
        return Compose(
            [
                # images as load_png reads them (RGBA, palette, CMYK -> RGB; grey + alpha -> grey);
                # labels as stored (a palette label's indices are its values)
                LoadImaged(
                    image_key,
                    image_only=True,
                    reader=PILReader(converter=as_read_mode, reverse_indexing=False),
                ),
                LoadImaged(label_key, image_only=True, reader="PILReader", reverse_indexing=False),
                EnsureChannelFirstd(image_key),  # the reader's metadata: colour, grey, or grey files stacked
                EnsureChannelFirstd(label_key, channel_dim="no_channel"),
                EnsureTyped(keys, dtype=torch.float32, track_meta=True),
                NormalizeChannelsd(image_key, spec.channel_norms),
                ResizeImaged(image_key, spatial_size=spec.spatial_size),
                Resized(label_key, spatial_size=spec.spatial_size, mode="nearest-exact"),
                BinarizeLabeld(label_key, foreground=fg, ignore=spec.ignore_label),
            ]
        )
    return Compose(
        [
            # frames as load_png reads them (RGBA, palette -> RGB), labels as stored
            LoadImaged(
                image_key, image_only=True, reader=PILReader(converter=as_read_mode, reverse_indexing=False)
            ),
            LoadImaged(label_key, image_only=True, reader="PILReader", reverse_indexing=False),
            EnsureChannelFirstd(image_key, channel_dim=-1),
            EnsureChannelFirstd(label_key, channel_dim="no_channel"),
            EnsureTyped(keys, dtype=torch.float32, track_meta=True),
            ScaleIntensityRanged(image_key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
            Resized(image_key, spatial_size=spec.spatial_size, mode="area"),
            Resized(label_key, spatial_size=spec.spatial_size, mode="nearest-exact"),
            BinarizeLabeld(label_key, foreground=fg, ignore=spec.ignore_label),
        ]
    )


def get_train_transforms(
    dataset: str | DatasetSpec,
    foreground_label: int | Sequence[int] | None = None,
    keys: tuple[str, str] = ("image", "label"),
    flip_prob: float = 0.5,
) -> Compose:
    """:func:`get_preprocess_transforms` plus the paper's random horizontal (left-right) flip."""
    spec = get_spec(dataset)
    chain = get_preprocess_transforms(spec, foreground_label, keys)
    # the flip axis as a spatial index of the loaded array (axis 0 of the NIfTI volume; image width)
    spatial_axis = 0 if spec.volumetric else 1
    return Compose([*chain.transforms, RandFlipd(keys, prob=flip_prob, spatial_axis=spatial_axis)])
