"""Whole-case inference: the published layout in, masks in the input's grid out.

For BRATS and ISLES a case's NIfTI volumes are preprocessed as in training, predicted slice by
slice with the 2-D network, thresholded in FOREGROUND polarity (RFNA included, see
:mod:`pam_monai.networks.polarity`), put back into the original grid (the inverse of the centre
crop) and written as ``<output_dir>/<case>_seg.nii.gz`` with the input's affine and shape. For
CityScapes each frame becomes ``<output_dir>/<frame>_vehicles.png`` at the original resolution
(0 background, 255 vehicle): the network's foreground probabilities on its 128 x 256 grid are
resized bilinearly to the frame and cut at the threshold there (own 2-D images alike), so
outlines are smooth, not 8 x 8 pixel steps. Every case is validated before any is predicted, and
every file is written through a temporary file and a rename: a failed or interrupted run leaves no
partial output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import unicodedata
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..atomic import _HOST, atomic_path, atomic_write_text, remove_orphaned_temps
from ..data import get_spec, load_case, preprocess_case, restore_prediction, scan_cases
from ..data.brats import GRADES as BRATS_GRADES
from ..data.checker import check_images, orientation, orientation_problem, slice_axis_problem, spacing_problem
from ..data.cityscapes import SPLITS as CITYSCAPES_SPLITS
from ..data.files import (
    EXIF_ORIENTATION,
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    exif_orientation,
    nifti_like,
    save_atomic_npy,
    save_sitk_like,
    volume_suffix,
    voxel_spacing,
)
from ..data.layout import visible_entries
from ..networks.polarity import as_foreground
from ..progress import progress_bar
from ..runlock import _content as _holder
from ..runlock import _stale
from ..shell import quote
from .checkpoint import check_weights, read_run_record
from .flags import as_bool
from .inferer import SliceWiseInferer
from .memory import reuse_freed_memory
from .postprocessing import _probability, foreground_mask

__all__ = [
    "CasePredictor",
    "find_inference_cases",
    "inference_spec",
    "input_problems",
    "recorded_intensity",
    "safe_output_path",
    "save_prediction",
    "stopped_inference_note",
    "validate_case",
]

log = logging.getLogger("pam_monai")

# the names inference gives its outputs (<case> before them), which score and ensemble read
OUTPUT_ENDINGS = (
    *(f"_{kind}{ending}" for kind in ("seg", "prob") for ending in (*NIFTI_SUFFIXES, *SITK_SUFFIXES)),
    "_seg.png",
    "_vehicles.png",
    "_prob.npy",
)

# in an output folder while inference writes into it: left there, the run was stopped part way. One per
# run (.inference_running.pid<pid>@<host>.<id>): with one shared mark, of two runs into a folder the
# first to end removed it, and the other, stopped, left none
RUNNING_MARK = ".inference_running"
_MARK = re.compile(r"^\.inference_running\.pid(\d+)@([A-Za-z0-9_-]+)\.[0-9a-f]{8}$")
# the names of this process's running inferences' marks: unique, where a path may name the folder
# otherwise (relative, through a link) than the run that made the mark
_running: set[str] = set()


def _still_running(mark: Path) -> bool:
    """Whether the inference of ``mark`` runs: one of this process that has not ended, or one of
    another process on this host that is alive. Another host's, or where a process cannot be asked
    (Windows), cannot be told: said ended, as the one shared mark was removed by any run's end."""
    m = _MARK.match(mark.name)
    if m is None or m.group(2) != _HOST:
        return False
    pid = int(m.group(1))
    if pid == os.getpid():  # this process's own: known without asking, on Windows too
        return mark.name in _running
    # the training lock's test of its holder: alive, and not a later process given the same PID
    return sys.platform != "win32" and not _stale(
        {"host": _HOST, "pid": pid, "proc_start": _mark_start(mark)}
    )


def _mark_start(mark: Path) -> str | None:
    """The start time of the mark's process as its run recorded it (None: unreadable, or a mark
    written before it was recorded)."""
    try:
        return json.loads(mark.read_text(encoding="utf-8")).get("proc_start")
    except (OSError, ValueError, AttributeError):
        return None


