"""Datalists in MONAI's decathlon JSON format, and the paper's splits.

Paths in a datalist are **relative to the data root** (POSIX separators), so one file serves any
machine: resolve them with ``monai.data.load_decathlon_datalist(file, data_list_key=...,
base_dir=root)`` or with :func:`get_split` / :func:`load_datalist` and ``root=...``.

Splits (all deterministic, independent of file-system order and of numpy's random streams: each
case is ranked by ``sha256("<seed>:<case ID>")``):

- BRATS and own data (``nnunet``): 5-fold case-wise cross-validation. Cases are ranked, then dealt round-robin into folds
  (so fold sizes differ by at most one); every ``training`` entry carries its ``fold``. For fold
  ``k``: test = fold ``k``, validation = fold ``(k + 1) % 5``, training = the other three.
  A hand-written datalist with ``training`` entries without ``fold`` and a ``validation`` list
  is the user's own split, used as written (one fixed split, fold 0).
- ISLES: ranked cases cut 0.7 / 0.1 / 0.2 into ``training`` / ``validation`` / ``test``
  (with 3 or more cases, validation and test get at least one each).
- CityScapes: ``training`` = frames of the 'train' cities except one, ``validation`` = the held-out
  city (``val_city``, by default the first train city in hash order), ``test`` = the 'val' split.

Each entry has ``case``, ``image`` (the channel files in ``channels`` order; a single RGB file for
CityScapes) and ``label``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .files import strip_nifti_suffix
from .layout import scan_cases
from .specs import DatasetSpec, get_spec

__all__ = [
    "build_datalist",
    "entry_case",
    "fold_kind",
    "get_split",
    "load_datalist",
    "rank_cases",
    "split_cases",
    "write_datalist",
]

FOLDED = ("brats", "nnunet")  # case-wise cross-validation; the others have fixed lists

SPLIT_KEYS = {
    "train": "training",
    "training": "training",
    "val": "validation",
    "validation": "validation",
    "test": "test",
}


def rank_cases(cases: Sequence[str], seed: int = 0) -> list[str]:
    """Cases in a seeded pseudo-random order that depends only on the IDs and the seed."""
    return sorted(cases, key=lambda c: (hashlib.sha256(f"{seed}:{c}".encode()).hexdigest(), c))


def split_cases(
    cases: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[str]]:
    """Seeded random split of case IDs into ``training`` / ``validation`` / ``test`` by
    ``fractions`` (rounded half up; with 3 or more cases validation and test get one at least)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ranked = rank_cases(cases, seed)
    n = len(ranked)
    n_test = max(1, int(fractions[2] * n + 0.5)) if n >= 3 else 0
    n_val = max(1, int(fractions[1] * n + 0.5)) if n >= 3 else 0
    n_train = n - n_val - n_test
    return {
        "training": ranked[:n_train],
        "validation": ranked[n_train : n_train + n_val],
        "test": ranked[n_train + n_val :],
    }


def _header(spec: DatasetSpec, **extra) -> dict:
    fg = spec.foreground_labels
    values = str(fg[0]) if len(fg) == 1 else f"{fg[0]}-{fg[-1]}"
    return {
        "name": spec.title,
        "dataset": spec.name,
        "description": f"{spec.title}; paths relative to the data root",
        "tensorImageSize": "4D" if spec.volumetric else "3D",
        "channels": list(spec.channels),
        "modality": {str(i): c for i, c in enumerate(spec.channels)},
        "labels": {"0": "background", "1": f"{spec.target} (label {values})"},
        **({"label_names": {n: list(v) for n, v in spec.label_names}} if spec.label_names else {}),
        **extra,
    }


def _assign_folds(items: list[dict], n_folds: int, seed: int) -> list[dict]:
    fold_of = {case: i % n_folds for i, case in enumerate(rank_cases([it["case"] for it in items], seed))}
    return [{**it, "fold": fold_of[it["case"]]} for it in sorted(items, key=lambda it: it["case"])]


def _brats_items_from_ids(case_ids: Sequence[str], grade: str = "HGG") -> list[dict]:
    from .brats import MODALITIES

    return [
        {
            "case": c,
            "image": [f"{grade}/{c}/{c}_{m}.nii.gz" for m in MODALITIES],
            "label": f"{grade}/{c}/{c}_seg.nii.gz",
        }
        for c in case_ids
    ]


