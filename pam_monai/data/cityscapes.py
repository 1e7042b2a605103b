"""CityScapes reader.

Published layout (``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unpacked into
one root)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

A frame is one case, named ``<city>_<seq>_<frame>``. A root without ``leftImg8bit``/``gtFine``
is read flat: frames whose image and labelIds lie side by side in the root or in its
sub-folders (split unknown).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..shell import quote
from .layout import CaseFiles, Problem, ScanResult, nothing_found

__all__ = ["IMAGE_SUFFIX", "LABEL_SUFFIX", "LAYOUT", "SPLITS", "scan"]

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
SPLITS = ("train", "val", "test")  # every published split; 'test' has no public labels (dummy gtFine files)
LAYOUT = "<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and <root>/gtFine/<split>/<city>/*_gtFine_labelIds.png"


def _frames(folder: Path, suffix: str) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {f.name[: -len(suffix)]: f for f in folder.iterdir() if f.is_file() and f.name.endswith(suffix)}


# gtFine files that are not the labelIds the vehicles are read from (26-33), and why they cannot stand in
NOT_LABEL_IDS = {
    "_gtFine_color.png": "a colour drawing of the labels, not their ids",
    "_gtFine_labelTrainIds.png": "train ids (19 classes; caravan and trailer are 255 there), not the labelIds",
    "_gtFine_instanceIds.png": "instance ids, not the labelIds",
}


def _missing_label(root: Path, label_dir: Path, image_dir: Path, frame: str) -> str:
    """Why ``frame`` has no labelIds in ``label_dir`` (``image_dir``: where its image is), and what to
    do: no gtFine download, no folder of the image's city, or another gtFine file in its place."""
    what = "missing label 'labelIds'"
    if label_dir != image_dir:  # the published layout
        if not (root / "gtFine").is_dir():
            return f"{what}: no gtFine folder in {root}: unpack gtFine_trainvaltest.zip there, beside leftImg8bit"
        if not label_dir.is_dir():
            return (
                f"{what}: no folder {label_dir.relative_to(root).as_posix()} for "
                f"{image_dir.relative_to(root).as_posix()}: every city's frames need their labels (gtFine_trainvaltest.zip)"
            )
    for suffix, kind in NOT_LABEL_IDS.items():
        if (label_dir / (frame + suffix)).is_file():
            return (
                f"{what}: {frame}{suffix} is there: {kind}; the vehicles are read from {frame}{LABEL_SUFFIX} "
                "(labelIds 26-33), as gtFine_trainvaltest.zip holds it (cityscapesScripts' json2labelImg makes it "
                "from the polygons)"
            )
    return what


def _pair(
    images: dict[str, Path],
    labels: dict[str, Path],
    folder: Path,
    split: str,
    problems: list[Problem],
    city: str | None = None,
    label_folder: Path | None = None,
    root: Path | None = None,
) -> list[CaseFiles]:
    """Cases of one folder's frames. ``city``: the layout's city folder (None when read flat: the
    frame name's first part, ``<city>_<seq>_<frame>``); ``label_folder``: where the labels were
    looked for (default ``folder``), under ``root`` (default ``folder``)."""
    label_folder = folder if label_folder is None else label_folder
    cases = []
    for frame in sorted(set(images) | set(labels)):
        image, label = images.get(frame), labels.get(frame)
        if image is None:
            problems.append(Problem(frame, frame + IMAGE_SUFFIX, "missing image 'leftImg8bit'"))
        if label is None:
            why = _missing_label(root or folder, label_folder, folder, frame)
            problems.append(Problem(frame, frame + LABEL_SUFFIX, why))
        cases.append(
            CaseFiles(
                case=frame,
                folder=folder,
                channels={"leftImg8bit": image},
                label=label,
                label_name="labelIds",
                meta={"city": city or frame.split("_")[0]},
                group=split,
            )
        )
    return cases


def _same_names(cases: list[CaseFiles], root: Path) -> list[Problem]:
    """A problem for each frame name found in more than one folder (renamed or copied frames in
    two city folders, or in the flat folders): a case is named by its frame, and metrics.csv and
    the masks inference writes would mix them up or overwrite one with the other."""
    folders: dict[str, list[Path]] = {}
    for case in cases:
        folders.setdefault(case.case, []).append(case.folder)
    return [
        Problem(
            name,
            ", ".join(f.relative_to(root).as_posix() for f in where),
            f"frame name in {len(where)} folders: cases are named by their frame, so they would overwrite "
            "each other's rows and masks; rename all but one (e.g. <city>_<name>)",
        )
        for name, where in folders.items()
        if len(where) > 1
    ]


def scan(root: str | os.PathLike, splits: str | Sequence[str] = ("train", "val")) -> ScanResult:
    """Find every CityScapes frame under ``root`` (see the module docstring)."""
    root = Path(root)
    splits = tuple(splits.split(",")) if isinstance(splits, str) else tuple(splits)
    if not root.is_dir():
        return ScanResult([], [Problem(root.name, str(root), "data folder does not exist")])
    cases: list[CaseFiles] = []
    problems: list[Problem] = []
    if (root / "leftImg8bit").is_dir() or (root / "gtFine").is_dir():
        for split in splits:
            img_dir, lbl_dir = root / "leftImg8bit" / split, root / "gtFine" / split
            cities = sorted(
                {d.name for base in (img_dir, lbl_dir) if base.is_dir() for d in base.iterdir() if d.is_dir()}
            )
            for city in cities:
                images, labels = _frames(img_dir / city, IMAGE_SUFFIX), _frames(lbl_dir / city, LABEL_SUFFIX)
                if not images and not labels:
                    problems.append(Problem(city, str(img_dir / city), "empty folder"))
                # the folder names the city, whatever the frames are called (renamed, copied)
                cases += _pair(images, labels, img_dir / city, split, problems, city, lbl_dir / city, root)
    else:
        for folder in [root, *sorted(d for d in root.iterdir() if d.is_dir())]:
            cases += _pair(_frames(folder, IMAGE_SUFFIX), _frames(folder, LABEL_SUFFIX), folder, "", problems)
    problems += _same_names(cases, root)
    if not cases and not problems:
        what = f"no frames of split(s) {', '.join(splits)} (expected {LAYOUT})"
        test = root / "leftImg8bit" / "test"
        if "test" not in splits and any(test.glob(f"*/*{IMAGE_SUFFIX}")):
            # the test frames alone: no public labels, nothing to train on or score
            what += (
                f"; {test} holds the test frames, without public labels: training and evaluation need the train "
                f"and val splits; check reads the test frames with --unlabelled and inference segments them "
                f"(--input_dir {quote(str(root))})"
            )
        what += _root_hint(root)
        problems.append(Problem(root.name, str(root), nothing_found(root, what)))
    return ScanResult(cases, problems)


def _root_hint(root: Path) -> str:
    """The folder to give instead of ``root`` where it is one level off the layout: a root's
    ``leftImg8bit`` or ``gtFine`` folder itself, or a folder above the two zips unpacked each into a
    folder of its own (``leftImg8bit_trainvaltest/leftImg8bit``); "" otherwise."""
    parts = ("leftImg8bit", "gtFine")
    if root.name in parts:
        return f"; {root} is the {root.name} folder of a CityScapes root: give the folder that holds it, {root.parent}"
    nested = sorted(d / p for d in root.iterdir() if d.is_dir() for p in parts if (d / p).is_dir())
    if not nested:
        return ""
    return (
        f"; each zip was unpacked into a folder of its own ({', '.join(map(str, nested))}): move them into one "
        "folder and give that folder (leftImg8bit and gtFine side by side in it)"
    )
