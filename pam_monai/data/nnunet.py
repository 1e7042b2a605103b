"""Your own data, in the nnU-Net v2 raw layout (dataset name ``"nnunet"``).

Many groups already keep their data this way (https://github.com/MIC-DKFZ/nnUNet,
``documentation/dataset_format.md``), and the layout says everything the pipeline needs, so no
reader has to be written per data set::

    <root>/dataset.json
    <root>/imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz, ...   one file per channel
    <root>/labelsTr/<case>.nii.gz                                  integer label map
    <root>/imagesTs/<case>_0000.nii.gz, ...                        optional, no labels

``dataset.json`` gives ``channel_names`` (``{"0": "T2", "1": "ADC"}``: the channel count and
order), ``labels`` (``{"background": 0, "lesion": 1, "oedema": 2}``; region lists such as
``"whole tumour": [1, 2, 3]`` are names for several values) and ``file_ending`` (``.nii.gz`` or
``.nii`` for volumes, read by nibabel, or ``.mha`` / ``.nrrd``, read by SimpleITK in nibabel's
voxel order and RAS affine, their masks written in the same format on the same grid; ``.png``,
``.bmp`` or ``.tif`` for 2-D images; other formats are refused by name).

2-D images (photographs, endoscopy, dermoscopy, X-ray, ultrasound) are cases of their own, as
CityScapes frames: a grey file per channel, or, as nnU-Net reads natural images, one colour file
``<case>_0000.png`` for three channels (e.g. ``{"0": "R", "1": "G", "2": "B"}``); labels are
grey (or palette) PNGs of label values. They are resized to one size (by default the training
images' median height and width, the longer side at most 256, rounded up to 16; ``crop_size``
sets another), predictions are resized back (the foreground probabilities, bilinearly, cut at the
threshold on the image's pixels), and metrics and masks are on each image's pixels.

The binary target is every non-zero label by default; ``foreground_label`` picks values or label
names (``"lesion"``, ``[1, 2]``, ``["lesion", "oedema"]``). Volumes are sliced along their third
array axis, as for BRATS. The in-plane crop defaults to the largest in-plane size among the
training images rounded up to a multiple of 16, so training only pads and never cuts foreground;
``crop_size`` sets another. Inference pads smaller volumes and centre-crops larger ones with a
warning (their rim is background, as evaluation scores them). nnU-Net v1 files (``modality``,
labels keyed by number) are read too; an MSD task (4-D images) is named, see :mod:`.msd`.

Sparse annotations: nnU-Net's ``"ignore"`` label (the highest label value) marks unannotated voxels.
They are neither foreground nor background: the loss and every metric leave them out (the binary
target holds :data:`~.ops.IGNORE` there), slices without an annotated voxel are not trained on, and
metrics are computed over the annotated voxels only (a prediction inside the unannotated region is
neither a false positive nor a true one).

Channel names choose the intensity normalisation as in nnU-Net (:mod:`.intensity`): ``"CT"``
channels are clipped and standardised with the training set's foreground statistics (nnU-Net's
``dataset_fingerprint.json`` beside ``dataset.json`` when it is there, else computed once per
process), ``"noNorm"``, ``"rescale_to_0_1"``, ``"rgb_to_0_1"`` as named, every other name the
paper's per-volume z-score.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..shell import quote
from .files import COLOUR_MODES
from .intensity import PROPERTIES_KEY, ChannelNorm, channel_norms, foreground_intensity_properties, scheme_of
from .layout import CaseFiles, Problem, ScanResult, nothing_found, visible_entries
from .specs import DATASETS, DatasetSpec

__all__ = [
    "DATASET_JSON",
    "ENDINGS",
    "NoTrainingImages",
    "check_same_data_set",
    "default_crop",
    "intensity_properties",
    "label_title",
    "nnunet_spec",
    "read_dataset_json",
    "scan",
    "spec_dataset_json",
]

DATASET_JSON = "dataset.json"
FINGERPRINT_JSON = "dataset_fingerprint.json"  # nnU-Net's, copied from nnUNet_preprocessed/DatasetXXX
ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd")  # volumes: NIfTI (nibabel), MetaImage and NRRD (SimpleITK)
ENDINGS_2D = (".png", ".bmp", ".tif")  # nnU-Net's 2-D image files (NaturalImage2DIO)
LABEL_NAME = "label"  # the label's key among a case's files
CROP_MULTIPLE = 16
TITLE_SUFFIX = " (own data, nnU-Net layout)"
_FILE = re.compile(  # any file type: one this data set does not use is named as such
    r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>\.nii\.gz|\.[A-Za-z0-9]+)$"
)


def _named(path: Path, channel: int, ending: str) -> bool:
    """Whether ``path`` is a ``<case>_<channel>`` image of the file type ``ending`` (any case:
    ``.PNG`` files of a ``.png`` data set are its images, as on a case-insensitive disk)."""
    return path.name.lower().endswith(f"_{channel:04d}{ending.lower()}")


# the keys whose absence changes what is read: a near miss of one of them is a typo
ESSENTIAL_KEYS = ("channel_names", "labels", "file_ending", "numTraining")


def _ending_fix(ending: str, endings: tuple[str, ...], from_json: bool, it: str = "it") -> str:
    """What to do about an image (``it``) of another file type: convert it, or, where the type is one
    this project reads, say so in dataset.json (a set saved as ``.nii`` under a ``.nii.gz`` file_ending)."""
    fix = f": convert {it} to {endings[0]}"
    if from_json and ending.lower() in (*ENDINGS, *ENDINGS_2D):
        fix += (
            f", or, if every image and label is a {ending} file, set dataset.json's file_ending to {ending!r}"
        )
    return fix


def _dataset_json_nearby(root: Path) -> str:
    """What a root without ``dataset.json`` is, when it says which folder was meant: one that does
    not exist, a file (``dataset.json`` or an image: the folder above holds the file), a data set's
    ``imagesTr/`` (its parent holds the file) or a folder of data sets such as ``nnUNet_raw/`` (its
    sub-folders do)."""
    if not root.exists():
        return f"; {root} does not exist"
    if root.is_file():  # dataset.json itself, or an image: the data set's folder is above it
        holder = next((p for p in list(root.parents)[:2] if (p / DATASET_JSON).is_file()), None)
        return f"; {root.name} is a file, not a folder: pass the data set's folder" + (
            f", {holder}" if holder else ""
        )
    if (root.parent / DATASET_JSON).is_file():
        return f"; {root.name}/ is a folder of the data set: pass the data set's own folder, {root.parent}"
    inside = sorted(d.name for d in root.iterdir() if (d / DATASET_JSON).is_file()) if root.is_dir() else []
    if inside:
        shown = ", ".join(str(root / d) for d in inside[:5]) + (", ..." if len(inside) > 5 else "")
        return f"; {root} holds data sets: pass one of them, {shown}"
    paper = next(((name, d) for d, name in _PAPER_FOLDERS if (root / d).is_dir()), None)
    if paper:  # one of the paper's data sets given as own data (--task nnunet, the bundle command)
        name, folder = paper
        return (
            f"; {root} holds the {name} layout ({folder}/): the {name} bundles read it as it is (without "
            f"--task nnunet), as do check and score with --dataset {name}"
        )
    from .folders import folders_note

    return folders_note(root)


# a top folder of each of the paper's data sets in its published layout
_PAPER_FOLDERS = (("HGG", "brats"), ("LGG", "brats"), ("TRAINING", "isles"), ("leftImg8bit", "cityscapes"))


def read_dataset_json(root: str | os.PathLike | dict) -> dict:
    """``<root>/dataset.json`` (or its content, a dict: a bundle made for own data carries it),
    checked: ``channel_names`` numbered 0..n-1, ``labels`` with ``background`` 0 and integer values,
    a NIfTI ``file_ending``. Errors name the file and the key. Returns ``name``, ``channels``,
    ``labels`` (``(name, values)`` pairs), ``file_ending`` and ``intensity_properties`` (CT
    statistics a trained model recorded, or None)."""
    if isinstance(root, dict):
        meta, path = root, "dataset.json (given as a dict)"
        root = meta.get("name") or "own data"
    else:
        path = Path(root) / DATASET_JSON
        if not path.is_file():
            raise FileNotFoundError(
                f"nnunet: {path} not found: own data needs the nnU-Net v2 raw layout (dataset.json, imagesTr/, "
                f"labelsTr/; see pam_monai/data/nnunet.py){_dataset_json_nearby(Path(root))}"
            )
        try:  # JSON is UTF-8 whatever the locale; "-sig": Windows editors may start it with a byte-order mark
            meta = json.loads(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e}): save it as UTF-8, as JSON files are") from e
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    from .msd import is_msd_dataset_json

    if is_msd_dataset_json(meta) and _holds_4d_cases(root, meta):
        raise ValueError(
            f"{path}: a Medical Segmentation Decathlon task (one file per case, labels keyed by number); convert it "
            f"once: python -m pam_monai convert_msd --task_dir {quote(str(root))} --output <new folder>"
        )
    for key in meta:  # a mistyped key would be ignored and its default taken in silence
        near = difflib.get_close_matches(
            str(key), [k for k in ESSENTIAL_KEYS if k not in meta], n=1, cutoff=0.8
        )
        if near:
            raise ValueError(f"{path}: key {key!r}: did you mean {near[0]!r}? ({near[0]!r} is not there)")
    labels = meta.get("labels")
    if isinstance(labels, dict) and labels and all(str(k).isdigit() for k in labels):
        # nnU-Net v1 (and MSD) write {"0": "background", "1": "lesion"}: value -> name
        labels = {str(name): int(value) for value, name in labels.items()}
    channels = meta.get("channel_names", meta.get("modality"))  # "modality": nnU-Net v1's key
    if not isinstance(channels, dict) or not channels:
        raise ValueError(f'{path}: \'channel_names\' must map channel numbers to names, e.g. {{"0": "T2"}}')
    try:
        numbers = sorted(int(k) for k in channels)
    except ValueError:
        raise ValueError(f"{path}: 'channel_names' keys must be numbers, got {sorted(channels)}") from None
    if numbers != list(range(len(numbers))):
        raise ValueError(f"{path}: 'channel_names' must be numbered 0..{len(numbers) - 1}, got {numbers}")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(
            f'{path}: \'labels\' must map label names to values, e.g. {{"background": 0, "lesion": 1}}'
        )
    table = []
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(
                f"{path}: label {name!r}: expected a non-negative integer or a list of them, got {value!r}"
            )
        table.append((str(name), tuple(values)))
    if dict(table).get("background") != (0,):
        raise ValueError(f"{path}: 'labels' must have \"background\": 0")
    near = [n for n, _ in table if n != "ignore" and n.strip().lower() in ("ignore", "ignored")]
    if near:  # else trained as foreground: nnU-Net knows unannotated voxels by this exact name only
        raise ValueError(
            f'{path}: label {near[0]!r}: unannotated voxels are the label named exactly "ignore" (as in nnU-Net); '
            "as written it is a foreground label"
        )
    ignore = dict(table).get("ignore")
    if ignore is not None:  # nnU-Net v2's rules for unannotated voxels
        others = {v for n, vs in table if n != "ignore" for v in vs}
        why = (
            "it is several values"
            if len(ignore) != 1
            else "it is 0, the background"
            if ignore[0] == 0
            else "it is in another label or region too"
            if ignore[0] in others
            else "it is not the highest label value"
            if ignore[0] < max(others)
            else None
        )
        if why:
            raise ValueError(
                f"{path}: 'ignore' must be one value, the highest label value and in no other label or region "
                f"(as nnU-Net requires; {why}), got {list(ignore)} beside {sorted(others)}"
            )
    ending = str(meta.get("file_ending", ".nii.gz"))
    ending = ending if ending.startswith(".") else f".{ending}"  # "nii.gz" is NIfTI too
    if ending.lower() not in ENDINGS + ENDINGS_2D:
        raise ValueError(
            f"{path}: file_ending {ending!r} is not supported; volumes: {', '.join(ENDINGS)}; 2-D images: "
            f"{', '.join(ENDINGS_2D)}"
        )
    image_files = meta.get("image_files")  # a trained 2-D model's record: one RGB file per case
    if image_files is not None and not (isinstance(image_files, int) and 1 <= image_files <= len(numbers)):
        raise ValueError(f"{path}: 'image_files' must be a number of files per case, got {image_files!r}")
    properties = meta.get(PROPERTIES_KEY)
    if properties is not None and not isinstance(properties, dict):
        raise ValueError(f"{path}: {PROPERTIES_KEY!r} must map channel numbers to statistics")
    return {
        "name": str(meta.get("name") or Path(root).resolve().name),
        "channels": tuple(str(channels[str(i)] if str(i) in channels else channels[i]) for i in numbers),
        "labels": tuple(table),
        "file_ending": ending,
        "intensity_properties": properties,
        "image_files": image_files,
        "ignore": ignore[0] if ignore else None,
        "num_training": meta.get("numTraining"),
    }


def _holds_4d_cases(root, meta: dict) -> bool:
    """An MSD task keeps each case in one file named as its ``training`` entry says (an nnU-Net v1
    set, with the same kind of ``dataset.json``, has ``<case>_0000`` files instead)."""
    if isinstance(root, dict) or not meta.get("training"):
        return False
    first = meta["training"][0]
    image = first.get("image") if isinstance(first, dict) else None
    return isinstance(image, str) and (Path(root) / image).is_file()


class NoTrainingImages(ValueError):
    """No usable training case: no ``<case>_0000`` image to size the default crop from, or no
    readable case with foreground to take the CT channels' statistics from."""


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    """Channel names as keys: a repeated name gets its channel number."""
    return tuple(n if list(names).count(n) == 1 else f"{n} ({i:04d})" for i, n in enumerate(names))


