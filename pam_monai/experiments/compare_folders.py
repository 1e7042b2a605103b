"""Compare evaluated folders case by case: ``python -m pam_monai compare A B [C ...]``.

An evaluated folder holds the ``metrics.csv`` (one row per case) and ``summary.json`` that a
bundle's evaluation (``<bundle>/eval``) or ``python -m pam_monai score`` (``<masks>/metrics``)
writes. Every folder is paired case by case (by case ID) with the reference folder and gets, per
metric, the grid's paired statistics (:func:`pam_monai.experiments.compare.paired_rows`): the mean
per-case difference with a seeded 95 % bootstrap interval, the two-sided Wilcoxon signed-rank
p-value, Holm-adjusted over the folders compared with the reference, and better / equal / worse
case counts. One model per folder: training-seed variance is not part of it (see
:mod:`pam_monai.experiments.compare`).

What is refused rather than compared (checked from the rows themselves, and from the settings
summary.json records, where it does):

- a folder without ``metrics.csv`` (nor ``eval/metrics.csv`` or ``metrics/metrics.csv`` in it),
  or a ``metrics.csv`` without the five metric columns;
- folders whose case sets differ (``--common_cases`` compares the cases they share, and says how
  many were left out of each);
- a case whose target is empty in one folder and not in the other: the folders were scored
  against different labels (another ``--foreground_label``, data set or split);
- a case with exactly one empty mask in both folders whose HD95 differs: that HD95 is the
  empty-case value (``--empty_value``, default the image diagonal), so the folders used different
  empty-case values (or resolutions: CityScapes' ``score`` and evaluation);
- folders scored with another data set, foreground label or empty-case value, where both
  summary.json record them as ``scored_with`` (``score`` and a bundle's evaluation do);
- folders scored on different grids (``scored_with``'s ``grid``): a CityScapes evaluation scores
  the network's 128 x 256 grid, ``score`` the labels' full resolution;
- the same folder twice.

A folder is named after the network (else the bundle) its summary.json records (a bundle's
evaluation records both), else after the folder itself. HD95's heading says mm where every folder
scored volumes, pixels where every folder scored 2-D images (``scored_with``), else "label units".

A ``summary.json`` whose ``metrics_csv_sha256`` is not that of the ``metrics.csv`` beside it (a run
killed between the two writes) is named in a WARNING: the per-case rows are compared.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .compare import CASE_FIELDS, HIGHER_IS_BETTER, metric_names, paired_rows, row_cells, sample_notes
from .results import METRICS, read_case_metrics, rows_csv

__all__ = ["Evaluation", "compare", "compare_folders", "load_evaluation"]

log = logging.getLogger("pam_monai")

# where the bundles' evaluation and ``score`` put metrics.csv by default, inside the folder given
DEFAULT_SUBFOLDERS = ("eval", "metrics")
# the settings (summary.json's ``scored_with``) that two folders compared must share
SETTINGS = ("dataset", "foreground_label", "empty_value")
HOW_TO_EVALUATE = (
    "evaluate the model first: python -m monai.bundle run evaluating --config_file "
    "\"['<bundle>/configs/train.json','<bundle>/configs/evaluate.json']\" writes <bundle>/eval/metrics.csv; "
    "python -m pam_monai score --predictions MASKS --dataset_dir DATA writes MASKS/metrics/metrics.csv"
)


@dataclass
class Evaluation:
    """One evaluated folder: the folder given, its ``metrics.csv`` and the per-case rows."""

    folder: Path
    csv_path: Path
    rows: dict[str, dict]  # case -> row of read_case_metrics
    sha256: str
    name: str = ""
    scored_with: dict | None = None  # how the cases were scored (summary.json), by score or a bundle
    network: str | None = None  # the network evaluated (summary.json; a bundle's evaluation records it)
    bundle: str | None = None  # the bundle evaluated (likewise)


def _metrics_csv(folder: Path) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"compare: {folder}: no such folder")
    for sub in ("", *DEFAULT_SUBFOLDERS):
        path = folder / sub / "metrics.csv"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"compare: {folder}: no metrics.csv (nor {', '.join(f'{s}/metrics.csv' for s in DEFAULT_SUBFOLDERS)}); "
        + HOW_TO_EVALUATE
    )


def load_evaluation(folder: str | os.PathLike) -> Evaluation:
    """The rows of ``folder``'s ``metrics.csv`` (see the module), checked against its summary.json."""
    folder = Path(str(folder))
    path = _metrics_csv(folder)
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    missing = [c for c in ("case", *METRICS, "target_empty", "pred_empty") if c not in header]
    if missing:
        raise ValueError(
            f"compare: {path}: no column(s) {', '.join(missing)} (it has {', '.join(header) or 'none'}): not a "
            f"metrics.csv of this project's evaluation; {HOW_TO_EVALUATE}"
        )
    rows = read_case_metrics(path)  # refuses non-finite values and cases scored twice, naming the file
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    summary_path = path.with_name("summary.json")
    summary = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except ValueError:
            summary = {}
        summary = summary if isinstance(summary, dict) else {}
        recorded = summary.get("metrics_csv_sha256")
        if recorded is not None and recorded != digest:
            log.warning(
                "compare: %s does not summarise the metrics.csv beside it (another run's, or a run stopped "
                "between the two writes): the per-case rows of %s are compared",
                summary_path,
                path,
            )
            summary = {}  # its settings may be another run's too
    scored_with = summary.get("scored_with")
    network, bundle = (summary.get(key) for key in ("network", "bundle"))
    return Evaluation(
        folder,
        path,
        {r["case"]: r for r in rows},
        digest,
        scored_with=scored_with if isinstance(scored_with, dict) else None,
        network=network if isinstance(network, str) and network else None,
        bundle=bundle if isinstance(bundle, str) and bundle else None,
    )


