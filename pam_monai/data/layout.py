"""Case discovery common to the three readers: what a scanned case and a problem look like.

Each reader (:mod:`.brats`, :mod:`.isles`, :mod:`.cityscapes`) walks its published layout and
returns a :class:`ScanResult`: every case folder it found as :class:`CaseFiles` (complete or not),
plus the problems it met on the way (empty folders, missing or duplicated files). The checker
reports those problems; :func:`discover_cases` keeps the complete cases as datalist items.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .specs import get_spec

__all__ = [
    "CaseFiles",
    "Problem",
    "ScanResult",
    "discover_cases",
    "nnunet_layout_note",
    "scan_cases",
    "visible_entries",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: which case, which file, what."""

    case: str
    file: str
    message: str

    def __str__(self) -> str:
        # a file that is no case's (notes.txt among the images) is its own case: named once
        where = self.file if self.case == self.file else f"{self.case}: {self.file}"
        return f"{where}: {self.message}"


@dataclass
class CaseFiles:
    """The files of one case as found on disk.

    ``channels`` maps each channel name of the spec (CityScapes: the single ``leftImg8bit``
    image) to its file, or to ``None`` when it is missing.

    Items carry only the ``case`` ID and plain metadata such as the CityScapes ``city``: MONAI's
    ``load_decathlon_datalist`` turns any string that names an existing path under its
    ``base_dir`` into that path, which a value such as "HGG" would trigger.
    """

    case: str
    folder: Path
    channels: dict[str, Path | None]
    label: Path | None
    label_name: str
    meta: dict[str, str] = field(default_factory=dict)  # copied into the datalist item
    group: str = ""  # BRATS grade, CityScapes split; not copied (see build_datalist)

    @property
    def missing(self) -> list[str]:
        """Names of the channels (and label) that were not found."""
        names = [name for name, path in self.channels.items() if path is None]
        if self.label is None:
            names.append(self.label_name)
        return names

    @property
    def complete(self) -> bool:
        return not self.missing

    def files(self) -> dict[str, Path]:
        """Found files by name, channels first (in channel order), then the label."""
        out = {name: path for name, path in self.channels.items() if path is not None}
        if self.label is not None:
            out[self.label_name] = self.label
        return out

    def to_item(self, relative_to: str | os.PathLike | None = None) -> dict:
        """A datalist entry: ``case``, ``image`` (list of channel files; one string for a single
        RGB file), ``label`` and the metadata. Paths are relative to ``relative_to`` when given,
        else absolute."""

        def fmt(p: Path) -> str:
            return (
                Path(os.path.relpath(p, relative_to)).as_posix()
                if relative_to is not None
                else str(p.absolute())
            )

        images = [fmt(p) for p in self.channels.values() if p is not None]
        item: dict = {"case": self.case, "image": images if len(self.channels) > 1 else images[0]}
        if self.label is not None:
            item["label"] = fmt(self.label)
        item.update(self.meta)
        return item


@dataclass
class ScanResult:
    cases: list[CaseFiles]
    problems: list[Problem]


def scan_cases(dataset, root: str | os.PathLike, **options) -> ScanResult:
    """Walk ``root`` in the layout of ``dataset`` (a name or a spec); ``options`` go to the reader
    (e.g. ``grades`` for BRATS, ``subset`` for ISLES and own data, ``splits`` for CityScapes)."""
    if isinstance(dataset, str) and dataset.lower() == "nnunet":  # its own dataset.json says the rest
        from .nnunet import scan

        return scan(root, **options)
    spec = get_spec(dataset)
    if spec.name == "nnunet":
        from .nnunet import scan

        return scan(root, spec=spec, **options)
    if spec.name == "brats":
        from .brats import scan
    elif spec.name == "isles":
        from .isles import scan
    else:
        from .cityscapes import scan
    return scan(root, **options)


def nnunet_layout_note(dataset: str, root: str | os.PathLike) -> str | None:
    """What to do when ``root``, read as ``dataset`` (BRATS, ISLES, CityScapes), holds an nnU-Net raw
    data set: its ``dataset.json`` says so, while the reader would list only files missing from each
    of its folders (``imagesTr: imagesTr_flair.nii.gz: missing modality 'flair'``). None otherwise."""
    if str(dataset).lower() == "nnunet" or not (Path(root) / "dataset.json").is_file():
        return None
    return (
        f"{Path(root) / 'dataset.json'}: this folder looks like an nnU-Net raw data set (own data), not the "
        f"{dataset} layout: check it with --dataset nnunet, and train, evaluate and infer with --task nnunet "
        "(see 'Your own data' in the project README)"
    )


def discover_cases(dataset, root: str | os.PathLike, *, relative: bool = False, **options) -> list[dict]:
    """Datalist items (absolute paths, or relative to ``root`` with ``relative=True``) of the
    complete cases under ``root``; incomplete cases are left out with a warning (run the checker,
    ``python -m pam_monai check``, to see every problem)."""
    result = scan_cases(dataset, root, **options)
    for problem in result.problems:
        log.warning("%s", problem)
    return [c.to_item(root if relative else None) for c in result.cases if c.complete]


def find_one(
    case: str, expected: str, what: str, exact: list[Path], candidates: list[Path]
) -> tuple[Path | None, Problem | None]:
    """Pick a case's file for ``what``: the first existing ``exact`` path, else the single
    candidate. No file is a "missing" problem, several candidates an "ambiguous" one."""
    for path in exact:
        if path.is_file():
            return path, None
    if len(candidates) == 1:
        return candidates[0], None
    if candidates:
        names = ", ".join(sorted(f.name for f in candidates))
        return None, Problem(case, expected, f"several files for {what}: {names}")
    return None, Problem(case, expected, f"missing {what}")


def visible_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` that are not hidden (``.DS_Store`` and the like); [] when it does not exist."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def nothing_found(folder: Path, what: str) -> str:
    """The message for a folder without any case of the layout: "empty folder: ..." only when it
    is empty (a folder of other files is someone's other layout, not an empty one)."""
    return ("" if visible_entries(folder) else "empty folder: ") + what
