"""Tables of an experiment: ``results.csv`` (one row per run and case) and ``results.md``.

Aggregation, as in the paper's tables: each run's metrics are first averaged over its test
cases, then the table shows mean +- sample std (ddof=1) of those per-run means over the runs
(seeds x folds) of each network. The per-case metrics are the project's honest ones (see
:mod:`pam_monai.metrics`): foreground IoU, symmetric surface HD95 in mm, FP/N, FN/P, per 3-D case.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "RESULT_FIELDS",
    "RunResult",
    "format_mean_std",
    "markdown_report",
    "read_case_metrics",
    "results_csv",
]

RESULT_FIELDS = (
    "dataset",
    "synthetic",
    "network",
    "variant",
    "options",
    "seed",
    "fold",
    "case",
    "iou",
    "dice",
    "hd95",
    "fp_rate",
    "fn_rate",
    "target_empty",
    "pred_empty",
    "params",
)
METRICS = ("iou", "dice", "hd95", "fp_rate", "fn_rate")


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def read_case_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``eval/metrics.csv`` (written by :class:`pam_monai.engines.CaseMetrics`)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no case")
    out = []
    for r in rows:
        row = {"case": r["case"]}
        for m in METRICS:
            # the metrics are never NaN or infinite (empty-mask rule of pam_monai.metrics): a value
            # that is not a finite number (an edited or older file) is refused here, naming the file,
            # before any table is rewritten, not later by the paired comparison (that left a new
            # results.csv beside the previous call's results.md) or as "nan ± nan" in a table
            try:
                value = float(r[m])
            except (TypeError, ValueError):
                value = None
            if value is None or not np.isfinite(value):
                raise ValueError(f"{path}: case {r['case']}: {m} = {r[m]!r} is not a finite number")
            row[m] = value
        row["target_empty"] = _bool(r["target_empty"])
        row["pred_empty"] = _bool(r["pred_empty"])
        out.append(row)
    twice = sorted(c for c, n in Counter(row["case"] for row in out).items() if n > 1)
    if twice:  # the paired comparison would average them into one case, the tables count both
        raise ValueError(
            f"{path}: case(s) {', '.join(twice)} scored more than once: a test list naming a case twice? "
            "Each case once, then re-run the evaluation"
        )
    return out


@dataclass
class RunResult:
    """One finished run: its identity and its per-case rows (and paper-protocol rows, if any)."""

    dataset: str
    network: str
    variant: str
    options: dict
    seed: int
    fold: int
    params: int
    cases: list[dict]
    paper_protocol: list[dict] | None = None
    extra: dict = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        return float(np.mean([c[metric] for c in self.cases]))

    @property
    def empty_targets(self) -> int:
        return sum(c["target_empty"] for c in self.cases)

    @property
    def missed(self) -> int:
        return sum(c["pred_empty"] and not c["target_empty"] for c in self.cases)


def _cell(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rows_csv(rows: Sequence[dict], fields: Sequence[str]) -> str:
    """CSV text of dict rows in ``fields`` order: floats with 6 significant digits, None empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r[k] is None else _cell(r[k]) for k in fields})
    return buf.getvalue()


def results_csv(runs: Sequence[RunResult], *, synthetic: bool) -> str:
    """``results.csv``: one row per (run, case), columns :data:`RESULT_FIELDS`; ``synthetic``: the
    runs were trained and tested on a synthetic stand-in, said in every row (results.md says it
    too, but rows copied out of this file, or files of several grids joined, would not)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_FIELDS)
    for r in runs:
        opts = json.dumps(r.options, sort_keys=True, separators=(",", ":"))
        for c in r.cases:
            writer.writerow(
                [r.dataset, _cell(bool(synthetic)), r.network, r.variant, opts, r.seed, r.fold, c["case"]]
                + [_cell(c[m]) for m in METRICS]
                + [_cell(c["target_empty"]), _cell(c["pred_empty"]), r.params]
            )
    return buf.getvalue()


def _fmt(value: float, digits: int = 2) -> str:
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def format_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"66.48 ± 1.04"``: mean ± sample std (ddof=1); one value: ``"66.48 ± n/a"``.

    Values below ``10**-digits`` (in the scaled unit) are written in scientific notation, so a
    tiny FP rate shows as ``3.2e-03`` rather than ``0.00``; equal values have std ``0.00``.
    """
    v = np.asarray(values, dtype=float) * scale
    if v.size == 0:
        return "n/a"
    # equal values have std 0: numpy's mean of 3 equal floats can miss them by an ulp, and the
    # std of that rounding (1e-16) was printed "± 1.4e-14" beside identical runs
    spread = 0.0 if np.all(v == v[0]) else float(v.std(ddof=1))
    std = _fmt(spread, digits) if v.size > 1 else "n/a"
    return f"{_fmt(float(v.mean()), digits)} ± {std}"


