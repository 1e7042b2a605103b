"""Validate a data set before a long training run.

:func:`check_dataset` reads every file of every case, collects *all* problems (one bad case does
not hide the others) and summarises each case after preprocessing. Problems name the case, the
file and what is wrong, e.g. ``Brats18_X: Brats18_X_t1.nii.gz: missing modality 't1'``:

- layout: data folder missing or empty, empty case folder, missing or ambiguous channel or label;
- files: unreadable or truncated, not an RGB image (CityScapes);
- geometry: shape or affine of a channel or the label differing from the first channel;
- values: NaN or Inf voxels, image voxels past float32's range (float64 files), label values outside the data set's set (BRATS 2018 {0,1,2,4}, or
  {0,1,2,3} with ``foreground_label=3``; ISLES {0,1}; CityScapes labelIds 0-33; own data: the
  values of its ``dataset.json``), non-integer labels, a BRATS modality that holds a label map
  or mask (a handful of integer values: the segmentation given in an image's place), a CityScapes frame
  of a handful of colours (``gtFine_color`` given for ``leftImg8bit``);
- a datalist (``datalist=``, the bundles' ``data_list_file_path``): entries with another number of
  image files than the data set's channels, files that do not exist, channel files in another
  order than the data set's, a case listed twice, a list of entries under a key that no split reads
  (``traning``, ``testing``); files no case of the layout holds are read and
  checked as above. These problems name the datalist and the case. With ``datalist_splits`` (training
  and evaluation) only the entries of those splits have their files and labels checked.

Warnings (not failures): no foreground in a case, foreground outside the centre crop, an all-zero
or constant channel, a case ID that begins or ends with white space, an ISLES perfusion map of a
handful of integer values (stored coarsely, or a mask); own data: an image channel that looks like
a label map, a volume whose thickest voxel axis is not the third, an EXIF-turned image, foreground
lost in a 2-D image's resize.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from .cityscapes import SPLITS as CITYSCAPES_SPLITS
from .datalist import (
    FOLDED,
    NO_SPLIT_PROBLEM,
    datalist_n_folds,
    entry_case,
    fold_kind,
    load_datalist,
    split_entries,
)
from .files import (
    EXIF_TURNS,
    UnreadableFile,
    exif_orientation,
    load_png,
    load_volume,
    volume_affine,
    voxel_spacing,
)
from .layout import CaseFiles, Problem, ScanResult, nnunet_layout_note, scan_cases
from .nnunet import NoTrainingImages
from .ops import center_offsets, crop_or_pad_center
from .preprocess import channels_first_2d, preprocess_case
from .specs import DatasetSpec, get_spec

__all__ = ["CaseSummary", "CheckReport", "check_dataset", "check_images", "check_label_values"]


@dataclass
class CaseSummary:
    """One case after preprocessing (``shape`` is None when the case could not be read)."""

    case: str
    shape: tuple[int, ...] | None = None  # preprocessed image, C x h x w [x D]
    foreground: int | None = None  # foreground voxels at full resolution
    foreground_slices: int | None = None  # axial slices with foreground (CityScapes: 1 or 0)
    foreground_kept: int | None = None  # foreground voxels after the crop / resize
    unannotated: int | None = None  # voxels of the 'ignore' label (own data with sparse annotations)
    voxels: int | None = None  # voxels of the label map
    orientation: str | None = None  # volumes: the axis codes of the affine, e.g. "RAS"
    spacing: str | None = None  # volumes: voxel sizes along the array axes, mm (e.g. "1x1x1")
    ok: bool = True

    @property
    def inside_crop(self) -> bool | None:
        """Whether the crop keeps all foreground (None for resized CityScapes frames)."""
        if (
            self.foreground is None
            or self.foreground_kept is None
            or self.shape is None
            or len(self.shape) == 3
        ):
            return None
        return self.foreground_kept == self.foreground


@dataclass
class CheckReport:
    dataset: str
    root: str
    cases: list[CaseSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    volumetric: bool = True
    normalization: list[str] = field(default_factory=list)  # own data: each channel's scheme
    notes: list[str] = field(default_factory=list)  # the likely cause of many problems, read last
    missing: list[str] = field(default_factory=list)  # datalist entries whose files are not on disk

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, case: str) -> CaseSummary:
        return next(c for c in self.cases if c.case == case)

    def format(self) -> str:
        """The per-case table, then warnings and problems, then a one-line verdict."""
        volumetric = self.volumetric
        head = (
            "case",
            "status",
            "shape after preprocessing",
            "fg voxels" if volumetric else "fg pixels",
            "fg slices" if volumetric else "fg after resize",
            "inside crop" if volumetric else "",
        )
        rows = [head]
        for c in self.cases:

            def n(v):
                return "-" if v is None else f"{v:,}"

            shape = "x".join(map(str, c.shape)) if c.shape else "-"
            last = {True: "yes", False: "NO", None: "-"}[c.inside_crop] if volumetric else ""
            rows.append(
                (
                    c.case,
                    "ok" if c.ok else "FAILED",
                    shape,
                    n(c.foreground),
                    n(c.foreground_slices if volumetric else c.foreground_kept),
                    last,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [
            "  ".join(
                v.rjust(w) if i in (3, 4) else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))
            ).rstrip()
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines += self.normalization
        lines += self.geometry_lines()
        sparse = [c for c in self.cases if c.unannotated is not None]
        if sparse:
            share = sum(c.unannotated for c in sparse) / max(sum(c.voxels for c in sparse), 1)
            lines.append(
                f"sparse annotations: {share:.1%} of the label voxels are unannotated ('ignore'); the loss and the "
                "metrics leave them out"
            )
        lines += [f"WARNING {w}" for w in self.warnings]
        lines += [f"ERROR {p}" for p in self.problems]
        lines += [f"NOTE {n}" for n in self.notes]
        # cases that failed, and names the scan found problems with (files outside any complete case)
        failed = len({c.case for c in self.cases if not c.ok} | {p.case for p in self.problems})
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"{verdict}: {self.dataset} under {self.root}: {self._cases_counted(failed)}, "
            f"{_count(len(self.problems), 'problem')}, {_count(len(self.warnings), 'warning')}"
        )
        return "\n".join(lines)

    def _cases_counted(self, failed: int) -> str:
        """``3 cases, 1 with problems``; with datalist entries not on disk, which are among those with
        problems but not among the cases, ``1 case on disk, 4 with problems (3 listed but missing)``
        (it read "1 case, 4 with problems")."""
        if not self.missing:
            return f"{_count(len(self.cases), 'case')}, {failed} with problems"
        return (
            f"{_count(len(self.cases), 'case')} on disk, {failed} with problems "
            f"({len(set(self.missing))} listed but missing)"
        )

    def geometry_lines(self) -> list[str]:
        """The voxel spacings and orientations (affine axis codes) of the volumes, one line each."""
        lines = []
        spaced = Counter(c.spacing for c in self.cases if c.spacing)
        if spaced:
            shown = spaced.most_common(5)
            line = "voxel spacing (mm): " + ", ".join(f"{v} ({_count(n, 'case')})" for v, n in shown)
            if len(spaced) > len(shown):
                # ISLES 2018: nearly every case has a spacing of its own; say what the five leave out
                others = sum(spaced.values()) - sum(n for _, n in shown)
                line += f", {len(spaced) - len(shown)} other spacings ({_count(others, 'case')}); {_spacing_range(spaced)}"
            lines.append(line)
        oriented = Counter(c.orientation for c in self.cases if c.orientation)
        if oriented:
            lines.append(
                "orientation (affine axis codes): " + ", ".join(f"{o} {n}" for o, n in oriented.most_common())
            )
        return lines

    def log(self, logger, max_warnings: int = 10) -> None:
        """Log the spacings and orientations (INFO) and the warnings (WARNING, at most
        ``max_warnings``; ``python -m pam_monai check`` lists them all), as training does."""
        for line in self.geometry_lines():
            logger.info("%s: %s", self.dataset, line)
        for w in self.warnings[:max_warnings]:
            logger.warning("%s: %s", self.dataset, w)
        if len(self.warnings) > max_warnings:
            logger.warning(
                "%s: %d more warnings: python -m pam_monai check --dataset %s --root %s lists them all",
                self.dataset,
                len(self.warnings) - max_warnings,
                self.dataset,
                self.root,
            )

    def raise_if_failed(self) -> None:
        """Raise ``ValueError`` listing the problems (for training scripts that check up front)."""
        if not self.ok:
            raise ValueError("data check failed:\n" + "\n".join([*map(str, self.problems), *self.notes]))


def _count(n: int, word: str) -> str:
    """``1 case``, ``2 cases``: the summary's counts."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def fractional_values(array: np.ndarray) -> np.ndarray:
    """The distinct non-integer values of ``array`` (none for an integer array), e.g. those of an
    interpolated mask or of a probability map given for a mask."""
    if not np.issubdtype(array.dtype, np.floating):
        return array[:0]
    values = np.unique(array)
    return values[values != np.round(values)]


