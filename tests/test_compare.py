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


# the seed dimension: does a difference survive retraining?
def _shifted(base: dict[str, float], shift: float) -> dict[str, float]:
    return {c: v + shift for c, v in base.items()}


BASE = {f"c{i}": 0.3 + 0.04 * i for i in range(10)}


def test_better_on_every_case_for_one_seed_but_worse_for_another_is_not_a_consistent_win():
    """fpa's seed 0 beats unet on every case, its seed 1 loses on every case: the seed-averaged
    per-case test sees 10 of 10 cases better (p = 0.002), yet the sign depends on the training."""
    runs = [run("unet", 0, 0, BASE), run("unet", 1, 0, BASE)]
    runs += [run("fpa", 0, 0, _shifted(BASE, 0.1)), run("fpa", 1, 0, _shifted(BASE, -0.05))]
    (iou,) = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))
    assert (iou["better"], iou["worse"]) == (10, 0) and iou["wilcoxon_p"] < 0.01  # the per-case view
    assert (iou["seeds_network"], iou["seeds_reference"], iou["seed_pairs"]) == (2, 2, 4)
    assert (iou["seed_pairs_better"], iou["seed_pairs_worse"]) == (2, 2)
    assert iou["seed_diff_min"] == pytest.approx(-0.05) and iou["seed_diff_max"] == pytest.approx(0.1)
    assert iou["across_seeds"] == "mixed"
    lines = comparison_section([iou], "unet")
    assert "| fpa | IoU (%) | 2 / 2 | -5.00 .. 10.00 | 2 / 2 of 4 | mixed |" in lines
    assert not any("better in all" in line and line.startswith("| fpa") for line in lines)
    table = list(csv.DictReader(io.StringIO(comparison_csv([iou]))))
    assert table[0]["across_seeds"] == "mixed" and table[0]["seed_pairs_worse"] == "2"


def test_better_for_every_seed_is_a_consistent_win_whatever_the_seed_numbers():
    """Every fpa seed beats every unet seed (IoU higher, HD95 lower): `better in all`, also when the
    two networks were trained with different seed numbers and with unequal seed counts."""
    runs = [run("unet", 5, 0, BASE, hd95=6.0), run("unet", 6, 0, _shifted(BASE, 0.02), hd95=5.0)]
    runs += [
        run("fpa", s, 0, _shifted(BASE, shift), hd95=hd)
        for s, shift, hd in ((0, 0.05, 4.0), (1, 0.08, 3.0), (2, 0.04, 4.5))
    ]
    iou, hd = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou", "hd95"))
    assert (iou["seed_pairs"], iou["seed_pairs_better"], iou["seed_pairs_worse"]) == (6, 6, 0)
    assert iou["seed_diff_min"] == pytest.approx(0.02) and iou["seed_diff_max"] == pytest.approx(0.08)
    assert iou["across_seeds"] == "better in all"
    assert hd["seed_diff_min"] == pytest.approx(-3.0) and hd["seed_diff_max"] == pytest.approx(-0.5)
    assert (hd["seed_pairs_better"], hd["across_seeds"]) == (6, "better in all")  # lower is better
    lines = comparison_section([iou, hd], "unet")
    assert "| fpa | IoU (%) | 3 / 2 | 2.00 .. 8.00 | 6 / 0 of 6 | better in all |" in lines
    assert "| fpa | HD95 (mm) | 3 / 2 | -3.00 .. -0.50 | 6 / 0 of 6 | better in all |" in lines
    # worse everywhere is the mirror image
    (rev,) = paired_comparison(runs, "fpa", ["fpa", "unet"], metrics=("iou",))
    assert (rev["seed_pairs_worse"], rev["across_seeds"]) == (6, "worse in all")