def _clear_marks(folder: Path) -> None:
    """At the end of a run, which rewrote every mask it was given: remove its mark and those of the
    runs that are no longer running (stopped part way: their masks are now rewritten, or named by
    :meth:`CasePredictor._warn_earlier_outputs`); keep those of runs still writing."""
    for mark in folder.glob(f"{RUNNING_MARK}*"):
        if _still_running(mark):
            continue
        try:
            mark.unlink(missing_ok=True)
        except OSError as e:  # another user's, kept by the folder's sticky bit: every mask is written
            log.warning(
                "%s: could not be removed (%s): remove it (its owner can), or score and ensemble "
                "go on warning that an inference into %s was stopped",
                mark,
                e.strerror or e,
                folder,
            )


def stopped_inference_note(folder: str | os.PathLike) -> str | None:
    """What to say of ``folder`` when an inference into it was stopped before it ended (its
    :data:`RUNNING_MARK` file is left), or one of this host still writes there: its masks may mix
    that run's and an earlier run's; else None."""
    marks = sorted(Path(folder).glob(f"{RUNNING_MARK}*"))
    if not marks:
        return None
    live = [m for m in marks if _still_running(m)]
    if live:  # a second run now would write beside it
        return (
            f"{folder}: an inference is still writing into this folder (process {_MARK.match(live[0].name)[1]} "
            f"of this host, {live[0].name}): its masks may mix that run's and an earlier run's until it "
            "ends; wait for it to end"
        )
    return (
        f"{folder}: an inference into this folder was stopped before it ended ({marks[0].name} is left): "
        "its masks may mix that run's and an earlier run's; run the inference again to its end, or into "
        "an empty --output_dir"
    )


def _output_case(name: str) -> str | None:
    """The case of an inference output file name (``<case>_seg.nii.gz``, ...), None for other files."""
    ending = next((e for e in OUTPUT_ENDINGS if name.endswith(e)), None)
    return name[: -len(ending)] if ending else None


def safe_output_path(output_dir: str | os.PathLike, case: str, suffix: str) -> Path:
    """``<output_dir>/<case><suffix>``, refusing case IDs that would escape ``output_dir``."""
    if (
        not case
        or case in (".", "..")
        or "/" in case
        or "\\" in case
        or os.path.isabs(case)
        or ".." in Path(case).parts
    ):
        raise ValueError(f"unsafe case ID {case!r}: it would write outside the output folder {output_dir}")
    out = Path(output_dir).resolve()
    path = (out / f"{case}{suffix}").resolve()
    if path.parent != out:
        raise ValueError(f"unsafe case ID {case!r}: it would write outside the output folder {output_dir}")
    return path


def inference_spec(task, dataset_dir=None, crop_size=None, ckpt_path=None):
    """The data spec evaluation and inference run with. The paper's data sets: by name. Own data
    (``nnunet``): the crop, the channels and labels and the CT intensity statistics that training
    recorded beside the weights (``model.json``) unless given, so a trained model segments new
    images without its training data and normalises them as in training (``dataset_dir``'s
    ``dataset.json`` is read when there is one)."""
    if not (isinstance(task, str) and task.lower() == "nnunet"):
        return get_spec(task, root=dataset_dir, crop_size=crop_size)
    from ..data.nnunet import nnunet_spec

    record = _record(ckpt_path)
    crop = crop_size if crop_size is not None else record.get("crop_size")
    # CT channels: the statistics the model was trained with, not those of the data at hand
    intensity = _intensity(record)
    if dataset_dir and (Path(dataset_dir) / "dataset.json").is_file():
        return nnunet_spec(dataset_dir, crop_size=crop, intensity=intensity)
    if record.get("dataset_json") and crop is not None:
        return nnunet_spec(record["dataset_json"], crop_size=crop)
    try:
        return get_spec(task, root=dataset_dir, crop_size=crop)  # names the missing dataset.json
    except FileNotFoundError as e:
        if not (ckpt_path and Path(ckpt_path).is_file() and not record):
            raise
        # weights copied in without their record: the missing dataset.json was not the user's mistake
        raise FileNotFoundError(
            f"{e}; own data's channels, labels and crop come from the model.json that training writes beside "
            f"{ckpt_path}, and there is none: copy it in with the weights, or pass --dataset_dir the training "
            "data's folder (its dataset.json)"
        ) from e