def check_label_values(label: np.ndarray, allowed: Sequence[int], own_data: bool = True) -> str | None:
    """None when every value of ``label`` is an integer in ``allowed``, else the message.

    ``own_data``: the labels are named in a ``dataset.json`` (nnU-Net layout), so a value can be
    named there; the paper's data sets have fixed label values, and the message says so."""
    values = np.unique(label)
    fractional = fractional_values(values)
    if fractional.size:
        return (
            f"non-integer label values {fractional[:5].tolist()} (an interpolated mask): "
            "resample label maps by nearest neighbour, or round them to the label values"
        )
    bad = sorted(set(values.tolist()) - set(allowed))
    if bad:
        shown = ", ".join(str(int(b) if float(b).is_integer() else b) for b in bad[:10])
        hint = ""
        if tuple(allowed) == (0, 1, 2, 4) and bad == [3]:  # BRATS 2018 rules on BraTS 2021+ labels
            hint = "; BraTS 2021+ labels: pass foreground_label=3 (bundles: --foreground_label 3)"
        elif bad == [255] and set(values.tolist()) <= {0, 255}:  # masks saved for viewing (ISIC, Kvasir)
            if own_data:
                hint = '; a 0 / 255 mask: name 255 in dataset.json\'s labels (e.g. "lesion": 255), or save the masks as 0 / 1'
            elif tuple(allowed) == (0, 1):  # ISLES: no dataset.json to name 255 in
                hint = "; a 0 / 255 mask: save it as 0 / 1, e.g. nibabel's (mask > 0).astype('uint8')"
        return f"unexpected label values {shown} (allowed {', '.join(map(str, allowed))}{hint})"
    return None


def orientation(affine) -> str:
    """The axis codes of a volume's affine (nibabel's convention), e.g. ``"RAS"`` or ``"LPS"``."""
    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=float)))


def usual_orientation(dataset: str | DatasetSpec, items: Sequence[dict]) -> str | None:
    """The most common orientation of the volumes among datalist ``items`` (their first image's
    header), which training records in ``model.json`` so that inference can name cases stored
    otherwise (BraTS as shipped: LPS); None for 2-D images."""
    affines = _first_image_affines(dataset, items)
    return Counter(map(orientation, affines)).most_common(1)[0][0] if affines else None


def _first_image_affines(dataset: str | DatasetSpec, items: Sequence[dict]) -> list[np.ndarray]:
    """The affines of the first image of each datalist item (headers only); none for 2-D images."""
    if not get_spec(dataset).volumetric:
        return []
    first = [it["image"][0] if isinstance(it["image"], (list, tuple)) else it["image"] for it in items]
    return [volume_affine(f) for f in first]


def orientation_problem(case_orientation: str, usual: str, usual_of: str) -> str | None:
    """Volumes reach the 2-D network as stored (training flips left-right only): a case stored
    in another orientation than ``usual`` is seen turned or mirrored. Says so, or None."""
    if not case_orientation or not usual or case_orientation == usual:
        return None
    return (
        f"orientation {case_orientation}, but {usual_of} are {usual}: its slices reach the network turned or "
        f"mirrored against those (training flips left-right only); store it as {usual} (nibabel: "
        f"img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt('{usual}'))); SimpleITK: "
        f"DICOMOrient to the LPS-based code of the same axes)"
    )


def _spacing_range(spacings) -> str:
    """``"all cases: 0.8-1 x 0.8-1 x 4-12"``: the smallest and largest voxel size along each axis
    of spacings written as :attr:`CaseSummary.spacing` (``"0.87x0.87x5"``)."""
    sizes = np.array([[float(v) for v in s.split("x")] for s in spacings])
    return "all cases: " + " x ".join(
        f"{lo:.3g}" if lo == hi else f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(sizes.min(0), sizes.max(0))
    )


def slice_axis_problem(affine) -> str | None:
    """Own volumes are sliced along array axis 2: a volume whose thickest voxel axis is another one
    (an export with the slice axis first) would be cut through its thick axis. Says so, or None."""
    if affine is None:
        return None
    spacing = voxel_spacing(affine)
    thick = _thick_axis_not_sliced(spacing)
    if thick is None:
        return None
    shown = " x ".join(f"{v:.3g}" for v in spacing)
    return (
        f"voxel spacing {shown} mm: its thickest axis is array axis {thick}, but volumes are sliced along array "
        f"axis 2 ({spacing[2]:.3g} mm), so its 2-D slices cut through the thick axis; store it with the thick "
        "(slice) axis third, as the training cases"
    )