def _label_parts(e: Evaluation) -> list[str]:
    """The path parts that name a folder, innermost first, leaving out the default subfolders
    (every bundle's is ``eval``: ``bundles/brats_fpa/eval`` is ``brats_fpa``)."""
    folder = e.csv_path.parent.resolve()
    parts = [p for p in reversed(folder.parts) if p != folder.anchor]
    while len(parts) > 1 and parts[0] in DEFAULT_SUBFOLDERS:
        parts = parts[1:]
    return parts or [str(folder)]


def default_names(evaluations: Sequence[Evaluation]) -> list[str]:
    """Each folder's name: the network its summary.json records (``fpa``), else its bundle; where
    that names two folders (two runs of one network), or none is recorded (``score``), the folder's
    own name (see :func:`folder_names`)."""
    folders = folder_names(evaluations)
    names = [e.network or e.bundle or f for e, f in zip(evaluations, folders)]
    for fallback in ([e.bundle for e in evaluations], folders):
        clash = [i for i, n in enumerate(names) if names.count(n) > 1]
        for i in clash:
            names[i] = fallback[i] or folders[i]
    # a recorded name may still be another folder's own name: the folders' names alone are distinct
    return names if len(set(names)) == len(names) else folders


def folder_names(evaluations: Sequence[Evaluation]) -> list[str]:
    """Each folder's own name (or, for ``eval``/``metrics``, its parent's), with as many parent
    folders as it takes to tell the names apart (``run1/brats_fpa``, ``run2/brats_fpa``)."""
    parts = [_label_parts(e) for e in evaluations]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(reversed(p[:d])) for p, d in zip(parts, depth)]
        clash = {i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])}
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    return names


def _names(names, count: int) -> list[str] | None:
    if names is None:
        return None
    # Fire turns "a,b" into a tuple, and all-digit names into numbers
    out = [str(n).strip() for n in names] if isinstance(names, (list, tuple)) else str(names).split(",")
    out = [n.strip() for n in out]
    if len(out) != count or not all(out) or len(set(out)) != count:
        raise ValueError(
            f"compare: --names {','.join(out)}: give {count} different names, one per folder, in the folders' order"
        )
    return out


def _reference(evaluations: Sequence[Evaluation], reference) -> Evaluation:
    if reference is None:
        return evaluations[0]
    ref = str(reference)
    for e in evaluations:
        if e.name == ref:
            return e
    for e in evaluations:
        if Path(ref).resolve() in (e.folder.resolve(), e.csv_path.parent.resolve()):
            return e
    raise ValueError(
        f"compare: --reference {ref}: neither a folder's name ({', '.join(e.name for e in evaluations)}) nor one "
        "of the folders compared"
    )


def _listing(cases: Sequence[str]) -> str:
    return ", ".join(cases[:5]) + (", ..." if len(cases) > 5 else "")