def recorded(ckpt_path, key: str, default=None):
    """``key`` of the run record beside the weights (``model.json``: ``network_name``,
    ``network_options``, ...), or ``default`` when there is no record or no such key: the bundles'
    evaluation and inference build the network the weights were trained as, unless overridden."""
    value = _record(ckpt_path).get(key)
    return default if value is None else value


def recorded_intensity(ckpt_path) -> dict | None:
    """The CT channels' statistics a model was trained with (its ``model.json``), or None."""
    return _intensity(_record(ckpt_path))


def _record(ckpt_path) -> dict:
    return (read_run_record(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None) or {}


def _intensity(record: dict) -> dict | None:
    from ..data.intensity import PROPERTIES_KEY

    return (record.get("dataset_json") or {}).get(PROPERTIES_KEY)


def find_inference_cases(
    dataset, input_dir: str | os.PathLike, skip_invalid: bool = False, **scan_options
) -> list[dict]:
    """Items of every case under ``input_dir`` in the published layout; labels are optional.

    BRATS: the cases of every grade (``HGG/`` and ``LGG/``, or case folders directly under
    ``input_dir``). ISLES: ``TRAINING/``'s cases, or ``TESTING/``'s when there is no ``TRAINING/``.
    CityScapes: the frames of every split (``leftImg8bit/{train,val,test}``, or plain folders).
    Own data (``nnunet``): ``input_dir`` is the data set's root (its ``imagesTs``, or ``imagesTr``
    when there is no ``imagesTs``) or any folder of ``<case>_<XXXX>.nii.gz`` images.

    Raises ``ValueError`` listing every case with a missing or extra channel (naming the file) and,
    in the same list, what :func:`input_problems` finds in the other cases' images (unreadable, NaN,
    ...), so that one round of fixes is enough; with ``skip_invalid`` (inference's
    ``--skip_invalid``) the cases missing a channel are left out and named in a WARNING instead
    (:class:`CasePredictor` names the others).
    """
    root = Path(input_dir)
    if root.is_file():  # one case's image (a shell's completion): not "not found"
        raise ValueError(
            f"{root} is a file, not a folder: --input_dir takes a folder of cases in the data set's layout; pass "
            f"{quote(str(root.parent))} (every case in it is segmented), or put this case's files into a folder of "
            "their own and pass that"
        )
    if not root.is_dir():
        raise ValueError(f"{root}: input folder not found (the bundles take it as --input_dir)")
    spec = get_spec(dataset, root=root)
    if spec.name == "brats" and "grades" not in scan_options:
        # every case given is segmented: HGG alone is a training choice (the paper's), and an LGG
        # case left out here would get no mask without a word
        scan_options["grades"] = BRATS_GRADES
    if spec.name == "cityscapes" and "splits" not in scan_options:
        # every frame given: the official 'test' frames (unlabelled) are what inference is for
        scan_options["splits"] = CITYSCAPES_SPLITS
    if spec.name == "isles" and "subset" not in scan_options and (root / "TESTING").is_dir():
        # ISLES 2018's test cases (no OT): the folder to segment, unless TRAINING is there too, whose
        # case_<n> share their names (TESTING/case_1 is another patient than TRAINING/case_1)
        if (root / "TRAINING").is_dir():
            log.warning(
                "%s holds TRAINING and TESTING: segmenting TRAINING; for the test cases pass --input_dir %s",
                root, root / "TESTING",
            )  # fmt: skip
        else:
            scan_options["subset"] = "TESTING"
    if spec.name == "nnunet" and "subset" not in scan_options and (root / "dataset.json").is_file():
        scan_options["subset"] = "imagesTs" if visible_entries(root / "imagesTs") else "imagesTr"
        log.info("%s: predicting %s", root, root / scan_options["subset"])
    result = scan_cases(spec, root, **scan_options)
    # what inference refuses: new cases have no label, so a missing one is no problem of theirs
    layout = [p for p in result.problems if p.file != spec.label_name and "label" not in p.message.lower()]
    problems = [str(p) for p in layout]
    items = []
    for case in result.cases:
        missing = [name for name, path in case.channels.items() if path is None]
        if missing:
            named = any(p.case == case.case for p in result.problems)
            problems += (
                [] if named else [f"{case.case}: {case.folder}: missing modality {m!r}" for m in missing]
            )
            continue
        item = case.to_item()
        items.append(item)
    # one case ID in two folders (HGG/ and LGG/, two cities), or two IDs that differ in letter case or
    # Unicode form only (one file name on macOS and Windows): the second mask would replace the first
    same_name: dict[str, list] = {}
    for case in result.cases:
        same_name.setdefault(unicodedata.normalize("NFC", case.case).casefold(), []).append(case)
    clashes = sorted(([c.case for c in cases], cases) for cases in same_name.values() if len(cases) > 1)
    twice = {name for names, _ in clashes for name in names}
    problems += [
        f"{names[0]}: {', '.join(str(c.folder) for c in cases)}: two cases of one name, whose masks would have one "
        "name: rename one"
        if len(set(names)) == 1
        else f"{', '.join(dict.fromkeys(names))}: {', '.join(dict.fromkeys(str(c.folder) for c in cases))}: case "
        "names that differ in letter case (or Unicode form) only, whose masks would have one name on macOS and "
        "Windows: rename one"
        for names, cases in clashes
    ]
    problems = list(dict.fromkeys(problems))
    if not result.cases:  # not one case: what the scan saw says why (no case to skip or to fix)
        raise ValueError(
            f"{spec.name}: no case found in {root} (expected the published layout, see the README)"
            + "".join(f"\n{p}" for p in dict.fromkeys(str(p) for p in result.problems))
            + (_frame_names_hint(root) if spec.name == "cityscapes" else "")
        )
    if problems and not as_bool(skip_invalid):
        # refusing anyway: the complete cases' files too, so the user fixes everything in one round
        for item in items:
            problems += input_problems(spec, item)[0]
    if problems and as_bool(skip_invalid):
        named = {p.case for p in layout} | twice
        items = [it for it in items if it.get("case") not in named]
        log.warning(
            "%s: skipping %d input problem(s) in %s (--skip_invalid), their cases get no mask:\n%s",
            spec.name,
            len(problems),
            root,
            "\n".join(problems),
        )
    elif problems:
        raise ValueError(
            f"{spec.name}: refusing to infer on {root}; fix these inputs first (or pass --skip_invalid true to "
            "segment the others):\n" + "\n".join(problems)
        )
    if not items:  # every problem the scan named says why (a layout message may mention labels)
        raise ValueError(
            f"{spec.name}: no case found in {root} (expected the published layout, see the README)"
            + "".join(f"\n{p}" for p in dict.fromkeys(str(p) for p in result.problems))
        )
    return items


def _frame_names_hint(root: Path) -> str:
    """For CityScapes inference: the line that says how frames are named, and which PNG files of
    ``root`` (or of its sub-folders, read as flat) lack that name (a user's own camera images)."""
    from ..data.cityscapes import IMAGE_SUFFIX

    unnamed = [
        f
        for f in sorted([*root.glob("*.png"), *root.glob("*/*.png")])
        if not f.name.endswith(IMAGE_SUFFIX) and "_gtFine_" not in f.name
    ]
    line = (
        f"\ninference reads camera frames alone (no labels), each named <frame>{IMAGE_SUFFIX}, in --input_dir, its "
        "sub-folders or the published layout"
    )
    if not unnamed:
        return line
    return (
        f"{line}: {len(unnamed)} PNG file(s) here without that ending: rename them, e.g. {unnamed[0]} -> "
        f"{unnamed[0].stem}{IMAGE_SUFFIX}"
    )


def validate_case(dataset, case: dict) -> list[str]:
    """Problems of a loaded case (a :func:`pam_monai.data.load_case` dict) that inference refuses."""
    spec = get_spec(dataset)
    image = case["image"]
    name = case["case"]
    files = case.get("files") or [f"channel {c}" for c in spec.channels]
    problems = []
    want = 4 if spec.volumetric else 3
    if image.ndim != want:
        problems.append(
            f"{name}: expected {want - 1}-D images of {spec.in_channels} channels, got array shape {image.shape}"
        )
        return problems
    if spec.volumetric:
        # own data's noNorm channels (masks, maps) go in as stored: all zeros or one value is a value
        kept = [norm.scheme == "nonorm" for norm in spec.channel_norms]
        for c, channel in enumerate(image):
            label = Path(files[c]).name if c < len(files) else spec.channels[c]
            if not np.isfinite(channel).all():
                problems.append(f"{name}: {label}: {int((~np.isfinite(channel)).sum())} NaN or Inf voxels")
            elif c < len(kept) and kept[c]:
                continue
            elif not np.any(channel):
                problems.append(
                    f"{name}: {label}: modality is all zeros: give the case this channel's image (the network "
                    "was trained with every channel and needs each one)"
                )
            elif channel.min() == channel.max():  # normalises to zeros too: as uninformative
                problems.append(
                    f"{name}: {label}: modality is constant ({channel.flat[0]:g} everywhere): give the case this "
                    "channel's image (the network was trained with every channel and needs each one)"
                )
    return problems


def input_problems(dataset, item: dict) -> tuple[list[str], list[str], dict | None]:
    """What inference refuses in a datalist item's images, what it warns about, and the case read
    (``case``, ``image``, ``affine``; None when unusable). The files are read and checked as
    :func:`pam_monai.data.check_dataset` reads them (unreadable, shapes, affines, NaN, ...), then
    :func:`validate_case`'s rules; a label beside the images is not read."""
    spec = get_spec(dataset)
    images = _images(item)
    name = str(item["case"]) if "case" in item else Path(images[0]).name
    image, affine, problems, warnings = check_images(spec, name, images)
    found, warned = [str(p) for p in problems], [str(w) for w in warnings]
    if image is None:
        return found, warned, None
    case = {"case": name, "image": image, "affine": affine, "files": images}
    found = validate_case(spec, case)
    return found, warned, None if found else case


def _images(item: dict) -> list[str]:
    image = item.get("image")
    return [str(f) for f in image] if isinstance(image, (list, tuple)) else [str(image)]


def _first(item: dict) -> str:
    return _images(item)[0]


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, reference: str | None = None) -> None:
    """Save ``array`` with ``affine``; with a NIfTI ``reference`` image, also its qform and sform
    (matrices and codes) and units (:func:`~pam_monai.data.files.nifti_like`: the mask then lies
    where its input does in any tool)."""
    import nibabel as nib

    header = None
    if reference is not None and volume_suffix(reference) in NIFTI_SUFFIXES:
        header = nib.load(str(reference)).header
    img = nifti_like(array, affine, header)
    # nibabel compresses by the name: a .nii stays uncompressed, as its name says
    with atomic_path(path, suffix=".nii" if str(path).endswith(".nii") else ".nii.gz") as tmp:
        nib.save(img, str(tmp))


