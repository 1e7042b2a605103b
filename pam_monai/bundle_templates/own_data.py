"""A self-contained MONAI bundle for your own data set (nnU-Net v2 raw layout).

``python -m pam_monai bundle --dataset_dir DIR --network fpa --output bundles/lesion_fpa`` renders
the same workflow as the paper's bundles (``pam_monai/bundle_templates/``) with ``task``
``nnunet``, and writes into the configs what the data set says: its ``dataset.json`` (channels and
labels), the crop and the target. The bundle therefore trains on ``DIR`` without overrides, and
its inference needs only the images to segment (no training data, no ``dataset.json``): what a
model shared through the model zoo needs. Its ``metadata.json`` describes the inputs (channel
names, shape) and passes the schema check.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..atomic import recover_swap, refuse_mount_point, remove_orphaned_temps, sibling_temp_dir, swap_dir
from ..data.layout import visible_entries
from ..data.nnunet import TITLE_SUFFIX, label_title, nnunet_spec, spec_dataset_json
from ..runlock import RunLockError, refuse_if_held
from ..shell import quote
from .build import NETWORKS, BundleTask, bundle_files, normalisation_words

__all__ = ["bundle", "own_data_bundle"]

log = logging.getLogger("pam_monai")

GENERATED = (
    "This bundle was made for own data by `python -m pam_monai bundle` from `{dataset_dir}` (nnU-Net v2\n"
    "raw layout). Its configs carry that data set's `dataset.json` (channels and labels), the crop and the\n"
    "target, so inference needs only the images to segment."
)
DATA = """`dataset_dir` is `{dataset_dir}`: `dataset.json`, `imagesTr/<case>_XXXX{ending}` (channels {channels}),
`labelsTr/<case>{ending}`. Target: {target} (`foreground_label` {foreground}); {geometry}. {intensities}. Split: {split}. Every case
is checked before training; this prints the same report:

```bash
python -m pam_monai check --dataset nnunet --root '{dataset_dir}' --foreground_label '{foreground}'
```