def _listing_spec(dataset, root) -> DatasetSpec:
    """The spec for listing and splitting cases: own data (``"nnunet"`` and its ``root``) without
    computing CT statistics, which only normalising needs."""
    if isinstance(dataset, str) and dataset.lower() == "nnunet" and root is not None:
        from .nnunet import nnunet_spec

        return nnunet_spec(root, statistics=False)
    return get_spec(dataset, root=root)


def build_datalist(
    dataset: str | DatasetSpec,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    n_folds: int = 5,
    grades: str | Sequence[str] = ("HGG",),
    case_ids: str | os.PathLike | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    val_city: str | None = None,
    skip_incomplete: bool = False,
    training: bool = True,
) -> dict:
    """Discover the cases under ``root`` and split them (see the module docstring).

    Args:
        dataset: "brats", "isles", "cityscapes" or "nnunet" (own data, nnU-Net v2 raw layout).
        root: the data root in the published layout.
        seed: seed of the case ranking.
        n_folds: BRATS folds.
        grades: BRATS grades ("HGG" by default, "HGG,LGG" for both).
        case_ids: BRATS only, instead of ``root``: a ``<GRADE> <case ID>`` text file; entries get
            the published paths ``<GRADE>/<case>/<case>_<mod>.nii.gz`` without looking at disk.
        fractions: ISLES training / validation / test fractions.
        val_city: CityScapes train city held out for validation.
        skip_incomplete: leave incomplete cases out instead of raising ``ValueError``.
        training: CityScapes: whether the training and validation splits are needed; False (an
            evaluation, which reads the test split alone) accepts a root with 'val' frames only.

    Returns:
        the decathlon dict: metadata plus ``training`` (BRATS: all cases, each with ``fold``) or
        ``training`` / ``validation`` / ``test`` lists, paths relative to ``root``.
    """
    if int(n_folds) < 3:  # test, validation and training each take at least one fold
        raise ValueError(f"n_folds must be at least 3 (test, validation and training folds), got {n_folds}")
    spec = _listing_spec(dataset, root)
    left_out = []  # incomplete cases that skip_incomplete leaves out
    if case_ids is not None:
        if spec.name != "brats":
            raise ValueError("case_ids is only for BRATS")
        from .brats import parse_grades, read_case_ids

        items = []
        for grade in parse_grades(grades):
            items += _brats_items_from_ids(read_case_ids(case_ids, grade), grade)
        source = f"case IDs of {Path(case_ids).name}"
    else:
        if root is None:
            raise ValueError("give the data root (or, for BRATS, case_ids)")
        options = {"grades": grades} if spec.name == "brats" else {}
        result = scan_cases(spec, root, **options)
        incomplete = [c for c in result.cases if not c.complete]
        if not result.cases or (incomplete and not skip_incomplete):
            problems = "\n  ".join(str(p) for p in result.problems[:20])
            # the way on without the incomplete cases, when there are complete ones to list
            skip = (
                ", or leave the incomplete cases out: --skip_incomplete true"
                if len(incomplete) < len(result.cases)
                else ""
            )
            raise ValueError(
                f"{spec.name} data under {root} have problems (run `python -m pam_monai check`{skip}):\n  {problems}"
            )
        complete = [c for c in result.cases if c.complete]
        left_out = [c.case for c in incomplete]
        items = [c.to_item(relative_to=root) for c in complete]
        groups = [c.group for c in complete]
        source = "discovered under the data root"
    meta = {"seed": seed, "source": source}
    if left_out:  # left out silently, a case went missing from every split unnoticed
        meta["left_out_incomplete"] = left_out

    if spec.name in FOLDED:
        training = _assign_folds(items, n_folds, seed)
        header = _header(spec, split=f"{n_folds}-fold case-wise cross-validation", n_folds=n_folds, **meta)
        return {**header, "numTraining": len(training), "training": training}

    if spec.name == "isles":
        parts = split_cases([it["case"] for it in items], fractions, seed)
        out = _header(spec, split="random case split " + "/".join(map(str, fractions)), **meta)
        for key, cases in parts.items():
            chosen = set(cases)
            out[key] = [it for it in items if it["case"] in chosen]  # discovery order (case number)
        out["numTraining"] = len(out["training"])
        return out

    # cityscapes
    train = [it for it, g in zip(items, groups) if g == "train"]
    test = [it for it, g in zip(items, groups) if g == "val"]
    cities = sorted({it["city"] for it in train})
    if len(cities) < 2 and not training and test:  # an evaluation of the 'val' frames needs no training split
        out = _header(spec, split="'val' cities as test (no training split: evaluation only)", **meta)
        return {**out, "training": [], "validation": [], "test": test, "numTraining": 0}
    if len(cities) < 2:
        raise ValueError(
            f"need 'train' frames of at least two cities under {root} to hold one out for validation, found "
            f"{cities or 'none'} ({len(items)} frame(s) in all): the splits come from the published layout "
            "<root>/leftImg8bit/{train,val}/<city>/<frame>_leftImg8bit.png with <root>/gtFine/{train,val}/<city>/"
            "<frame>_gtFine_labelIds.png; frames in other folders are no split's"
        )
    held_out = val_city if val_city is not None else rank_cases(cities, seed)[0]
    if held_out not in cities:
        raise ValueError(f"val_city {held_out!r} is not a 'train' city: {cities}")
    out = _header(
        spec,
        split="train cities minus one held out for validation; 'val' cities as test",
        val_city=held_out,
        **meta,
    )
    out["training"] = [it for it in train if it["city"] != held_out]
    out["validation"] = [it for it in train if it["city"] == held_out]
    out["test"] = test
    out["numTraining"] = len(out["training"])
    return out


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write a datalist as indented JSON (creating the folder) and return its path."""
    from ..atomic import atomic_write_text

    # a unique temporary file: two ranks or processes writing the same datalist never collide
    return atomic_write_text(path, json.dumps(datalist, indent=2) + "\n")


def _resolve(value, root: Path):
    if isinstance(value, list):
        return [_resolve(v, root) for v in value]
    return os.path.normpath(os.path.join(root, value))


def load_datalist(datalist: dict | str | os.PathLike, root: str | os.PathLike | None = None) -> dict:
    """Read a datalist (a dict, or a JSON file) and, with ``root``, make its ``image`` and
    ``label`` paths absolute (as MONAI's ``load_decathlon_datalist(base_dir=root)`` does)."""
    if not isinstance(datalist, dict):
        path = Path(datalist)
        try:  # as dataset.json: UTF-8 whatever the locale, a Windows editor's byte-order mark accepted
            datalist = json.loads(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e}): save it as UTF-8, as JSON files are") from e
        except ValueError as e:  # a hand-edited datalist: name the file, not only the line
            raise ValueError(f"{path}: not a JSON datalist ({e})") from e
        if not isinstance(datalist, dict):
            raise ValueError(
                f"{path}: not a JSON datalist (an object of case lists, got {type(datalist).__name__})"
            )
    if root is None:
        return datalist
    root = Path(root)
    out = dict(datalist)
    for key in ("training", "validation", "test"):
        if key in out:
            out[key] = [
                {k: (_resolve(v, root) if k in ("image", "label") else v) for k, v in it.items()}
                for it in out[key]
            ]
    return out