def _thick_axis_not_sliced(spacing) -> int | None:
    """The array axis, other than the slice axis 2, whose voxels are at least twice axis 2's: the
    thick axis of a volume stored with its slice axis elsewhere; None when there is none."""
    thick = int(np.argmax(spacing))
    return None if thick == 2 or spacing[thick] < 2 * spacing[2] else thick


# data sets whose channels are all scanner images (MRI, CT perfusion maps) or photographs, never a mask
FIXED_MODALITIES = ("brats", "isles", "cityscapes")

# an image has hundreds of intensity values; a label map or mask a handful (BraTS: 0, 1, 2, 4)
LABEL_LIKE_VALUES = 16
# a photograph has thousands of colours; a colour drawing of labels (gtFine_color) one per class
LABEL_LIKE_COLOURS = 40
# a label map's values each cover many pixels; an image of a few dozen pixels has as many values
PIXELS_PER_LABEL = 4


def _distinct(data: np.ndarray, limit: int, colour: bool) -> np.ndarray | None:
    """The distinct values (``colour``: of the H x W x 3 image's RGB triples, one number each) of
    ``data``, or None when there are more than ``limit``; a sample of the voxels decides for every
    image in milliseconds."""
    flat = data.ravel(order="K")  # a view of a Fortran-ordered NIfTI array, no copy
    if colour:
        flat = (
            data[..., 0].astype(np.int32) << 16 | data[..., 1].astype(np.int32) << 8 | data[..., 2]
        ).reshape(-1)
    if flat.size == 0 or np.unique(flat[:: max(1, flat.size // 65536)]).size > limit:
        return None
    values = np.unique(flat)
    return values if values.size <= limit else None


def _normalised(spec: DatasetSpec, channel: str) -> bool:
    """Whether own data's ``channel`` is normalised as an image (z-score, CT), not kept as it is
    (``noNorm``) or rescaled (``rescale_to_0_1``, ``rgb_to_0_1``)."""
    norms = dict(zip(spec.channels, spec.channel_norms))
    return channel in norms and norms[channel].scheme in ("zscore", "zscore_all", "ct")


def _as_stored(spec: DatasetSpec, channel: str) -> bool:
    """Whether own data's ``channel`` goes to the network as stored (``noNorm``: a mask or a map)."""
    norms = dict(zip(spec.channels, spec.channel_norms))
    return spec.name == "nnunet" and channel in norms and norms[channel].scheme == "nonorm"


def label_like(data: np.ndarray, channel: str, colour: bool = False) -> str | None:
    """The message when the ``channel`` image holds a label map or mask rather than an image: 2 to
    :data:`LABEL_LIKE_VALUES` distinct values, all integers (``<case>_seg.nii.gz`` given for a
    modality: the network would segment it without a word), or an RGB image of 2 to
    :data:`LABEL_LIKE_COLOURS` colours (``colour``: CityScapes' ``gtFine_color`` given for the frame).
    None otherwise."""
    values = _distinct(data, LABEL_LIKE_COLOURS if colour else LABEL_LIKE_VALUES, colour)
    pixels = data.size // 3 if colour else data.size
    if values is None or values.size < 2 or fractional_values(values).size:
        return None
    if values.size * PIXELS_PER_LABEL > pixels:  # too few pixels to tell: a tiny image has few values too
        return None
    if colour:
        return (
            f"holds only {values.size} colours, as a colour drawing of labels does (gtFine_color), not a photograph: "
            "give the camera frame (leftImg8bit)"
        )
    shown = ", ".join(f"{v:g}" for v in values.tolist())
    return (
        f"holds only {values.size} distinct values ({shown}), as a label map or mask does, not an image: "
        f"give the {channel} image (the segmentation or a mask in its place?)"
    )


def _onto_grid(volumetric: bool, is_label: bool) -> str:
    """What to do about a file off its case's grid (the first channel's)."""
    if not volumetric:
        how = "by nearest neighbour, PIL's Image.NEAREST" if is_label else "e.g. PIL's Image.resize"
        return f"resize it to that image's size ({how})"
    how = (
        "by nearest neighbour, MONAI's ResampleToMatch(mode='nearest')"
        if is_label
        else "e.g. MONAI's ResampleToMatch"
    )
    return f"resample it onto that file's grid ({how})"


def _nonfinite(data: np.ndarray, image: bool = True) -> str | None:
    """What makes ``data`` unusable as numbers: NaN or Inf voxels, or for an ``image``, float64
    values past float32's range."""
    if not np.issubdtype(data.dtype, np.floating):
        return None
    nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    if nan or inf:  # the z-score, the loss and then every weight would turn NaN
        return (
            f"{nan:,} NaN and {inf:,} Inf voxels: give them a number and save the file again (e.g. 0 outside the "
            "field of view: numpy.nan_to_num)"
        )
    # float64 values past float32's range (a resampler's fill value such as DBL_MAX) turn Inf when
    # the images are cast to the network's float32, and NaN after it
    limit = np.finfo(np.float32).max
    huge = int((np.abs(data) > limit).sum()) if image and data.dtype.itemsize > 4 else 0
    if huge:
        return (
            f"{_count(huge, 'voxel')} beyond float32's range (|x| > {limit:.3g}; the largest {np.abs(data).max():.3g}), which "
            "turn Inf in the network's float32: give them a number in range and save the file again (e.g. 0 "
            "outside the field of view)"
        )
    return None


def _shown(spec: DatasetSpec, path: Path, is_label: bool, root) -> str:
    """How messages name a case's file: by its name, but own data's label by its path under the
    data set ``root`` (``labelsTr/case_001.nii.gz``), as the scan names a missing one: its name is
    the case's, the images' ``_0000`` name has no twin in another folder."""
    if is_label and spec.name == "nnunet" and root is not None:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
            return Path(relative).as_posix()
    return path.name


def _read(
    spec: DatasetSpec, case, allowed, root=None
) -> tuple[dict[str, np.ndarray], np.ndarray | None, list, list]:
    """Read and check every file of a case: ``(arrays by name, affine, problems, warnings)``;
    problems and warnings are ``(file, message)`` pairs, the file named as :func:`_shown` does
    under the data set ``root``."""
    problems, warnings = [], []
    arrays: dict[str, np.ndarray] = {}
    reference = None  # (file name, shape, affine) of the first readable file
    for name, path in case.files().items():
        is_label = name == case.label_name
        shown = _shown(spec, path, is_label, root)
        try:
            data, affine = load_volume(path) if spec.volumetric else (load_png(path, label=is_label), None)
        except UnreadableFile as e:
            problems.append((shown, str(e)))
            continue
        if not spec.volumetric:
            # CityScapes and own colour images: RGB; own grey images: one channel per file
            colour = not is_label and (spec.name != "nnunet" or spec.image_files < spec.in_channels)
            expected_ndim = 3 if colour else 2
            if data.ndim != expected_ndim or (colour and data.shape[-1] != 3):
                what = (
                    "a single-channel label map" if is_label else "an RGB image" if colour else "a grey image"
                )
                hint = (
                    " (a colour drawing of the labels: store each pixel's label value in a grey or palette PNG, as "
                    "nnU-Net reads them)"
                    if is_label and data.ndim == 3
                    else " (a label map, e.g. gtFine_labelIds, given for the camera frame?)"
                    if colour and spec.name == "cityscapes" and data.ndim == 2
                    else " (a grey image among colour ones: save it as RGB, e.g. PIL's image.convert('RGB'))"
                    if colour and data.ndim == 2
                    else " (a colour or palette image among grey ones: save it as grey, e.g. PIL's image.convert('L'))"
                    if not colour and not is_label and data.ndim == 3
                    else ""
                )
                problems.append((shown, f"expected {what}, got shape {data.shape}{hint}"))
                continue
        shape = data.shape if spec.volumetric else data.shape[:2]
        if 0 in shape or (spec.volumetric and len(shape) != 3):
            hint = ""
            if len(shape) == 4 and shape[3] == 1:
                hint = " (a 4-D file of one volume: save it as 3-D, e.g. nibabel.squeeze_image)"
            elif spec.name == "nnunet" and len(shape) == 4 and 0 not in shape:
                hint = (
                    f" (a 4-D file of {shape[3]} volumes: the nnU-Net layout keeps one 3-D file per channel, "
                    "<case>_0000, <case>_0001, ..., and a label map of one volume)"
                )
            elif len(shape) == 4 and 0 not in shape:  # e.g. every modality stacked, or a 4-D perfusion series
                hint = (
                    f" (a 4-D file of {shape[3]} volumes: {spec.name} keeps one 3-D volume per file, each "
                    f"modality ({', '.join(spec.channels)}) in its own file; save the one this file stands for)"
                )
            problems.append((shown, f"expected a non-empty 3-D volume, got shape {tuple(shape)}{hint}"))
            continue
        if reference is None:
            reference = (shown, shape, affine)
        elif shape != reference[1]:
            # the same sizes in another order: an export that swapped the axes (a viewer's, a script's)
            turned = (
                " (the same sizes in another axis order: stored transposed?)"
                if sorted(shape) == sorted(reference[1])
                else f": {_onto_grid(spec.volumetric, is_label)}"
            )
            problems.append((shown, f"shape {shape} differs from {reference[0]} {reference[1]}{turned}"))
            continue
        elif spec.volumetric and not np.allclose(affine, reference[2], atol=1e-3):
            diff = np.abs(affine - reference[2]).max()
            problems.append(
                (
                    shown,
                    f"affine differs from {reference[0]} (largest difference {diff:.3g}): "
                    f"{_onto_grid(True, is_label)}, or copy that file's affine where only the header is wrong",
                )
            )
        bad = _nonfinite(data, not is_label) or (
            check_label_values(data, allowed, own_data=spec.name == "nnunet") if is_label else None
        )
        coarse = None
        if not bad and not is_label and spec.name in FIXED_MODALITIES:
            # own data may have a mask channel (noNorm): not for these
            bad = label_like(data, name, colour=not spec.volumetric)
            if bad and spec.name == "isles":
                # a perfusion map (Tmax in whole seconds) may be stored with few values: named, not refused
                coarse, bad = bad, None
        if (
            bad
            and spec.name == "nnunet"
            and bad.startswith("unexpected label values")
            and "dataset.json" not in bad
        ):
            bad += ": name each value in dataset.json's 'labels' (a label or part of a region), or correct the label map"
        elif (
            bad
            and spec.name == "isles"
            and bad.startswith("unexpected label values")
            and "0 / 255" not in bad
        ):
            bad += (
                ": ISLES 2018's OT masks are 0 / 1 (1 = lesion): correct this file, or train on other labels as own "
                "data (nnU-Net layout, --task nnunet, its labels named in dataset.json)"
            )
        if bad:
            problems.append((shown, bad))
        elif coarse:
            # check_images serves inference too: "trained on" would be wrong there
            warnings.append(
                (
                    shown,
                    f"{coarse}; used as it is (a perfusion map stored in whole units, e.g. Tmax in seconds, has few values too)",
                )
            )
        elif spec.volumetric and not is_label and not np.any(data):
            warnings.append((shown, "all voxels are zero"))
        elif (
            spec.volumetric
            and not is_label
            and data.size
            and data.min() == data.max()
            and not _as_stored(spec, name)
        ):
            # normalised to 0 everywhere, as an all-zero channel: a placeholder for a missing one?
            # (a noNorm channel, a mask fed as stored, may well be full: inference takes it)
            warnings.append(
                (
                    shown,
                    f"all voxels are {float(data.flat[0]):g}: the channel holds no image (a placeholder?): give the "
                    "case this channel's image",
                )
            )
        elif spec.volumetric and not is_label and spec.name == "nnunet" and _normalised(spec, name):
            # own channels may be masks (nnU-Net's noNorm), so a warning; a normalised one is an image
            if like := label_like(data, name):
                warnings.append((shown, f"{like}; a mask channel is named noNorm in dataset.json"))
        if not spec.volumetric and spec.name == "nnunet" and (turn := exif_orientation(path)):
            warnings.append(
                (
                    shown,
                    f"EXIF orientation {turn}: photo viewers show it {EXIF_TURNS[turn]}, training reads it as stored "
                    "(as nnU-Net does); its label must match the stored pixels",
                )
            )
        arrays[name] = data
    return arrays, (reference[2] if reference else None), problems, warnings


def check_images(
    spec: DatasetSpec, case: str, images: Sequence[str | os.PathLike]
) -> tuple[np.ndarray | None, np.ndarray | None, list[Problem], list[Problem]]:
    """Read and check the image files of one case as :func:`check_dataset` does, without a label
    (inference: new images have none, and a label beside them does not matter):
    ``(image, affine, problems, warnings)``; ``image`` is ``C x H x W [x D]`` in the files' order,
    None when there is a problem."""
    expected = _image_files(spec)
    if len(images) != expected:
        names = ", ".join(Path(f).name for f in images)
        problem = f"{len(images)} image file(s), but the data set has {expected} ({', '.join(spec.channels)})"
        return None, None, [Problem(case, names, problem)], []
    keys = _channel_keys(spec)
    files = CaseFiles(case, Path(images[0]).parent, dict(zip(keys, map(Path, images))), None, spec.label_name)
    arrays, affine, problems, warnings = _read(spec, files, allowed=())
    problems = [Problem(case, f, m) for f, m in problems]
    warnings = [Problem(case, f, m) for f, m in warnings]
    if problems:
        return None, affine, problems, warnings
    channels = [arrays[k] for k in keys]
    image = np.stack(channels) if spec.volumetric else channels_first_2d(channels)
    return image, affine, problems, warnings


def _summarise(
    spec: DatasetSpec, case, arrays: dict[str, np.ndarray], affine, fg_labels, root=None
) -> tuple[CaseSummary, list]:
    label = arrays[case.label_name]
    label_shown = _shown(spec, case.label, True, root)
    channels = [arrays[name] for name in case.channels]
    if spec.volumetric:
        image = np.stack(channels)
    else:
        image = channels_first_2d(channels)
    loaded = {
        "case": case.case,
        "image": image,
        "label": label,
        "affine": affine,
        "original_shape": label.shape,
    }
    pre = preprocess_case(spec, loaded, fg_labels)
    fg = np.isin(label, fg_labels)
    summary = CaseSummary(case.case, shape=tuple(pre["image"].shape), foreground=int(fg.sum()))
    if spec.volumetric:
        summary.foreground_slices = int(fg.any(axis=(0, 1)).sum())
        summary.foreground_kept = int(crop_or_pad_center(fg, (*spec.spatial_size, -1)).sum())
    else:
        summary.foreground_slices = int(fg.any())
        summary.foreground_kept = int((pre["label"] == 1).sum())  # IGNORE (unannotated) is not foreground
    if spec.ignore_label is not None:
        summary.unannotated, summary.voxels = int((label == spec.ignore_label).sum()), int(label.size)
    warnings = []
    if spec.volumetric and affine is not None:
        summary.orientation = orientation(affine)
        summary.spacing = "x".join(f"{v:.3g}" for v in voxel_spacing(affine))
    thick = slice_axis_problem(affine) if spec.name == "nnunet" and spec.volumetric else None
    if thick:
        warnings.append((next(p.name for p in case.channels.values() if p is not None), thick))
    if spec.ignore_label is not None and summary.unannotated == summary.voxels:
        warnings.append(
            (
                label_shown,
                f"no annotated voxel (all 'ignore', {spec.ignore_label}): not trained on, not scored",
            )
        )
    elif summary.foreground == 0:
        warnings.append((label_shown, "no foreground (label " + ",".join(map(str, fg_labels)) + ")"))
    elif spec.name == "nnunet" and not spec.volumetric and summary.foreground_kept == 0:
        h, w = spec.spatial_size
        warnings.append(
            (
                label_shown,
                f"all {summary.foreground:,} foreground pixels vanish in the resize to {h}x{w}: the case trains and "
                'scores as empty; a larger --crop_size "[h, w]" keeps them',
            )
        )
    elif summary.inside_crop is False:
        lost = summary.foreground - summary.foreground_kept
        crop, keeping = "x".join(map(str, spec.spatial_size)), _crop_keeping(fg, spec.spatial_size)
        warnings.append(
            (
                label_shown,
                f"{lost:,} foreground voxels lie outside the centre crop {crop}, which is all that training sees of "
                f'the case: a --crop_size of at least "[{keeping[0]}, {keeping[1]}]" keeps them',
            )
        )
    return summary, warnings


def _crop_keeping(fg: np.ndarray, crop: Sequence[int], step: int = 16) -> tuple[int, int]:
    """The smallest in-plane centre crop, each axis ``crop`` plus a multiple of ``step`` (the default
    crop's rounding), that keeps every foreground voxel of ``fg`` (``H x W x D``)."""
    sizes = []
    for axis, (n, size) in enumerate(zip(fg.shape[:2], crop)):
        rows = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != axis)))
        size = int(size)
        while size < n:  # a crop of the whole axis (or a pad) keeps everything
            start, _, length = center_offsets(n, size)
            if start <= rows[0] and rows[-1] < start + length:
                break
            size += step
        sizes.append(size)
    return sizes[0], sizes[1]


