"""Plain folders of images and labels -> the nnU-Net v2 raw layout (own data, ``nnunet``).

The layout most own data arrives in: two folders, ``images/<case>.nii.gz`` and
``labels/<case>.nii.gz`` (the labels often named ``<case>_seg``, ``_label``, ``_mask``, ``_msk``), or one
folder of ``<case>_img.nii.gz`` / ``<case>_seg.nii.gz`` pairs. An image is one 3-D volume, a 4-D
NIfTI holding every channel of the case (split into one file per channel, as :func:`.msd.convert_msd`
does), or a 2-D PNG / BMP / TIFF (grey, or colour: one file for three channels, as nnU-Net reads
natural images), or a 3-D MetaImage / NRRD volume (``.mha``, ``.nrrd``: one channel, with its label of
the same type, both copied as shipped). :func:`convert_folders` pairs images and labels by case name, writes
``imagesTr/<case>_XXXX``, ``labelsTr/<case>`` and a ``dataset.json`` whose labels are the values
found in the label files, and refuses, listing them, images without labels (or puts them into
``imagesTs`` when asked), labels without images and case names the layout cannot hold. Single-channel
``.nii.gz`` volumes and 2-D files are copied as they are; the output appears by a rename only when
complete.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..shell import quote
from .brats import MODALITIES
from .layout import visible_entries
from .msd import ONTO_GRID, write_channels, write_dataset_json, write_label

__all__ = ["IMAGE_SUFFIXES", "LABEL_SUFFIXES", "convert_folders", "folders_note"]

# _msk: ISLES 2022's lesion masks (BIDS derivatives)
LABEL_SUFFIXES = ("_seg", "_label", "_labels", "_mask", "_msk", "_gt", "_segmentation")
LABEL_SUFFIXES += ("-seg", "-label", "-mask", "-msk")
IMAGE_SUFFIXES = ("_img", "_image", "_im", "-img", "-image")
VOLUME_ENDINGS = (".nii.gz", ".nii")
SITK_ENDINGS = (".mha", ".nrrd")  # one-file volumes the nnunet reader takes through SimpleITK
FLAT_ENDINGS = (".png", ".bmp", ".tif")  # what the nnunet reader takes as 2-D images
_ENDINGS = VOLUME_ENDINGS + SITK_ENDINGS + FLAT_ENDINGS
_SHOWN = 10  # names listed in one refusal
_CHANNEL_FILE = re.compile(r"(.+)_\d{4}")  # nnU-Net's <case>_XXXX image name (the last _XXXX)
_IMAGE_DIRS = ("images", "image", "imgs", "img")
_LABEL_DIRS = ("labels", "label", "masks", "mask", "segmentations", "seg", "gt", "ground_truth")


def _split_ending(name: str) -> tuple[str, str] | None:
    """``(stem, ending)`` of an image file name this converter reads, else None."""
    lower = name.lower()
    ending = next((e for e in _ENDINGS if lower.endswith(e)), None)
    return (name[: -len(ending)], ending) if ending else None


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


# text and metadata beside the images (BIDS ``.json`` sidecars, ``.bval`` / ``.bvec``, a licence, a
# README): skipped, not refused; any other ending may be an image of a type not read here, and is refused
_TEXT_ENDINGS = (
    ".json",
    ".txt",
    ".md",
    ".rst",
    ".tsv",
    ".csv",
    ".bval",
    ".bvec",
    ".pdf",
    ".xml",
    ".yaml",
    ".yml",
)
_TEXT_NAMES = ("readme", "license", "licence", "changes", "copying")  # BIDS' README, CHANGES, LICENSE


def _files(folder: Path, skipped: list | None = None) -> dict[str, Path]:
    """``{stem: path}`` of the image files in ``folder``; raises naming files of other types and two files of
    one stem. Sidecars (``<stem>.json`` and the like beside the image ``<stem>.nii.gz``: any file named as an
    image but for its ending) and text files (:data:`_TEXT_ENDINGS`, ``README``, ``LICENSE``) are skipped:
    appended to ``skipped`` as ``(path, is_sidecar)``."""
    found: dict[str, Path] = {}
    other, twice = [], []
    for path in visible_entries(folder):
        if path.is_dir():
            continue
        split = _split_ending(path.name)
        if split is None:
            other.append(path)
        elif split[0] in found:
            twice.append(f"{found[split[0]].name} and {path.name}")
        else:
            found[split[0]] = path
    rest = [p for p in other if p.name.rsplit(".", 1)[0] not in found and not _is_text(p.name)]
    if rest:
        raise ValueError(
            f"{folder}: file(s) of a type this converter does not read: {_listing(p.name for p in rest)}; it reads "
            f"{', '.join(_ENDINGS)} (and skips sidecars named as an image, text files {', '.join(_TEXT_ENDINGS)}): "
            "convert them, or move them out of the folder"
        )
    if twice:
        raise ValueError(f"{folder}: two files of one name: {_listing(twice)}; keep one")
    if skipped is not None:  # (path, sidecar or not)
        skipped += [(p, p.name.rsplit(".", 1)[0] in found) for p in other]
    return found


def _is_text(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_TEXT_ENDINGS) or lower.rsplit(".", 1)[0] in _TEXT_NAMES


def _skipped_note(skipped: list) -> str:
    """The one line that says which files the conversion skipped (``(path, is_sidecar)``), or ""."""
    parts = []
    for sidecar, what in ((True, "sidecar file(s) named as an image"), (False, "text file(s)")):
        names = [p.name for p, s in skipped if s == sidecar]
        if names:
            parts.append(f"{len(names)} {what} ({_listing(names)})")
    return f"convert_folders: skipped {' and '.join(parts)}: not images" if parts else ""


def _strip(stem: str, suffix: str) -> str:
    if suffix and len(stem) > len(suffix) and stem.lower().endswith(suffix.lower()):
        return stem[: -len(suffix)]
    return stem


def _suffix(suffix: str) -> str:
    """``'_seg'``, or ``a suffix`` for none (not quoted: no suffix is called 'a suffix')."""
    return repr(suffix) if suffix else "a suffix"


def _by_case(files: dict[str, Path], suffix: str, folder: Path) -> dict[str, Path]:
    """``files`` keyed by case (the stem without ``suffix``); raises naming two files of one case."""
    cases: dict[str, Path] = {}
    for stem, path in files.items():
        case = _strip(stem, suffix)
        if case in cases:
            raise ValueError(
                f"{folder}: {cases[case].name} and {path.name} are both case {case!r} (without {suffix!r}); "
                "rename one"
            )
        cases[case] = path
    return cases


def _pair(
    images: dict[str, Path], labels: dict[str, Path], image_suffix: str | None, label_suffix: str | None
) -> tuple[str, str]:
    """The image and label suffixes (given, or among the known ones) that pair the most files by case name;
    no suffix wins a tie."""
    image_options = [image_suffix] if image_suffix is not None else ["", *IMAGE_SUFFIXES]
    label_options = [label_suffix] if label_suffix is not None else ["", *LABEL_SUFFIXES]
    best, best_count = (image_options[0], label_options[0]), -1
    for i in image_options:
        image_cases = {_strip(s, i) for s in images}
        for lab in label_options:
            count = len(image_cases & {_strip(s, lab) for s in labels})
            if count > best_count:
                best, best_count = (i, lab), count
    return best


def _one_folder(
    folder: Path, label_suffix: str | None, skipped: list | None = None
) -> tuple[dict[str, Path], dict[str, Path], str]:
    """Split the files of one folder into images and labels (``<case><label_suffix>``); files
    :func:`_files` skips are appended to ``skipped``."""
    files = _files(folder, skipped)
    options = [label_suffix] if label_suffix is not None else list(LABEL_SUFFIXES)
    counts = {s: sum(_strip(stem, s) != stem for stem in files) for s in options}
    suffix = max(options, key=lambda s: counts[s])
    if not counts[suffix]:
        raise ValueError(
            f"{folder}: no label file (<case>{'/<case>'.join(options[:3])}...): name the labels "
            f"<case>_seg, pass --label_suffix, or put images and labels into folders of their own "
            f"(--images DIR --labels DIR)"
        )
    ending = [stem for stem in files if _strip(stem, suffix) != stem]  # <case><suffix>: labels, mostly
    labelled = {_strip(stem, suffix) for stem in ending}
    # but a file with a label of its own is an image, though it ends like one: x_seg of x_seg_seg
    labels = {stem: files[stem] for stem in ending if stem not in labelled}
    images = {stem: p for stem, p in files.items() if stem not in labels}
    return images, labels, suffix


def _check_names(cases, folder: Path) -> None:
    """Refuse case names the nnU-Net layout cannot hold, naming them. A name ending in ``_XXXX``
    (``scan_2020``) is held: nnU-Net, the nnunet reader and the datalist take the last ``_XXXX`` of
    ``scan_2020_0000.nii.gz`` as the channel."""
    spaced = [c for c in cases if re.search(r"\s", c) or c != c.strip()]
    if spaced:
        raise ValueError(
            f"{folder}: case name(s) with spaces: {_listing(repr(c) for c in spaced)}; rename the files "
            "without spaces (nnU-Net's file names and command lines split at them)"
        )


def _separator_prefixes(stem: str):
    """``(k, stem[:k])`` for every ``_`` or ``-`` at ``k`` > 0, the longest prefix first: where a
    case name may end and a suffix begin."""
    return [(k, stem[:k]) for k in range(len(stem) - 1, 0, -1) if stem[k] in "_-"]


def _suffix_note(images: dict[str, Path], labels: dict[str, Path], root: Path) -> str:
    """Advice when no image pairs with a label by case name, but the names agree up to a ``_`` or ``-``
    and differ after it (``<case>_dwi`` and ``<case>_msk``, as BIDS names them): the suffixes that
    pair the most labels, and, where a case has several such images, that each case needs one file
    (ISLES 2022's: its own converter, on ``root``, the folder holding images and labels)."""
    by_prefix: dict[str, list[str]] = {}
    for stem in images:
        for _, prefix in _separator_prefixes(stem):
            by_prefix.setdefault(prefix.lower(), []).append(stem)
    counts: dict[tuple[str, str], int] = {}
    examples: dict[tuple[str, str], tuple[str, str]] = {}
    several = 0  # labels whose case has more than one image (channel files: _dwi, _adc)
    for label in sorted(labels):
        k = next((k for k, prefix in _separator_prefixes(label) if prefix.lower() in by_prefix), None)
        if k is None:
            continue
        matches = sorted(by_prefix[label[:k].lower()])
        several += len(matches) > 1
        for image in matches:
            pair = (image[k:], label[k:])
            counts[pair] = counts.get(pair, 0) + 1
            examples.setdefault(pair, (images[image].name, labels[label].name))
    if not counts:
        return ""
    pair = max(sorted(counts), key=lambda p: counts[p])
    image, label = examples[pair]
    note = (
        f"; the names differ after the case name: images end in {pair[0]!r}, labels in {pair[1]!r} ({image} and "
        f"{label}): pass --image_suffix {quote(pair[0])} --label_suffix {quote(pair[1])}"
    )
    if several:
        found = sorted({p[0] for p in counts})
        note += (
            f" (but {several} case(s) have several image files ({', '.join(map(repr, found))}): this converter "
            "takes one file per case, a 4-D one for several channels; for one file per channel, put them into "
            "imagesTr/ as <case>_0000, <case>_0001, ... with the labels in labelsTr/ and write a dataset.json)"
        )
    if any(label.lower().startswith("sub-strokecase") for label in labels):
        note += (
            f"; these look like ISLES 2022 files: python -m pam_monai convert_isles22 --root {quote(str(root))} "
            "--output DIR converts them (DWI and ADC as channels 0 and 1, the mask as 'lesion')"
        )
    return note


def _nnunet_files_note(by_image: dict[str, Path], orphans) -> str:
    """Advice when the labels without an image are the cases of ``<case>_XXXX`` images: the files
    are in the nnU-Net layout already (imagesTr/ and labelsTr/ given as plain folders)."""
    numbered = {
        m[1]: p for c, p in sorted(by_image.items(), reverse=True) if (m := _CHANNEL_FILE.fullmatch(c))
    }
    if not orphans or not set(orphans) <= set(numbered):
        return ""
    case = sorted(orphans)[0]
    return (
        f"; the images are nnU-Net's <case>_XXXX files of these cases already ({numbered[case].name} of "
        f"{case}): put images and labels into imagesTr/ and labelsTr/ as they are and write a "
        "dataset.json instead of converting them"
    )


def _names(given, count: int, default: list[str], what: str, option: str) -> list[str]:
    """Names from ``given`` (a list, a dict keyed by number, or one name), else ``default``."""
    if given is None:
        return default
    if isinstance(given, str):
        given = [given]
    if isinstance(given, dict):
        given = [given.get(i, given.get(str(i))) for i in range(count)]
    names = [str(n) for n in given]
    if len(names) != count or None in given:
        raise ValueError(f"--{option}: {count} {what} found, {len(given)} name(s) given ({given}): name each")
    if len(set(names)) != len(names):
        raise ValueError(f"--{option}: a name given twice ({names}): name each one once")
    return names


def _sitk_grid(path: Path) -> dict:
    """The header of a MetaImage / NRRD file: its size, spacing, origin, direction and channels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {
        "size": reader.GetSize(),
        "spacing": reader.GetSpacing(),
        "origin": reader.GetOrigin(),
        "direction": reader.GetDirection(),
        "channels": reader.GetNumberOfComponents(),
    }


def _image_info(path: Path):
    """``(loaded image or None, channels, grid)`` of an image file; raises naming it when unreadable."""
    try:
        if path.name.lower().endswith(SITK_ENDINGS):
            grid = _sitk_grid(path)
            channels = grid["channels"] * (grid["size"][3] if len(grid["size"]) == 4 else 1)
            if len(grid["size"]) != 3 or channels != 1:
                raise ValueError(
                    f"{path}: a {len(grid['size'])}-D image of {channels} channels: a MetaImage / NRRD image "
                    "must be one 3-D channel; save one file per channel (<case>_0000, ...) as nnU-Net "
                    "does, or the case as one 4-D .nii.gz (channels last)"
                )
            return None, 1, grid
        if path.name.lower().endswith(VOLUME_ENDINGS):
            import nibabel as nib

            img = nib.load(str(path))
            shape = tuple(img.shape)
            if len(shape) not in (3, 4):
                raise ValueError(f"{path}: shape {shape}: expected a 3-D volume or a 4-D one (channels last)")
            return img, 1 if len(shape) == 3 else shape[3], shape[:3]
        from PIL import Image

        from .files import COLOUR_MODES

        with Image.open(path) as im:
            return None, 3 if im.mode in COLOUR_MODES else 1, (im.height, im.width)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: unreadable ({e})") from e


def _label_values(path: Path, lab) -> set[int]:
    """The label values of a label file; raises naming it for values that are not whole numbers >= 0."""
    from .files import load_png

    try:
        if lab is not None:
            data = np.asarray(lab.dataobj)
        elif path.name.lower().endswith(SITK_ENDINGS):
            import SimpleITK as sitk

            data = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        else:
            data = load_png(path, label=True)
    except Exception as e:
        raise ValueError(f"{path}: unreadable ({e})") from e
    values = np.unique(data)
    if values.size and (np.any(values < 0) or np.any(values != np.round(values))):
        bad = [v for v in values.tolist() if v < 0 or v != round(v)][:5]
        raise ValueError(
            f"{path}: label values must be whole numbers >= 0, found {bad}: is it an image, or a probability map?"
        )
    return {int(v) for v in values}


def _scaled(grid: dict, key: str) -> np.ndarray:
    """``grid[key]``; the direction times the spacing (each axis in mm), as the nnunet check compares
    the affines: a direction within 1e-3 differs by up to 1e-3 times the spacing there."""
    if key != "direction":
        return np.asarray(grid[key], dtype=np.float64)
    return np.asarray(grid["direction"], dtype=np.float64).reshape(3, 3) * np.asarray(grid["spacing"])


def _check_sitk_label(label: Path, image: Path, grid: dict) -> None:
    """Raise naming ``label`` (a MetaImage / NRRD file) when it is not on its image's grid."""
    try:
        found = _sitk_grid(label)
    except Exception as e:
        raise ValueError(f"{label}: unreadable ({e})") from e
    if len(found["size"]) != 3 or found["channels"] != 1:  # compared below, it raised numpy's broadcast error
        raise ValueError(
            f"{label}: a {len(found['size'])}-D label of {found['channels']} component(s) per voxel: the label "
            f"of {image.name} must be one 3-D volume of one value per voxel, on its image's grid: save it so"
        )
    for key in ("size", "spacing", "origin", "direction"):
        if not np.allclose(*(_scaled(g, key) for g in (found, grid)), atol=1e-3):
            raise ValueError(
                f"{label}: its {key} {found[key]} differs from its image's {grid[key]} ({image.name}): a label "
                f"must lie on its image's grid: {ONTO_GRID}"
            )


def _write_case(image: Path, label: Path | None, case: str, folder: Path, labels_dir: Path) -> tuple:
    """Write one case; return its channel count, image kind (the file ending) and label values."""
    img, channels, grid = _image_info(image)
    ending = _split_ending(image.name)[1]
    if ending in SITK_ENDINGS:  # copied as shipped: the nnunet reader takes them (file_ending)
        shutil.copyfile(image, folder / f"{case}_0000{ending}")
        if label is None:
            return channels, ending, set()
        if not label.name.lower().endswith(ending):
            raise ValueError(f"{label}: the label of {image.name} must be a {ending} file too")
        _check_sitk_label(label, image, grid)
        shutil.copyfile(label, labels_dir / f"{case}{ending}")
        return channels, ending, _label_values(label, None)
    ending = ".nii.gz" if img is not None else image.name[-4:].lower()
    if img is not None:
        write_channels(image, img, case, folder)
    else:
        shutil.copyfile(image, folder / f"{case}_0000{ending}")
    values: set[int] = set()
    if label is not None:
        if img is not None:
            if not label.name.lower().endswith(VOLUME_ENDINGS):
                raise ValueError(f"{label}: a label of the volume {image.name} must be NIfTI (.nii.gz)")
            lab = write_label(label, img, labels_dir / f"{case}.nii.gz")
        else:
            if not label.name.lower().endswith(ending):
                raise ValueError(f"{label}: the label of {image.name} must be a {ending} file too")
            lab = None
            from .files import load_png

            try:
                shape = load_png(label, label=True).shape
            except Exception as e:
                raise ValueError(f"{label}: unreadable ({e})") from e
            if shape != grid:
                raise ValueError(
                    f"{label}: size {shape} differs from its image's {grid} ({image.name}): resize it to its "
                    "image's size (by nearest neighbour, PIL's Image.NEAREST)"
                )
            shutil.copyfile(label, labels_dir / f"{case}{ending}")
        values = _label_values(label, lab)
    return channels, ending, values


def convert_folders(
    images: str | os.PathLike,
    output: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    channel_names=None,
    label_names=None,
    label_suffix: str | None = None,
    image_suffix: str | None = None,
    test_images: bool = False,
    progress: bool = True,
) -> Path:
    """Convert ``images`` (one file per case) and ``labels`` (the same case names, optionally with a
    suffix such as ``_seg``) into the nnU-Net v2 raw layout at ``output`` (which must not exist yet,
    or be empty) and return it. Without ``labels``, ``images`` holds both: the labels are the files
    named ``<case><label_suffix>``. Suffixes not given are found among :data:`LABEL_SUFFIXES` and
    :data:`IMAGE_SUFFIXES`. ``channel_names`` and ``label_names`` (lists, or dicts keyed by number)
    default to ``image`` (``R, G, B`` for colour images, ``channel_<n>`` for several) and
    ``background``, ``label_<value>``. Images without a label go to ``imagesTs`` with
    ``test_images``, else they are refused. Sidecars (``<name>.json`` beside ``<name>.nii.gz``, as BIDS
    and ISLES 2022 ship them) and text files (a licence, a README) are skipped, said in one printed line;
    files of other types are refused. Raises ``ValueError`` naming the files."""
    from ..progress import progress_bar

    images_dir, output = Path(images), Path(output)
    labels_dir = None if labels is None else Path(labels)
    for folder in (images_dir, labels_dir):
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} already exists; choose a new folder")
    skipped: list = []
    if labels_dir is None:
        image_files, label_files, label_suffix = _one_folder(images_dir, label_suffix, skipped)
    else:
        image_files, label_files = _files(images_dir, skipped), _files(labels_dir, skipped)
    if skipped:  # said once, before any refusal of the files that are there
        print(_skipped_note(skipped))
    if not image_files:
        raise ValueError(f"{images_dir}: no image file ({', '.join(_ENDINGS)})")
    image_suffix, label_suffix = _pair(image_files, label_files, image_suffix, label_suffix)
    by_image = _by_case(image_files, image_suffix, images_dir)
    by_label = _by_case(label_files, label_suffix, labels_dir or images_dir)
    orphans = sorted(set(by_label) - set(by_image))
    if orphans:
        paired = set(by_label) & set(by_image)  # none: the names may differ by suffixes not known here
        note = _nnunet_files_note(by_image, orphans) or (
            ""
            if paired
            else _suffix_note(
                image_files, label_files, Path(os.path.commonpath([images_dir, labels_dir or images_dir]))
            )
        )
        raise ValueError(
            f"{labels_dir or images_dir}: label(s) without an image: {_listing(by_label[c].name for c in orphans)} "
            f"(paired by case name, images without {_suffix(image_suffix)}, labels without "
            f"{_suffix(label_suffix)}; --image_suffix / --label_suffix set them): add the images or move "
            "these labels out" + note
        )
    unlabelled = sorted(set(by_image) - set(by_label))
    if unlabelled and not test_images:
        raise ValueError(
            f"{images_dir}: image(s) without a label: {_listing(by_image[c].name for c in unlabelled)} (labels "
            f"looked for as <case>{label_suffix} in {labels_dir or images_dir}); add their labels, move them out, "
            "or pass --test_images true to put them into imagesTs (inference)"
        )
    if not set(by_label):
        raise ValueError(f"{labels_dir or images_dir}: no case has a label: nothing to train on")
    _check_names(by_image, images_dir)
    counts, endings, values = {}, {}, {0}
    with atomic_dir(output) as tmp:  # appears complete or not at all
        for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if unlabelled else ()):
            (tmp / sub).mkdir()
        for case in progress_bar(
            sorted(by_image), desc=f"{images_dir.name}: converting", unit="case", disable=not progress
        ):
            subset = "imagesTr" if case in by_label else "imagesTs"
            image = by_image[case]
            n, ending, found = _write_case(image, by_label.get(case), case, tmp / subset, tmp / "labelsTr")
            counts.setdefault(n, []).append(image.name)
            endings.setdefault(ending, []).append(image.name)
            values |= found
        for what, seen in (("channel counts", counts), ("file types", endings)):
            if len(seen) > 1:
                raise ValueError(
                    f"{images_dir}: images of different {what}: "
                    + "; ".join(f"{k}: {_listing(v)}" for k, v in seen.items())
                    + ": every case needs the same channels"
                )
        (channels,), (ending,) = counts, endings
        flat = ending != ".nii.gz"
        default = (
            ["R", "G", "B"]
            if flat and channels == 3
            else ["image"]
            if channels == 1
            else [f"channel_{i}" for i in range(channels)]
        )
        names = _names(channel_names, channels, default, "channel(s)", "channel_names")
        found = sorted(values)
        default = ["background"] + [f"label_{v}" for v in found[1:]]
        if isinstance(label_names, str):  # one name: --label_names lesion
            label_names = [label_names]
        if isinstance(label_names, (list, tuple)) and len(label_names) == len(found) - 1:
            label_names = ["background", *label_names]  # the foreground's names alone
        if isinstance(label_names, dict):
            label_names = {str(k): v for k, v in label_names.items()} | {"0": "background"}
            label_names = [label_names.get(str(v)) for v in found]
        label_list = _names(label_names, len(found), default, "label value(s) " + str(found), "label_names")
        write_dataset_json(
            tmp,
            output.name,
            f"{images_dir.name}/ by pam_monai convert_folders",
            {str(i): n for i, n in enumerate(names)},
            {("background" if v == 0 else n): v for n, v in zip(label_list, found)},
            numTraining=len(by_label),
            file_ending=ending,
            converted_from=f"{images_dir.name}/ (labels: {(labels_dir or images_dir).name}/) by pam_monai convert_folders",
        )
    return output