def _check_comparable(e: Evaluation, ref: Evaluation) -> None:
    """Refuse two folders whose rows say they were scored differently (see the module)."""
    both = sorted(set(e.rows) & set(ref.rows))
    where = f"{e.folder} ({e.name}) and {ref.folder} ({ref.name})"
    if e.scored_with and ref.scored_with:  # both record their settings (score, a bundle's evaluation)
        for key in SETTINGS:
            if e.scored_with.get(key) != ref.scored_with.get(key):
                advice = (
                    _empty_value_advice(e, ref)
                    if key == "empty_value"
                    else f"score (or evaluate) both with the same --{key}"
                )
                raise ValueError(
                    f"compare: {where} were scored with different --{key}: {e.scored_with.get(key)} and "
                    f"{ref.scored_with.get(key)} (summary.json's scored_with); {advice}"
                )
    _check_grids(e, ref, where)
    labels = [c for c in both if e.rows[c]["target_empty"] != ref.rows[c]["target_empty"]]
    if labels:
        raise ValueError(
            f"compare: {where} were scored against different labels: the target of case(s) {_listing(labels)} is "
            "empty in one and not in the other (another --foreground_label, data set or split?); evaluate both "
            "with the same data set and foreground label"
        )
    one_empty = [
        c
        for c in both
        if all(r[c]["target_empty"] != r[c]["pred_empty"] for r in (e.rows, ref.rows))
        and e.rows[c]["hd95"] != ref.rows[c]["hd95"]
    ]
    if one_empty:
        c = one_empty[0]
        raise ValueError(
            f"compare: {where} give different HD95 values to a case with exactly one empty mask (case {c}: "
            f"{e.rows[c]['hd95']:g} and {ref.rows[c]['hd95']:g}; {len(one_empty)} such case(s)): they were scored "
            "with different --empty_value settings (or at different resolutions: CityScapes' score and "
            f"evaluation); score both with the same --empty_value ({_BUNDLE_EMPTY_VALUE})"
        )


def _grid_name(grid) -> str:
    return "the labels' own" if grid == "labels" else " x ".join(map(str, grid))


def _check_grids(e: Evaluation, ref: Evaluation, where: str) -> None:
    """Refuse folders scored on different grids (summary.json's ``scored_with`` ``grid``, where both
    record it; older ones do not): a CityScapes evaluation scores the network's 128 x 256, ``score``
    the labels' full resolution, so HD95's pixels (and the rates' outlines) differ in size."""
    grids = [x.scored_with.get("grid") if x.scored_with else None for x in (e, ref)]
    if None in grids or grids[0] == grids[1]:
        return
    raise ValueError(
        f"compare: {where} were scored on different grids: {_grid_name(grids[0])} and {_grid_name(grids[1])} "
        "(summary.json's scored_with): HD95 in pixels of another size, and every rate counted on other pixels; "
        "compare at one resolution: a bundle's evaluation with other evaluations, or masks with masks (run the "
        "bundle's inference with --input_dir the data set, and score its masks with python -m pam_monai score "
        "at the labels' own grid)"
    )


# what a bundle's evaluation gives a case with one empty mask: its CaseMetrics' default
_BUNDLE_EMPTY_VALUE = (
    "a bundle's evaluation gives such a case the image diagonal, as score does without --empty_value; "
    "no bundle id changes it"
)


def _empty_value_advice(e: Evaluation, ref: Evaluation) -> str:
    """How to score two folders with different recorded empty-case HD95 values alike: ``score``
    takes ``--empty_value``, but a bundle's evaluation (a folder whose summary.json records its
    bundle) has no such id, so a score folder is scored again with the bundle folder's value."""
    bundles = [x for x in (e, ref) if x.bundle]
    if not bundles:
        return "score both with the same --empty_value (None: without it, the image diagonal)"
    if len(bundles) == 2:
        return (
            f"{_BUNDLE_EMPTY_VALUE} (None): evaluate both with the bundles' configs as they are, not a "
            "CaseMetrics given another empty_value"
        )
    bundle, other = bundles[0], ref if bundles[0] is e else e
    value = bundle.scored_with.get("empty_value")
    if value is None:
        return (
            f"{bundle.folder} ({bundle.name}) is a bundle's evaluation: {_BUNDLE_EMPTY_VALUE}; score the "
            f"masks of {other.folder} ({other.name}) again without --empty_value to match it"
        )
    return (
        f"{bundle.folder} ({bundle.name}) is a bundle's evaluation whose CaseMetrics was given an empty_value "
        f"of {value:g} (the bundles' configs give none); score the masks of {other.folder} ({other.name}) "
        f"again with --empty_value {value:g} to match it"
    )