def check_dataset(
    dataset: str | DatasetSpec,
    root: str | os.PathLike,
    foreground_label: int | Sequence[int] | None = None,
    progress: bool = False,
    datalist: str | os.PathLike | None = None,
    datalist_splits: Sequence[str] | None = None,
    fold: int | Sequence[int] = 0,
    labels: bool = True,
    **scan_options,
) -> CheckReport:
    """Check every case of ``dataset`` under ``root`` and return a :class:`CheckReport`
    (``report.ok``, ``report.problems``, ``report.format()``, ``report.raise_if_failed()``).

    ``scan_options`` go to the reader: ``grades="HGG,LGG"`` (BRATS), ``subset="TESTING"`` (ISLES),
    ``splits=("train", "val")`` (CityScapes). ``dataset="nnunet"``: own data, described by
    ``<root>/dataset.json`` (:mod:`pam_monai.data.nnunet`). ``datalist``: a decathlon datalist
    (paths relative to ``root``) whose entries are checked too (see the module). ``datalist_splits``
    (e.g. ``["test"]``, with the cross-validation ``fold``): check the files and labels of the entries
    of those splits only (a run that reads only them, over a data set that may hold only their
    cases; ``fold`` a list: the entries of those splits of any of these folds, as an experiment grid
    reads them); a fold missing or out of range and a case listed twice are still named for every entry.
    ``labels=False``: an unlabelled set (ISLES 2018's ``TESTING/``, own data's ``imagesTs``, CityScapes'
    frames of every split, 'test' too, unless ``splits`` is given): the images are checked as
    inference reads them (files, channels, shapes, geometry), labels are neither required nor read,
    and a note says so.
    """
    # read first: a mistyped path or a broken file is named before minutes of reading every volume
    listed = load_datalist(datalist) if datalist is not None else None
    try:
        spec = get_spec(dataset, root=root)
    except NoTrainingImages as e:  # own data without a usable <case>_0000 image: say what the scan sees
        scan = scan_cases(dataset, root, **scan_options)
        problems = [*scan.problems, Problem(Path(root).name, "imagesTr", str(e))]
        return CheckReport("nnunet", str(root), problems=problems)
    fg_labels, allowed = spec.resolve_labels(foreground_label)
    if not labels and spec.name == "cityscapes":
        # every split, as inference reads them: 'test' above all, whose labels are not public
        scan_options.setdefault("splits", CITYSCAPES_SPLITS)
    scan = scan_cases(spec, root, **scan_options)
    if not labels:
        scan = _without_labels(scan)
    report = CheckReport(spec.name, str(root), problems=list(scan.problems), volumetric=spec.volumetric)
    if spec.normalization:
        report.normalization = [
            f"channel {i} {name!r}: {norm.describe()}"
            for i, (name, norm) in enumerate(zip(spec.channels, spec.normalization))
        ]
        for i, (name, norm) in enumerate(zip(spec.channels, spec.normalization)):
            if norm.scheme == "ct" and norm.lower is not None and norm.lower == norm.upper:
                report.warnings.append(
                    Problem(
                        Path(root).name,
                        f"channel {i} {name!r}",
                        f"the training foreground holds one intensity ({norm.lower:g}): clipped to it, every voxel "
                        "normalises to 0 and the channel carries nothing; do the labels lie on these images?",
                    )
                )
    failed_in_scan = {p.case for p in scan.problems}
    cases = scan.cases
    checked = {}  # a case's files in channel order (then the label) -> whether they passed
    first_of = {}  # a digest of a case's image voxels -> the first case with them
    if progress:
        from ..progress import progress_bar

        cases = progress_bar(cases, desc=f"{spec.name}: checking", unit="case")
    for case in cases:
        arrays, affine, problems, warnings = _read(spec, case, allowed, root)
        complete = case.complete if labels else None not in case.channels.values()
        if problems or case.case in failed_in_scan or not complete:
            summary = CaseSummary(case.case, ok=False)
        elif not labels:
            summary = _summarise_images(spec, case, arrays, affine)
        else:
            summary, more = _summarise(spec, case, arrays, affine, fg_labels, root)
            warnings += more
        if case.case != case.case.strip():  # an export's stray space: unseen in logs, tables and mask names
            first = next(iter(case.files().values()), None)
            warnings.append(
                (
                    first.name if first else case.case,
                    f"case ID {case.case!r} begins or ends with white space, which logs, metrics.csv and the "
                    "mask names carry unseen: rename its files",
                )
            )
        if summary.ok:
            first = first_of.setdefault(_image_digest(arrays, case.channels), case.case)
            if first != case.case:
                warnings.append(("image", _repeated_images(first, spec)))
        report.problems += [Problem(case.case, f, m) for f, m in problems]
        report.warnings += [Problem(case.case, f, m) for f, m in warnings]
        report.cases.append(summary)
        checked[_file_key(case.files().values())] = not problems
    if datalist is not None:
        problems, report.notes, warnings, report.missing = _check_datalist(
            spec, datalist, listed, root, allowed, checked, datalist_splits, fold, labels=labels
        )
        report.problems += problems
        report.warnings += warnings
    if not labels and (scan.cases or datalist is not None):  # an OK must not read as labels that passed
        listed_too = (
            f"; so were the entries of {datalist}, whose 'label' is neither required nor read"
            if datalist
            else ""
        )
        splits = ""
        if (
            spec.name == "cityscapes" and (Path(root) / "leftImg8bit").is_dir()
        ):  # else read flat, split unknown
            named = scan_options["splits"]
            splits = f" (splits {', '.join(named.split(',') if isinstance(named, str) else named)})"
        report.notes.append(
            f"labels not checked: {Path(root) / scan_options.get('subset', '')}{splits} was checked as an unlabelled set "
            f"(its images only, as inference reads them){listed_too}"
        )
    complete = any(c.complete or (not labels and None not in c.channels.values()) for c in scan.cases)
    note = None if complete else nnunet_layout_note(spec.name, root)
    if note:  # own data read as BRATS: the likely cause of every problem above
        report.notes.append(note)
    if spec.name == "nnunet" and not scan_options:  # nnU-Net checks dataset.json's count of training cases
        from .nnunet import read_dataset_json

        stated = read_dataset_json(root).get("num_training")
        if isinstance(stated, int) and stated != len(report.cases):
            report.warnings.append(
                Problem(
                    Path(root).name,
                    "dataset.json",
                    f"numTraining is {stated}, but imagesTr holds {len(report.cases)} cases (nnU-Net refuses this "
                    "data set until they agree)",
                )
            )
    oriented = Counter(c.orientation for c in report.cases if c.orientation)
    if len(oriented) > 1:
        usual, count = oriented.most_common(1)[0]
        for c in report.cases:
            problem = orientation_problem(
                c.orientation, usual, f"{count} of the {sum(oriented.values())} cases"
            )
            if problem:
                report.warnings.append(Problem(c.case, "image", problem))
    report.warnings += in_plane_spacing_problems(report.cases)
    return report