def _range(values: Sequence[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _of(planned: int | None) -> str:
    """`` of N`` after a run count, when the number planned per network is known."""
    return "" if planned is None else f" of {planned}"


def _groups(runs: Sequence[RunResult], order: Sequence[str]) -> list[tuple[str, list[RunResult]]]:
    by: dict[str, list[RunResult]] = {}
    for r in runs:
        by.setdefault(r.variant, []).append(r)
    return [(v, by[v]) for v in order if v in by]


def _pooled(rows: Sequence[dict], key: str, weight: str) -> float | None:
    w = np.asarray([r[weight] for r in rows if r[key] is not None], dtype=float)
    v = np.asarray([r[key] for r in rows if r[key] is not None], dtype=float)
    if w.sum() == 0:
        return None
    return float((v * w).sum() / w.sum())


def paper_protocol_means(run: RunResult) -> dict:
    """A run's per-slice means, pooled over all slices of all its test cases (the paper protocol)."""
    rows = run.paper_protocol or []
    out = {m: _pooled(rows, m, "slices") for m in METRICS}
    out.update(
        {
            "authors_iou": _pooled(rows, "authors_iou", "slices"),
            "authors_hd95": _pooled(rows, "authors_hd95", "authors_hd95_slices"),
            "authors_fp_rate": _pooled(rows, "authors_fp_rate", "slices"),
            "authors_fn_rate": _pooled(rows, "authors_fn_rate", "slices"),
            "slices": sum(r["slices"] for r in rows),
            "target_empty_slices": sum(r["target_empty_slices"] for r in rows),
            "authors_hd95_slices": sum(r["authors_hd95_slices"] for r in rows),
        }
    )
    return out


def markdown_report(
    runs: Sequence[RunResult],
    *,
    dataset: str,
    dataset_title: str,
    synthetic: bool,
    data_root: str,
    order: Sequence[str],
    planned: int,
    command: str | None = None,
    settings: dict | None = None,
    paper_protocol: bool = False,
    figures: Sequence[str] = (),
    distance_unit: str = "mm",
    resized_back: bool = False,
    sparse: bool = False,
    comparison: tuple[str, Sequence[dict]] | None = None,
    seeds_folds: tuple[Sequence[int], Sequence[int]] | None = None,
) -> str:
    """``results.md``: the paper's table layout over the finished ``runs`` (``distance_unit``:
    of HD95, "mm" for volumes with a header, "px" for 2-D images; ``resized_back``: own 2-D images,
    scored on their own pixels; ``sparse``: the data set marks unannotated voxels, which every
    metric leaves out; ``comparison``: ``(reference, rows)`` of
    :func:`~.compare.paired_comparison`, a section after the per-run table; ``seeds_folds``: the
    grid's ``(seeds, folds)``, named under the run count)."""
    lines: list[str] = []
    data = f"**SYNTHETIC** stand-in for {dataset_title}" if synthetic else dataset_title
    lines.append(f"# Results: {dataset} ({'SYNTHETIC data' if synthetic else 'real data'})")
    lines.append("")
    if synthetic:
        lines.append(
            f"> Data: {data} ({data_root}). These numbers test the pipeline; they say nothing about "
            "the real data set or the paper's claims."
        )
    else:
        lines.append(f"> Data: {data} ({data_root}).")
    lines.append("")
    case = "one 3-D volume" if distance_unit == "mm" else "one image"
    element = "voxels" if distance_unit == "mm" else "pixels"
    grid = (
        "on the case's own grid: the prediction put back into the acquired volume (the networks' "
        "centre crop or padding undone; zeros outside a crop; own volumes larger than the crop are "
        "segmented whole by a sliding window)"
        if distance_unit == "mm"
        else "on the image's own pixels: the networks' probabilities resized back bilinearly from their "
        "resolution and cut there"
        if resized_back
        else "at the networks' resolution"
    )
    lines.append(
        f"Honest per-case metrics (each test case = {case}, {grid}): foreground IoU (Jaccard), HD95 = 95th percentile of the symmetric surface "
        f"distance in {distance_unit}, FP rate = FP / N (N = target background {element}), FN rate = FN / P "
        f"(P = target foreground {element}); empty masks follow the documented rule of "
        "`pam_monai.metrics` (no case is ever dropped). Each run's metrics are averaged over its "
        "test cases first; the table gives mean ± sample std (ddof=1) of those per-run means over "
        "the runs (seeds x folds) of each network."
    )
    if sparse:
        lines.append("")
        lines.append(
            "Sparse annotations (dataset.json's `ignore` label): every metric, the paper protocol's "
            "included, is computed over the annotated voxels only (a prediction on an unannotated voxel is "
            "neither a false nor a true positive; N and P count annotated voxels); slices without an "
            "annotated voxel are not scored, nor is a test case without any (a WARNING names it)."
        )
    lines.append("")
    done = len(runs)
    lines.append(
        f"Runs finished: {done} of {planned}." + ("" if done == planned else " **The grid is incomplete.**")
    )
    if seeds_folds is not None:  # the runs column counts runs: 3 seeds x 1 fold reads as 1 x 3
        seeds, folds = seeds_folds
        lines.append("")
        lines.append(
            f"Grid: {len(order)} network(s) x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) x "
            f"{len(folds)} fold(s) ({', '.join(map(str, folds))}); every run is trained on its fold's training "
            "split and scored on the test cases of its fold (the same split for every seed)."
        )
    if command:
        lines.append("")
        lines.append(f"Command: `{command}`")
    if settings:
        lines.append("")
        # as written (results.md is UTF-8): a path "J\u00fcrgen" is no way to show a folder Jürgen
        shown = (f"`{k}={json.dumps(v, ensure_ascii=False)}`" for k, v in sorted(settings.items()))
        lines.append("Settings: " + ", ".join(shown))
    lines.append("")
    if not runs:
        lines.append("No finished run yet.")
        return "\n".join(lines) + "\n"

    lines.append(
        f"| Networks | IoU (%) | HD95 ({distance_unit}) | FP (%) | FN (%) | Params (M) | runs | cases/run "
        "| empty targets/run | missed cases |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    groups = _groups(runs, order)
    # each network's share of the grid, so that fewer runs (a failed seed) show in its row
    per_network = len(seeds_folds[0]) * len(seeds_folds[1]) if seeds_folds is not None else None
    finished = dict(groups)
    for variant in order:
        rs = finished.get(variant)
        if rs is None:  # a network whose every run failed or is still to run: a row, not a gap
            lines.append(f"| {variant} | no finished run |  |  |  |  | 0{_of(per_network)} |  |  |  |")
            continue
        cells = [
            format_mean_std([r.mean("iou") for r in rs], 100),
            format_mean_std([r.mean("hd95") for r in rs]),
            format_mean_std([r.mean("fp_rate") for r in rs], 100),
            format_mean_std([r.mean("fn_rate") for r in rs], 100),
            f"{rs[0].params / 1e6:.2f}",
            str(len(rs)) + ("" if len(rs) == per_network else _of(per_network)),
            _range([len(r.cases) for r in rs]),
            _range([r.empty_targets for r in rs]),
            str(sum(r.missed for r in rs)),
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "`missed cases`: cases with target foreground and an empty prediction, summed over runs "
        "(each scores IoU 0, FN rate 100 %, HD95 = the image diagonal)."
    )
    lines.append("")
    lines.append("### Per run (means over the run's test cases)")
    lines.append("")
    lines.append(
        f"| Networks | seed | fold | IoU (%) | Dice (%) | HD95 ({distance_unit}) | FP (%) | FN (%) | cases |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for variant, rs in groups:
        for r in sorted(rs, key=lambda r: (r.fold, r.seed)):
            lines.append(
                f"| {variant} | {r.seed} | {r.fold} | {_fmt(100 * r.mean('iou'))} | {_fmt(100 * r.mean('dice'))} | "
                f"{_fmt(r.mean('hd95'))} | {_fmt(100 * r.mean('fp_rate'))} | {_fmt(100 * r.mean('fn_rate'))} | {len(r.cases)} |"
            )

    if comparison is not None:
        from .compare import comparison_section

        lines += ["", *comparison_section(comparison[1], comparison[0], distance_unit)]
        compared = {comparison[0]} | {row["network"] for row in comparison[1]}
        counts = {variant: len(rs) for variant, rs in groups if variant in compared}
        # an incomplete grid: per-case values over unequal runs, or over equally many but other
        # (seed, fold) runs (--keep_going after a failed run of each network: a case averaged over
        # 2 seeds of one network and 1 of the other), or networks with no finished run at all
        covered = {frozenset((r.seed, r.fold) for r in rs) for variant, rs in groups if variant in compared}
        unfinished = [v for v in order if v not in {variant for variant, _ in groups}]
        if len(set(counts.values())) > 1:
            lines += [
                "",
                "> The compared networks' per-case values are means over different numbers of finished runs ("
                + ", ".join(f"{v} {n}" for v, n in counts.items())
                + "): re-run the command to finish the grid before reading the comparison.",
            ]
        elif len(covered) > 1:
            lines += [
                "",
                "> The compared networks' per-case values are means over different finished runs (seeds x folds): "
                + "; ".join(
                    f"{v} "
                    + ", ".join(
                        f"seed {r.seed} fold {r.fold}" for r in sorted(rs, key=lambda r: (r.fold, r.seed))
                    )
                    for v, rs in groups
                    if v in compared
                )
                + ": re-run the command to finish the grid before reading the comparison.",
            ]
        if unfinished:
            lines += ["", f"> Not compared, no finished run yet: {', '.join(unfinished)}."]
    if paper_protocol:
        lines += ["", *_paper_protocol_section(groups)]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _paper_protocol_section(groups) -> list[str]:
    lines = [
        "## PAPER PROTOCOL: per-slice aggregation (for comparison with the paper only)",
        "",
        "> NOT the project's result. Every axial slice of every test case is scored on its own "
        "and the scores are averaged over all slices of the run (pooled over cases), as the "
        "paper's tables do; then mean ± sample std over runs. Slices without tumour dominate "
        "these means, so they are not comparable with the per-case table above.",
        "",
    ]
    missing = [v for v, rs in groups if any(r.paper_protocol is None for r in rs)]
    if missing:
        lines.append(f"Not available for: {', '.join(missing)} (no paper-protocol file).")
        lines.append("")
    groups = [(v, rs) for v, rs in groups if all(r.paper_protocol is not None for r in rs)]
    if not groups:
        return lines
    means = {v: [paper_protocol_means(r) for r in rs] for v, rs in groups}

    def col(v: str, key: str, scale: float = 1.0) -> str:
        vals = [m[key] for m in means[v] if m[key] is not None]
        if not vals:
            return "n/a"
        # a run without a slice to score (the authors' HD95: none eligible) is left out: say so
        part = f" ({len(vals)} of {len(means[v])} runs)" if len(vals) < len(means[v]) else ""
        return format_mean_std(vals, scale) + part

    lines.append(
        "### (a) Per slice, project definitions (empty-mask rule per slice: a slice where both "
        "masks are empty scores IoU 1, HD95 0; HD95 in-plane, mm)"
    )
    lines.append("")
    lines.append(
        "| Networks | IoU (%) | HD95 (mm) | FP (%) | FN (%) | slices/run | empty-target slices/run |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for v, _ in groups:
        m = means[v]
        lines.append(
            f"| {v} | {col(v, 'iou', 100)} | {col(v, 'hd95')} | {col(v, 'fp_rate', 100)} | {col(v, 'fn_rate', 100)} | "
            f"{_range([x['slices'] for x in m])} | {_range([x['target_empty_slices'] for x in m])} |"
        )
    lines.append("")
    lines.append(
        "### (b) Per slice, the authors' code's definitions (DEFECTIVE, REFERENCE.md section 7): "
        "IoU = mean of background and foreground Dice; HD95 in pixels over all foreground pixels, "
        "only on slices where both masks have > 1 pixel; FN rate 1.0 on slices without tumour"
    )
    lines.append("")
    lines.append(
        "> The authors' test slices were every slice with tumour and half of the others; these means "
        "are over every slice of the crop, so slices without tumour (FN rate 1.0 and IoU at most 0.5 "
        "by these definitions) weigh more than in the paper's tables: compare networks, not values."
    )
    lines.append("")
    lines.append("| Networks | IoU (%) | HD95 (px) | FP (%) | FN (%) | HD95 slices/run |")
    lines.append("|---|---|---|---|---|---|")
    for v, _ in groups:
        m = means[v]
        lines.append(
            f"| {v} | {col(v, 'authors_iou', 100)} | {col(v, 'authors_hd95')} | {col(v, 'authors_fp_rate', 100)} | "
            f"{col(v, 'authors_fn_rate', 100)} | {_range([x['authors_hd95_slices'] for x in m])} |"
        )
    return lines
