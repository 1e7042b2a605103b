"""ISLES 2018 reader.

Published layout::

    <root>/TRAINING/case_<n>/SMIR.Brain.XX.O.<MOD>.<id>/SMIR.Brain.XX.O.<MOD>.<id>.nii

with ``MOD`` in CT, CT_CBF, CT_CBV, CT_MTT, CT_Tmax, CT_4DPWI and OT (the lesion mask; absent
from the TESTING set). The channels used are CBF, MTT, CBV, Tmax in that order (the paper's);
CT and CT_4DPWI are ignored. A root that holds the ``case_<n>`` folders directly is accepted, and
so are ``.nii.gz`` files and a folder whose single NIfTI file has another name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..shell import quote
from .files import is_nifti
from .layout import CaseFiles, Problem, ScanResult, find_one, nothing_found
from .specs import DATASETS

__all__ = ["CHANNEL_MODALITIES", "LABEL_MODALITY", "LAYOUT", "scan"]

# channel name (spec order) -> MOD in the folder name
CHANNEL_MODALITIES = {"CBF": "CT_CBF", "MTT": "CT_MTT", "CBV": "CT_CBV", "Tmax": "CT_Tmax"}
assert tuple(CHANNEL_MODALITIES) == DATASETS["isles"].channels
LABEL_MODALITY = "OT"
LAYOUT = "<root>/TRAINING/case_<n>/SMIR.Brain.XX.O.<MOD>.<id>/SMIR.Brain.XX.O.<MOD>.<id>.nii"

_CASE = re.compile(r"^case_(\d+)$")
_FOLDER = re.compile(r"^SMIR\.Brain\.XX\.O\.(?P<mod>[A-Za-z0-9_]+)\.(?P<id>\d+)$")


def _modality_file(folder: Path) -> list[Path]:
    """The NIfTI file(s) of one SMIR modality folder, preferring ``<folder name>.nii[.gz]``."""
    for suffix in (".nii", ".nii.gz"):
        exact = folder / f"{folder.name}{suffix}"
        if exact.is_file():
            return [exact]
    return sorted(f for f in folder.iterdir() if f.is_file() and is_nifti(f.name))


def scan(root: str | os.PathLike, subset: str = "TRAINING") -> ScanResult:
    """Find every ISLES 2018 case under ``root`` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        return ScanResult([], [Problem(root.name, str(root), "data folder does not exist")])
    base = root / subset if (root / subset).is_dir() else root
    folders = sorted(
        (d for d in base.iterdir() if d.is_dir() and _CASE.match(d.name)), key=lambda d: int(d.name[5:])
    )
    if not folders:
        what = f"no case_<n> folders (expected {LAYOUT})"
        if _CASE.match(base.name) and any(_FOLDER.match(d.name) for d in base.iterdir()):
            # a single case's own folder: the root is the folder that holds the case folders
            what = f"{base} is one case's folder: point at the folder that holds the case folders ({base.parent})"
        elif subset == "TRAINING" and (root / "TESTING").is_dir():
            # ISLES 2018's test set alone: its cases have no OT, nothing to train on or score
            what += (
                f"; {root / 'TESTING'} holds the challenge's test cases, without OT labels: training and evaluation "
                f"need the TRAINING/ folder beside it; check reads TESTING/ as an unlabelled set and inference segments "
                f"it (--input_dir {quote(str(root))})"
            )
        elif (base / "rawdata").is_dir() or any(base.glob("sub-strokecase*")):
            what += (
                "; these look like ISLES 2022 (MRI, BIDS), not ISLES 2018 (CT perfusion): convert them with "
                f"python -m pam_monai convert_isles22 --root {quote(str(root))} --output DIR, then train with --task nnunet "
                "--dataset_dir DIR --foreground_label lesion"
            )
        return ScanResult([], [Problem(root.name, str(base), nothing_found(base, what))])
    cases, problems = [], []
    for folder in folders:
        case = folder.name
        entries = list(folder.iterdir())
        if not entries:
            problems.append(Problem(case, str(folder), "empty folder"))
        by_mod: dict[str, list[Path]] = {}
        for d in entries:
            m = _FOLDER.match(d.name)
            if d.is_dir() and m:
                by_mod.setdefault(m["mod"].lower(), []).append(d)
        found: dict[str, Path | None] = {}
        for name, mod in (*CHANNEL_MODALITIES.items(), (LABEL_MODALITY, LABEL_MODALITY)):
            what = "label 'OT'" if name == LABEL_MODALITY else f"modality '{name}'"
            expected = f"SMIR.Brain.XX.O.{mod}.<id>/SMIR.Brain.XX.O.{mod}.<id>.nii"
            folders_for_mod = by_mod.get(mod.lower(), [])
            candidates = [f for d in folders_for_mod for f in _modality_file(d)]
            if len(folders_for_mod) == 1 and not candidates:
                found[name] = None
                problems.append(
                    Problem(case, str(folders_for_mod[0].relative_to(folder)), f"no NIfTI file for {what}")
                )
                continue
            found[name], problem = find_one(case, expected, what, [], candidates)
            if problem is not None and entries:
                problems.append(problem)
        label = found.pop(LABEL_MODALITY)
        cases.append(
            CaseFiles(
                case=case,
                folder=folder,
                channels=found,
                label=label,
                label_name=LABEL_MODALITY,
                group=subset,
            )
        )
    return ScanResult(cases, problems)