def _image_digest(arrays: dict[str, np.ndarray], channels) -> str:
    """A digest of a case's image voxels (every channel, in order, with its shape and type)."""
    digest = hashlib.sha1(usedforsecurity=False)  # the fastest of hashlib's here: 1.5 GB/s
    for name in channels:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _repeated_images(first: str, spec: DatasetSpec) -> str:
    """The warning for a case whose images equal those of the case ``first``, in the terms of
    ``spec``'s split: folds (BRATS, own data), a random case split (ISLES), cities (CityScapes)."""
    if spec.name == "cityscapes":
        return (
            f"the same pixels as {first}: one frame under two names? Cities of 'train' and 'val' may hold a copy "
            "of a frame the model trained on (or validated on) among those it is tested on; remove one"
        )
    split = (
        "The cross-validation may test the model on a copy of a case it trained on; remove one, or keep both "
        "in one fold"
        if spec.name in FOLDED
        else "The case split may test the model on a copy of a case it trained on; remove one, or keep both in "
        "one split"
    )
    return f"the same voxels as {first} in every channel: one scan under two case IDs? {split} with a datalist (data_list_file_path)"


def in_plane_spacing_problems(cases: Sequence[CaseSummary], factor: float = 2.0) -> list[Problem]:
    """Volumes reach the 2-D network as stored, not resampled: a case whose in-plane voxel size is
    ``factor`` times (or a ``factor``-th of) the data set's median shows its structures at another
    size in pixels than the others. One warning per such case (those sliced along another axis
    have theirs already, :func:`slice_axis_problem`)."""
    sized = {c.case: np.array([float(v) for v in c.spacing.split("x")]) for c in cases if c.spacing}
    if len(sized) < 3:  # no majority to differ from
        return []
    usual = np.median(np.stack(list(sized.values()))[:, :2], axis=0)
    found = []
    for case, size in sized.items():
        if _thick_axis_not_sliced(size) is not None:  # warned of by slice_axis_problem
            continue
        problem = spacing_problem(size, usual, "the cases' median", factor)
        if problem:
            found.append(Problem(case, "image", problem))
    return found