def save_prediction(
    array: np.ndarray, path: Path, reference: str | os.PathLike, affine: np.ndarray | None
) -> Path:
    """Write a mask or probability map as ``path``'s file type says, on the grid of ``reference``
    (the case's first image, or a map written before): MetaImage / NRRD through SimpleITK with its
    origin, spacing and direction; NIfTI with ``affine`` and its qform / sform codes; 2-D ``.png``
    (uint8, values as given, with the reference image's EXIF orientation) and ``.npy``. Atomic, as
    every output."""
    name = str(path).lower()
    if name.endswith(".npy"):
        save_atomic_npy(path, array)
    elif name.endswith(".png"):
        _save_png(array, path, reference)
    elif volume_suffix(path) in SITK_SUFFIXES:
        save_sitk_like(array, reference, path)
    else:
        _save_nifti(array, affine, path, reference=str(reference))
    return path


def _save_png(array: np.ndarray, path: Path, reference: str | os.PathLike | None = None) -> None:
    """Write a 2-D mask as PNG. A ``reference`` image with an EXIF orientation (a photograph that
    viewers show turned; read as stored, see the checker) gives the mask the same tag: viewers then
    turn the mask as they turn its image, and it still matches the stored pixels, as read here."""
    from PIL import Image

    turn = exif_orientation(reference) if reference is not None else None
    options = {}
    if turn:
        options["exif"] = Image.Exif()
        options["exif"][EXIF_ORIENTATION] = turn
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG", **options)