def _cases(evaluations: Sequence[Evaluation], common_cases: bool) -> tuple[list[str], list[str]]:
    """The cases to compare and, with ``common_cases``, one line per folder that lost some."""
    sets = [set(e.rows) for e in evaluations]
    union, shared = set().union(*sets), set.intersection(*sets)
    if union == shared:
        return sorted(shared), []
    lacking = [(e, sorted(union - s), sorted(s - shared)) for e, s in zip(evaluations, sets)]
    if not common_cases:
        lines = [
            f"{e.folder} ({e.name}): {len(e.rows)} cases, lacks {len(miss)} ({_listing(miss)})"
            for e, miss, _ in lacking
            if miss
        ]
        raise ValueError(
            "compare: the folders do not hold the same cases: "
            + "; ".join(lines)
            + f". Evaluate every model on the same cases, or pass --common_cases to compare the {len(shared)} "
            "case(s) every folder has"
        )
    if not shared:
        raise ValueError(
            "compare: --common_cases: no case is in every folder; evaluate them on the same test set"
        )
    notes = [
        f"{e.name}: {len(dropped)} of its {len(e.rows)} cases left out ({_listing(dropped)})"
        for e, _, dropped in lacking
        if dropped
    ]
    return sorted(shared), notes


def compare_folders(
    folders: Sequence[str | os.PathLike],
    reference: str | None = None,
    names: Sequence[str] | None = None,
    common_cases: bool = False,
    metrics: Sequence[str] = METRICS,
) -> tuple[list[dict], list[Evaluation], Evaluation, list[str], list[str]]:
    """Rows of :data:`~pam_monai.experiments.compare.CASE_FIELDS`, one per (metric, folder other than
    the reference), with the evaluations, the reference, the cases compared and the notes on cases
    left out (``--common_cases``). See the module for what is refused."""
    if len(folders) < 2:
        raise ValueError(f"compare: give two or more evaluated folders, got {[str(f) for f in folders]}")
    unknown = [m for m in metrics if m not in HIGHER_IS_BETTER]
    if unknown:
        raise ValueError(f"compare: --metrics: unknown {', '.join(unknown)}; known: {', '.join(METRICS)}")
    evaluations = [load_evaluation(f) for f in folders]
    places = [e.csv_path.resolve() for e in evaluations]
    twice = sorted({str(e.folder) for e, p in zip(evaluations, places) if places.count(p) > 1})
    if twice:
        raise ValueError(f"compare: the same evaluated folder given twice ({', '.join(twice)})")
    for e, name in zip(evaluations, _names(names, len(evaluations)) or default_names(evaluations)):
        e.name = name
    ref = _reference(evaluations, reference)
    for e in evaluations:
        if e is not ref:
            _check_comparable(e, ref)
            if e.sha256 == ref.sha256:
                log.warning(
                    "compare: %s and %s hold the same metrics.csv: one evaluation twice?",
                    e.folder,
                    ref.folder,
                )
    cases, notes = _cases(evaluations, bool(common_cases))
    rows = []
    others = [e for e in evaluations if e is not ref]
    for metric in metrics:
        values = {e.name: {c: e.rows[c][metric] for c in cases} for e in others}
        rows += paired_rows(metric, ref.name, {c: ref.rows[c][metric] for c in cases}, values)
    return rows, evaluations, ref, cases, notes


def hd95_unit(evaluations: Sequence[Evaluation]) -> str:
    """HD95's unit: ``mm`` where every folder records volumes (BRATS, ISLES, own 3-D data; HD95 in
    the voxel spacing's mm), ``pixels`` where every one records 2-D images (CityScapes, own 2-D
    data), else (mixed, or a folder that records nothing) ``label units``."""
    kinds = {_volumetric(e.scored_with) for e in evaluations}
    return {frozenset({True}): "mm", frozenset({False}): "pixels"}.get(frozenset(kinds), "label units")


def _volumetric(settings: dict | None) -> bool | None:
    """Whether ``scored_with`` says volumes (True) or 2-D images (False); None where it does not
    (a summary.json written before it recorded ``volumetric``: the paper's data sets still tell)."""
    from ..data import DATASETS

    if not settings:
        return None
    if isinstance(settings.get("volumetric"), bool):
        return settings["volumetric"]
    spec = DATASETS.get(settings.get("dataset"))
    return None if spec is None else bool(spec.volumetric)


