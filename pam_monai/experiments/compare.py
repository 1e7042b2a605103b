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

Training-seed variance is not part of the test: a small p says the difference is consistent over
the test cases for these trained models, not that it would survive other trainings (more seeds
make the per-case means steadier; they do not add cases).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = [
    "COMPARISON_FIELDS",
    "comparison_csv",
    "comparison_section",
    "default_reference",
    "paired_comparison",
]

HIGHER_IS_BETTER = {"iou": True, "dice": True, "hd95": False, "fp_rate": False, "fn_rate": False}
BOOTSTRAP = 10_000
SEED = 0
COMPARISON_FIELDS = (
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

    if not np.any(d != 0):
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


def paired_comparison(
    runs, reference: str, order: Sequence[str], metrics: Sequence[str] = ("iou", "hd95", "fp_rate", "fn_rate")
) -> list[dict]:
    """One row per (metric, network other than ``reference``) with the fields of
    :data:`COMPARISON_FIELDS` (``runs``: :class:`~.results.RunResult` objects; ``order``: the
    networks in table order). Only the cases that both networks scored are paired; a network
    without any such case is left out."""
    unknown = [m for m in metrics if m not in HIGHER_IS_BETTER]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(HIGHER_IS_BETTER)}")
    variants = [v for v in order if v != reference and any(r.variant == v for r in runs)]
    rows = []
    for metric in metrics:
        ref = _per_case(runs, reference, metric)
        block = []
        for variant in variants:
            mine = _per_case(runs, variant, metric)
            keys = sorted(set(mine) & set(ref))
            if not keys:
                continue
            a = np.array([mine[k] for k in keys])
            b = np.array([ref[k] for k in keys])
            bad = [k for k, x, y in zip(keys, a, b) if not (np.isfinite(x) and np.isfinite(y))]
            if bad:  # the metrics are never NaN by their empty-mask rule: a table edited by hand?
                raise ValueError(
                    f"paired comparison: {metric} of {variant} or {reference} is not finite for case(s) {bad[:5]}"
                )
            d = a - b
            sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
            low, high = _bootstrap_ci(d)
            block.append(
                {
                    "metric": metric,
                    "network": variant,
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
        rows += block
    return rows


def comparison_csv(rows: Sequence[dict]) -> str:
    """``comparison.csv``: the rows of :func:`paired_comparison` (empty cells for missing p-values)."""
    from .results import rows_csv

    return rows_csv(rows, COMPARISON_FIELDS)


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def comparison_section(rows: Sequence[dict], reference: str, distance_unit: str = "mm") -> list[str]:
    """The ``results.md`` lines of a paired comparison (see the module docstring)."""
    from .results import _fmt

    names = {
        "iou": "IoU (%)",
        "dice": "Dice (%)",
        "hd95": f"HD95 ({distance_unit})",
        "fp_rate": "FP (%)",
        "fn_rate": "FN (%)",
    }
    lines = [
        f"## Paired comparison with {reference} (per test case)",
        "",
        f"Each network's metric of a test case is averaged over its seeds and paired with {reference}'s on the "
        "same case (a case tested in several folds counts once). Difference = network - reference (mean over "
        "cases, 95 % bootstrap interval; IoU, FP and FN in percentage points); better / equal "
        "/ worse counts cases (IoU: higher is better; HD95, FP, FN: lower is better); p = two-sided Wilcoxon "
        "signed-rank test over the cases, Holm-adjusted over the networks per metric. Seed-to-seed training "
        "variance is not part of the test (`pam_monai/experiments/compare.py`).",
        "",
    ]
    if not rows:
        return [*lines, "No network shares a scored test case with the reference."]
    lines.append(
        f"| Networks | metric | cases | network mean | {reference} mean | difference [95 % CI] | better / equal / worse | p | p (Holm) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        scale = 100.0 if r["metric"] != "hd95" else 1.0

        def f(v: float | None, scale: float = scale) -> str:
            return "n/a" if v is None else _fmt(scale * v)  # a tiny FP rate as 3.2e-03, not 0.00

        lines.append(
            f"| {r['network']} | {names[r['metric']]} | {r['cases']} | {f(r['mean_network'])} | {f(r['mean_reference'])} "
            f"| {f(r['mean_difference'])} [{f(r['ci_low'])}, {f(r['ci_high'])}] | {r['better']} / {r['equal']} / "
            f"{r['worse']} | {_p(r['wilcoxon_p'])} | {_p(r['holm_p'])} |"
        )
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