class CasePredictor:
    """Predict every case and write masks in the input's grid.

    Args:
        network: the trained 2-D network (its output polarity is handled).
        items: datalist items (``case``, ``image``), e.g. from :func:`find_inference_cases`.
        dataset: "brats", "isles" or "cityscapes".
        output_dir: where the masks go (created).
        device: where to run the network.
        ckpt_path: a ``model.pt`` state dict to load first (``weights_only=True``); None keeps the weights.
        threshold: foreground probability threshold (strict: ``sigmoid(logit) > threshold``, as evaluation).
        slice_batch_size: slices per network call.
        amp: bf16 autocast on the GPU.
        save_probabilities: also write each case's foreground probability (float32, foreground
            polarity for RFNA too) on the mask's grid: ``<case>_prob`` with the mask's file type for
            volumes (0 outside the network's crop), ``<case>_prob.npy`` (H x W) for 2-D images (resized
            bilinearly to the image, the map the mask is cut from), so that ``prob > threshold`` is
            exactly the mask (for ensembles, other thresholds, calibration).
        inferer: the slice-wise inferer (default: a :class:`SliceWiseInferer` of ``slice_batch_size``).
        skip_invalid: segment the usable cases and skip those with an input problem (a WARNING lists
            them); default: refuse them all, writing nothing, until every input is fixed.
        reuse_memory: on the CPU, keep freed memory in the process while the cases are predicted
            (:func:`~pam_monai.engines.memory.reuse_freed_memory`): every network call then reuses
            the pages of the one before instead of mapping and zeroing fresh ones (glibc hands
            each block of more than 128 KiB-32 MiB back to the kernel at once). The same masks,
            bit for bit; 1.6x faster whole-volume FPA inference on 2 cores
            (``benchmarks/README.md``). False: the C library's defaults.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        items: Sequence[dict],
        dataset: str,
        output_dir: str,
        device: str | torch.device = "cpu",
        ckpt_path: str | None = None,
        threshold: float = 0.5,
        slice_batch_size: int = 64,
        amp: bool = False,
        save_probabilities: bool = False,
        inferer: SliceWiseInferer | None = None,
        skip_invalid: bool = False,
        reuse_memory: bool = True,
    ) -> None:
        self.network = network
        self.items = list(items)
        self.spec = get_spec(dataset)
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.ckpt_path = ckpt_path
        self.threshold = _probability(threshold)  # refused here, before any case is read
        if inferer is None:
            inferer = SliceWiseInferer(slice_batch_size, roi_size=self.spec.crop_size)
        self.inferer = inferer
        self.skip_invalid = as_bool(skip_invalid)
        self.reuse_memory = as_bool(reuse_memory)
        self.amp = as_bool(amp) and self.device.type == "cuda"
        # --save_probabilities false arrives from the monai.bundle CLI as the string "false" (Fire
        # parses only True / False), and bool("false") is True
        self.save_probabilities = as_bool(save_probabilities)

    def output_path(self, case: str, source: str | os.PathLike | None = None, kind: str = "seg") -> Path:
        """Where the mask (``kind="seg"``) or the probability map (``"prob"``) of ``case`` goes; a
        volume's outputs have its input's file type (``source``: the case's first image; MetaImage
        and NRRD stay MetaImage and NRRD)."""
        if self.spec.volumetric:
            ending = volume_suffix(source) if source and volume_suffix(source) in SITK_SUFFIXES else ".nii.gz"
            suffix = f"_{kind}{ending}"
        elif kind == "prob":
            suffix = "_prob.npy"
        else:
            suffix = "_seg.png" if self.spec.name == "nnunet" else "_vehicles.png"
        return safe_output_path(self.output_dir, case, suffix)

    def run(self) -> list[Path]:
        if self.ckpt_path:
            # model.pt is a bare state dict; checkpoint_last.pt holds it under "model"
            self.network.load_state_dict(check_weights(self.ckpt_path, self.network))
        network = as_foreground(self.network).to(self.device).eval()
        # validate everything first: no output at all unless every case is usable (or skip_invalid)
        input_dirs = {Path(f).resolve().parent for item in self.items for f in _images(item)}
        for item in self.items:
            for kind in ("seg", "prob") if self.save_probabilities else ("seg",):
                out = self.output_path(str(item.get("case", "")), _first(item), kind)
                # a BraTS case folder holds <case>_seg.nii.gz, the ground truth: never write over a file
                # that lies among the input images
                if out.exists() and out.parent in input_dirs:
                    raise ValueError(
                        f"{self.spec.name}: refusing to overwrite {out}: it lies in a folder of input images "
                        "(a BraTS label <case>_seg.nii.gz?); pass another --output_dir"
                    )
        usable, problems, skipped = [], [], []
        # the orientation and voxel size the model was trained on (volumes: model.json), to name cases
        # stored otherwise or of another resolution
        trained = recorded(self.ckpt_path, "orientation")
        spacing = recorded(self.ckpt_path, "in_plane_spacing")
        # every case's files read once before any mask (~0.4 s per full-size BraTS case): minutes of
        # silence before the inference bar for a few hundred cases without a bar of its own
        for item in progress_bar(self.items, desc=f"{self.spec.name}: checking inputs", unit="case"):
            found, warned, case = input_problems(self.spec, item)
            if case is not None:  # usable: what inference warns about
                self._warn(case, warned, trained, spacing)
            if found and self.skip_invalid:
                skipped += found
                continue
            problems += found
            usable.append(item)  # read again below: memory stays one case, however many there are
        if skipped:
            log.warning(
                "%s: skipping %d input problem(s) (--skip_invalid), their cases get no mask:\n%s",
                self.spec.name,
                len(skipped),
                "\n".join(skipped),
            )
            if not usable:
                raise ValueError(
                    f"{self.spec.name}: no usable case to infer; every input has a problem (above)"
                )
        if problems:
            raise ValueError(
                f"{self.spec.name}: refusing to infer; fix these inputs first (or pass --skip_invalid true to "
                "segment the others):\n" + "\n".join(problems)
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_orphaned_temps(self.output_dir):  # masks a killed run left half-written
            log.info("removed %s, left by a killed writer", path)
        # kept if this run is stopped: its masks then lie beside an earlier run's (score says so)
        mark = self.output_dir / f"{RUNNING_MARK}.pid{os.getpid()}@{_HOST}.{uuid.uuid4().hex[:8]}"
        atomic_write_text(mark, json.dumps(_holder()) + "\n")  # pid, host, process start (PID reuse)
        _running.add(mark.name)
        # CPU: the network's tensors of hundreds of MB reuse freed pages (same masks, faster)
        written = []
        try:
            with reuse_freed_memory(self.reuse_memory and self.device.type == "cpu"):
                for item in progress_bar(usable, desc=f"{self.spec.name}: inference", unit="case"):
                    written += self._predict(network, item)
        finally:
            _running.discard(mark.name)
        _clear_marks(self.output_dir)
        self._warn_earlier_outputs(written)
        return written

    def _warn_earlier_outputs(self, written: Sequence[Path]) -> None:
        """Name the masks and maps in the output folder that this run did not write (an earlier run's
        cases, or a case skipped now with ``--skip_invalid``): ``score`` and ``ensemble`` read every
        one of them beside this run's."""
        # a case segmented now whose old map was not rewritten has its own warning (_predict)
        ours = {_output_case(Path(p).name) for p in written}
        earlier = sorted(
            p.name
            for p in visible_entries(self.output_dir)
            if p.is_file() and _output_case(p.name) not in (None, *ours)
        )
        if earlier:
            log.warning(
                "%s: %s holds %d mask or probability file(s) of cases this run did not segment (%s%s): an earlier "
                "run's, left as they are; `pam_monai score` and `ensemble` would read them with this run's outputs: "
                "delete them or use another --output_dir",
                self.spec.name, self.output_dir, len(earlier), ", ".join(earlier[:5]), ", ..." if len(earlier) > 5 else "",
            )  # fmt: skip

    def _warn(self, case: dict, warned: list[str], trained: str | None, spacing: list | None = None) -> None:
        """Log what is worth knowing about a usable case: the checker's warnings, an in-plane size
        smaller (BraTS, ISLES: padded) or larger (own data) than the crop, a thick axis other than the third, another
        orientation than training's, in-plane voxels twice or half the size of training's (``spacing``)."""
        for line in warned:
            log.warning("%s", line)
        size, crop = tuple(case["image"].shape[1:3]), self.spec.crop_size
        if self.spec.volumetric and crop is not None and self.spec.inference_fit == "crop":
            if any(s < c for s, c in zip(size, crop)):  # preprocess_case pads, restore_prediction cuts back
                log.warning(
                    "%s: in-plane size %s is smaller than the %dx%d crop the model was trained with: zero-padded "
                    "to it (as training and evaluation do), its mask cut back to the input's grid",
                    case["case"], size, *crop,
                )  # fmt: skip
        if self.spec.inference_fit == "pad" and crop is not None:
            if any(s > c for s, c in zip(size, crop)):
                log.info(
                    "%s: in-plane size %s is larger than the %dx%d crop the model was trained with: "
                    "segmented whole, with a sliding window of the crop",
                    case["case"], size, *crop,
                )  # fmt: skip
        if self.spec.volumetric:
            first = Path(case["files"][0]).name
            thick = slice_axis_problem(case["affine"]) if self.spec.name == "nnunet" else None
            if thick:
                log.warning("%s: %s: %s", case["case"], first, thick)
            turned = orientation_problem(orientation(case["affine"]), trained, "the training cases")
            if turned:
                log.warning("%s: %s: %s", case["case"], first, turned)
            resolution = spacing_problem(voxel_spacing(case["affine"], 3), spacing, "training's (median)")
            if resolution:
                log.warning("%s: %s: %s", case["case"], first, resolution)

    def _predict(self, network: torch.nn.Module, item: dict) -> list[Path]:
        """Predict one usable case; the paths written (mask, then probabilities if asked)."""
        written = []
        # the images alone: a label beside them (a BraTS case folder's seg) was not checked and is not needed
        case = load_case(self.spec, {k: v for k, v in item.items() if k != "label"})
        source = _first(item)
        pre = preprocess_case(self.spec, case, whole=self.spec.inference_fit == "pad")
        image = torch.from_numpy(np.ascontiguousarray(pre["image"], dtype=np.float32))[None].to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.inferer(image, network)
        shape, prob = case["original_shape"], None
        if self.spec.volumetric:  # cut on the network's grid, uncropped (no float copy of the volume)
            mask = foreground_mask(logits, self.threshold)[0, 0].cpu().numpy().astype(np.uint8)
            mask = restore_prediction(self.spec, mask, shape)
        else:  # 2-D: probabilities resized bilinearly to the image's pixels and cut there
            prob = restore_prediction(self.spec, torch.sigmoid(logits.float())[0, 0], shape)
            mask = (prob > self.threshold).astype(np.uint8)
        path = self.output_path(case["case"], source)
        # CityScapes' vehicle masks are 0 / 255 PNGs; everything else 0 / 1 (own PNGs: a label map)
        scale = 255 if not self.spec.volumetric and self.spec.name != "nnunet" else 1
        written.append(save_prediction(mask * np.uint8(scale), path, source, case["affine"]))
        prob_path = self.output_path(case["case"], source, kind="prob")
        if not self.save_probabilities and prob_path.exists():
            log.warning(
                "%s: %s is from an earlier run and was not rewritten: it may not match this mask "
                "(run with --save_probabilities true to rewrite it, or delete it)",
                case["case"],
                prob_path,
            )
        if self.save_probabilities:  # the mask's own numbers: sigmoid in float32, put back the same way
            if prob is None:  # volumes: uncropped, zeros outside the crop
                prob = restore_prediction(self.spec, torch.sigmoid(logits.float())[0, 0].cpu().numpy(), shape)
            prob = np.ascontiguousarray(prob, np.float32)
            written.append(save_prediction(prob, prob_path, source, case["affine"]))
        unit = "voxels" if self.spec.volumetric else "pixels"
        log.info("%s: %d foreground %s -> %s", case["case"], int(mask.sum()), unit, path)
        return written