def _original(names: Sequence[str]) -> tuple[str, ...]:
    """Undo :func:`_unique`: the names as ``dataset.json`` gave them (a CT channel stays CT)."""
    stripped = [re.sub(rf" \({i:04d}\)$", "", n) for i, n in enumerate(names)]
    return tuple(s if stripped.count(s) > 1 else n for s, n in zip(stripped, names))


def _round_up(v: float) -> int:
    """Up to a multiple of 16 (at least 16)."""
    return max(CROP_MULTIPLE, -(-round(v) // CROP_MULTIPLE) * CROP_MULTIPLE)


_SIZES_CACHE: dict = {}


def _training_sizes(root, ending: str, size_of, kind: str = "") -> list[tuple[int, int]]:
    """``(height, width)`` of every readable ``<root>/imagesTr/<case>_0000<ending>`` (``size_of``
    reads a header; None for a file of another kind). Hidden files (macOS "._" copies) are not
    images; unreadable ones are the checker's to report, so they are skipped here. Each header is
    read once per process and state of the file (path, size, modification time): the spec is made
    by every bundle run of an experiment, and a large data set has thousands of images."""
    folder = Path(root) / "imagesTr"
    files = [p for p in visible_entries(folder) if _named(p, 0, ending)]
    advice = f"python -m pam_monai check --dataset nnunet --root {quote(str(root))}"
    if not files:
        raise NoTrainingImages(
            f"nnunet: {folder}: no training image <case>_0000{ending} to size the crop from; {advice} lists what is there"
        )
    sizes = []
    for f in files:
        try:
            stat = os.stat(f)
            key = (size_of, os.path.abspath(f), stat.st_size, stat.st_mtime_ns)
            if key not in _SIZES_CACHE:  # (an unreadable file is tried again next time)
                _SIZES_CACHE[key] = size_of(f)
            size = _SIZES_CACHE[key]
        except Exception:  # noqa: BLE001 - named by the checker
            continue
        if size is not None:
            sizes.append(size)
    if not sizes:
        raise NoTrainingImages(
            f"nnunet: {folder}: no readable {kind}training image <case>_0000{ending} to size the crop from; {advice} "
            "names the problems"
        )
    return sizes


def _in_plane(path) -> tuple[int, int] | None:
    """A volume's in-plane size from its header; None for other shapes (the checker's to report)."""
    from .files import volume_shape

    shape = volume_shape(path)
    return shape[:2] if len(shape) == 3 else None


def default_crop(root: str | os.PathLike, ending: str = ".nii.gz") -> tuple[int, int]:
    """The largest in-plane size among ``<root>/imagesTr/*_0000<ending>`` (headers only), rounded up
    to a multiple of 16."""
    sizes = _training_sizes(root, ending, _in_plane, kind="3-D ")
    return _round_up(max(s[0] for s in sizes)), _round_up(max(s[1] for s in sizes))


def is_2d(meta: dict) -> bool:
    """Whether a :func:`read_dataset_json` result describes 2-D images (PNG, BMP, TIFF)."""
    return meta["file_ending"].lower() in ENDINGS_2D


MAX_SIDE_2D = 256  # default resize of 2-D images: the median size, the longer side at most this


def image_files_2d(root, meta: dict) -> int:
    """Image files per case of a 2-D set: 1 when ``<case>_0000`` files are colour images holding the
    three channels of ``channel_names`` (as nnU-Net reads RGB files), else one grey file per channel.
    Decided by the majority of up to 25 ``_0000`` images (``imagesTr``, else ``imagesTs``), so one odd
    image (or a stray ``_0001`` file) is named by the checker instead of making every other case
    look wrong."""
    if meta.get("image_files"):
        return int(meta["image_files"])
    n = len(meta["channels"])
    if isinstance(root, dict):
        return n
    from PIL import Image

    ending = meta["file_ending"]
    for folder in ("imagesTr", "imagesTs"):
        entries = visible_entries(Path(root) / folder)
        votes = []
        for f in [p for p in entries if _named(p, 0, ending)][:25]:
            try:
                with Image.open(f) as im:
                    votes.append((im.mode in COLOUR_MODES, f))
            except Exception:  # noqa: BLE001 - the checker names unreadable files
                continue
        if votes:
            colour = 2 * sum(v for v, _ in votes) > len(votes)
            if colour and n != 3:
                first = next(f for v, f in votes if v)
                raise ValueError(
                    f"nnunet: {first}: a colour image (3 channels), but {Path(root) / DATASET_JSON} names {n} "
                    f"channel(s) {list(meta['channels'])}; name three (e.g. R, G, B) or save grey images"
                )
            return 1 if colour else n
    return n  # no image to look at: the checker says so


def _image_size(path) -> tuple[int, int]:
    """A 2-D image's (height, width) from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size[::-1]


def default_size_2d(root, ending: str) -> tuple[int, int]:
    """The default size 2-D images are resized to: the training images' median height and width
    (headers only), scaled so that the longer side is at most 256 and rounded up to 16."""
    sizes = _training_sizes(root, ending, _image_size)
    h, w = (float(np.median([s[i] for s in sizes])) for i in (0, 1))
    scale = min(1.0, MAX_SIDE_2D / max(h, w))
    return _round_up(h * scale), _round_up(w * scale)


def check_same_data_set(spec: DatasetSpec, root: str | os.PathLike) -> None:
    """Refuse a data set whose ``dataset.json`` names other channels or labels than ``spec`` (a
    bundle made for one data set, pointed at another, would read its labels by the wrong names)."""
    if spec.name != "nnunet" or not (Path(root) / DATASET_JSON).is_file():
        return
    meta = read_dataset_json(root)
    theirs = {"channels": _unique(meta["channels"]), "labels": tuple(meta["labels"])}
    ours = {"channels": spec.channels, "labels": spec.label_names}
    diff = [f"{k}: {theirs[k]} there, {ours[k]} here" for k in ours if tuple(theirs[k]) != tuple(ours[k])]
    if diff:
        raise ValueError(
            f"nnunet: {Path(root) / DATASET_JSON} describes another data set than this run's spec ({'; '.join(diff)}); "
            "make a bundle for it (python -m pam_monai bundle) or run a paper bundle with --task nnunet"
        )


def label_title(label_names, foreground: Sequence[int]) -> str:
    """Words for a target: the name of the label or region that is exactly ``foreground``, else the
    names of its single labels."""
    exact = [n for n, v in label_names if tuple(sorted(v)) == tuple(foreground)]
    singles = [
        n for n, v in label_names if len(v) == 1 and v[0] in foreground and n not in ("background", "ignore")
    ]
    return exact[0] if exact else ", ".join(singles) or "foreground"


def spec_dataset_json(spec: DatasetSpec) -> dict | None:
    """The data set's channels and labels in ``dataset.json`` form: what a model trained on own data
    records (``model.json``) and an own-data bundle embeds, so that inference needs no training
    data; None for the paper's sets."""
    if spec.name != "nnunet":
        return None
    meta = {
        "name": spec.title.removesuffix(TITLE_SUFFIX),
        "channel_names": {str(i): c for i, c in enumerate(_original(spec.channels))},
        "labels": {n: (list(v) if len(v) > 1 else v[0]) for n, v in spec.label_names},
    }
    ct = {
        str(i): {"mean": n.mean, "std": n.std, "percentile_00_5": n.lower, "percentile_99_5": n.upper}
        for i, n in enumerate(spec.channel_norms)
        if n.scheme == "ct"
    }
    if ct:  # the statistics training normalised with: evaluation and inference use the same
        meta[PROPERTIES_KEY] = ct
    if not spec.volumetric:  # 2-D images: their file type and how many files hold the channels
        meta["file_ending"] = spec.file_ending
        meta["image_files"] = spec.image_files or len(spec.channels)
    return meta


_PROPERTIES_CACHE: dict = {}


def intensity_properties(root: str | os.PathLike, meta: dict | None = None) -> dict:
    """The CT channels' foreground intensity statistics of the data set under ``root``: nnU-Net's
    ``dataset_fingerprint.json`` when it is beside ``dataset.json``, else computed from every
    training case with its label (once per process and state of the files; a progress bar)."""
    root = Path(root)
    meta = meta or read_dataset_json(root)
    ct = [i for i, name in enumerate(meta["channels"]) if scheme_of(name) == "ct"]
    fingerprint = root / FINGERPRINT_JSON
    if fingerprint.is_file():
        try:
            data = json.loads(fingerprint.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{fingerprint}: not readable JSON ({e})") from None
        found = data.get(PROPERTIES_KEY) if isinstance(data, dict) else None
        if not isinstance(found, dict):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"{fingerprint}: no {PROPERTIES_KEY!r} mapping channel numbers to statistics (nnU-Net v2's "
                f"dataset fingerprint); found {keys}"
            )
        missing = [i for i in ct if str(i) not in found]
        if missing:
            raise ValueError(
                f"{fingerprint}: {PROPERTIES_KEY!r} has no entry for CT channel(s) {missing}; it has {sorted(found)}"
            )
        return {str(i): found[str(i)] for i in ct}
    if is_2d(meta) and image_files_2d(root, meta) != len(meta["channels"]):
        raise ValueError(f"nnunet: {root / DATASET_JSON}: a CT channel cannot be part of a colour image")
    result = scan(root, "imagesTr")
    names = _unique(meta["channels"])
    cases = [
        ([c.channels[names[i]] if i in ct else None for i in range(len(names))], c.label)
        for c in result.cases
        if c.label is not None and all(c.channels[names[i]] is not None for i in ct)
    ]
    stamp = tuple(
        (str(f), os.stat(f).st_size, os.stat(f).st_mtime_ns)
        for files, label in cases
        for f in [label, *(files[i] for i in ct)]
    )
    key = (str(root.resolve()), tuple(ct), meta["ignore"], stamp)
    if not cases:
        raise NoTrainingImages(
            f"nnunet: {root / 'imagesTr'}: no training case with its label to take the CT channels' intensity "
            f"statistics from; python -m pam_monai check --dataset nnunet --root {quote(str(root))} names the problems"
        )
    if key not in _PROPERTIES_CACHE:
        from ..progress import progress_bar
        from .files import UnreadableFile, load_png, load_volume

        def load(path):
            try:  # NIfTI: header scaling applied, as training reads it
                return load_png(path) if is_2d(meta) else load_volume(path)[0]
            except UnreadableFile:
                return None  # the checker names it; training refuses the data set until it is fixed

        def progress(items):
            return progress_bar(
                items, desc=f"nnunet: CT intensity statistics of {len(items)} training cases", unit="case"
            )

        try:
            _PROPERTIES_CACHE[key] = foreground_intensity_properties(
                cases, ct, load, progress=progress, ignore=meta["ignore"]
            )
        except ValueError as e:
            raise NoTrainingImages(f"nnunet: {root}: CT intensity statistics: {e}") from None
    return _PROPERTIES_CACHE[key]


def nnunet_spec(
    root: str | os.PathLike | dict,
    crop_size: Sequence[int] | None = None,
    intensity: dict | None = None,
    statistics: bool = True,
) -> DatasetSpec:
    """The :class:`DatasetSpec` of the nnU-Net v2 raw data set under ``root`` (see the module), or
    of a ``dataset.json`` content given as a dict (then ``crop_size`` is needed: there are no
    training images to size it from). ``intensity``: the CT channels' statistics to use (a trained
    model's, from ``model.json``) instead of the data set's; ``statistics=False`` leaves them
    uncomputed (a spec for listing cases, not for normalising them)."""
    if isinstance(root, dict) and crop_size is None:
        raise ValueError("nnunet: a dataset.json given as a dict needs crop_size")
    meta = read_dataset_json(root)
    labels = meta["labels"]
    values = tuple(sorted({v for _, vs in labels for v in vs}))
    foreground = tuple(v for v in values if v not in (0, meta["ignore"]))
    if not foreground:
        raise ValueError(
            f"nnunet: {'dataset.json (given as a dict)' if isinstance(root, dict) else Path(root) / DATASET_JSON}: "
            "'labels' has no foreground "
            "label besides background"
        )
    flat = is_2d(meta)
    # the crop first: without training images its message is the one to read
    if crop_size is not None:
        crop = crop_size
    else:
        crop = (default_size_2d if flat else default_crop)(root, meta["file_ending"])
    paper = DATASETS["brats"]  # training defaults until the user sets them
    spec = DatasetSpec(
        name="nnunet",
        title=f"{meta['name']}{TITLE_SUFFIX}",
        target=label_title(labels, foreground),
        channels=_unique(meta["channels"]),
        label_name=LABEL_NAME,
        volumetric=not flat,
        crop_size=None,  # set (and checked) by with_crop below; 2-D: the resize too
        resize=None,
        foreground_labels=foreground,
        label_values=values,
        flip_axis=-1 if flat else -2,  # 2-D images: their width, as CityScapes
        split=paper.split,
        epochs=paper.epochs,
        batch_size=paper.batch_size,
        lr=paper.lr,
        label_names=labels,
        inference_fit="resize" if flat else "pad",
        normalization=_norms(root, meta, intensity, statistics, flat),
        image_files=image_files_2d(root, meta) if flat else 0,
        file_ending=meta["file_ending"],
        ignore_label=meta["ignore"],
    )
    return spec.with_crop(crop)


def _norms(root, meta: dict, intensity: dict | None, statistics: bool, flat: bool = False) -> tuple:
    """Each channel's :class:`ChannelNorm` (CT statistics: see :func:`_ct_properties`); 2-D images
    take the z-score over all pixels (a photograph's black is data, not background)."""
    if not statistics or not any(scheme_of(name) == "ct" for name in meta["channels"]):
        # no CT channel, or a spec for listing cases (a datalist): no statistics needed
        norms = channel_norms(meta["channels"], unknown=True)
    else:
        norms = channel_norms(meta["channels"], *_ct_properties(root, meta, intensity))
    return tuple(ChannelNorm("zscore_all") if flat and n.scheme == "zscore" else n for n in norms)


def _ct_properties(root, meta: dict, intensity: dict | None) -> tuple[dict | None, str]:
    """The CT statistics and where they come from (for error messages): a trained model's, the
    dataset.json's own, nnU-Net's fingerprint, or computed from the training cases."""
    if intensity:
        return intensity, "model.json (the statistics the model was trained with)"
    if meta["intensity_properties"] is not None or isinstance(root, dict):
        where = "dataset.json (given as a dict)" if isinstance(root, dict) else str(Path(root) / DATASET_JSON)
        return meta["intensity_properties"], where
    properties = intensity_properties(root, meta)
    fingerprint = Path(root) / FINGERPRINT_JSON
    where = (
        str(fingerprint)
        if fingerprint.is_file()
        else f"the statistics computed from {Path(root) / 'labelsTr'}"
    )
    return properties, where


def _missing_channel(index: int, key: str, name: str, channels: int) -> str:
    """A case without the file of one channel, and what to do: every case has one per channel."""
    span = "_0000" if channels == 1 else f"_0000 to _{channels - 1:04d}"
    return (
        f"missing channel {index} ({key!r}): each case needs one file per channel ({span}): add {name}, "
        "or move the case's other files out"
    )


def _misnamed_labels(
    entries: Sequence[Path], found: dict, endings: Sequence[str]
) -> dict[str, tuple[Path, str]]:
    """Label files of a case (by name) named otherwise than ``<case><ending>``: with a channel number
    (copied with an image's name, the usual slip) or of another file type. Case -> (file, the fix)."""
    accepted = {e.lower() for e in endings}
    forms = {_nfc(case): case for case in found}  # a case whose label differs in Unicode form only
    letters = {_nfc(case).casefold(): case for case in found}  # ... or in letter case
    out = {}
    for path in entries:
        m = _FILE.match(path.name)
        if m and m["case"] in found and f"{m['case']}_{m['channel']}" not in found:
            fix = f"a label file is named <case>{endings[0]}, without a channel number: rename it {m['case']}{endings[0]}"
            out[m["case"]] = (path, fix)
            continue
        other = next((e for e in ENDINGS + ENDINGS_2D if path.name.lower().endswith(e)), None)
        stem = path.name[: -len(other)] if other else None
        if stem in found and other in accepted and not path.name.endswith(other):
            written = path.name[len(stem) :]
            fix = f"its file ending {written!r} is in other letter case (names are case-sensitive): rename it {stem}{endings[0]}"
            out.setdefault(stem, (path, fix))
        elif stem in found and other not in accepted:
            fix = f"a label file of type {other!r}, not this data set's ({', '.join(endings)}): save it as {stem}{endings[0]}"
            out.setdefault(stem, (path, fix))
        elif stem is not None and stem not in found and _nfc(stem) in forms and other in accepted:
            case = forms[_nfc(stem)]
            fix = (
                f"named as case {case!r} but with its accents stored otherwise (Unicode {_form(stem)}; the images' "
                f"names are {_form(case)}, macOS writes NFD), so the names differ byte for byte: rename images and "
                "labels to one form, e.g. NFC (unicodedata.normalize('NFC', name))"
            )
            out.setdefault(case, (path, fix))
        elif (
            stem is not None and stem not in found and _nfc(stem).casefold() in letters and other in accepted
        ):
            case = letters[_nfc(stem).casefold()]
            fix = f"named as case {case!r} in other letter case (names are case-sensitive): rename it {case}{endings[0]}"
            out.setdefault(case, (path, fix))
    return out


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _form(name: str) -> str:
    """NFC or NFD: how ``name`` stores its accented letters."""
    return "NFC" if unicodedata.is_normalized("NFC", name) else "NFD"


def _unnumbered_fix(path: Path, endings: Sequence[str], one_file: bool) -> str:
    """The fix for an image file without its channel number in a one-file-per-case set (ISIC-style
    ``img.png``): rename it ``img_0000.png``, unless that file exists (then it is the case's label
    copied among the images, and the rename would overwrite the image)."""
    ending = next((e for e in endings if path.name.lower().endswith(e.lower())), None)
    if not ending or not one_file:
        return ""
    target = path.with_name(f"{path.name[: -len(ending)]}_0000{ending}")
    if target.exists():
        return f"; {target.name} exists (its label copied here?): labels belong in labelsTr/ (labelsTs/), not among the images"
    return f": rename it {target.name}"


_DICOM_ENDINGS = (".dcm", ".dicom", ".ima")


def _dicom_files(images: Path, limit: int = 2000) -> list[Path]:
    """DICOM files under ``images`` (any depth; the first ``limit`` files looked at): by their
    ending, or by the ``DICM`` marker at byte 128 for files without one (PACS exports)."""
    found, seen = [], 0
    for folder, subfolders, names in os.walk(images):
        subfolders.sort()  # the same example every run
        for name in sorted(names):
            seen += 1
            if seen > limit:
                return found
            path = Path(folder) / name
            if path.suffix.lower() in _DICOM_ENDINGS or (not path.suffix and _dicom_marker(path)):
                found.append(path)
    return found


def _dicom_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _dicom_fix(images: Path, dicom: list[Path], ending: str) -> str:
    """The message for DICOM files given where ``<case>_XXXX`` images belong."""
    example = dicom[0].relative_to(images)
    return (
        f"no <case>_0000{ending} image, but DICOM files ({len(dicom)}, e.g. "
        f"{example}): convert the series first, python -m pam_monai convert_dicom {quote(str(images))} DIR, "
        "and use DIR (the bundles' --input_dir DIR)"
    )


def _folders_only(images: Path, ending: str) -> str:
    """The message for an image folder that holds sub-folders (or convert_dicom's record) but no
    ``<case>_XXXX`` file."""
    folders = [p.name for p in visible_entries(images) if p.is_dir()]
    if not folders:  # convert_dicom's record alone: a conversion that wrote no image
        return f"no <case>_0000{ending} image, only {', '.join(p.name for p in visible_entries(images))}"
    what = (
        f"no <case>_0000{ending} image, only folders ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}): "
        f"the images lie in this folder itself, one file per channel, <case>_0000{ending}, <case>_0001{ending}, ..."
    )
    if any(name.startswith("sub-strokecase") for name in folders) or "rawdata" in folders:
        what += (
            f"; these look like ISLES 2022 (BIDS): convert them with python -m pam_monai convert_isles22 --root "
            f"{quote(str(images))} --output DIR and use DIR"
        )
    return what


def _other_type(ending: str, files: list, endings: tuple[str, ...], root: Path, images: Path) -> Problem:
    """One problem for the images (``(case, file name)`` pairs) of the file type ``ending``, not the data
    set's: the file itself when alone, else their count with a few of them (a set saved as ``.nii``
    under a ``.nii.gz`` file_ending gave one line per file)."""
    what = f"file type {ending!r} is not this data set's ({', '.join(endings)})"
    from_json = images != root  # a data set's imagesTr / imagesTs, not a folder of images alone
    if len(files) == 1:
        return Problem(*files[0], what + _ending_fix(ending, endings, from_json))
    shown = ", ".join(name for _, name in files[:3]) + (", ..." if len(files) > 3 else "")
    return Problem(
        root.name,
        images.name,
        f"{len(files)} image files of type {ending!r} ({shown}), not this data set's ({', '.join(endings)})"
        + _ending_fix(ending, endings, from_json, it="them"),
    )


def scan(
    root: str | os.PathLike,
    subset: str = "imagesTr",
    channels: Sequence[str] | None = None,
    spec: DatasetSpec | None = None,
) -> ScanResult:
    """Cases under ``root``: a data set root (``dataset.json``; ``subset`` ``imagesTr`` with
    ``labelsTr``, or ``imagesTs``) or, with ``channels`` or a ``spec``, a folder of
    ``<case>_<XXXX>.nii[.gz]`` (2-D specs: ``.png``, ``.bmp``, ``.tif``) images alone (inference
    input, labels optional). A 2-D set whose three channels are one colour image has one file
    per case, ``<case>_0000``."""
    root = Path(root)
    problems: list[Problem] = []
    if (root / DATASET_JSON).is_file():
        meta = read_dataset_json(root)
        names, endings = _unique(meta["channels"]), (meta["file_ending"],)
        files = image_files_2d(root, meta) if is_2d(meta) else len(names)
        images = root / subset
        labels = root / subset.replace("images", "labels")
    elif spec is not None or channels is not None:
        names = tuple(spec.channels if spec is not None else channels)
        flat = spec is not None and not spec.volumetric
        endings = ENDINGS_2D if flat else ENDINGS
        files = (spec.image_files or len(names)) if flat else len(names)
        images, labels = root, None
    else:
        read_dataset_json(root)  # raises, naming the missing file
        raise AssertionError
    keys = names if files == len(names) else ("+".join(names),)  # one colour file: one key
    if not images.is_dir() or not visible_entries(images):
        what = (
            f"no {subset} images (<case>_0000{endings[0]})"
            if images != root
            else f"no <case>_0000{endings[0]} image"
        )
        found_what = nothing_found(images, what) if images.is_dir() else f"missing folder: {what}"
        return ScanResult([], [Problem(root.name, images.name, found_what)])
    found: dict[str, dict[int, Path]] = {}
    accepted = {e.lower() for e in endings}
    other_type: dict[str, list[tuple[str, str]]] = {}  # ending: (case, file name) of another file type
    for path in visible_entries(images):
        m = _FILE.match(path.name)
        if path.is_dir() or path.name == "dicom_series.json":  # convert_dicom's record of its sources
            continue
        if not m:
            problems.append(
                Problem(
                    path.name,
                    path.name,
                    f"not an image file name <case>_<XXXX>{endings[0]} (channel number XXXX)"
                    + _unnumbered_fix(path, endings, one_file=len(keys) == 1),
                )
            )
            continue
        if m["ending"].lower() not in accepted:
            other_type.setdefault(m["ending"].lower(), []).append((m["case"], path.name))
            continue
        index = int(m["channel"])
        if index >= len(keys):
            what = (
                f"but the data set has {len(names)} channel{'s' if len(names) > 1 else ''}"
                if len(keys) == len(names)
                else f"but the data set's {len(names)} channels are one colour image <case>_0000"
            )
            first = path.with_name(f"{m['case']}_0000{m['ending']}")
            if index == len(keys) == len(names) and not first.exists():  # numbered from 0001, not 0000
                files = (
                    f"_0001 ... _{index:04d} to _0000 ... _{index - 1:04d}" if index > 1 else "_0001 to _0000"
                )
                what += f" (numbered from 0000: rename {m['case']}{files})"
            problems.append(Problem(m["case"], path.name, f"channel {index:04d}, {what}"))
            continue
        found.setdefault(m["case"], {})[index] = path
    for ending, files in other_type.items():
        problems.append(_other_type(ending, files, endings, root, images))
    dicom = [] if found else _dicom_files(images)
    if dicom:  # a PACS export given as the images: one line naming the conversion, not one per slice file
        problems = [p for p in problems if not p.message.startswith("not an image file name")]
        problems.append(Problem(root.name, str(images), _dicom_fix(images, dicom, endings[0])))
    elif not found and not problems:  # sub-folders alone: a folder per case, or another layout
        problems.append(Problem(root.name, str(images), _folders_only(images, endings[0])))
    label_entries = visible_entries(labels) if labels is not None else []
    misnamed = _misnamed_labels(label_entries, found, endings)
    renamed = set()  # those named as such (not again as labels without images)
    cases = []
    for case in sorted(found):
        chans = {key: found[case].get(i) for i, key in enumerate(keys)}
        for i, key in enumerate(keys):
            if chans[key] is None:
                missing = f"{case}_{i:04d}{endings[0]}"
                problems.append(Problem(case, missing, _missing_channel(i, key, missing, len(keys))))
        label = None
        if labels is not None:
            seen = [p.name[len(case) + 5 :] for p in found[case].values()]  # the images' own endings
            for ending in dict.fromkeys([*seen, *endings]):
                if (labels / f"{case}{ending}").is_file():
                    label = labels / f"{case}{ending}"
                    break
            if label is None and case in misnamed:
                path, fix = misnamed[case]
                renamed.add(path)
                problems.append(Problem(case, f"{labels.name}/{path.name}", fix))
            elif label is None and labels.is_dir():
                problems.append(
                    Problem(
                        case,
                        f"{labels.name}/{case}{endings[0]}",
                        f"missing label: add it, or move the case's images out of {images.name}",
                    )
                )
            elif label is None and subset == "imagesTr":
                problems.append(
                    Problem(
                        case,
                        f"{labels.name}/{case}{endings[0]}",
                        f"missing label (no labelsTr folder): put each case's label map in labelsTr/<case>{endings[0]}",
                    )
                )
        cases.append(CaseFiles(case, images, chans, label, LABEL_NAME))
    if labels is not None and labels.is_dir():
        for path in label_entries:
            case = next(
                (path.name[: -len(e)] for e in endings if path.name.lower().endswith(e.lower())), None
            )
            if case is not None and case not in found and path not in renamed:
                problems.append(Problem(case, f"{labels.name}/{path.name}", "label without images"))
    return ScanResult(cases, problems)
