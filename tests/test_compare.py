"""The paired per-case comparison of an experiment's networks (pam_monai.experiments.compare)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy.stats import wilcoxon

from pam_monai.experiments.compare import (
    COMPARISON_FIELDS,
    comparison_csv,
    comparison_section,
    default_reference,
    holm,
    paired_comparison,
)
from pam_monai.experiments.results import RunResult


def run(variant: str, seed: int, fold: int, ious: dict[str, float], hd95: float = 5.0) -> RunResult:
    cases = [
        {"case": c, "iou": v, "dice": 2 * v / (1 + v), "hd95": hd95, "fp_rate": 0.01, "fn_rate": 1 - v}
        for c, v in ious.items()
    ]
    return RunResult("brats", variant, variant, {}, seed, fold, 1, cases)


def test_cases_are_averaged_over_seeds_and_paired_by_case():
    rng = np.random.default_rng(0)
    cases = [f"c{i}" for i in range(8)]
    base = {c: float(v) for c, v in zip(cases, rng.uniform(0.3, 0.7, 8))}
    runs = [run("unet", 0, 0, base)]
    # fpa: two seeds, +0.1 and +0.02 on every case (mean +0.06); one case only fpa has (not paired);
    # fold 1 has its own cases
    runs.append(run("fpa", 0, 0, {**{c: v + 0.1 for c, v in base.items()}, "extra": 0.9}))
    runs.append(run("fpa", 1, 0, {c: v + 0.02 for c, v in base.items()}))
    runs.append(run("unet", 0, 1, {"d0": 0.5}))
    runs.append(run("fpa", 0, 1, {"d0": 0.4}))
    rows = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou", "hd95"))
    iou = next(r for r in rows if r["metric"] == "iou")
    assert iou["cases"] == 9 and iou["network"] == "fpa" and iou["reference"] == "unet"
    d = np.array([((v + 0.1) + (v + 0.02)) / 2 - v for v in base.values()] + [0.4 - 0.5])  # by hand
    assert iou["mean_difference"] == pytest.approx(d.mean())
    assert iou["wilcoxon_p"] == pytest.approx(wilcoxon(d).pvalue)
    assert (iou["better"], iou["equal"], iou["worse"]) == (8, 0, 1)
    assert iou["ci_low"] < iou["mean_difference"] < iou["ci_high"]
    assert iou["holm_p"] == iou["wilcoxon_p"]  # one comparison: nothing to adjust
    hd = next(r for r in rows if r["metric"] == "hd95")
    assert hd["mean_difference"] == 0 and hd["wilcoxon_p"] == 1.0 and hd["equal"] == 9


def test_a_case_tested_in_every_fold_counts_once():
    """A fixed test list (the datalist's 'test' beside its folds): every fold tests the same two
    cases. They are two cases, averaged over folds and seeds, not 2 x folds independent ones."""
    runs = []
    for fold in range(5):
        runs.append(run("unet", 0, fold, {"a": 0.5, "b": 0.6}))
        runs.append(run("fpa", 0, fold, {"a": 0.4 + 0.01 * fold, "b": 0.5}))
    (iou,) = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))
    assert iou["cases"] == 2 and (iou["better"], iou["equal"], iou["worse"]) == (0, 0, 2)
    assert iou["mean_difference"] == pytest.approx(((0.42 - 0.5) + (0.5 - 0.6)) / 2)
    assert iou["wilcoxon_p"] == pytest.approx(0.5)  # the smallest two-sided p of 2 cases
    assert any("fewer than 6 cases" in line for line in comparison_section([iou], "unet"))


def test_the_small_sample_note_counts_the_cases_that_differ():
    """Wilcoxon drops equal cases: 8 cases of which 3 are equal cannot give p < 0.05 either."""
    ref = {f"c{i}": 0.5 for i in range(8)}
    mine = {**ref, **{f"c{i}": 0.6 + 0.01 * i for i in range(5)}}
    (iou,) = paired_comparison(
        [run("unet", 0, 0, ref), run("fpa", 0, 0, mine)], "unet", ["unet", "fpa"], ("iou",)
    )
    assert (iou["cases"], iou["better"], iou["equal"]) == (8, 5, 3) and iou["wilcoxon_p"] == pytest.approx(
        0.0625
    )
    assert any("fewer than 6 cases that differ" in line for line in comparison_section([iou], "unet"))


def test_lower_is_better_for_distances_and_rates():
    runs = [
        run("unet", 0, 0, {"a": 0.5, "b": 0.5}, hd95=10.0),
        run("fpa", 0, 0, {"a": 0.5, "b": 0.5}, hd95=4.0),
    ]
    (hd,) = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("hd95",))
    assert hd["mean_difference"] == -6.0 and (hd["better"], hd["worse"]) == (2, 0)


def test_holm_adjustment():
    assert holm([0.01, 0.04, None, 0.03]) == [
        pytest.approx(0.03),
        pytest.approx(0.06),
        None,
        pytest.approx(0.06),
    ]
    assert holm([0.5, 0.6]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(1)
    base = {f"c{i}": float(v) for i, v in enumerate(rng.uniform(0.2, 0.8, 30))}
    other = {c: v + float(e) for (c, v), e in zip(base.items(), rng.normal(0.05, 0.1, 30))}
    runs = [run("unet", 0, 0, base), run("fpa", 0, 0, other)]
    a = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))[0]
    b = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))[0]
    assert a == b
    d = np.array([other[c] - base[c] for c in base])
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)  # the normal interval, for scale
    assert a["ci_low"] == pytest.approx(d.mean() - half, abs=0.3 * half)
    assert a["ci_high"] == pytest.approx(d.mean() + half, abs=0.3 * half)


def test_one_case_has_no_p_value_and_the_report_says_why():
    runs = [run("unet", 0, 0, {"a": 0.5}), run("fpa", 0, 0, {"a": 0.7}), run("rfna", 0, 0, {"a": 0.2})]
    rows = paired_comparison(runs, "unet", ["fpa", "rfna", "unet"], metrics=("iou",))
    assert [r["network"] for r in rows] == ["fpa", "rfna"]
    assert all(r["wilcoxon_p"] is None and r["holm_p"] is None for r in rows)
    lines = comparison_section(rows, "unet")
    assert "| fpa | IoU (%) | 1 | 70.00 | 50.00 | 20.00 [n/a, n/a] | 1 / 0 / 0 | n/a | n/a |" in lines
    assert rows[0]["ci_low"] is None and rows[0]["ci_high"] is None  # no interval from one case
    assert any("fewer than 6 cases" in line for line in lines)
    table = list(csv.DictReader(io.StringIO(comparison_csv(rows))))
    assert tuple(table[0]) == COMPARISON_FIELDS and table[0]["wilcoxon_p"] == "" and table[0]["ci_low"] == ""


def test_default_reference():
    assert default_reference(["fpa", "rfna", "unet"]) == "unet"
    assert default_reference(["fpa", "rfna"]) == "fpa"
    assert default_reference(["fpa"]) is None


def test_non_finite_metrics_are_refused_by_case():
    runs = [run("unet", 0, 0, {"a": 0.5, "b": 0.5}), run("fpa", 0, 0, {"a": float("nan"), "b": 0.5})]
    with pytest.raises(ValueError, match=r"iou of fpa or unet is not finite for case\(s\) \['a'\]"):
        paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))