def spacing_problem(size, usual, usual_of: str, factor: float = 2.0) -> str | None:
    """A volume of voxel ``size`` (mm) whose in-plane voxels are ``factor`` times (or a
    ``factor``-th of) ``usual`` (``usual_of`` names whose: the median case's, training's) shows its
    structures at another size in pixels, volumes not being resampled. Says so, or None."""
    if usual is None or size is None:
        return None
    size, usual = np.asarray(size, dtype=float)[:2], np.asarray(usual, dtype=float)[:2]
    ratio = size / usual
    if np.all((ratio < factor) & (ratio > 1 / factor)):
        return None
    return (
        f"in-plane voxel size {size[0]:.3g} x {size[1]:.3g} mm, but {usual_of} is {usual[0]:.3g} x "
        f"{usual[1]:.3g} mm: volumes are not resampled, so its structures reach the network "
        f"{float(np.mean(1 / ratio)):.2g} times their usual size in pixels; resample it to that "
        "spacing (MONAI's Spacingd, image bilinear and label nearest) or leave it out"
    )


def usual_in_plane_spacing(dataset: str | DatasetSpec, items: Sequence[dict]) -> list[float] | None:
    """The median in-plane voxel size (mm, array axes 0 and 1) of the volumes among datalist
    ``items`` (their first image's header), which training records in ``model.json`` so that
    inference can name images of another resolution; None for 2-D images."""
    affines = _first_image_affines(dataset, items)
    if not affines:
        return None
    sizes = np.stack([voxel_spacing(a, 2) for a in affines])
    return [round(float(v), 4) for v in np.median(sizes, axis=0)]


