"""Paired comparison of networks on the same test cases: is a difference more than case noise?

The table of ``results.md`` gives mean +- std over runs; two networks whose ranges overlap may
still differ consistently case by case, and a difference of means may come from one case. Here
the unit is the test case. A network's metric of a case is averaged over its seeds (every seed
tests the same cases), cases are paired by case ID with the reference network (a case tested in
several folds, as an external ``test`` list in the datalist is, counts once: its folds are averaged
like its seeds, so that no case enters the test more than once), and for each other network and
metric this gives:

- the mean of the per-case differences (network - reference) with a 95 % percentile bootstrap
  interval (10,000 resamples of the cases, seeded: the same figures on every run);
- the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; cases with no difference
  are dropped, as in Wilcoxon's test; no case with a difference: p = 1), and the p-value
  Holm-adjusted over the networks compared with the reference for that metric;
- in how many cases the network is better, equal or worse (IoU and Dice: higher is better; HD95,
  FP rate and FN rate: lower is better).

Training-seed variance is not part of that test: a small p says the difference is consistent over
the test cases for these trained models, not that it would survive other trainings (more seeds
make the per-case means steadier; they do not add cases). The seed dimension is reported beside it,
as a description of the trainings rather than a second test:

- every trained seed of the network is paired with every trained seed of the reference (all
  ``S x S'`` pairings) and each pairing gets its own mean per-case difference, on the cases of the
  pooled row that both seeds scored (all of them in a finished grid; a seed's case tested in several
  folds averaged over its folds first); the rows
  give the number of seeds of each side, the pairings' smallest and largest difference, in how many
  pairings the network is better / worse, and a verdict: ``better in all`` / ``worse in all`` (the
  sign survived every retraining seen: the network's worst seed beats, or loses to, the reference's
  best one), ``equal in all``, ``never worse`` / ``never better`` (better / worse or exactly equal
  in every pairing), ``mixed`` (better in some pairings and worse in others: which network is
  better depends on which trainings are compared), or ``unknown (1 seed)`` when either network has
  a single seed (its training variance is unknown; the seed columns are then left empty rather than
  show a one-value range).

Why all pairings: a seed number shared by two architectures shares the sample order but no weights,
so pairing seed k with seed k is an arbitrary choice that another numbering would change, and
pairing each seed with the seed-averaged reference hides the reference's own training variance. All
pairings use every training of both networks, work with unequal seed counts, and the share of
pairings where the network is better is the Mann-Whitney estimate of P(a training of the network
beats a training of the reference), the "probability of outperforming" that Bouthillier et al.
("Accounting for variance in machine learning benchmarks", MLSys 2021) ask benchmarks to report. Why not a two-level (seeds, then cases) bootstrap interval: with the
usual 2 to 5 seeds, resampling seeds sees only a handful of distinct combinations and
underestimates the seed variance by the factor (n - 1) / n (2 seeds: half), so it would print a
narrower interval than the trainings justify. The pairings share trainings (each seed is in several),
so their count is not a test: with 2 or 3 seeds a side, ``better in all`` says the sign held in these
trainings, which a per-case p-value alone cannot say.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CASE_FIELDS",
    "COMPARISON_FIELDS",
    "comparison_csv",
    "comparison_section",
    "default_reference",
    "metric_names",
    "paired_comparison",
    "paired_rows",
    "row_cells",
    "sample_notes",
]

HIGHER_IS_BETTER = {"iou": True, "dice": True, "hd95": False, "fp_rate": False, "fn_rate": False}
BOOTSTRAP = 10_000
SEED = 0
# the per-case comparison's columns (evaluated folders, one model each, have only these)
CASE_FIELDS = (
    "metric",
    "network",
    "reference",
    "cases",
    "mean_network",
    "mean_reference",
    "mean_difference",
    "ci_low",
    "ci_high",
    "better",
    "equal",
    "worse",
    "wilcoxon_p",
    "holm_p",
)
COMPARISON_FIELDS = (
    *CASE_FIELDS,
    # the seed dimension (see the module docstring): appended, the columns above keep their meaning
    "seeds_network",
    "seeds_reference",
    "seed_pairs",
    "seed_diff_min",
    "seed_diff_max",
    "seed_pairs_better",
    "seed_pairs_worse",
    "across_seeds",
)
UNKNOWN_SEEDS = "unknown (1 seed)"


def default_reference(order: Sequence[str]) -> str | None:
    """The network the others are compared with: the plain U-Net when the grid has it (the
    paper's baseline), else the first network; None with fewer than two networks."""
    if len(order) < 2:
        return None
    return "unet" if "unet" in order else order[0]


def _per_case(runs, variant: str, metric: str) -> dict[str, float]:
    """``case -> metric`` of ``variant``, averaged over the runs (seeds, and folds when a case is
    tested in several folds) that scored it. The key is the case ID, not ``(fold, case)``: with a
    fixed test list every fold tests the same cases, and counting a case once per fold would
    treat 5 scores of one case as 5 independent cases (p-values and intervals far too small)."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if r.variant == variant:
            for c in r.cases:
                values[str(c["case"])].append(float(c[metric]))
    return {k: float(np.mean(v)) for k, v in values.items()}


def _per_seed_case(runs, variant: str, metric: str) -> dict[int, dict[str, float]]:
    """``seed -> case -> metric`` of ``variant``: one training seed's value of a case, averaged over
    the folds of that seed that tested it (a fixed test list is tested in every fold)."""
    values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.variant == variant:
            for c in r.cases:
                values[int(r.seed)][str(c["case"])].append(float(c[metric]))
    return {s: {k: float(np.mean(v)) for k, v in cases.items()} for s, cases in values.items()}


def _across_seeds(
    mine: dict[int, dict[str, float]], ref: dict[int, dict[str, float]], keys: Sequence[str], sign: float
) -> dict:
    """The seed columns of a row: every seed of the network paired with every seed of the
    reference, the mean difference over ``keys`` (the pooled row's cases) that both seeds scored."""
    out = {"seeds_network": len(mine), "seeds_reference": len(ref)}
    empty = dict.fromkeys(
        ("seed_pairs", "seed_diff_min", "seed_diff_max", "seed_pairs_better", "seed_pairs_worse")
    )
    if len(mine) < 2 or len(ref) < 2:  # a single training: its variance is unknown, no range to show
        return {**out, **empty, "across_seeds": UNKNOWN_SEEDS}
    diffs = []
    for s in sorted(mine):
        for t in sorted(ref):
            common = [k for k in keys if k in mine[s] and k in ref[t]]
            if common:
                diffs.append(float(np.mean([mine[s][k] - ref[t][k] for k in common])))
    if not diffs:
        return {**out, **empty, "across_seeds": UNKNOWN_SEEDS}
    d = np.asarray(diffs)
    better, worse = int(np.sum(sign * d > 0)), int(np.sum(sign * d < 0))
    if better == d.size:
        verdict = "better in all"
    elif worse == d.size:
        verdict = "worse in all"
    elif better + worse == 0:
        verdict = "equal in all"
    elif worse == 0:  # some pairings exactly equal (e.g. IoU 1 on every case), none worse
        verdict = "never worse"
    elif better == 0:
        verdict = "never better"
    else:
        verdict = "mixed"
    return {
        **out,
        "seed_pairs": int(d.size),
        "seed_diff_min": float(d.min()),
        "seed_diff_max": float(d.max()),
        "seed_pairs_better": better,
        "seed_pairs_worse": worse,
        "across_seeds": verdict,
    }


def _bootstrap_ci(
    d: np.ndarray, resamples: int = BOOTSTRAP, seed: int = SEED
) -> tuple[float | None, float | None]:
    if d.size < 2:  # one case: no interval (a resample of one value is that value)
        return None, None
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _wilcoxon(d: np.ndarray) -> float:
    from scipy.stats import wilcoxon

    d = d[d != 0]  # Wilcoxon's own rule; dropped here, as older SciPy switched to the normal
    if d.size == 0:  # approximation whenever a zero was passed (p < 0.05 from 5 cases)
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of ``p_values`` (None stays None and is not counted)."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    m = len(present)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def paired_rows(
    metric: str, reference: str, ref: dict[str, float], others: dict[str, dict[str, float]]
) -> list[dict]:
    """The per-case fields of :data:`CASE_FIELDS` for ``metric``: one row per network of ``others``
    (``name -> case -> value``, in table order) paired with ``ref`` (``case -> value`` of
    ``reference``) on the cases both scored, the Wilcoxon p-values Holm-adjusted over these rows.
    A network without any such case is left out. Used by the grid (:func:`paired_comparison`) and
    by ``python -m pam_monai compare`` (evaluated folders)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known: {list(HIGHER_IS_BETTER)}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    block = []
    for name, mine in others.items():
        keys = sorted(set(mine) & set(ref))
        if not keys:
            continue
        a = np.array([mine[k] for k in keys])
        b = np.array([ref[k] for k in keys])
        bad = [k for k, x, y in zip(keys, a, b) if not (np.isfinite(x) and np.isfinite(y))]
        if bad:  # the metrics are never NaN by their empty-mask rule: a table edited by hand?
            raise ValueError(
                f"paired comparison: {metric} of {name} or {reference} is not finite for case(s) {bad[:5]}"
            )
        d = a - b
        low, high = _bootstrap_ci(d)
        block.append(
            {
                "metric": metric,
                "network": name,
                "reference": reference,
                "cases": len(keys),
                "mean_network": float(a.mean()),
                "mean_reference": float(b.mean()),
                "mean_difference": float(d.mean()),
                "ci_low": low,
                "ci_high": high,
                "better": int(np.sum(sign * d > 0)),
                "equal": int(np.sum(d == 0)),
                "worse": int(np.sum(sign * d < 0)),
                "wilcoxon_p": _wilcoxon(d) if len(keys) > 1 else None,
            }
        )
    for row, adjusted in zip(block, holm([r["wilcoxon_p"] for r in block])):
        row["holm_p"] = adjusted
    return block


def paired_comparison(
    runs, reference: str, order: Sequence[str], metrics: Sequence[str] = ("iou", "hd95", "fp_rate", "fn_rate")
) -> list[dict]:
    """One row per (metric, network other than ``reference``) with the fields of
    :data:`COMPARISON_FIELDS` (``runs``: :class:`~.results.RunResult` objects; ``order``: the
    networks in table order). Only the cases that both networks scored are paired; a network
    without any such case is left out. The ``seed*`` and ``across_seeds`` fields pair every seed of
    the network with every seed of the reference (see the module docstring)."""
    unknown = [m for m in metrics if m not in HIGHER_IS_BETTER]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(HIGHER_IS_BETTER)}")
    variants = [v for v in order if v != reference and any(r.variant == v for r in runs)]
    rows = []
    for metric in metrics:
        ref = _per_case(runs, reference, metric)
        ref_seeds = _per_seed_case(runs, reference, metric)
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        for row in paired_rows(metric, reference, ref, {v: _per_case(runs, v, metric) for v in variants}):
            mine = _per_case(runs, row["network"], metric)
            keys = sorted(set(mine) & set(ref))
            row.update(_across_seeds(_per_seed_case(runs, row["network"], metric), ref_seeds, keys, sign))
            rows.append(row)
    return rows


def comparison_csv(rows: Sequence[dict]) -> str:
    """``comparison.csv``: the rows of :func:`paired_comparison` (empty cells for missing p-values)."""
    from .results import rows_csv

    return rows_csv(rows, COMPARISON_FIELDS)


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def metric_names(distance_unit: str = "mm") -> dict[str, str]:
    """The tables' metric headings (IoU, Dice and the rates in percent, see :func:`_scale`)."""
    return {
        "iou": "IoU (%)",
        "dice": "Dice (%)",
        "hd95": f"HD95 ({distance_unit})",
        "fp_rate": "FP (%)",
        "fn_rate": "FN (%)",
    }


def row_cells(r: dict) -> list[str]:
    """A row's cells from ``cases`` to ``p (Holm)`` (see :func:`comparison_section`'s table)."""
    from .results import _fmt

    scale = _scale(r["metric"])

    def f(v: float | None) -> str:
        return "n/a" if v is None else _fmt(scale * v)  # a tiny FP rate as 3.2e-03, not 0.00

    return [
        str(r["cases"]),
        f(r["mean_network"]),
        f(r["mean_reference"]),
        f"{f(r['mean_difference'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]",
        f"{r['better']} / {r['equal']} / {r['worse']}",
        _p(r["wilcoxon_p"]),
        _p(r["holm_p"]),
    ]


def sample_notes(rows: Sequence[dict]) -> list[str]:
    """What the rows' few cases mean for their p-values and intervals (nothing with enough cases)."""
    lines = []
    if any(r["better"] + r["worse"] < 6 for r in rows):
        lines += [
            "",
            "With fewer than 6 cases that differ (equal cases do not count in Wilcoxon's test) no two-sided "
            "p-value can fall below 0.05: add folds or test cases before reading these p-values.",
        ]
    if any(r["cases"] < 20 for r in rows):
        lines += [
            "",
            "With fewer than 20 cases the percentile bootstrap interval is too narrow (it covers the true mean "
            "difference in about 83 % of samples of 5 cases and 89 % of 10, not 95 %); no interval for 1 case.",
        ]
    return lines


def comparison_section(rows: Sequence[dict], reference: str, distance_unit: str = "mm") -> list[str]:
    """The ``results.md`` lines of a paired comparison (see the module docstring)."""
    names = metric_names(distance_unit)
    lines = [
        f"## Paired comparison with {reference} (per test case)",
        "",
        f"Each network's metric of a test case is averaged over its seeds and paired with {reference}'s on the "
        "same case (a case tested in several folds counts once). Difference = network - reference (mean over "
        "cases, 95 % bootstrap interval; IoU, FP and FN in percentage points); better / equal "
        "/ worse counts cases (IoU: higher is better; HD95, FP, FN: lower is better); p = two-sided Wilcoxon "
        "signed-rank test over the cases, Holm-adjusted over the networks per metric. Seed-to-seed training "
        "variance is not part of this test: the table after it asks whether the difference survives "
        "retraining (`pam_monai/experiments/compare.py`).",
        "",
    ]
    if not rows:
        return [*lines, "No network shares a scored test case with the reference."]
    lines.append(
        f"| Networks | metric | cases | network mean | {reference} mean | difference [95 % CI] | better / equal / worse | p | p (Holm) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append("| " + " | ".join([r["network"], names[r["metric"]], *row_cells(r)]) + " |")
    return [*lines, *sample_notes(rows), "", *_seed_section(rows, reference, names)]


def _scale(metric: str) -> float:
    """results.md shows IoU, Dice and the rates in percent (the CSVs hold fractions), HD95 as is."""
    return 1.0 if metric == "hd95" else 100.0


def _seed_section(rows: Sequence[dict], reference: str, names: dict[str, str]) -> list[str]:
    """The ``results.md`` lines of the seed dimension: one line when no network has 2 seeds."""
    from .results import _fmt

    lines = [f"### Across training seeds: does the difference survive retraining? (vs {reference})", ""]
    if all(r["across_seeds"] == UNKNOWN_SEEDS for r in rows):
        seeds = sorted({r["seeds_network"] for r in rows} | {r["seeds_reference"] for r in rows})
        return [
            *lines,
            f"{'1 seed' if seeds == [1] else 'Fewer than 2 seeds on a side'}: training variance unknown. The "
            "comparison above is over test cases for these trained models only; whether a difference survives "
            "another training cannot be told from one (run the grid with `--seeds 3` or more).",
        ]
    lines += [
        f"Every seed of a network is paired with every seed of {reference} (seed numbers of two networks share "
        "the sample order but no weights, so no pairing by number is more right than another) and each pairing "
        "gets the mean per-case difference (network - reference) over the cases above. `better in all` / "
        "`worse in all`: the sign held in every pairing, i.e. the network's worst seed beats (or loses to) "
        f"{reference}'s best one; `never worse` / `never better`: the others exactly equal; `mixed`: better in "
        "some pairings and worse in others, so a small p above does not make the difference a property of the "
        "network. The pairings share trainings, so "
        "their count describes these seeds; it is not a test.",
        "",
        "| Networks | metric | seeds (network / reference) | difference per seed pairing, min .. max "
        "| pairings better / worse | across seeds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        scale = _scale(r["metric"])
        seeds = f"{r['seeds_network']} / {r['seeds_reference']}"
        if r["across_seeds"] == UNKNOWN_SEEDS:
            cells = ["n/a", "n/a", "1 seed: training variance unknown"]
        else:
            cells = [
                f"{_fmt(scale * r['seed_diff_min'])} .. {_fmt(scale * r['seed_diff_max'])}",
                f"{r['seed_pairs_better']} / {r['seed_pairs_worse']} of {r['seed_pairs']}",
                r["across_seeds"],
            ]
        lines.append(f"| {r['network']} | {names[r['metric']]} | {seeds} | " + " | ".join(cells) + " |")
    if any(
        r["across_seeds"] != UNKNOWN_SEEDS and min(r["seeds_network"], r["seeds_reference"]) < 3 for r in rows
    ):
        lines += [
            "",
            "With 2 seeds of a network its range and count rest on 2 trainings: a weak description of the "
            "training variance; 3 or more seeds per network give a fairer picture.",
        ]
    return lines
