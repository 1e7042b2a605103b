"""BRATS 2018 reader: ``<root>/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``.

Only HGG is read by default (the paper uses the 210 HGG cases). A root whose case folders sit
directly under it (no HGG/LGG level, as in a download of a few cases) is read as well; its cases
have grade "unknown". ``.nii`` files are accepted beside ``.nii.gz``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .files import is_nifti, strip_nifti_suffix
from .layout import CaseFiles, Problem, ScanResult, find_one, nothing_found
from .specs import DATASETS

__all__ = ["GRADES", "LAYOUT", "MODALITIES", "parse_grades", "read_case_ids", "scan"]

MODALITIES = DATASETS["brats"].channels  # flair, t1, t1ce, t2
GRADES = ("HGG", "LGG")
LAYOUT = "<root>/HGG/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz"


def parse_grades(grades: str | Sequence[str]) -> tuple[str, ...]:
    """``"HGG"``, ``"HGG,LGG"`` or a sequence -> validated tuple of grades."""
    if isinstance(grades, str):
        grades = grades.split(",")
    out = tuple(str(g).strip().upper() for g in grades if str(g).strip())
    bad = [g for g in out if g not in GRADES]
    if bad or not out:
        raise ValueError(f"grades must be among {GRADES}, got {grades!r}")
    return out


def _case_folders(root: Path, grades: tuple[str, ...]) -> list[tuple[str, Path]]:
    if any((root / g).is_dir() for g in GRADES):
        return [
            (g, d) for g in grades if (root / g).is_dir() for d in sorted((root / g).iterdir()) if d.is_dir()
        ]
    # flat root: every sub-folder holding NIfTI files (or nothing at all) is a case
    out = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        entries = list(d.iterdir())
        if not entries or any(is_nifti(f.name) for f in entries):
            out.append(("unknown", d))
    return out


def scan(root: str | os.PathLike, grades: str | Sequence[str] = ("HGG",)) -> ScanResult:
    """Find every BRATS case folder under ``root`` (see the module docstring)."""
    root = Path(root)
    grades = parse_grades(grades)
    if not root.is_dir():
        return ScanResult([], [Problem(root.name, str(root), "data folder does not exist")])
    folders = _case_folders(root, grades)
    if not folders:
        where = "/".join(grades)
        message = f"no {where} case folders (expected {LAYOUT}, or <root>/<case>/...)"
        if any(is_nifti(f.name) and f.name.startswith(f"{root.name}_") for f in root.iterdir()):
            # a single case's own folder: the root is the folder that holds the case folders
            message = f"{root} is one case's folder: point at the folder that holds the case folders ({root.parent})"
        return ScanResult([], [Problem(root.name, str(root), nothing_found(root, message))])
    cases, problems = [], []
    for grade, folder in folders:
        case = folder.name
        files = sorted(f for f in folder.iterdir() if f.is_file())
        if not files:
            problems.append(Problem(case, str(folder), "empty folder"))
        found: dict[str, Path | None] = {}
        for name in (*MODALITIES, "seg"):
            what = "label 'seg'" if name == "seg" else f"modality '{name}'"
            exact = [folder / f"{case}_{name}{suffix}" for suffix in (".nii.gz", ".nii")]
            candidates = [
                f for f in files if is_nifti(f.name) and strip_nifti_suffix(f.name).endswith(f"_{name}")
            ]
            found[name], problem = find_one(case, f"{case}_{name}.nii.gz", what, exact, candidates)
            if problem is not None and files:
                problems.append(problem)
        label = found.pop("seg")
        cases.append(
            CaseFiles(
                case=case,
                folder=folder,
                channels=found,
                label=label,
                label_name="seg",
                group=grade,
            )
        )
    return ScanResult(cases, problems)


def read_case_ids(path: str | os.PathLike, grades: str | Sequence[str] = ("HGG",)) -> list[str]:
    """Case IDs of the requested grades from a text file of ``<GRADE> <case ID>`` lines
    (``#`` starts a comment), e.g. ``../shared/data/brats2018_training_case_ids.txt``."""
    grades = parse_grades(grades)
    ids = []
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0].upper() not in GRADES:
            raise ValueError(f"{path}: expected '<HGG|LGG> <case ID>' lines, got {line!r}")
        if parts[0].upper() in grades:
            ids.append(parts[1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate case IDs")
    return ids