Own data is never replaced by a synthetic stand-in. To train on another data set, make a bundle for it."""


def _intensities(spec) -> str:
    words = f"Intensities ({normalisation_words(spec)}) follow the channel names, as in nnU-Net"
    if any(n.scheme == "ct" for n in spec.channel_norms):
        words += (
            "; the CT statistics are those this bundle was made with, and in evaluation and inference a trained "
            "model's own (`models/model.json`)"
        )
    return words


def _check_crop(network: str, spec) -> None:
    """Refuse a crop that ``network`` down-samples to one element (RFNA: 64x; own images of 64 x 64
    or less): training from the bundle would fail at its first step; the message names --crop_size."""
    from ..networks import get_network
    from ..networks.blocks.convolutions import check_crop

    net = get_network(network, spatial_dims=2, in_channels=spec.in_channels, out_channels=1)
    check_crop(net, spec.crop_size, f"{network} on {spec.title}: the crop")


def _folder_below_cwd(output: Path) -> str | None:
    """The folder holding the bundle ``output``, relative to the working folder and '/'-separated,
    when the bundle lies below the working folder; else None."""
    try:
        relative = os.path.relpath(output.resolve(), Path.cwd())
    except ValueError:  # Windows: a bundle on another drive than the working folder
        return None
    return Path(relative).parent.as_posix() if not relative.startswith("..") and relative != "." else None


def _refuse_unquotable(dataset_dir: Path, output: Path, where: str) -> None:
    """Refuse paths a bundle cannot quote: ``where`` (the bundle ``output`` as seen from the working
    folder) goes into a config expression between single quotes; ``dataset_dir`` is a plain config
    value, but also goes into the README's shell commands between single quotes. Backslashes matter
    in ``where`` only: it is '/'-separated, and every Windows ``dataset_dir`` has them."""
    for path, text, bad in ((output, where, "'\\\n"), (dataset_dir, str(dataset_dir), "'\n")):
        if any(c in text for c in bad):
            raise ValueError(
                f"{path}: paths with quotes or newlines (and bundle folder names with backslashes) cannot go "
                "into a bundle's configs and commands: rename or move the folder"
            )


def own_data_bundle(
    dataset_dir: str | os.PathLike,
    network: str,
    output: str | os.PathLike,
    foreground_label=None,
    crop_size: Sequence[int] | None = None,
    modality: str | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Write the bundle (``configs/``, ``docs/``, ``LICENSE``) into ``output`` and return it.

    Args:
        dataset_dir: the data set in the nnU-Net v2 raw layout.
        network: ``fpa`` or ``rfna`` (any other network of the registry trains from the bundle
            with ``--network_name``).
        output: the bundle folder; its name is the bundle's name. An existing non-empty folder is
            refused unless ``overwrite``.
        foreground_label: label values or names of ``dataset.json`` (default: every non-zero label).
        crop_size: in-plane crop of volumes (default: the largest training image, rounded up to 16),
            or the size 2-D images are resized to (default: their median size, longer side <= 256).
        modality: for ``metadata.json`` (default: the channel names).
        check: check every case first (:func:`pam_monai.data.check_dataset`, as training does) and
            refuse, writing nothing, when the data set fails: training from the bundle would refuse,
            and its crop and CT statistics are computed from those very files. False: write it anyway.
    """
    if network not in NETWORKS:
        raise ValueError(
            f"--network must be one of {', '.join(sorted(NETWORKS))}, got {network!r}: pass --network "
            f"{' or '.join(sorted(NETWORKS))} (every other network of the registry trains from the bundle with "
            "--network_name)"
        )
    dataset_dir = Path(dataset_dir).resolve()
    output = Path(output)
    # bundle_root: the folder as seen from here when it is below the working folder (the documented
    # commands), else "." (run from the bundle's own folder, or pass --bundle_root): never an
    # absolute path, which a copied or shared bundle would keep writing to
    folder = _folder_below_cwd(output)
    _refuse_unquotable(dataset_dir, output, f"{folder or '.'}/{output.resolve().name}")
    # what a killed rebuild left: the old bundle renamed aside, the new one's temporary folder
    recover_swap(output.resolve())
    remove_orphaned_temps(output.resolve().parent)
    if visible_entries(output) and not overwrite:
        raise FileExistsError(f"{output} already holds files; choose a new folder or pass --overwrite")
    _refuse_training(output)  # before minutes of reading the data set; again before the swap
    refuse_mount_point(output.resolve())  # its swap would fail after minutes of reading the data
    # named before the data are read: checking every case of a large data set takes minutes
    name = output.resolve().name  # "." is the current folder's name
    prefix, suffix = (name[: -len(network) - 1], network) if name.endswith(f"_{network}") else (name, "")
    if not suffix:
        other = next((n for n in sorted(NETWORKS) if name.endswith(f"_{n}")), None)  # --network left out
        raise ValueError(
            f"the bundle folder's name must end in _{network} (e.g. lesion_{network}), got {name!r}: pass "
            + (f"--network {other}" if other else f"--output {output.parent / f'{name}_{network}'}")
        )
    spec = nnunet_spec(dataset_dir, crop_size=crop_size)
    _check_crop(network, spec)
    foreground, _ = spec.resolve_labels(foreground_label)
    if check:
        _check(spec, dataset_dir, foreground)
    channel_def = {str(i): c for i, c in enumerate(spec.channels)}
    info = {
        "modality": modality or ", ".join(spec.channels),
        "target": f"{label_title(spec.label_names, foreground)} (labels {', '.join(map(str, foreground))})",
        "data_source": f"own data: {spec.title.removesuffix(TITLE_SUFFIX)} (nnU-Net v2 raw layout)",
        "data_type": "png"
        if not spec.volumetric
        else "itk"
        if spec.file_ending.lower() in (".mha", ".nrrd")
        else "nibabel",
        "channel_def": channel_def,
        "format": "magnitude",
        "data_terms": "own data: the terms its owners share it under; check them before sharing weights",
        "data_citation": "Cite what the data set's owners ask for.",
        "generated": GENERATED.replace("{dataset_dir}", str(dataset_dir)),
        "data_section": DATA.replace("{dataset_dir}", str(dataset_dir))
        .replace("{foreground}", json.dumps(list(foreground)))
        .replace("{ending}", spec.file_ending)
        .replace("{intensities}", _intensities(spec))
        .replace(
            "{geometry}",
            f"in-plane crop {'x'.join(map(str, spec.crop_size))} (`crop_size`; smaller volumes are zero-padded to it; "
            "larger ones are centre-cropped for training (`check` warns when that cuts foreground) and segmented "
            "whole by a sliding window of the crop in evaluation and inference)"
            if spec.volumetric
            else f"images resized to {'x'.join(map(str, spec.crop_size))} (`crop_size`; predictions are resized back "
            "(probabilities, bilinearly, cut at the threshold there) and scored on each image's pixels)",
        ),
        "defaults": "defaults: the paper's BRATS settings",
        "data_flag": "",
        "fg_note": " (values or names of the data set's labels)",
        "measured_line": "",
    }
    if spec.ignore_label is not None:
        body = info["data_section"].rstrip("\n")
        info["data_section"] = (
            body
            + f"\n\nSparse annotations: label {spec.ignore_label} (`ignore`) marks unannotated voxels. The Dice loss "
            "leaves them out, slices without an annotated voxel are not trained on, and every metric of the "
            "evaluation counts annotated voxels only (a test case without any is not scored)."
            + info["data_section"][len(body) :]
        )
    info["run_from"] = (
        "The commands below run from the folder the bundle was made in; from anywhere else (with the\n"
        "config paths changed to match) MONAI's workflows write into the bundle whose `configs/` they run\n"
        "(`--bundle_root` sets another folder)."
        if folder
        else "Run the commands below from the bundle's own folder; from anywhere else MONAI's workflows\n"
        "write into the bundle whose `configs/` they run (`--bundle_root` sets another folder)."
    )
    task = BundleTask(
        "nnunet", spec, info, prefix, folder=folder or ".", dataset_dir=str(dataset_dir),
        commands_from_bundle=not folder,
    )  # fmt: skip
    files = bundle_files(task, network)
    embedded = {
        "dataset_json": spec_dataset_json(spec),
        "crop_size": list(spec.crop_size),
        "spec": "$pam_monai.data.nnunet_spec(@dataset_json, crop_size=@crop_size)",
        **({} if folder else {"bundle_root": "$pam_monai.engines.bundle_root()"}),
    }
    # evaluation and inference: the crop and CT statistics from model.json (those the weights were
    # trained with: a --crop_size of training needs no repeating), else the embedded ones; an
    # explicit --crop_size wins, and check_run refuses weights trained with another
    recorded = (
        "$pam_monai.data.nnunet_spec(@dataset_json, crop_size=@crop_size or pam_monai.engines.recorded(@ckpt_path, "
        f"'crop_size', {list(spec.crop_size)}), intensity=pam_monai.engines.recorded_intensity(@ckpt_path))"
    )
    for config, extra in (
        ("train.json", {**embedded, "foreground_label": list(foreground)}),
        ("inference.json", {**embedded, "spec": recorded, "crop_size": None}),
        ("evaluate.json", {"spec": recorded, "crop_size": None}),
    ):
        data = json.loads(files[f"configs/{config}"])
        data.update(extra)
        files[f"configs/{config}"] = json.dumps(data, indent=4) + "\n"
    _write_bundle(output.resolve(), files)
    return output