def test_exactly_equal_pairings_and_none_worse_is_never_worse_not_mixed():
    """fpa's seed 0 equals unet's seed 0 exactly (the same numbers), every other pairing is better
    and none is worse: 'never worse' (it read 'mixed', though no training of fpa lost)."""
    runs = [run("unet", 0, 0, BASE), run("unet", 1, 0, _shifted(BASE, -0.05))]
    runs += [run("fpa", 0, 0, BASE), run("fpa", 1, 0, _shifted(BASE, 0.05))]
    (iou,) = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))
    assert (iou["seed_pairs_better"], iou["seed_pairs_worse"], iou["across_seeds"]) == (3, 0, "never worse")
    (rev,) = paired_comparison(runs, "fpa", ["fpa", "unet"], metrics=("iou",))
    assert (rev["seed_pairs_better"], rev["seed_pairs_worse"], rev["across_seeds"]) == (0, 3, "never better")


def test_every_seed_is_paired_with_every_seed_not_seed_k_with_seed_k():
    """Matched by number, fpa's seed k beats unet's seed k by 5 points twice; but fpa's seed 1 loses
    to unet's seed 0: the sign depends on which trainings are compared."""
    runs = [run("unet", 0, 0, _shifted(BASE, 0.05)), run("unet", 1, 0, _shifted(BASE, -0.05))]
    runs += [run("fpa", 0, 0, _shifted(BASE, 0.1)), run("fpa", 1, 0, BASE)]
    (iou,) = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))
    assert (iou["seed_pairs"], iou["seed_pairs_better"], iou["seed_pairs_worse"]) == (4, 3, 1)
    assert iou["across_seeds"] == "mixed"


def test_a_seed_is_averaged_over_its_folds_before_pairing():
    """A fixed test list tested in two folds: each seed's value of a case is the mean over its folds,
    and the pairings use the pooled row's cases."""
    runs = []
    for fold in (0, 1):
        runs += [run("unet", s, fold, BASE) for s in (0, 1)]
        # seed 0: +0.1 in fold 0, -0.04 in fold 1 (mean +0.03); seed 1: +0.02 in both folds
        runs.append(run("fpa", 0, fold, _shifted(BASE, 0.1 if fold == 0 else -0.04)))
        runs.append(run("fpa", 1, fold, _shifted(BASE, 0.02)))
    (iou,) = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))
    assert iou["cases"] == 10 and iou["seed_pairs"] == 4
    assert iou["seed_diff_min"] == pytest.approx(0.02) and iou["seed_diff_max"] == pytest.approx(0.03)
    assert iou["across_seeds"] == "better in all"


def test_one_seed_says_training_variance_is_unknown_without_a_range():
    runs = [run("unet", 0, 0, BASE), run("fpa", 0, 0, _shifted(BASE, 0.1))]
    (iou,) = paired_comparison(runs, "unet", ["unet", "fpa"], metrics=("iou",))
    assert (iou["seeds_network"], iou["seeds_reference"], iou["across_seeds"]) == (1, 1, "unknown (1 seed)")
    for key in ("seed_pairs", "seed_diff_min", "seed_diff_max", "seed_pairs_better", "seed_pairs_worse"):
        assert iou[key] is None
    lines = comparison_section([iou], "unet")
    assert any(line.startswith("1 seed: training variance unknown.") for line in lines)
    assert not any("pairings better / worse" in line for line in lines)  # no table of one-value ranges
    table = list(csv.DictReader(io.StringIO(comparison_csv([iou]))))
    assert table[0]["seed_diff_min"] == "" and table[0]["across_seeds"] == "unknown (1 seed)"
    # one network with 2 seeds and one with 1: a table, the single-seed row says why it has no range
    runs += [run("rfna", s, 0, _shifted(BASE, 0.1 + 0.01 * s)) for s in (0, 1)]
    runs.append(run("unet", 1, 0, BASE))
    rows = paired_comparison(runs, "unet", ["unet", "fpa", "rfna"], metrics=("iou",))
    lines = comparison_section(rows, "unet")
    assert "| fpa | IoU (%) | 1 / 2 | n/a | n/a | 1 seed: training variance unknown |" in lines
    assert "| rfna | IoU (%) | 2 / 2 | 10.00 .. 11.00 | 4 / 0 of 4 | better in all |" in lines
