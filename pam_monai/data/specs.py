"""What each data set is: channel order, label rule, preprocessing geometry and default split.

``DATASETS`` maps a name ("brats", "isles", "cityscapes") to a :class:`DatasetSpec`. Everything
else in :mod:`pam_monai.data` reads its facts from here, so a channel order or a crop size is
written down exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .intensity import ChannelNorm

__all__ = ["DATASETS", "DatasetSpec", "get_spec"]


@dataclass(frozen=True)
class DatasetSpec:
    """Facts about one data set.

    Attributes:
        name: registry key.
        title: human-readable name.
        target: what the binary foreground is.
        channels: the image channels in the order they are stacked (the datalist's ``image``
            list follows this order for the NIfTI data sets; CityScapes has one RGB file).
        label_name: what the label file is called in the layout (BRATS ``seg``, ISLES ``OT``,
            CityScapes ``labelIds``).
        volumetric: True for 3-D volumes sliced axially, False for 2-D images.
        crop_size: in-plane centre crop (pad when smaller) of volumes, (H, W) = (axis 0, axis 1)
            of the NIfTI voxel array.
        resize: (H, W) of 2-D images after resizing (CityScapes: 128 x 256, i.e. 256 wide).
        foreground_labels: label values that make the binary target's foreground by default.
        label_values: every label value the data set may contain under its default convention.
        flip_axis: the tensor axis of a ``C x H x W`` sample (or ``B x C x H x W`` batch) that a
            horizontal (left-right) flip reverses: -2 for BRATS and ISLES, whose NIfTI axis 0 is
            the patient's left-right axis; -1 (image width) for CityScapes.
        split: the default split, in words.
        epochs, batch_size, lr: the paper's Table 2 training settings.
        label_names: named labels (``(name, values)`` pairs) that ``foreground_label`` may use
            instead of numbers (own data: the nnU-Net ``dataset.json`` labels).
        inference_fit: what inference does with a volume whose in-plane size is not the crop:
            ``"crop"`` (the paper's data sets: larger ones are centre-cropped, smaller ones
            zero-padded, as in training; the prediction is cut back to the input's grid) or ``"pad"`` (own data, whose default crop is at least the training volumes'
            size: smaller ones are zero-padded, larger ones segmented whole by a sliding window of
            the crop, in evaluation too); ``"resize"`` (own 2-D images: resized to the trained size and
            the prediction back).
        normalization: one :class:`~.intensity.ChannelNorm` per channel (own data: chosen by the
            channel names, CT with the training set's statistics); empty: the paper's per-volume
            z-score over non-zero voxels for every channel.
        image_files: image files per case (own 2-D images: 1 when one RGB file holds the three
            channels); 0: one file per channel (CityScapes: its single RGB file, by its reader).
        file_ending: own data's image file type (``.nii.gz``, ``.png``, ...); empty for the paper's.
        ignore_label: the label value of unannotated voxels (own data: nnU-Net's ``"ignore"``
            label); the binary target marks them :data:`~.ops.IGNORE` and the loss and the
            metrics leave them out. None: every voxel is annotated.
    """

    name: str
    title: str
    target: str
    channels: tuple[str, ...]
    label_name: str
    volumetric: bool
    crop_size: tuple[int, int] | None
    resize: tuple[int, int] | None
    foreground_labels: tuple[int, ...]
    label_values: tuple[int, ...]
    flip_axis: int
    split: str
    epochs: int
    batch_size: int
    lr: float
    label_names: tuple[tuple[str, tuple[int, ...]], ...] = ()
    inference_fit: str = "crop"
    normalization: tuple[ChannelNorm, ...] = ()
    image_files: int = 0
    file_ending: str = ""
    ignore_label: int | None = None

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    @property
    def channel_norms(self) -> tuple[ChannelNorm, ...]:
        """The normalisation of each channel (:attr:`normalization`, or z-score for all)."""
        return self.normalization or (ChannelNorm(),) * self.in_channels

    @property
    def spatial_size(self) -> tuple[int, int]:
        """(H, W) of one preprocessed 2-D sample."""
        size = self.crop_size if self.volumetric else self.resize
        assert size is not None
        return size

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``C x H x W`` of one preprocessed 2-D training sample (the paper's input shape)."""
        return (self.in_channels, *self.spatial_size)

    def resolve_labels(
        self, foreground_label: int | Sequence[int] | None = None
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Return ``(foreground_labels, allowed_label_values)`` for a foreground choice.

        Only BRATS has a choice: the enhancing tumour is label 4 up to BraTS 2020 and label 3 from
        BraTS 2021 on (where the label set becomes {0, 1, 2, 3}). ``None`` keeps the default.
        """
        if foreground_label is None:
            return self.foreground_labels, self.label_values
        fg = self._label_values_of(foreground_label)
        if self.name == "brats":
            if fg == (4,):
                return fg, (0, 1, 2, 4)
            if fg == (3,):
                return fg, (0, 1, 2, 3)
            raise ValueError(
                f"BRATS enhancing tumour is label 4 (2018) or 3 (BraTS 2021+), got {foreground_label!r}"
            )
        if not set(fg) <= set(self.label_values):
            raise ValueError(f"{self.name}: foreground {fg} not among its label values {self.label_values}")
        if 0 in fg and self.label_names:
            raise ValueError(f"{self.name}: label 0 is the background, it cannot be the foreground")
        if self.ignore_label is not None and self.ignore_label in fg:
            raise ValueError(
                f"{self.name}: label {self.ignore_label} is the 'ignore' label (unannotated voxels), it cannot be the "
                "foreground"
            )
        return fg, self.label_values

    def _label_values_of(self, foreground_label) -> tuple[int, ...]:
        """Label values of a number, a label name, or a list of them (own data's names)."""
        items = (
            list(foreground_label)
            if isinstance(foreground_label, (list, tuple, np.ndarray))
            else [foreground_label]
        )
        names = {name.lower(): values for name, values in self.label_names}
        values: list[int] = []
        for item in items:
            if isinstance(item, str) and item.strip().lower() in names:
                values += names[item.strip().lower()]
                continue
            try:
                number = float(item)
            except (TypeError, ValueError):
                number = float("nan")
            if not number.is_integer():
                known = (
                    f"; its labels: {', '.join(repr(n) for n, _ in self.label_names)}"
                    if self.label_names
                    else ""
                )
                raise ValueError(f"{self.name}: unknown foreground label {item!r}{known}")
            values.append(int(number))
        return tuple(sorted(set(values)))

    def with_crop(self, crop_size: Sequence[int] | None) -> DatasetSpec:
        """This spec with another in-plane crop (volumetric data sets), or for own 2-D images
        another size to resize them to; None keeps it."""
        if crop_size is None:
            return self
        size = tuple(int(v) for v in np.atleast_1d(crop_size))
        size = size * 2 if len(size) == 1 else size  # one number: a square crop
        resized = not self.volumetric and self.name == "nnunet"  # own 2-D images: the resize
        if not self.volumetric and not resized:
            raise ValueError(
                f"{self.name}: crop_size applies to volumes; images are resized to {self.resize}"
            )
        if len(size) != 2 or min(size) < 16:
            raise ValueError(
                f"{self.name}: crop_size must be two in-plane sizes of at least 16, got {crop_size!r}"
            )
        return replace(self, crop_size=size, resize=size if resized else self.resize)

    def foreground(
        self, label: np.ndarray, foreground_label: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """Boolean foreground mask of a label array."""
        fg, _ = self.resolve_labels(foreground_label)
        return np.isin(label, fg)


DATASETS: dict[str, DatasetSpec] = {
    "brats": DatasetSpec(
        name="brats",
        title="BRATS 2018 (HGG), enhancing tumour",
        target="enhancing tumour",
        channels=("flair", "t1", "t1ce", "t2"),
        label_name="seg",
        volumetric=True,
        crop_size=(160, 160),
        resize=None,
        foreground_labels=(4,),
        label_values=(0, 1, 2, 4),
        flip_axis=-2,
        split="5-fold case-wise cross-validation: test = fold k, validation = fold (k+1) % 5, training = the other three",
        epochs=80,
        batch_size=50,
        lr=1e-4,
    ),
    "isles": DatasetSpec(
        name="isles",
        title="ISLES 2018 (CT perfusion), stroke lesion",
        target="stroke lesion",
        channels=("CBF", "MTT", "CBV", "Tmax"),
        label_name="OT",
        volumetric=True,
        crop_size=(224, 224),
        resize=None,
        foreground_labels=(1,),
        label_values=(0, 1),
        flip_axis=-2,
        split="seeded random case split 0.7 / 0.1 / 0.2 (training / validation / test)",
        epochs=60,
        batch_size=80,
        lr=1e-3,
    ),
    "cityscapes": DatasetSpec(
        name="cityscapes",
        title="CityScapes, vehicles (labelIds 26-33) vs background",
        target="vehicle",
        channels=("R", "G", "B"),
        label_name="labelIds",
        volumetric=False,
        crop_size=None,
        resize=(128, 256),
        foreground_labels=tuple(range(26, 34)),
        label_values=tuple(range(0, 34)),
        flip_axis=-1,
        split="'train' cities for training with one city held out for validation; 'val' cities as the test set",
        epochs=100,
        batch_size=8,
        lr=2e-4,
    ),
}


def get_spec(
    dataset: str | DatasetSpec,
    root: str | os.PathLike | None = None,
    crop_size: Sequence[int] | None = None,
) -> DatasetSpec:
    """Look a data set up by name (case-insensitive); a spec passes through.

    ``"nnunet"`` (own data in the nnU-Net v2 raw layout) is read from ``<root>/dataset.json``
    (:func:`pam_monai.data.nnunet.nnunet_spec`); ``root`` is ignored for the paper's data sets.
    ``crop_size`` replaces the in-plane crop of a volumetric data set.
    """
    if isinstance(dataset, DatasetSpec):
        return dataset.with_crop(crop_size)
    key = str(dataset).lower()
    if key == "nnunet":
        if root is None:
            raise ValueError("nnunet: own data is described by its dataset.json; pass the data set's root")
        from .nnunet import nnunet_spec

        return nnunet_spec(root, crop_size=crop_size)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted([*DATASETS, 'nnunet'])}")
    return DATASETS[key].with_crop(crop_size)