def _write_bundle(target: Path, files: dict[str, str]) -> None:
    """Write the bundle ``files`` into the folder ``target``, keeping whatever else it holds
    (``models/``, ``eval/``, the user's own files). The new bundle is made whole beside it, the
    user's files hard-linked in (copied where links fail), and swapped in at once
    (:func:`~pam_monai.atomic.swap_dir`): replaced file by file, a rebuild killed midway left
    configs of two builds (a new ``train.json`` beside an old ``inference.json`` of other channels)."""
    tmp = sibling_temp_dir(target)
    try:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        if target.is_dir():
            shutil.copytree(
                target, tmp, symlinks=True, ignore=_own_files(target, files), copy_function=_link_or_copy,
                dirs_exist_ok=True,
            )  # fmt: skip
            # a training started since the first check (the data set's reading takes minutes) would
            # save its checkpoints into the old folder, which the swap removes
            _refuse_training(target)
        swap_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _refuse_training(bundle: Path) -> None:
    """Refuse to rebuild ``bundle`` while a training holds its ``models/`` or ``eval/``: a checkpoint
    it saves while the folder is swapped would go with the old folder."""
    try:
        refuse_if_held(bundle / "models", bundle / "eval")
    except RunLockError as e:
        raise RunLockError(f"{bundle} is not rebuilt while a training writes into it: {e}") from None