def datalist_n_folds(data: dict, who: str = "datalist") -> int:
    """A cross-validation datalist's number of folds (``n_folds``, default 5); ``ValueError``
    naming ``who`` and the key when it is not a whole number."""
    value = data.get("n_folds", 5)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{who}: datalist's 'n_folds' {value!r} is not a whole number (the number of folds, e.g. 5)"
        ) from None


def entry_case(dataset: str | DatasetSpec, entry: dict) -> str:
    """The case ID of a datalist entry: its ``case``, or, for an entry without one (a hand-made
    decathlon datalist), the ID the data set's layout gives its files, as inference names its
    masks and ``score`` finds them: ``Brats18_X`` of ``Brats18_X_flair.nii.gz``, ``case_5`` of
    ``case_5/SMIR.Brain.XX.O.CT_CBF.1/...nii``, ``<frame>`` of ``<frame>_leftImg8bit.png``,
    ``<case>`` of ``<case>_0000.nii.gz``; the first file's name when none fits."""
    if entry.get("case"):
        return str(entry["case"])
    spec = get_spec(dataset)
    image = entry.get("image")
    if not image:  # no file to name it by (the datalist's check names such an entry)
        return ""
    first = Path(str(image[0] if isinstance(image, (list, tuple)) else image))
    name = first.name
    if spec.name == "isles" and re.fullmatch(r"case_\d+", first.parent.parent.name):
        return first.parent.parent.name
    if spec.name == "cityscapes" and name.endswith("_leftImg8bit.png"):
        return name[: -len("_leftImg8bit.png")]
    if spec.name == "brats":
        stem = strip_nifti_suffix(name)
        return next((stem[: -len(c) - 1] for c in spec.channels if stem.endswith(f"_{c}")), name)
    if spec.name == "nnunet" and (m := re.fullmatch(r"(.+)_\d{4}\.[^_]+", name)):
        return m[1]
    return name