def table(rows: Sequence[dict], distance_unit: str = "label units") -> list[str]:
    """The comparison as a Markdown table (printed, and in compare.md), HD95 in ``distance_unit``."""
    names = metric_names(distance_unit)
    lines = [
        "| reference | network | metric | cases | network mean | reference mean | difference [95 % CI] "
        "| better / equal / worse | p | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            "| " + " | ".join([r["reference"], r["network"], names[r["metric"]], *row_cells(r)]) + " |"
        )
    return lines


def report(rows, evaluations, ref, cases, notes) -> str:
    """compare.md: the folders, the table and what its figures mean."""
    lines = [
        f"# Paired comparison with {ref.name} (per test case)",
        "",
        "| name | metrics.csv | cases | sha256 |",
        "|---|---|---|---|",
        *(f"| {e.name} | {e.csv_path} | {len(e.rows)} | {e.sha256[:12]} |" for e in evaluations),
        "",
        f"{len(cases)} case(s) compared, paired by case ID.",
        *(f"- {n}" for n in notes),
        "",
        *table(rows, hd95_unit(evaluations)),
        "",
        "Difference = network - reference, mean over the cases with a 95 % bootstrap interval (10,000 resamples, "
        "seeded); IoU, Dice, FP and FN in percentage points, HD95 in the labels' physical units (mm; pixels for "
        "2-D images). Better / equal / worse counts cases (IoU, Dice: higher is better; HD95, FP, FN: lower is "
        "better); p = two-sided Wilcoxon signed-rank test over the cases, Holm-adjusted over the folders compared "
        "with the reference, per metric. One model per folder: whether a difference survives retraining is not "
        "part of this test (`python -m pam_monai experiment --seeds 3` asks it).",
        *sample_notes(rows),
    ]
    return "\n".join(lines) + "\n"


def compare(
    *folders: str,
    reference: str | None = None,
    names=None,
    output: str = "compare",
    common_cases: bool = False,
    metrics=None,
) -> str:
    """Compare two or more evaluated folders case by case: mean per-case difference with a 95 %
    bootstrap interval, Wilcoxon signed-rank p (Holm-adjusted), better / equal / worse cases.

    An evaluated folder holds metrics.csv and summary.json as the bundles' evaluation
    (<bundle>/eval) or python -m pam_monai score (<masks>/metrics) writes them; the folder above
    them works too. Folders scored against different labels or empty-case values, or holding
    different cases, are refused. Example:

        python -m pam_monai compare bundles/brats_fpa/eval bundles/brats_rfna/eval --output cmp

    Args:
        folders: the evaluated folders; the first is the reference unless --reference says another.
        reference: the folder (or its name) every other folder is compared with.
        names: the folders' names in the tables, comma-separated in the folders' order (default: the
            network a bundle's evaluation records, else each folder's name; a bundle's eval/ or
            score's metrics/ folder is named after the folder above it).
        output: folder for compare.csv and compare.md (default: compare, in the current folder).
        common_cases: compare the cases every folder holds, and say how many each lost (by default
            folders with different cases are refused).
        metrics: comma-separated subset of iou, dice, hd95, fp_rate, fn_rate (default: all).

    Returns:
        the table and where the files went.
    """
    from ..atomic import atomic_write_text, check_writable
    from ..engines.flags import as_bool

    chosen = (
        METRICS
        if metrics is None
        else [
            m.strip()
            for m in (metrics if isinstance(metrics, (list, tuple)) else str(metrics).split(","))
            if m.strip()
        ]
    )
    out = check_writable(Path(str(output)), "--output DIR")  # before the work, as the other commands
    rows, evaluations, ref, cases, notes = compare_folders(
        folders, reference, names, as_bool(common_cases), chosen
    )
    atomic_write_text(out / "compare.csv", rows_csv(rows, CASE_FIELDS))
    atomic_write_text(out / "compare.md", report(rows, evaluations, ref, cases, notes))
    head = [f"{len(cases)} case(s) compared with {ref.name} ({ref.folder})", *notes]
    done = f"-> {out / 'compare.csv'}, {out / 'compare.md'}"
    return "\n".join([*head, "", *table(rows, hd95_unit(evaluations)), *sample_notes(rows), "", done])