def _about_label(problem: Problem) -> bool:
    """Whether a scan's ``problem`` is about a case's label file (missing, ambiguous, misplaced)."""
    return problem.message.startswith(("missing label", "label without images", "several files for label"))


def _without_labels(scan: ScanResult) -> ScanResult:
    """``scan`` of an unlabelled set: its cases without label files, and no problem about labels."""
    cases = [replace(case, label=None) for case in scan.cases]
    return ScanResult(cases, [p for p in scan.problems if not _about_label(p)])


def _summarise_images(spec: DatasetSpec, case, arrays: dict[str, np.ndarray], affine) -> CaseSummary:
    """A case of an unlabelled set: its shape after preprocessing, spacing and orientation."""
    channels = [arrays[name] for name in case.channels]
    image = np.stack(channels) if spec.volumetric else channels_first_2d(channels)
    loaded = {"case": case.case, "image": image, "label": None, "affine": affine}
    pre = preprocess_case(spec, {**loaded, "original_shape": image.shape[1:]})
    summary = CaseSummary(case.case, shape=tuple(pre["image"].shape))
    if spec.volumetric and affine is not None:
        summary.orientation = orientation(affine)
        summary.spacing = "x".join(f"{v:.3g}" for v in voxel_spacing(affine))
    return summary


def _file_key(paths) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in paths)


def _image_files(spec: DatasetSpec) -> int:
    """Image files per case: one per channel, or one RGB file (CityScapes, own colour images)."""
    if spec.volumetric:
        return spec.in_channels
    return (spec.image_files or spec.in_channels) if spec.name == "nnunet" else 1


def _channel_keys(spec: DatasetSpec) -> tuple[str, ...]:
    """The keys of a case's image files: its channels, or one key for one colour file."""
    return spec.channels if _image_files(spec) == spec.in_channels else ("+".join(spec.channels),)


def _n_folds(spec: DatasetSpec, data: dict, where: str, problems: list) -> int | None:
    """The datalist's number of folds (cross-validation only, else None); one that is not a whole
    number is a problem naming the datalist and the key. A split of the user's own (no 'fold' and
    a 'validation' list) has none; no 'fold' and no 'validation' list is one problem, not one per
    entry."""
    kind = fold_kind(spec, data)
    if spec.name not in FOLDED or kind == "own":
        return None
    if kind == "none":
        problems.append(Problem("training", where, NO_SPLIT_PROBLEM))
        return None
    try:
        return datalist_n_folds(data, where)
    except ValueError as e:
        problems.append(Problem("n_folds", where, str(e).removeprefix(f"{where}: ")))
        return None