def _has_fold(entry) -> bool:
    return isinstance(entry, dict) and entry.get("fold") is not None


def fold_kind(dataset: str | DatasetSpec, datalist: dict) -> str | None:
    """How a cross-validated data set's datalist splits its ``training`` entries: ``"folds"`` (each
    has a ``fold``), ``"own"`` (none has one and a ``validation`` list is given: a split of the
    user's own, used as written), ``"none"`` (none has one and no ``validation`` list: no split),
    ``"mixed"`` (some have one); None for the data sets with fixed lists, or without a
    ``training`` list (e.g. an external test set alone)."""
    entries = datalist.get("training")
    name = dataset.name if isinstance(dataset, DatasetSpec) else str(dataset).lower()
    if name not in FOLDED or not isinstance(entries, list):
        return None
    folded = sum(map(_has_fold, entries))
    if not entries:  # nothing to split: the empty training split is named where it is read
        return "folds"
    if folded and folded < len(entries):
        return "mixed"
    if folded:
        return "folds"
    return "own" if "validation" in datalist else "none"


NO_SPLIT_PROBLEM = (
    "no 'training' entry has a 'fold', and there is no 'validation' list: add a 'validation' list (a "
    "split of your own, used as written), or build cross-validation folds with python -m pam_monai "
    "datalist"
)


def _mixed_folds_problem(dataset: str | DatasetSpec, entries: list) -> str:
    """The problem of a 'training' list where some entries have a 'fold' and some have none,
    naming the latter."""
    lacking = [
        entry_case(dataset, e) if isinstance(e, dict) else repr(e) for e in entries if not _has_fold(e)
    ]
    shown = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
    return (
        f"'training' entries {shown} have no 'fold' while {len(entries) - len(lacking)} others have one: "
        "give each a 'fold' (python -m pam_monai datalist writes them), or remove every 'fold' and list the "
        "validation cases under 'validation' (a split of your own)"
    )


def get_split(
    dataset: str | DatasetSpec,
    datalist: dict | str | os.PathLike,
    split: str,
    fold: int = 0,
    root: str | os.PathLike | None = None,
) -> list[dict]:
    """Entries of one split: ``split`` in "train", "val", "test".

    BRATS and own data (cross-validation): test = fold ``fold``, val = fold ``(fold + 1) % n_folds``, train =
    the remaining folds; an explicit ``test`` (or ``validation``) list in the datalist, e.g. an
    external test set, is used as it is. A datalist of the user's own split (no ``training`` entry
    has a ``fold`` and a ``validation`` list is given, MONAI's convention) is used as written, as
    one fixed split (``fold`` must be 0); some entries with a ``fold`` and some without, or none
    and no ``validation`` list, are refused. ISLES and CityScapes: the datalist's fixed ``training`` /
    ``validation`` / ``test`` lists (``fold`` must be 0). Paths are made absolute with ``root``.
    """
    spec = _listing_spec(dataset, root)
    # every entry with its case ID: the metrics' rows, the slice cache and the logs name cases
    return [{**e, "case": entry_case(spec, e)} for e in split_entries(spec, datalist, split, fold, root)]