def _own_files(target: Path, files: dict[str, str]):
    """``copytree``'s ``ignore``: the files of the bundle itself, which the new build replaces."""
    own = {Path(rel) for rel in files}

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = Path(folder).relative_to(target)
        return {name for name in names if here / name in own}

    return ignore


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no second copy of a large checkpoint); a copy where the file system or the
    file's owner refuses links (FAT, ``fs.protected_hardlinks`` for another user's file)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _check(spec, dataset_dir: Path, foreground: Sequence[int]) -> None:
    """Refuse a data set that fails :func:`pam_monai.data.check_dataset`, naming every problem."""
    from ..data import check_dataset

    report = check_dataset(spec, dataset_dir, list(foreground), progress=True)
    if not report.ok:
        command = (
            f"python -m pam_monai check --dataset nnunet --root '{dataset_dir}' --foreground_label "
            f"'{json.dumps(list(foreground))}'"
        )
        raise ValueError(
            f"{dataset_dir}: {len(report.problems)} problem(s) in the data set, so training from a bundle made of "
            f"it would refuse (and its crop is measured on these files); no bundle written. Fix them and run again "
            f"({command} shows every case), or pass --no_check to write the bundle anyway:\n"
            + "\n".join(str(p) for p in report.problems)
        )
    report.log(log)  # spacings, orientations (INFO) and the warnings, as training logs them
    _check_split(spec, dataset_dir)


def _check_split(spec, dataset_dir: Path) -> None:
    """Refuse a data set whose fold 0 of the bundles' default split has an empty split
    (:func:`pam_monai.data.datalist.default_split_problem`, as ``check`` reports it)."""
    from ..data.datalist import OWN_SPLIT_FIX, default_split_problem

    problem = default_split_problem(spec, dataset_dir)
    if problem:
        raise ValueError(
            f"{dataset_dir}: {problem}; no bundle written. Add cases to imagesTr/ and labelsTr/, or pass "
            f"--no_check and {OWN_SPLIT_FIX}"
        )


def bundle(
    dataset_dir: str,
    output: str,
    network: str = "fpa",
    foreground_label: str | None = None,
    crop_size: list | None = None,
    modality: str | None = None,
    overwrite: bool = False,
    no_check: bool = False,
) -> None:
    """Make a self-contained MONAI bundle for your own data set (nnU-Net v2 raw layout): its configs
    carry the data set's channels, labels, crop and target, so it trains on DATASET_DIR without
    overrides and infers on new images alone.

    Args:
        dataset_dir: the data set (dataset.json, imagesTr/, labelsTr/).
        output: the bundle folder, named <name>_<network>, e.g. bundles/lesion_fpa.
        network: fpa or rfna (every baseline still trains from it with --network_name).
        foreground_label: label values or names of dataset.json, e.g. lesion or "[1, 2]" (default:
            every non-zero label).
        crop_size: in-plane crop "[h, w]" of volumes, by default the largest training image rounded
            up to 16, or the size 2-D images are resized to, by default their median size with the
            longer side at most 256, rounded up to 16.
        modality: for metadata.json (default: the channel names).
        overwrite: rewrite the configs of an existing bundle folder (models/ are kept).
        no_check: write the bundle without checking every case first. By default the data set is
            checked as training checks it (as python -m pam_monai check does, reading every volume,
            a minute or more for hundreds of cases) and a data set that fails is refused, its
            problems listed, nothing written.
    """
    if not no_check:
        print(f"checking every case of {dataset_dir} first, as training will (--no_check skips this)")
    path = own_data_bundle(
        dataset_dir, network, output, foreground_label, crop_size, modality, overwrite, check=not no_check
    )
    config = json.loads((path / "configs" / "train.json").read_text(encoding="utf-8"))
    run = "python -m monai.bundle run training --config_file"
    wrote = f"wrote {path} (not checked: training checks every case first)" if no_check else f"wrote {path}"
    if (
        config["bundle_root"] == "$pam_monai.engines.bundle_root()"
    ):  # outside the working folder: run from its own
        print(f"{wrote}; train: cd {quote(str(path))} && {run} configs/train.json")
    else:  # quoted: a folder with spaces is one argument when the command is copied to a shell
        print(f"{wrote}; train: {run} {quote(str(Path(path) / 'configs' / 'train.json'))}")