def _entries_read(spec: DatasetSpec, data: dict, splits, fold) -> set[int] | None:
    """The entries (by ``id``) that :func:`~pam_monai.data.datalist.get_split` deals to ``splits``
    of ``fold`` (or of each of several folds); None (every entry) without ``splits``, or when the
    datalist's structure stops ``get_split`` (its problems are named entry by entry)."""
    if splits is None:
        return None
    folds = list(fold) if isinstance(fold, (list, tuple)) else [fold]
    try:
        # the datalist's own entry objects (get_split returns copies, with their case IDs)
        return {
            id(entry) for f in folds for split in splits for entry in split_entries(spec, data, split, fold=f)
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


_SPLIT_LISTS = ("training", "validation", "test")


def _unread_lists(data: dict, where: str) -> list[Problem]:
    """Lists of entries under a key that no split reads (a typo, 'traning', or another tool's name,
    'testing'): their cases were left out without a word, and a cross-validation evaluation scored
    its fold of 'training' in place of the external test set meant (or training stopped at "no
    'training' list" without naming the datalist)."""
    problems = []
    for key, value in data.items():
        entries = isinstance(value, list) and value and all(isinstance(e, dict) for e in value)
        if key in _SPLIT_LISTS or not entries:
            continue
        name = str(key).lower()
        close = [s for s in _SPLIT_LISTS if s.startswith(name)] or difflib.get_close_matches(
            name, _SPLIT_LISTS, n=1, cutoff=0.5
        )
        fix = f"rename it {close[0]!r}" if close else "name it 'training', 'validation' or 'test'"
        problems.append(
            Problem(
                str(key),
                where,
                f"{key!r} lists {len(value)} entries, but only 'training', 'validation' and 'test' are read: {fix}",
            )
        )
    return problems


def _split_or_none(spec: DatasetSpec, data: dict, split: str, fold: int) -> list | None:
    """``split_entries``, or None where the datalist's structure stops it (named entry by entry)."""
    try:
        return split_entries(spec, data, split, fold=fold)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _empty_folds(
    spec: DatasetSpec, data: dict, n_folds: int | None, where: str, splits=None, fold=0
) -> list[Problem]:
    """Runs that would read a split of no case because no training entry has its fold (a hand-made
    datalist with folds 0..2 and no 'n_folds', which is then 5: the run on fold 2 was validated on
    fold 3, nothing); a split given by its own list (an external 'test' set) is not a fold's. With
    ``splits``: those of ``fold`` alone (a small data set's 5-fold list
    whose fold 4 is empty still runs fold 0); without: every fold's."""
    entries = data.get("training")
    if n_folds is None or not isinstance(entries, list) or not entries:
        return []
    used = {e.get("fold") if isinstance(e, dict) else None for e in entries}
    if not all(type(f) is int and 0 <= f < n_folds for f in used):
        return []  # an entry without a fold, or with one beyond n_folds, is named by itself
    empty = [f for f in range(n_folds) if f not in used]
    runs = range(n_folds) if splits is None else (list(fold) if isinstance(fold, (list, tuple)) else [fold])
    reads = ("test", "val") if splits is None else [s for s in splits if s in ("test", "val")]
    # the split each run reads, as get_split deals it (an explicit 'test' list is no fold's)
    hit = sorted({f for f in runs for s in reads if _split_or_none(spec, data, s, f) == []})
    if not hit:
        return []
    given = f"'n_folds' {n_folds}" if "n_folds" in data else f"no 'n_folds' (so {n_folds})"
    run = f"the run on fold {hit[0]}" if len(hit) == 1 else f"the runs on folds {', '.join(map(str, hit))}"
    return [
        Problem(
            "n_folds",
            where,
            f"{given}, but no training entry has fold {', '.join(map(str, empty))}: {run} would be tested or "
            "validated on no case; set 'n_folds' to the number of folds the entries use, or rebuild the folds "
            "with python -m pam_monai datalist",
        )
    ]


def _check_datalist(
    spec: DatasetSpec,
    path,
    data: dict,
    root,
    allowed,
    checked: dict,
    splits=None,
    fold: int | Sequence[int] = 0,
    labels: bool = True,
) -> tuple[list[Problem], list[str], list[Problem], list[str]]:
    """Problems of the entries of the datalist ``data`` read from ``path``, each naming the datalist
    and the case: what would otherwise surface only when training, validation or evaluation first
    loads that case. Files that are not exactly those of a case already checked (``checked``) are read.
    With ``splits``, the files and labels only of the entries of those splits of ``fold``.
    ``labels=False`` (an unlabelled set): the images alone, as inference reads them; an entry's
    'label' is neither required nor read. Also returns notes: the likely cause of many problems,
    which is no case's; warnings: folds without cases, when the whole list is checked (with
    ``splits``, a run's own empty split is a problem); and the entries whose files are not on disk."""
    where = str(path)
    expected = _image_files(spec)
    names = ", ".join(repr(c) for c in spec.channels)
    problems, seen, absent, missing_cases = [], {}, 0, []
    ordered = {tuple(sorted(key)) for key in checked}  # the same files in another order
    n_folds = _n_folds(spec, data, where, problems)
    problems += _unread_lists(data, where)
    empty_folds = _empty_folds(spec, data, n_folds, where, splits, fold)
    read = _entries_read(spec, data, splits, fold)
    for key in ("training", "validation", "test"):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            problems.append(Problem(key, where, f"{key!r} must be a list of entries"))
            continue
        for n, entry in enumerate(entries):
            image = entry.get("image") if isinstance(entry, dict) else None
            if not image:
                needs = "an 'image' (and a 'label')" if labels else "an 'image'"
                problems.append(Problem(f"{key}[{n}]", where, f"an entry needs {needs}"))
                continue
            images = list(image) if isinstance(image, (list, tuple)) else [image]
            case = entry_case(spec, entry)
            if case in seen:
                twice = (
                    f"listed twice in {key}: keep one entry (else it counts twice)"
                    if seen[case] == key
                    else f"listed twice ({seen[case]} and {key}): a case belongs to one split"
                )
                problems.append(Problem(case, where, twice))
            seen.setdefault(case, key)
            given = entry.get("fold")
            if (
                key == "training"
                and n_folds is not None
                and not (type(given) is int and 0 <= given < n_folds)
            ):
                # else get_split fails without naming the datalist, or (a fold beyond n_folds) trains on it in every fold
                fix = f"cross-validation entries need a fold 0..{n_folds - 1} (python -m pam_monai datalist writes them)"
                # others have one (else no n_folds): a split of one's own is the other way out
                if given is None:
                    fix += ", or remove every 'fold' and list the validation cases under 'validation' (a split of your own)"
                problems.append(
                    Problem(case, where, ("no 'fold'" if given is None else f"'fold' {given!r}") + ": " + fix)
                )
            if read is not None and id(entry) not in read:
                continue  # not read by this run: a partial data set, a test list kept for later
            if len(images) != expected:
                wanted = (
                    f"{expected} channels ({names}): one file per channel, in that order"
                    if expected == spec.in_channels
                    else f"{spec.in_channels} channels ({names}) in {expected} colour file"
                )
                problems.append(
                    Problem(
                        case, where, f"'image' lists {len(images)} file(s), but the data set has {wanted}"
                    )
                )
                continue
            # unlabelled: inference drops an entry's label unread, so a test list may well have none
            label = entry.get("label") if labels else None
            if labels and label is None:  # training trains on it, validation and evaluation score against it
                problems.append(Problem(case, where, f"no 'label' (every {key} entry needs one)"))
                continue
            paths = [*images, label] if labels else images
            if not all(isinstance(f, str) for f in paths):  # e.g. a label in a list
                problems.append(
                    Problem(
                        case, where, "'image' and 'label' must be paths ('image': one, or a list of them)"
                    )
                )
                continue
            twice = sorted({f for f in images if images.count(f) > 1})
            if twice:
                problems.append(
                    Problem(case, where, f"'image' lists {', '.join(twice)} for more than one channel")
                )
                continue
            files = {f: Path(root) / f for f in paths}
            missing = [f for f, p in files.items() if not p.is_file()]
            if missing:
                # a case not on disk at all (e.g. a subset of the data set): one file names it
                what = (
                    f"none of its {len(files)} files found (e.g. {missing[0]})"
                    if len(missing) == len(files)
                    else f"{', '.join(missing)}: not found"
                )
                # an absolute path is not joined to the data root: a hint about the root would mislead
                relative = not os.path.isabs(missing[0])
                hint = f"; its paths are relative to the data root {root}" if relative else ""
                problems.append(Problem(case, where, what + hint))
                missing_cases.append(case)
                absent += relative and len(missing) == len(files)
                continue
            found = _file_key(files.values())
            if found in checked:
                continue  # checked with the data set's cases (its problems are listed there)
            if tuple(sorted(found)) in ordered:
                problems.append(
                    Problem(
                        case,
                        where,
                        f"'image' lists the channel files in another order than the data set's channels ({names})",
                    )
                )
                continue
            keys = _channel_keys(spec)
            case_files = CaseFiles(
                case,
                Path(root),
                dict(zip(keys, (files[f] for f in images))),
                files[label] if labels else None,
                spec.label_name,
            )
            _, _, bad, _ = _read(spec, case_files, allowed, root)
            problems += [Problem(case, f"{f} (in {where})", m) for f, m in bad]
            checked[found] = not bad
    notes = []
    if absent > 1:  # last, where the user reads first: the likely cause of them all
        notes.append(
            f"{where}: {absent} cases not on disk under the data root {root}: is it the folder the datalist's paths "
            "are relative to? With only some of the cases, keep the entries whose files exist (data_lists/README.md)"
        )
    if splits is None:  # the whole list: a warning (a small set's 5-fold list still runs its first folds)
        return problems, notes, empty_folds, missing_cases
    return problems + empty_folds, notes, [], missing_cases