def split_entries(
    dataset: str | DatasetSpec,
    datalist: dict | str | os.PathLike,
    split: str,
    fold: int = 0,
    root: str | os.PathLike | None = None,
) -> list[dict]:
    """The entries of one split as the datalist holds them (without ``root``: the very entry
    objects of a datalist dict); :func:`get_split` gives them with their case IDs."""
    spec = _listing_spec(dataset, root)
    key = SPLIT_KEYS.get(split)
    if key is None:
        raise ValueError(f"split must be one of 'train', 'val', 'test', got {split!r}")
    data = load_datalist(datalist, root)
    where = datalist if not isinstance(datalist, dict) else "datalist"
    folding = fold_kind(spec, data)
    if folding == "own":  # the user's own split, used as written (MONAI's convention)
        if fold != 0:  # not ignored in silence: five "folds" would be five runs on one split
            raise ValueError(
                f"{spec.name}: fold {fold}: {where} gives one fixed split of its own ('training' / 'validation' "
                "lists, no 'fold' fields): pass --fold 0, or give each training entry a 'fold' (python -m "
                "pam_monai datalist writes them) to cross-validate"
            )
        if key not in data:  # only 'test' can be missing: the others make the split
            raise ValueError(
                f"{spec.name}: {where}: no '{key}' list (a split of your own: 'training' and 'validation' only); "
                "add a 'test' list to evaluate on, or score the validation cases with --eval_split val"
            )
        return list(data[key])
    if spec.name in FOLDED and key != "training" and key in data:
        return list(data[key])  # an explicit list (an external test set) beside or instead of the folds
    if spec.name in FOLDED:
        if "training" not in data:
            nor = f" (nor a '{key}' list)" if key != "training" else ""
            raise ValueError(
                f"{spec.name}: {where}: no 'training' list{nor}; its keys: {', '.join(map(repr, data))}"
            )
        entries = data["training"]
        if folding == "mixed":
            raise ValueError(f"{spec.name}: {where}: {_mixed_folds_problem(spec, entries)}")
        if folding == "none":
            raise ValueError(f"{spec.name}: {where}: {NO_SPLIT_PROBLEM}")
        n_folds = datalist_n_folds(data, spec.name)
        if not 0 <= fold < n_folds:
            raise ValueError(f"fold {fold}: the datalist has {n_folds} folds: pass --fold 0..{n_folds - 1}")
        test, val = fold, (fold + 1) % n_folds
        if key == "test":
            return [e for e in entries if e["fold"] == test]
        if key == "validation":
            return [e for e in entries if e["fold"] == val]
        return [e for e in entries if e["fold"] not in (test, val)]
    if fold != 0:  # not ignored in silence: five "folds" would be five runs on one split
        raise ValueError(
            f"{spec.name}: fold {fold}: this data set has one fixed split (training / validation / test lists, no "
            "folds); another random split: --data_seed"
        )
    if key not in data:
        raise ValueError(f"{spec.name}: {where}: no '{key}' list; its keys: {', '.join(map(repr, data))}")
    return list(data[key])


# the ways out of a data set too small for the default split, as ``check`` and ``bundle`` name them
OWN_SPLIT_FIX = (
    "train with --data_list_file_path a datalist of your own split ('training' and 'validation' lists, see "
    "pam_monai/data/README.md)"
)


def default_split_problem(dataset: str | DatasetSpec, root: str | os.PathLike) -> str:
    """What is wrong with fold 0 of the bundles' default split (``fold`` 0, ``data_seed`` 0, no datalist)
    of the cases under ``root``: its empty training, validation or test split (fewer than 3 cases for 5
    folds: every case passes the check and training still refuses them); "" when none is empty. The one
    rule of ``check`` and ``bundle``."""
    datalist = build_datalist(dataset, root, seed=0)
    empty = [
        name for name in ("train", "val", "test") if not get_split(dataset, datalist, name, fold=0, root=root)
    ]
    if not empty:
        return ""
    cases = len(datalist["training"])
    return (
        f"{cases} case{'s' if cases != 1 else ''}, too few for the bundles' 5-fold cross-validation (fold k: "
        "test = fold k, validation = fold k + 1, training = the other three, so at least 3 cases): the "
        f"{' and '.join(empty)} split of fold 0 would be empty and training with the bundles' default split "
        "would refuse it"
    )