def folders_note(root: str | os.PathLike) -> str:
    """What to do with a folder of plain image and label folders (``images/`` and ``labels/``) or of
    ``<case>_img`` / ``<case>_seg`` pairs given where the nnU-Net raw layout belongs: name
    ``convert_folders`` (BraTS cases' files: the brats reader); "" for anything else."""
    root = Path(root)
    if not root.is_dir():
        return ""
    subdirs = {p.name.lower(): p for p in visible_entries(root) if p.is_dir()}
    image_dir = next((subdirs[n] for n in _IMAGE_DIRS if n in subdirs), None)
    label_dir = next((subdirs[n] for n in _LABEL_DIRS if n in subdirs), None)
    if image_dir is not None and label_dir is not None:
        return (
            f"; {root} holds {image_dir.name}/ and {label_dir.name}/ (one file per case): convert them once, python "
            f"-m pam_monai convert_folders --images {quote(str(image_dir))} --labels {quote(str(label_dir))} "
            "--output NEW, and use NEW"
        )
    stems = [s[0] for s in map(_split_ending, (p.name for p in visible_entries(root))) if s]
    brats = _brats_note(root, stems)
    if brats:
        return brats
    if any(_strip(s, x) != s for s in stems for x in LABEL_SUFFIXES) and len(stems) > 1:
        return (
            f"; {root} holds images and labels side by side: convert them once, python -m pam_monai "
            f"convert_folders --images {quote(str(root))} --output NEW, and use NEW"
        )
    return ""


def _brats_note(root: Path, stems: list[str]) -> str:
    """What to do with BraTS cases' files (``<case>_{flair,t1,t1ce,t2,seg}``) in ``root``: the brats
    reader's layout, not convert_folders (which pairs one image with each label, and refuses them)."""
    cases = sorted(s[: -len("_seg")] for s in stems if s.endswith("_seg"))
    cases = [c for c in cases if all(f"{c}_{m}" in stems for m in MODALITIES)]
    if not cases:
        return ""
    files = f"<case>_{{{','.join((*MODALITIES, 'seg'))}}}"
    if len(cases) == 1:
        return (
            f"; {root} is one BraTS case's folder ({files}): pass --dataset brats and the folder that holds "
            f"the case folders, --root {quote(str(root.parent))}"
        )
    return (
        f"; {root} holds BraTS cases' files ({files}: {_listing(cases)}) side by side: the brats reader takes "
        f"one folder per case, <root>/<case>/{files}.nii.gz: move each case's files into a folder of its "
        f"own and pass --dataset brats --root {quote(str(root))}"
    )
