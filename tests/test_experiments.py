"""The experiment runner: variants and presets, tables, figures, and an interrupted grid that
resumes (real bundle training on a small synthetic BRATS set)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pam_monai.experiments import PRESETS, effective_options, parse_networks, parse_variant, run_experiment
from pam_monai.experiments import runner as runner_module
from pam_monai.experiments.results import (
    RESULT_FIELDS,
    RunResult,
    format_mean_std,
    markdown_report,
    paper_protocol_means,
    read_case_metrics,
    results_csv,
)
from pam_monai.networks import get_network

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = {"features": [8, 16, 32, 64]}


@pytest.fixture(autouse=True)
def one_thread():
    """1 intra-op thread: on a busy 2-core machine, 2 threads make small convolutions ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- variants, presets
def test_variant_parsing_is_canonical():
    a = parse_variant("FPA[expansion=2, dilation=6,depthwise=false]")
    b = parse_variant("fpa[depthwise=false,dilation=6,expansion=2]")
    assert a == b
    assert a.network == "fpa"
    assert a.options_dict == {"depthwise": False, "dilation": 6, "expansion": 2}
    assert a.label == "fpa[depthwise=false,dilation=6,expansion=2]"
    assert a.dirname == "fpa-depthwise_false-dilation_6-expansion_2"
    assert parse_variant("unet").label == "unet" and parse_variant("unet").dirname == "unet"
    lists = parse_networks("unet[features=[8,16,32,64]],rfna[ratio=4],unet[features=[8,16,32,64]]")
    assert [v.label for v in lists] == ["unet[features=[8,16,32,64]]", "rfna[ratio=4]"]
    assert lists[0].options_dict == {"features": [8, 16, 32, 64]}
    assert [v.label for v in parse_networks(("fpa", "unet"))] == [
        "fpa",
        "unet",
    ]  # what Fire gives for fpa,unet


@pytest.mark.parametrize(
    "text, message",
    [
        ("nonet", "unknown network"),
        ("fpa[ratio=4]", "unknown option"),
        ("fpa[dilation]", "not key=value"),
        ("fpa[dilation=6", "unbalanced"),
        ("fpa[dilation=6,dilation=9]", "given twice"),
    ],
)
def test_variant_parsing_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_networks(text)


def test_presets_are_the_papers_experiments():
    assert set(PRESETS["table5"]) == {"fpa", "rfna", "unet", "aunet", "cscunet", "gcnunet", "cbamunet"}
    assert PRESETS["table6"] == ["unet", "wunet", "d6unet", "d9unet"]
    for preset, key, values in (("fig7_fpa", "dilation", {6, 9, 12}), ("fig7_rfna", "ratio", {2, 4, 8})):
        variants = parse_networks(PRESETS[preset])
        assert len(variants) == 15 == len({v.dirname for v in variants})
        combos = {
            (v.options_dict[key], v.options_dict["depthwise"], v.options_dict["expansion"]) for v in variants
        }
        expected = {(x, True, e) for x in values for e in (2, 4, 8)} | {
            (x, False, e) for x in values for e in (1, 2)
        }
        assert combos == expected
    # every configuration builds, and depthwise / full attention branches differ in size
    for preset in ("fig7_fpa", "fig7_rfna", "table6"):
        sizes = {}
        for v in parse_networks(PRESETS[preset]):
            net = get_network(v.network, 2, 4, 1, options=effective_options(v, TINY))
            sizes[v.label] = sum(p.numel() for p in net.parameters())
        if preset.startswith("fig7"):
            assert len(set(sizes.values())) > 1
    assert sizes["wunet"] > 3 * sizes["unet"]  # a small WUnet is still twice as wide


def test_effective_options_keep_wunets_width_ratio():
    assert effective_options(parse_variant("unet"), TINY) == TINY
    assert effective_options(parse_variant("wunet"), TINY) == {"features": [16, 32, 64, 128]}
    assert effective_options(parse_variant("wunet[features=[4,8,16,32]]"), TINY) == {
        "features": [4, 8, 16, 32]
    }
    assert effective_options(parse_variant("fpa[dilation=6]"), TINY) == {**TINY, "dilation": 6}
    assert effective_options(parse_variant("wunet"), None) == {}


def test_seeds_and_folds():
    assert runner_module._seeds(3) == [0, 1, 2]
    assert runner_module._seeds("0,5") == [0, 5]
    assert runner_module._seeds((1, 4)) == [1, 4]
    assert runner_module._folds("all", "brats") == [0, 1, 2, 3, 4]
    assert runner_module._folds((0, 2), "brats") == [0, 2]
    with pytest.raises(ValueError):
        runner_module._seeds(0)
    with pytest.raises(ValueError, match="one fixed split"):
        runner_module._folds("0,1", "isles")
    with pytest.raises(ValueError):
        runner_module._folds(5, "brats")


# ----------------------------------------------------------------------------- tables
def _run(variant: str, seed: int, ious, fold: int = 0, pp=None) -> RunResult:
    cases = [
        {
            "case": f"c{i}",
            "iou": v,
            "dice": 2 * v / (1 + v),
            "hd95": 10.0 * (i + 1),
            "fp_rate": 1e-5,
            "fn_rate": 1 - v,
            "target_empty": False,
            "pred_empty": v == 0,
        }
        for i, v in enumerate(ious)
    ]
    net = variant.split("[")[0]
    return RunResult("brats", net, variant, {}, seed, fold, 1_234_567, cases, paper_protocol=pp)


def _report(runs, **kwargs) -> str:
    """``markdown_report`` of ``runs`` with a test's defaults (BRATS, real data, one planned run)."""
    args = {
        "dataset": "brats",
        "dataset_title": "BRATS",
        "synthetic": False,
        "data_root": "/x",
        "order": ["fpa"],
        "planned": 1,
    }
    return markdown_report(runs, **{**args, **kwargs})


def test_table_shows_networks_with_missing_runs():
    """A network whose runs all failed had no row (only "Runs finished: 2 of 4" said something was
    missing), and one with a failed seed showed "1" runs like a one-seed grid: a reader saw a table
    of the networks that worked. Both are now in the table, with their share of the grid."""
    runs = [_run("fpa", 0, [0.5]), _run("fpa", 1, [0.7]), _run("rfna", 0, [0.4])]
    md = _report(runs, order=["unet", "fpa", "rfna"], planned=6, seeds_folds=([0, 1], [0]))
    rows = {
        line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ") and " ± " in line
    }
    missing = [line for line in md.splitlines() if line.startswith("| unet |")]
    assert missing == ["| unet | no finished run |  |  |  |  | 0 of 2 |  |  |  |"]
    assert rows["fpa"].endswith("| 1.23 | 2 | 1 | 0 | 0 |")  # complete: the count alone
    assert rows["rfna"].endswith("| 1.23 | 1 of 2 | 1 | 0 | 0 |")
    table = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[1:4] == ["| unet", "| fpa", "| rfna"]  # grid order, the missing network in its place


def test_settings_show_non_ascii_paths_as_written():
    report = _report([_run("fpa", 0, [0.5])], settings={"dataset_dir": "/data/Jürgen Müller", "epochs": 1})
    assert 'Settings: `dataset_dir="/data/Jürgen Müller"`, `epochs=1`' in report


def test_table_averages_cases_per_run_then_runs():
    # run A: cases 1, 0, 0 -> 1/3; run B: one case 0.5. Per-run first: (33.33 + 50) / 2 = 41.67,
    # sample std 11.79. (Pooling the four cases would give 37.50.)
    runs = [_run("fpa", 0, [1.0, 0.0, 0.0]), _run("fpa", 1, [0.5]), _run("unet", 0, [0.25])]
    md = _report(runs, synthetic=True, order=["unet", "fpa"], planned=5)
    rows = [line for line in md.splitlines() if line.startswith("| fpa |") or line.startswith("| unet |")]
    assert rows[0].startswith("| unet | 25.00 ± n/a |")  # grid order; one run has no std
    assert rows[1].startswith("| fpa | 41.67 ± 11.79 |")
    assert rows[1].endswith(
        "| 1.23 | 2 | 1-3 | 0 | 2 |"
    )  # params (M), runs, cases/run, empty targets, missed
    assert "| 1.0e-03 ± 0.00 |" in rows[1]  # FP rate 1e-5 = 0.001 %: scientific notation, not 0.00
    assert "SYNTHETIC" in md and "Runs finished: 3 of 5" in md and "incomplete" in md
    assert "Honest per-case metrics" in md and "ddof=1" in md
    assert "PAPER PROTOCOL" not in md


def test_report_names_the_seeds_and_folds_of_the_grid():
    """The runs column counts runs; results.md says which seeds and folds they are."""
    runs = [_run("fpa", s, [0.5]) for s in (0, 5)]
    md = _report(runs, planned=4, seeds_folds=([0, 5], [1, 3]))
    assert "Grid: 1 network(s) x 2 seed(s) (0, 5) x 2 fold(s) (1, 3);" in md
    assert "scored on the test cases of its fold" in md


def test_comparison_over_unequal_runs_is_flagged():
    """An incomplete grid: fpa's per-case values are means over 2 seeds, unet's over 1."""
    from pam_monai.experiments.compare import paired_comparison

    runs = [_run("fpa", 0, [0.6, 0.5]), _run("fpa", 1, [0.7, 0.4]), _run("unet", 0, [0.5, 0.5])]
    rows = paired_comparison(runs, "unet", ["fpa", "unet"])
    md = _report(runs, order=["fpa", "unet"], planned=4, comparison=("unet", rows))
    assert "means over different numbers of finished runs (fpa 2, unet 1)" in md
    complete = [*runs, _run("unet", 1, [0.5, 0.6])]
    md = _report(
        complete,
        order=["fpa", "unet"],
        planned=4,
        comparison=("unet", paired_comparison(complete, "unet", ["fpa", "unet"])),
    )
    assert "different numbers of finished runs" not in md


def test_comparison_over_other_runs_of_equal_number_is_flagged():
    """--keep_going after one failed run of each network: 3 runs each, but fold 0's case is unet's
    mean over 2 seeds and fpa's value of 1 seed (fold 1 the other way round); and a network of the
    grid with no finished run is named, not left to 'No network shares a scored test case'."""
    from pam_monai.experiments.compare import paired_comparison

    runs = [
        _run("unet", 0, [0.5], fold=0),
        _run("unet", 1, [0.7], fold=0),
        _run("unet", 0, [0.5], fold=1),
        _run("fpa", 1, [0.6], fold=0),
        _run("fpa", 0, [0.6], fold=1),
        _run("fpa", 1, [0.4], fold=1),
    ]
    order = ["unet", "fpa", "rfna"]
    md = _report(runs, order=order, planned=12, comparison=("unet", paired_comparison(runs, "unet", order)))
    assert (
        "means over different finished runs (seeds x folds): unet seed 0 fold 0, seed 1 fold 0, seed 0 fold 1; "
        "fpa seed 1 fold 0, seed 0 fold 1, seed 1 fold 1" in md
    )
    assert "Not compared, no finished run yet: rfna." in md
    complete = [*runs, _run("unet", 1, [0.5], fold=1), _run("fpa", 0, [0.6], fold=0)]
    md = _report(
        complete,
        order=order[:2],
        planned=8,
        comparison=("unet", paired_comparison(complete, "unet", order[:2])),
    )
    assert "different finished runs" not in md and "Not compared" not in md


def test_format_mean_std():
    assert format_mean_std([0.5, 0.7], 100) == "60.00 ± 14.14"
    assert format_mean_std([2.0]) == "2.00 ± n/a"
    assert format_mean_std([]) == "n/a"


def test_format_mean_std_of_equal_runs_is_zero():
    """Runs with the same mean (e.g. 3 seeds converged to the same masks) have std 0.00, not the
    std of numpy's rounding of their mean ("81.33 ± 1.4e-14", by hand: the three values are equal)."""
    x = 0.8132702392002724  # np.mean([x] * 3) != x: the rounding that made the std 1.4e-16
    assert format_mean_std([x] * 3, 100) == "81.33 ± 0.00"
    assert format_mean_std([0.0045] * 5, 100) == "0.45 ± 0.00"
    assert format_mean_std([0.5, 0.5, 0.5 + 1e-6], 100) == "50.00 ± 5.8e-05"  # a real spread still shows


def test_paper_protocol_is_pooled_over_slices_and_labelled():
    pp_a = [
        {
            "case": "a",
            "slices": 10,
            "target_empty_slices": 8,
            "pred_empty_slices": 8,
            "iou": 1.0,
            "dice": 1.0,
            "hd95": 0.0,
            "fp_rate": 0.0,
            "fn_rate": 0.0,
            "authors_iou": 0.6,
            "authors_hd95": 4.0,
            "authors_hd95_slices": 1,
            "authors_fp_rate": 0.0,
            "authors_fn_rate": 0.9,
            "case_iou": 1.0,
        },
        {
            "case": "b",
            "slices": 30,
            "target_empty_slices": 20,
            "pred_empty_slices": 20,
            "iou": 0.6,
            "dice": 0.7,
            "hd95": 2.0,
            "fp_rate": 0.0,
            "fn_rate": 0.2,
            "authors_iou": 0.5,
            "authors_hd95": None,
            "authors_hd95_slices": 0,
            "authors_fp_rate": 0.0,
            "authors_fn_rate": 0.8,
            "case_iou": 0.5,
        },
    ]
    means = paper_protocol_means(_run("fpa", 0, [1.0, 0.5], pp=pp_a))
    assert means["iou"] == pytest.approx((10 * 1.0 + 30 * 0.6) / 40)
    assert means["authors_hd95"] == pytest.approx(4.0)  # the case without an eligible slice adds nothing
    assert means["slices"] == 40 and means["target_empty_slices"] == 28
    md = _report([_run("fpa", 0, [1.0, 0.5], pp=pp_a)], paper_protocol=True)
    assert "PAPER PROTOCOL" in md and "DEFECTIVE" in md and "NOT the project's result" in md
    assert "| fpa | 70.00 ± n/a |" in md  # (a) per-slice project definitions
    assert "SYNTHETIC" not in md
    # a run without an HD95-eligible slice is left out of the authors' HD95 column, by name
    pp_b = [{**pp_a[1], "case": c} for c in ("a", "b")]
    md = _report(
        [_run("fpa", 0, [1.0, 0.5], pp=pp_a), _run("fpa", 1, [1.0, 0.5], pp=pp_b)], paper_protocol=True
    )
    assert "| 4.00 ± n/a (1 of 2 runs) |" in md, md


def test_results_csv_columns():
    text = results_csv([_run("fpa[dilation=6]", 2, [0.5, 0.25], fold=3)], synthetic=False)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == RESULT_FIELDS
    assert [r["synthetic"] for r in rows] == ["False", "False"]
    assert [r["case"] for r in rows] == ["c0", "c1"]
    assert rows[0]["network"] == "fpa" and rows[0]["variant"] == "fpa[dilation=6]"
    assert rows[0]["seed"] == "2" and rows[0]["fold"] == "3" and rows[0]["params"] == "1234567"
    assert float(rows[1]["iou"]) == 0.25 and rows[0]["target_empty"] == "False"
    assert json.loads(rows[0]["options"]) == {}


def test_results_csv_says_synthetic_in_every_row():
    """results.csv of a grid on the synthetic stand-in read like one on BRATS: only results.md said
    SYNTHETIC, so rows copied out of it or grids' files joined lost it. Every row says it now."""
    text = results_csv([_run("fpa", 0, [0.5, 0.25]), _run("unet", 1, [0.4])], synthetic=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["dataset"], r["synthetic"]) for r in rows] == [("brats", "True")] * 3


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ""])
def test_a_case_metric_that_is_not_finite_is_refused_naming_the_file(tmp_path, value):
    """An edited or older metrics.csv with HD95 NaN / inf / empty: refused when read (before any
    table is rewritten), naming the file, the case and the metric; not a bare 'could not convert
    string to float' nor a later refusal by the paired comparison after results.csv was rewritten."""
    path = tmp_path / "metrics.csv"
    path.write_text(
        "case,iou,dice,hd95,fp_rate,fn_rate,target_empty,pred_empty\n"
        "c0,0.5,0.6,3.0,0.01,0.2,False,False\n"
        f"c1,0.0,0.0,{value},0.0,1.0,False,True\n"
    )
    with pytest.raises(ValueError, match=r"metrics\.csv: case c1: hd95 = .* is not a finite number"):
        read_case_metrics(path)
    path.write_text(path.read_text().replace(f",{value},", ",373.13,"))
    assert [c["hd95"] for c in read_case_metrics(path)] == [3.0, 373.13]


def test_a_case_scored_twice_is_refused_naming_the_file_and_case(tmp_path):
    """A metrics.csv that names a case twice (a test list with a duplicate): the tables counted both
    rows and the paired comparison averaged them into one case; refused, naming file and case."""
    path = tmp_path / "metrics.csv"
    path.write_text(
        "case,iou,dice,hd95,fp_rate,fn_rate,target_empty,pred_empty\n"
        "c0,0.5,0.6,3.0,0.01,0.2,False,False\n"
        "c1,0.4,0.5,3.0,0.01,0.2,False,False\n"
        "c0,0.5,0.6,3.0,0.01,0.2,False,False\n"
    )
    with pytest.raises(ValueError, match=r"metrics\.csv: case\(s\) c0 scored more than once"):
        read_case_metrics(path)


# ----------------------------------------------------------------------------- figures
def test_attention_map_is_the_bridge_attention_used_in_forward():
    from pam_monai.experiments.predict import attention_map

    torch.manual_seed(0)
    x = torch.randn(4, 128, 128)  # RFNA (ratio 8) needs a 16 x 16 bridge
    for name in ("fpa", "rfna"):
        net = get_network(name, 2, 4, 1, options=TINY).eval()
        amap = attention_map(net, x)
        assert amap.shape == (16, 16)  # the bridge works at 1/8 of the input
        assert np.all((amap > 0) & (amap < 1))
        # the same map is what the bridge multiplies its features with: Y = F * A + F
        seen = {}
        hook = net.bridge.register_forward_hook(lambda m, a, y, seen=seen: seen.update(x=a[0], y=y))
        with torch.no_grad():
            net(x[None])
            f = net.bridge.main(seen["x"])
            a = net.bridge.attention(f if name == "rfna" else seen["x"])
        hook.remove()
        torch.testing.assert_close(seen["y"], f * a + f)
        np.testing.assert_allclose(amap, a[0].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert attention_map(get_network("unet", 2, 4, 1, options=TINY).eval(), x) is None


def test_overlay_colours():
    from pam_monai.experiments.figures import FN_COLOUR, FP_COLOUR, TP_COLOUR, overlay

    grey = np.zeros((2, 2))
    pred = np.array([[True, True], [False, False]])
    target = np.array([[True, False], [True, False]])
    out = overlay(grey, pred, target, alpha=1.0)
    np.testing.assert_allclose(out[0, 0], TP_COLOUR)
    np.testing.assert_allclose(out[0, 1], FP_COLOUR)
    np.testing.assert_allclose(out[1, 0], FN_COLOUR)
    np.testing.assert_allclose(out[1, 1], 0.0)
    # the paper's Figures 5 and 6: "Blue: False Negatives, Yellow: True Positives"
    r, g, b = FN_COLOUR
    assert b > 0.8 and r < 0.3 and g < 0.5
    r, g, b = TP_COLOUR
    assert r > 0.8 and g > 0.7 and b < 0.2


def test_ablation_figure_png(tmp_path):
    pytest.importorskip("matplotlib")
    from pam_monai.experiments.figures import ablation_figure

    records = [
        {
            "network": "fpa",
            "axis": "dilation",
            "x": d,
            "depthwise": dw,
            "expansion": e,
            "iou": [0.5 + 0.01 * d, 0.52],
            "hd95": [10.0, 12.0],
        }
        for d in (6, 9)
        for dw, e in ((True, 2), (True, 4), (False, 1))
    ]
    records.append(
        {
            "network": "rfna",
            "axis": "ratio",
            "x": 8,
            "depthwise": True,
            "expansion": 4,
            "iou": [0.6],
            "hd95": [9.0],
        }
    )
    path = ablation_figure(records, tmp_path / "fig7.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["fig7.png"]  # no temporary file left behind


# ----------------------------------------------------------------------------- the runner, end to end
GRID = {
    "dataset": "brats",
    "networks": "fpa,unet",
    "seeds": 2,
    "epochs": 1,
    "batch_size": 8,
    "num_workers": 0,
    "network_options": TINY,
    "threads": 1,  # 1 intra-op thread: several times faster than 2 on a busy 2-core machine
    "paper_protocol": True,
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Run the 2 networks x 2 seeds grid the hard way: one run (max_runs=1); then a call that is
    interrupted (KeyboardInterrupt) while evaluating its first run, after that run's training;
    then the call that completes the grid. Returns what each call did."""
    from pam_monai.data import ensure_dataset

    tmp = tmp_path_factory.mktemp("experiment")
    data, synthetic = ensure_dataset("brats", tmp / "none", output=tmp / "synthetic_brats", slices=8)
    assert synthetic
    out = tmp / "exp"
    common = {**GRID, "output": str(out), "dataset_dir": str(data)}
    calls = {}
    first = run_experiment(**common, max_runs=1, figures=False)
    calls["first"] = first
    calls["markers"] = {r.dir: r.marker.read_text() for r in first.executed}

    real_evaluate = runner_module._Bundle.evaluate

    def interrupt(self, overrides):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_module._Bundle, "evaluate", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(**common)
    assert runner_module._Bundle.evaluate is real_evaluate
    calls["last"] = run_experiment(**common)
    calls["out"] = out
    calls["data"] = data
    return calls


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_grid")
def test_interrupted_grid_resumes_only_the_remaining_runs(grid):
    first, last = grid["first"], grid["last"]
    assert len(first.runs) == 4
    assert [r.name for r in first.executed] == ["fpa seed 0 fold 0"]
    assert not first.complete and first.results_md.is_file()
    # the re-run skips the finished run and does only the other three
    assert [r.name for r in last.skipped] == ["fpa seed 0 fold 0"]
    assert [r.name for r in last.executed] == [
        "fpa seed 1 fold 0",
        "unet seed 0 fold 0",
        "unet seed 1 fold 0",
    ]
    assert last.complete
    for d, text in grid["markers"].items():
        assert (d / "done.json").read_text() == text  # untouched
    # the run interrupted after its training was resumed from its checkpoint, not retrained
    resumed = json.loads((last.runs[1].dir / "done.json").read_text())
    assert resumed["resumed"] is True and resumed["seed"] == 1 and resumed["network"] == "fpa"
    assert [json.loads((r.dir / "done.json").read_text())["resumed"] for r in last.runs[2:]] == [False, False]
    events = [json.loads(line) for line in (grid["out"] / "runs.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "done", "start", "interrupted"] + ["start", "done"] * 3
    assert sum(e["event"] == "start" and e["run"] == "runs/fpa/seed0/fold0" for e in events) == 1


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_grid")
def test_grid_results_csv_and_md(grid):
    last, out = grid["last"], grid["out"]
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    assert tuple(rows[0]) == RESULT_FIELDS
    assert {r["synthetic"] for r in rows} == {"True"}  # the stand-in, said in every row
    runs = {(r["variant"], r["seed"], r["fold"]) for r in rows}
    assert runs == {(n, s, "0") for n in ("fpa", "unet") for s in ("0", "1")}
    # results.csv carries the bundle evaluator's per-case rows, unchanged
    for run in last.runs:
        own = list(csv.DictReader(open(run.metrics_csv, newline="")))
        mine = [r for r in rows if (r["variant"], int(r["seed"])) == (run.variant.label, run.seed)]
        assert [r["case"] for r in mine] == [r["case"] for r in own]
        for a, b in zip(mine, own):
            for m in ("iou", "hd95", "fp_rate", "fn_rate"):
                assert float(a[m]) == pytest.approx(float(b[m]), rel=1e-5)
    params = {r["variant"]: int(r["params"]) for r in rows}
    assert params["fpa"] == sum(p.numel() for p in get_network("fpa", 2, 4, 1, options=TINY).parameters())

    md = (out / "results.md").read_text()
    assert "SYNTHETIC" in md and "Runs finished: 4 of 4" in md
    for net in ("fpa", "unet"):
        per_run = [
            np.mean([float(r["iou"]) for r in rows if (r["variant"], r["seed"]) == (net, s)]) for s in "01"
        ]
        assert f"| {net} | {format_mean_std(per_run, 100)} |" in md
    assert "PAPER PROTOCOL" in md
    # fpa against the default reference, unet, case by case (seeds averaged)
    assert "## Paired comparison with unet (per test case)" in md
    compared = list(csv.DictReader(open(out / "comparison.csv", newline="")))
    iou = next(r for r in compared if r["metric"] == "iou")
    per_case = {
        net: {
            c: np.mean([float(r["iou"]) for r in rows if (r["variant"], r["case"]) == (net, c)])
            for c in {r["case"] for r in rows}
        }
        for net in ("fpa", "unet")
    }
    diff = np.mean([per_case["fpa"][c] - per_case["unet"][c] for c in per_case["fpa"]])
    assert (iou["network"], iou["reference"], int(iou["cases"])) == ("fpa", "unet", len(per_case["fpa"]))
    assert float(iou["mean_difference"]) == pytest.approx(diff, rel=1e-4, abs=1e-6)


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_grid")
def test_grid_paper_protocol_uses_the_evaluated_predictions(grid):
    from pam_monai.experiments.predict import read_paper_protocol

    for run in grid["last"].runs:
        own = {r["case"]: float(r["iou"]) for r in csv.DictReader(open(run.metrics_csv, newline=""))}
        pp = read_paper_protocol(run.paper_protocol_csv)
        assert {r["case"] for r in pp} == set(own)
        for r in pp:
            # the runner's own inference reproduces the evaluator's per-case IoU exactly
            assert r["case_iou"] == pytest.approx(own[r["case"]], rel=1e-5, abs=1e-9)
            assert r["slices"] == 8
            assert 0 <= r["authors_iou"] <= 1 and 0 <= r["iou"] <= 1


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_grid")
def test_grid_figures(grid):
    pytest.importorskip("matplotlib")
    out = grid["out"]
    names = sorted(p.name for p in grid["last"].figures)
    assert names == ["fig4_attention.png", "fig5_overlays.png"]  # no fig7: one variant per block
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in (out / "results.md").read_text()
    assert not list(out.glob(".*.png"))


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_grid")
def test_finished_runs_with_other_settings_are_refused(grid):
    out = grid["out"]
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/done.json")}
    with pytest.raises(ValueError, match="epochs"):
        run_experiment(**{**GRID, "epochs": 2}, output=str(out), dataset_dir=str(grid["data"]), figures=False)
    with pytest.raises(ValueError, match="set by the runner"):
        run_experiment(**GRID, output=str(out), seed=3)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/done.json")} == before
    # a finished grid re-run trains nothing; a missing paper-protocol file is recomputed from model.pt
    pp = grid["last"].runs[2].paper_protocol_csv
    text = pp.read_text()
    pp.unlink()
    again = run_experiment(**GRID, output=str(out), dataset_dir=str(grid["data"]), figures=False)
    assert again.executed == [] and len(again.skipped) == 4
    assert pp.read_text() == text


def test_device_override_is_a_torch_device_expression():
    assert runner_module._device_expr("cuda:0") == "$torch.device('cuda:0')"
    assert runner_module._device_expr("cpu") == "$torch.device('cpu')"
    with pytest.raises(ValueError):
        runner_module._device_expr("cpu'); import os; ('")


def fake_finish(run, identity: dict, rows: list[str]) -> dict:
    """What a finished bundle run leaves (``eval/metrics.csv`` rows, then ``done.json``), for grid
    tests that do not train."""
    run.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    run.metrics_csv.write_text(
        "case,iou,dice,hd95,fp_rate,fn_rate,target_empty,pred_empty\n" + "\n".join(rows) + "\n"
    )
    done = {
        **identity,
        "params": 1,
        "resumed": False,
        "seconds": 0.0,
        "test_cases": len(rows),
        "test_iou_mean": 0.5,
    }
    run.marker.write_text(json.dumps(done))
    return done


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_grid")
def test_keep_going_and_max_runs(grid, tmp_path, monkeypatch):
    """Grid logic without training: a fake run writes what a bundle run writes; unet fails."""

    def fake_execute(run, bundle, overrides, identity, ctx):
        if run.variant.network == "unet":
            raise RuntimeError("boom")
        return fake_finish(run, identity, [f"c1,{0.5 + 0.1 * run.seed},0.6,3.0,0.001,0.2,False,False"])

    monkeypatch.setattr(runner_module, "_execute", fake_execute)
    common = {
        **GRID,
        "paper_protocol": False,
        "figures": False,
        "output": str(tmp_path),
        "dataset_dir": str(grid["data"]),
    }
    partial = run_experiment(**common, max_runs=1)
    assert [r.name for r in partial.executed] == ["fpa seed 0 fold 0"] and not partial.complete
    with pytest.raises(RuntimeError, match="boom"):  # fail fast by default
        run_experiment(**common)
    with pytest.raises(RuntimeError, match=r"2 run\(s\) failed"):
        run_experiment(**common, keep_going=True)
    md = (tmp_path / "results.md").read_text()
    assert "Runs finished: 2 of 4" in md and "| fpa | 55.00 ± 7.07 |" in md
    assert "| unet | no finished run |  |  |  |  | 0 of 2 |" in md  # named in the table, not left out
    events = [json.loads(line)["event"] for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert events.count("failed") == 3 and events.count("done") == 2


def test_overlay_window_is_twice_the_lesion():
    from pam_monai.experiments.figures import _window

    target = np.zeros((160, 160), bool)
    target[70:100, 60:90] = True  # a 30-pixel lesion
    speck = np.zeros_like(target)
    speck[5, 150] = True  # a far false positive does not widen the window
    r0, r1, c0, c1 = _window(target, [speck])
    assert r1 - r0 == c1 - c0 == 60
    assert r0 <= 70 and r1 >= 100 and c0 <= 60 and c1 >= 90
    assert _window(np.zeros((8, 8), bool), [np.zeros((8, 8), bool)]) == (0, 8, 0, 8)
    small = np.zeros((160, 160), bool)
    small[0:2, 0:2] = True
    assert _window(small, []) == (0, 48, 0, 48)  # at least 48 pixels, kept inside the image


@pytest.mark.parametrize("shape", [(96, 80), (96, 40), (160, 160), (64, 160)])
def test_overlay_titles_do_not_cover_the_row_above(shape, tmp_path, monkeypatch):
    """Own volumes are often taller than wide (96 x 80 in a walkthrough): each row gets the height
    of its tallest image, so a row's two-line title stays clear of the image above it."""
    pytest.importorskip("matplotlib")
    from pam_monai.experiments import figures

    kept = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: kept.append(fig) or Path(path))
    target = np.zeros(shape, bool)
    target[30:40, 10:20] = True
    row = {
        "case": "pt001",
        "slice": 5,
        "image": np.random.default_rng(0).random((2, *shape)),
        "target": target,
    }
    rows = [{**row, "preds": {"fpa": target, "unet": target}, "iou": {"fpa": 1.0, "unet": 1.0}}] * 2
    figures.overlay_figure(rows, ["fpa", "unet"], tmp_path / "f.png", title="fold 0 test cases\nseed 0 runs")
    fig = kept[0]
    fig.canvas.draw()  # as savefig does: the axes take their images' aspect
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(2, 3)
    for i in range(1, 2):
        for j in range(3):
            title = axes[i, j].title.get_window_extent(renderer)
            above = axes[i - 1, j].get_window_extent(renderer)  # the image drawn there
            assert title.y1 <= above.y0, (i, j, title, above)


def test_figures_show_a_fold_whose_runs_finished():
    """fig4/fig5 used the first fold only: with its runs unfinished (--max_runs, a failed run under
    --keep_going) no figure was written although fold 1 had every network's run."""
    from types import SimpleNamespace

    from pam_monai.experiments.figures import _figure_fold, _representative

    def run(label, seed, fold, done):
        return SimpleNamespace(
            variant=SimpleNamespace(label=label), seed=seed, fold=fold, finished=lambda: done
        )

    runs = [run("fpa", 0, 0, False), run("unet", 0, 0, True), run("fpa", 0, 1, True), run("unet", 0, 1, True)]
    finished = {"fpa", "unet"}
    assert set(_representative(runs, finished, [0], 0)) == {"unet"}
    assert _figure_fold(runs, finished, [0], [0, 1]) == 1
    assert _figure_fold(runs, finished, [0], [0, 1], wanted=["unet"]) == 0  # fold 0 has what is shown
    runs[0] = run("fpa", 0, 0, True)
    assert _figure_fold(runs, finished, [0], [0, 1]) == 0  # every network on the first fold: as before
    partial = [run("fpa", 0, 0, False), run("unet", 0, 0, False), run("unet", 0, 1, True)]
    assert _figure_fold(partial, finished, [0], [0, 1]) == 1  # no fold has all: the one with the most


def test_table_distance_unit_for_2d_images():
    md = _report(
        [_run("fpa", 0, [0.5])], dataset="cityscapes", dataset_title="CityScapes", distance_unit="px"
    )
    assert "| HD95 (px) |" in md and "one image" in md and "(mm)" not in md
    assert "N = target background pixels" in md and "voxels" not in md


def test_cli_help_starts_nothing(tmp_path, monkeypatch, capsys):
    from pam_monai.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner_module, "run_experiment", lambda **kw: pytest.fail("--help started a grid"))
    main(["experiment", "--help"])
    assert "Usage: python -m pam_monai experiment" in capsys.readouterr().out  # printed through Fire
    assert list(tmp_path.iterdir()) == []


def _fake_execute_with_weights(run, bundle, overrides, identity, ctx):
    """What a bundle run leaves behind, without training: random weights, a made-up metrics row."""
    net = get_network(run.variant.network, 2, 4, 1, options=run.options)
    run.model.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), run.model)
    run.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    iou = 0.1 + 0.01 * len(run.variant.label) + 0.05 * run.seed
    run.metrics_csv.write_text(
        "case,iou,dice,hd95,fp_rate,fn_rate,target_empty,pred_empty\n"
        f"Brats18_SYN_005_1,{iou},0.5,7.0,0.01,0.3,False,False\n"
    )
    done = {**identity, "params": 1, "resumed": False, "seconds": 0.0, "test_cases": 1, "test_iou_mean": iou}
    run.marker.write_text(json.dumps(done))
    return done


@pytest.mark.slow
@pytest.mark.xdist_group("experiment_grid")
def test_figures_of_an_ablation_grid(grid, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(runner_module, "_execute", _fake_execute_with_weights)
    result = run_experiment(
        **{
            **GRID,
            "paper_protocol": False,
            "networks": "fpa[dilation=6],fpa[depthwise=false,dilation=12,expansion=1],rfna[ratio=4],rfna,unet",
        },
        output=str(tmp_path),
        dataset_dir=str(grid["data"]),
    )
    names = sorted(p.name for p in result.figures)
    assert names == ["fig4_attention.png", "fig5_overlays.png", "fig7_ablation.png"]
    for p in result.figures:
        assert p.read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "results.md").read_text()
    assert "| fpa[depthwise=false,dilation=12,expansion=1] |" in md and "| unet |" in md
    with pytest.raises(ValueError, match="figure_networks"):
        run_experiment(
            **{**GRID, "paper_protocol": False, "networks": "unet"},
            output=str(tmp_path / "b"),
            dataset_dir=str(grid["data"]),
            figure_networks="fpa",
        )


def test_cli_refuses_unknown_flags_before_any_work_and_reports_errors_in_one_line(
    tmp_path, monkeypatch, capsys
):
    """A misspelt flag must not run the command first (Fire reports it only afterwards) nor reach a
    bundle unchecked (``--epoch`` for ``--epochs`` trained the default 80 epochs); usual failures are
    one ``error:`` line and exit code 1, not a traceback."""
    from pam_monai.cli import main

    monkeypatch.chdir(tmp_path)
    import functools

    import pam_monai.bench

    @functools.wraps(pam_monai.bench.bench)  # same signature, so the flag check sees the real one
    def must_not_run(*args, **kwargs):
        pytest.fail("bench ran with a bad flag")

    monkeypatch.setattr(pam_monai.bench, "bench", must_not_run)
    with pytest.raises(SystemExit, match=r"pam_monai bench: error: unknown flag\(s\) --bogus"):
        main(["bench", "--stages", "hd95", "--bogus", "3"])
    with pytest.raises(SystemExit, match=r"unknown flag\(s\) --folds"):
        main(
            ["datalist", "--dataset", "brats", "--root", str(tmp_path), "--output", "dl.json", "--folds", "0"]
        )
    assert not (tmp_path / "dl.json").exists()
    monkeypatch.setattr(runner_module, "_run_grid", lambda **kw: pytest.fail("the grid started"))
    with pytest.raises(SystemExit, match=r"unknown option\(s\) --epoch \(did you mean --epochs\?\)"):
        main(["experiment", "--dataset", "brats", "--networks", "unet", "--epoch", "1", "--output", "out"])
    with pytest.raises(SystemExit) as err:
        main(["check", "--dataset", "bratz", "--root", str(tmp_path)])
    assert str(err.value).startswith("pam_monai check: error: unknown dataset 'bratz'")


def test_paper_protocol_for_2d_images_is_refused_not_dropped(tmp_path):
    with pytest.raises(ValueError, match="--paper_protocol aggregates the slices of 3-D cases"):
        runner_module.run_experiment(
            dataset="cityscapes", networks="unet", output=str(tmp_path), paper_protocol=True
        )


def test_report_says_sparse_annotations_are_scored_on_annotated_voxels():
    runs = [_run("fpa", 0, [0.5])]
    assert "Sparse annotations" in _report(runs, sparse=True)
    assert "Sparse annotations" not in _report(runs)


def test_reference_flags_and_a_stale_comparison(tmp_path, monkeypatch):
    """Grid logic without training (a fake run writes what a bundle run writes): --reference is
    read as --networks reads a network ('FPA[dilation=9]' is fpa), "false" from the command line is False, and
    a grid of one network removes the comparison.csv an earlier grid left in the folder."""
    from pam_monai.data import ensure_dataset
    from pam_monai.experiments import figures as figures_module

    data, _ = ensure_dataset("brats", tmp_path / "none", output=tmp_path / "synthetic_brats", slices=8)

    def fake_execute(run, bundle, overrides, identity, ctx):
        rows = [
            f"c{i},{0.5 + 0.01 * i + 0.1 * (run.variant.network == 'fpa')},0.6,3.0,0.001,0.2,False,False"
            for i in range(3)
        ]
        return fake_finish(run, identity, rows)

    def no_figures(**kwargs):
        raise AssertionError("figures='false' made figures")

    monkeypatch.setattr(runner_module, "_execute", fake_execute)
    monkeypatch.setattr(figures_module, "make_figures", no_figures)
    common = {
        **GRID,
        "seeds": 1,
        "paper_protocol": "false",
        "figures": "false",
        "output": str(tmp_path / "exp"),
    }
    common["dataset_dir"] = str(data)
    with pytest.raises(ValueError, match="not one of the grid's networks"):
        run_experiment(**{**common, "networks": "fpa,unet"}, reference="fpa[dilation=6]")
    with pytest.raises(ValueError, match="--max_runs must be 0 or more, got -1"):
        run_experiment(**{**common, "networks": "fpa,unet"}, max_runs=-1)
    # any spelling of the network: 9 is fpa's default dilation
    run_experiment(**{**common, "networks": "fpa,unet"}, reference="FPA[dilation=9]")
    rows = list(csv.DictReader(open(tmp_path / "exp" / "comparison.csv", newline="")))
    assert {r["reference"] for r in rows} == {"fpa"} and {r["network"] for r in rows} == {"unet"}
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "## Paired comparison with fpa" in md
    # one seed: the seed dimension says so, with no range
    assert {(r["across_seeds"], r["seed_diff_min"]) for r in rows} == {("unknown (1 seed)", "")}
    assert "1 seed: training variance unknown." in md
    # two seeds: every runs/fpa/seed<k>/ paired with every runs/unet/seed<k>/ (fpa +0.1 IoU in each)
    run_experiment(**{**common, "networks": "fpa,unet", "seeds": 2, "output": str(tmp_path / "exp2")})
    rows2 = list(csv.DictReader(open(tmp_path / "exp2" / "comparison.csv", newline="")))
    iou = next(r for r in rows2 if r["metric"] == "iou")
    seeds = [
        iou[k] for k in ("network", "seeds_network", "seeds_reference", "seed_pairs", "seed_pairs_better")
    ]
    assert seeds == ["fpa", "2", "2", "4", "4"] and iou["across_seeds"] == "better in all"
    md2 = (tmp_path / "exp2" / "results.md").read_text()
    assert "| fpa | IoU (%) | 2 / 2 | 10.00 .. 10.00 | 4 / 0 of 4 | better in all |" in md2
    run_experiment(**{**common, "networks": "fpa"}, reference="fpa")
    assert not (tmp_path / "exp" / "comparison.csv").exists()
    assert "Paired comparison" not in (tmp_path / "exp" / "results.md").read_text()


# runner bookkeeping: refused calls, failed runs and figure flags, checked without training
@pytest.fixture
def small_grid(tmp_path):
    from pam_monai.data import ensure_dataset

    data, _ = ensure_dataset("brats", tmp_path / "none", output=tmp_path / "synthetic_brats", slices=8)
    return {
        "dataset": "brats",
        "networks": "unet",
        "epochs": 1,
        "batch_size": 8,
        "num_workers": 0,
        "network_options": {"features": [8, 16, 32, 64]},
        "figures": False,
        "dataset_dir": str(data),
        "output": str(tmp_path / "exp"),
    }


def test_networks_whose_run_folders_differ_in_letter_case_are_refused(small_grid):
    """Run folders differing in letter case only are one folder on macOS and Windows: the second
    network's runs replaced the first's. Refused before any training."""
    with pytest.raises(
        ValueError, match=r"would share one run folder \(runs/unet-norm_BATCH and runs/unet-norm_batch"
    ):
        run_experiment(**{**small_grid, "networks": "unet[norm=BATCH],unet[norm=batch]"})
    assert not (Path(small_grid["output"]) / "runs").exists()


def test_figure_titles_name_the_seed_of_the_runs_shown(small_grid, monkeypatch):
    """fig5's case IoU and fig4's map are one trained model's (the first seed's run), not the table's
    mean over seeds: the titles say which seed, so a caption does not mistake them for the mean. And
    they say SYNTHETIC on the stand-in (they did not: only results.md did)."""
    pytest.importorskip("matplotlib")
    from pam_monai.experiments import figures as figures_module

    titles = {}
    real_overlay, real_attention = figures_module.overlay_figure, figures_module.attention_figure

    def overlay(rows, networks, path, title=""):
        titles["fig5"] = title
        return real_overlay(rows, networks, path, title=title)

    def attention(image, target, maps, path, title=""):
        titles["fig4"] = title
        return real_attention(image, target, maps, path, title)

    monkeypatch.setattr(figures_module, "overlay_figure", overlay)
    monkeypatch.setattr(figures_module, "attention_figure", attention)
    run_experiment(**{**small_grid, "networks": "fpa", "figures": True})
    assert "each network's seed 0 run, not a mean over seeds" in titles["fig5"]
    assert titles["fig4"].endswith("(each network's seed 0 run, not a mean over seeds)")
    # the grid ran on the synthetic stand-in: a figure copied out of it must not pass for BRATS
    assert titles["fig5"].startswith("brats (SYNTHETIC stand-in) fold 0 test cases")
    assert titles["fig4"].startswith("brats (SYNTHETIC stand-in) ")


def test_eval_split_other_than_test_is_refused(small_grid):
    """--eval_split is an id of the bundle's evaluate.json, so the runner passed it on: with 'val'
    every metrics.csv held the validation fold (the fold that chose each model.pt), and results.md,
    comparison.csv and the figures still called it the test cases. Refused before any training."""
    with pytest.raises(
        ValueError, match=r"--eval_split 'val': a grid scores every run on its fold's test split"
    ):
        run_experiment(**{**small_grid, "eval_split": "val"})
    assert not (Path(small_grid["output"]) / "runs").exists()


def test_refused_call_leaves_experiment_json_alone(small_grid, tmp_path, monkeypatch):
    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    run_experiment(**small_grid)
    record = tmp_path / "exp" / "experiment.json"
    before = record.read_text()
    assert json.loads(before)["settings"]["epochs"] == 1
    with pytest.raises(ValueError, match="epochs"):
        run_experiment(**{**small_grid, "epochs": 2})
    # the grid on disk was made with epochs=1: its record must still say so
    assert record.read_text() == before


def test_refused_call_leaves_the_grids_stand_in_alone(small_grid, tmp_path, monkeypatch):
    """A call refused for another --data_seed must not regenerate the grid's synthetic stand-in:
    the finished runs were trained and tested on the one on disk."""
    from pam_monai.data.synthetic import MARKER as SYNTHETIC_MARKER

    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    grid = {k: v for k, v in small_grid.items() if k != "dataset_dir"}  # the stand-in in the grid
    run_experiment(**grid)
    marker = tmp_path / "exp" / "synthetic_data" / SYNTHETIC_MARKER
    before = marker.read_text()
    with pytest.raises(ValueError, match="data_seed"):
        run_experiment(**{**grid, "data_seed": 1})
    assert marker.read_text() == before


def test_figure_network_without_a_finished_run_yet_does_not_stop_the_tables(
    small_grid, tmp_path, monkeypatch
):
    """--figure_networks naming a grid network whose runs are not finished yet (--max_runs, a failed
    run with --keep_going) leaves it out of the figures with a WARNING; it raised after the runs,
    so results.md was not written beside the new results.csv."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    grid = {**small_grid, "networks": "fpa,unet", "figures": True, "figure_networks": "unet"}
    result = run_experiment(**grid, max_runs=1)  # fpa's run only
    assert [r.name for r in result.finished] == ["fpa seed 0 fold 0"]
    assert "Runs finished: 1 of 2." in result.results_md.read_text()


def test_failed_run_is_reported_by_its_root_cause(small_grid, tmp_path, monkeypatch):
    def fail(run, b, o, identity, ctx):
        try:
            raise FileExistsError(17, "File exists", str(run.dir / "models"))
        except FileExistsError as e:
            raise RuntimeError('Failed to evaluate ConfigExpression: "$...run()"') from e

    monkeypatch.setattr(runner_module, "_execute", fail)
    with pytest.raises(RuntimeError) as info:
        run_experiment(**small_grid, keep_going=True)
    assert "FileExistsError" in str(info.value) and "models" in str(info.value)
    events = [json.loads(x) for x in (tmp_path / "exp" / "runs.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "failed"]
    assert failed and "FileExistsError" in failed[0]["error"]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("figure_cases", "nope", "figure_cases"),
        ("figure_networks", "unett", "unett"),
        ("figure_networks", "fpa", "fpa"),
    ],
)
def test_figure_flags_are_checked_before_any_training(
    small_grid, tmp_path, monkeypatch, flag, value, message
):
    """A typo in --figure_cases / --figure_networks was found only after the whole grid had trained,
    and then no results.md was written."""

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained before checking the figure flags")

    monkeypatch.setattr(runner_module, "_execute", must_not_train)
    with pytest.raises(ValueError, match=message):
        run_experiment(**{**small_grid, "figures": True}, **{flag: value})


def test_one_network_spelled_twice_is_refused():
    """fpa and fpa[dilation=9] (its default) are one network: trained twice and shown twice, and
    one of them hid the other in Figure 7."""
    with pytest.raises(ValueError, match=r"'fpa' and 'fpa\[dilation=9\]' are the same network"):
        runner_module._variants("fpa,fpa[dilation=9]", None)
    assert [v.label for v in runner_module._variants("fpa,fpa[shared=true]", None)] == [
        "fpa",
        "fpa[shared=true]",
    ]
    small = {"features": [8, 16, 32, 64]}  # the grid's --network_options make these two one network
    with pytest.raises(
        ValueError, match=r"'unet' and 'unet\[features=\[8,16,32,64\]\]' are the same network"
    ):
        runner_module._variants("unet,unet[features=[8,16,32,64]]", None, small)
    assert len(runner_module._variants("unet,unet[features=[8,16,32,64]]", None)) == 2


def test_changed_network_options_are_named_in_the_refusal(small_grid, monkeypatch):
    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    run_experiment(**small_grid)
    with pytest.raises(
        ValueError,
        match=r"options differ in features: \[8, 16, 32, 64\] \(done\) vs \[4, 8, 16, 32\] \(now\)",
    ):
        run_experiment(**{**small_grid, "network_options": {"features": [4, 8, 16, 32]}})


def test_ablation_figure_keeps_every_configuration(tmp_path, monkeypatch):
    """Variants that differ only in FPA's parameter sharing get bars of their own; one run gets no
    error bar (a standard deviation needs two); 2-D images' HD95 is in pixels."""
    from pam_monai.experiments import figures

    captured = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: captured.append(fig) or path)
    base = {"network": "fpa", "axis": "dilation", "x": 9, "depthwise": True, "expansion": 4, "hd95": [3.0]}
    records = [{**base, "iou": [0.5]}, {**base, "shared": True, "iou": [0.52]}]
    figures.ablation_figure(records, tmp_path / "fig7.png", hd95_unit="px")
    iou_panel = captured[0].axes[0]
    assert sorted(round(p.get_height(), 3) for p in iou_panel.patches) == [50.0, 52.0]
    assert [t.get_text() for t in iou_panel.get_legend().get_texts()] == [
        "expansion 4",
        "expansion 4, shared",
    ]
    assert not iou_panel.lines  # no error bar from a single run
    assert captured[0].axes[2].get_ylabel() == "HD95 (px)"
    # the caption's material: what a bar and an error bar are
    assert "error bar: sample std over those runs" in captured[0]._suptitle.get_text()


def test_ablation_figure_keeps_variants_that_differ_in_other_options(tmp_path, monkeypatch):
    """Two FPA variants at the same dilation, expansion and convs that differ in norm got one bar
    between them (the second was not drawn); each now has its own, its option named."""
    from pam_monai.experiments import figures

    captured = []
    monkeypatch.setattr(figures, "save_png", lambda fig, path: captured.append(fig) or path)
    base = {"network": "fpa", "axis": "dilation", "x": 9, "depthwise": True, "expansion": 4, "hd95": [3.0]}
    opts = {"dilation": 9, "depthwise": True, "expansion": 4, "features": (32, 64, 128, 256)}
    records = [
        {**base, "iou": [0.5], "options": {**opts, "norm": ("instance", {"affine": True})}},
        {**base, "iou": [0.6], "options": {**opts, "norm": "batch"}},
    ]
    figures.ablation_figure(records, tmp_path / "fig7.png")
    iou_panel = captured[0].axes[0]
    assert sorted(round(p.get_height(), 3) for p in iou_panel.patches) == [50.0, 60.0]
    assert sorted(t.get_text() for t in iou_panel.get_legend().get_texts()) == [
        "expansion 4, norm=batch",
        "expansion 4, norm=instance",
    ]


def test_figure_networks_take_any_spelling_of_a_grid_network(small_grid, monkeypatch):
    from pam_monai.experiments import figures as figures_module

    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    asked = []
    monkeypatch.setattr(figures_module, "make_figures", lambda **kw: asked.append(kw["networks"]) or [])
    run_experiment(
        **{**small_grid, "figures": True, "networks": "fpa,unet"}, figure_networks="FPA[dilation=9]"
    )
    assert asked == [["fpa"]]


def test_figures_of_an_earlier_call_that_this_one_did_not_make_are_removed(small_grid, tmp_path, monkeypatch):
    """fig7 of an earlier ablation grid stayed in the folder beside a results.md of other runs."""
    from pam_monai.experiments import figures as figures_module

    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    out = tmp_path / "exp"
    out.mkdir()
    for name in ("fig7_ablation.png", "fig5_overlays.png", "notes.png"):
        (out / name).write_bytes(b"old")

    def fig5_only(**kw):
        path = kw["ctx"].output / "fig5_overlays.png"
        path.write_bytes(b"new")
        return [path]

    monkeypatch.setattr(figures_module, "make_figures", fig5_only)
    run_experiment(**{**small_grid, "figures": True})
    assert (out / "fig5_overlays.png").read_bytes() == b"new"
    assert not (out / "fig7_ablation.png").exists()
    assert (out / "notes.png").read_bytes() == b"old"  # not a figure of ours: left alone
    assert "fig7_ablation" not in (out / "results.md").read_text()


def test_a_moved_grid_continues(small_grid, tmp_path, monkeypatch):
    """Settings recorded paths inside the experiment's folder (its stand-in data) as absolute: a grid
    moved elsewhere refused its finished runs and retrained its interrupted one from scratch."""
    resumed = []

    def train(self, overrides, resume):
        resumed.append(resume)
        models = Path(overrides["bundle_root"]) / "models"
        models.mkdir(parents=True, exist_ok=True)
        for name in ("model.pt", "checkpoint_last.pt"):
            (models / name).write_bytes(b"weights")

    def evaluate(self, overrides):
        metrics = Path(overrides["bundle_root"]) / "eval" / "metrics.csv"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(
            "case,iou,dice,hd95,fp_rate,fn_rate,target_empty,pred_empty\nc1,0.5,0.6,3.0,0.001,0.2,False,False\n"
        )

    def interrupted(self, overrides):
        raise KeyboardInterrupt

    first = tmp_path / "first"
    shutil.copytree(small_grid["dataset_dir"], first / "data")  # the data inside the grid's folder
    grid = {**small_grid, "output": str(first), "dataset_dir": str(first / "data")}
    monkeypatch.setattr(runner_module._Bundle, "train", train)
    monkeypatch.setattr(runner_module._Bundle, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(**grid)
    assert json.loads((first / "experiment.json").read_text())["settings"]["dataset_dir"] == "<output>/data"

    monkeypatch.setattr(runner_module._Bundle, "evaluate", evaluate)
    second = tmp_path / "second"
    first.rename(second)
    done = run_experiment(**{**grid, "output": str(second), "dataset_dir": str(second / "data")})
    assert [r.name for r in done.executed] == ["unet seed 0 fold 0"] and resumed == [False, True]

    third = tmp_path / "third"
    second.rename(third)
    more = run_experiment(**{**grid, "output": str(third), "dataset_dir": str(third / "data"), "seeds": 2})
    assert [r.name for r in more.skipped] == ["unet seed 0 fold 0"]
    assert [r.name for r in more.executed] == ["unet seed 1 fold 0"]


def test_one_call_per_grid_and_killed_runs_are_recorded(small_grid, tmp_path, monkeypatch):
    """Two calls on one grid trained the same runs into the same folders; a SIGKILLed call left a
    `start` without an end in runs.jsonl, which read as still running."""
    import fcntl

    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    out = tmp_path / "exp"
    out.mkdir()
    (out / "runs.jsonl").write_text(
        json.dumps({"event": "start", "run": "runs/unet/seed0/fold0"})
        + "\n"
        + '{"event": "do'  # cut by the kill
    )
    with open(out / ".experiment.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another call, running
        with pytest.raises(RuntimeError, match=r"another experiment call is running this grid"):
            run_experiment(**small_grid)
        fcntl.flock(held, fcntl.LOCK_UN)
    # the killed call's half-written checkpoint: the next call removes it (its writer is gone)
    from pam_monai.atomic import _HOST

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = (
        out / "runs" / "unet" / "seed0" / "fold0" / "models" / f".model.pt.pid{dead.pid}@{_HOST}.abcdefgh.tmp"
    )
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    run_experiment(**small_grid)
    assert not orphan.exists()
    events = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()[2:]]
    assert [(e["event"], e["run"]) for e in events] == [
        ("killed", "runs/unet/seed0/fold0"),
        ("start", "runs/unet/seed0/fold0"),
        ("done", "runs/unet/seed0/fold0"),
    ]
    run_experiment(**small_grid)  # nothing to close or run now
    assert len((out / "runs.jsonl").read_text().splitlines()) == 5


def test_a_run_stopped_by_sigterm_is_recorded_as_interrupted(small_grid, tmp_path, monkeypatch):
    """A SIGTERM in a run's training (StopOnTerminate raises it there, as Ctrl-C raises
    KeyboardInterrupt) went past the runner's Ctrl-C handler: no `interrupted` event was written and
    the next call reported the run as killed."""
    from pam_monai.engines import Terminated

    def preempted(run, b, o, identity, ctx):
        raise Terminated()

    monkeypatch.setattr(runner_module, "_execute", preempted)
    with pytest.raises(Terminated):
        run_experiment(**small_grid)
    events = [json.loads(x) for x in (tmp_path / "exp" / "runs.jsonl").read_text().splitlines()]
    assert [(e["event"], e["run"]) for e in events] == [
        ("start", "runs/unet/seed0/fold0"),
        ("interrupted", "runs/unet/seed0/fold0"),
    ]


def test_a_run_finished_before_its_call_was_killed_is_not_recorded_as_killed(
    small_grid, tmp_path, monkeypatch, caplog
):
    """A call SIGKILLed after a run's done.json but before its `done` event: the next call skipped
    the finished run, yet recorded it as `killed` (its last event for good) and warned that it was
    "resumed or redone now"."""
    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    out = tmp_path / "exp"
    run_experiment(**small_grid)
    events_file = out / "runs.jsonl"
    lines = events_file.read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["start", "done"]
    events_file.write_text(lines[0] + "\n")  # killed between done.json and the `done` event
    with caplog.at_level("WARNING", logger="pam_monai.experiments"):
        again = run_experiment(**small_grid)
    assert [r.name for r in again.skipped] == ["unet seed 0 fold 0"] and not again.executed
    events = [json.loads(x) for x in events_file.read_text().splitlines()]
    assert [(e["event"], e["run"]) for e in events] == [
        ("start", "runs/unet/seed0/fold0"),
        ("done", "runs/unet/seed0/fold0"),
    ]
    assert "killed by an earlier call" not in caplog.text


def test_predict_case_masks_the_foreground_whatever_rfna_returns():
    """The paper protocol's and the figures' predictions are foreground masks also for an RFNA
    built with ``foreground_output=False`` (raw reversed logits), as the bundles' inference."""
    from pam_monai.experiments.predict import predict_case

    torch.manual_seed(0)
    options = {"features": (4, 8, 8, 16)}
    fg = get_network("rfna", 2, 2, 1, **options).eval()
    raw = get_network("rfna", 2, 2, 1, foreground_output=False, **options).eval()
    raw.load_state_dict(fg.state_dict())
    image = torch.randn(2, 72, 72, 3)
    expected = predict_case(fg, image)
    assert 0 < expected.sum() < expected.size  # a mask that tells the polarities apart
    np.testing.assert_array_equal(predict_case(raw, image), expected)


def test_fig5_case_iou_is_the_evaluations(small_grid, monkeypatch):
    """fig5's 'case IoU over the whole case' is the run's metrics.csv IoU (written to 7 digits):
    scored on the case's own grid, where a crop smaller than the lesion's extent leaves part of it
    outside (it was scored against the cropped label, so the figure and the table disagreed on such
    cases). And cut at the grid's --threshold, as metrics.csv (fig5 cut at 0.5 whatever it was)."""
    pytest.importorskip("matplotlib")
    from pam_monai.experiments import figures as figures_module

    shown = {}
    real_overlay = figures_module.overlay_figure

    def overlay(rows, networks, path, title=""):
        shown.update({r["case"]: r["iou"]["fpa"] for r in rows})
        return real_overlay(rows, networks, path, title=title)

    monkeypatch.setattr(figures_module, "overlay_figure", overlay)
    run_experiment(
        **{**small_grid, "networks": "fpa", "figures": True, "crop_size": [48, 48], "threshold": 0.35}
    )
    evaluated = {
        r["case"]: float(r["iou"])
        for r in csv.DictReader(open(next(Path(small_grid["output"]).glob("runs/fpa/seed0*/**/metrics.csv"))))
    }
    assert shown and all(shown[c] == pytest.approx(evaluated[c], abs=1e-6) for c in shown), (shown, evaluated)


def test_a_flag_spelled_true_or_True_is_one_setting(small_grid, monkeypatch):
    """``--deterministic true`` reaches the runner as the string 'true', ``--deterministic True`` as
    a bool: the same setting, so a finished grid re-run with the other spelling is not refused."""
    monkeypatch.setattr(
        runner_module,
        "_execute",
        lambda run, b, o, identity, ctx: fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"]),
    )
    run_experiment(**small_grid, deterministic="true")
    run_experiment(**small_grid, deterministic=True)
    with pytest.raises(ValueError, match="deterministic"):
        run_experiment(**small_grid, deterministic=False)


def test_fig5_scores_a_resized_own_image_from_its_probabilities_on_its_pixels():
    """Figure 5's IoU of a resized own 2-D image (``restore`` "resize") is metrics.csv's: the
    probabilities resized to the image's pixels and cut there. score_on_case_grid took the 0/1
    mask cut on the network's grid, whose resize comes back with the small grid's steps."""
    import numpy as np
    import torch

    from pam_monai.data.ops import resize_probabilities
    from pam_monai.engines.case_metrics import score_case
    from pam_monai.experiments.predict import score_on_case_grid

    x = np.linspace(0.0, 1.0, 4, dtype=np.float32)
    prob = np.clip(x[None, :] * 0.9 + x[:, None] * 0.3, 0, 1)  # a ramp: the cut falls between pixels
    full = (resize_probabilities(prob, (16, 16)) > 0.5).astype(np.uint8)  # the evaluation's mask as label
    full[:, 12:] = 1  # and a band it misses: an IoU below 1
    sample = {
        "label": torch.zeros(1, 4, 4),
        "label_full": torch.from_numpy(full[None]),
        "restore": "resize",
        "spacing": torch.tensor([1.0, 1.0], dtype=torch.float64),
    }
    expected = score_case(prob, sample["label"][0].numpy(), sample["label_full"], "resize", (1.0, 1.0))["iou"]
    got = score_on_case_grid(prob > 0.5, sample, prob)["iou"]
    assert got == pytest.approx(expected)
    assert score_on_case_grid(prob > 0.5, sample)["iou"] != pytest.approx(expected)  # the mask's steps


def _counted_reads(monkeypatch) -> list[str]:
    """The case IDs CaseDataset reads from disk, in order (its load_case, counted)."""
    from pam_monai.engines import data as engine_data

    reads: list[str] = []
    load = engine_data.load_case

    def counted(spec, item):
        reads.append(item["case"])
        return load(spec, item)

    monkeypatch.setattr(engine_data, "load_case", counted)
    return reads


@pytest.fixture
def small_brats_cases(tmp_path):
    from pam_monai.data import discover_cases
    from pam_monai.data.synthetic import synth_brats

    synth_brats(tmp_path / "brats", cases=4, slices=4)
    return discover_cases("brats", tmp_path / "brats")


def test_figure_cases_read_each_case_once_and_keep_none(small_brats_cases, monkeypatch):
    """The overlays' cases were chosen by reading every test case into a caching CaseDataset (twice
    over the ids, then the labels): a full-size test fold (~88 MB per BraTS case) stayed in memory
    for two cases shown. Now the IDs come from the entries and each case is read once, one at a time."""
    from pam_monai.engines import CaseDataset
    from pam_monai.experiments.figures import _figure_cases

    reads = _counted_reads(monkeypatch)
    ds = CaseDataset(small_brats_cases, "brats", cache=False)
    ids = [it["case"] for it in small_brats_cases]
    assert _figure_cases(ds, [ids[2]], fold=0) == {ids[2]: 2}
    assert reads == []  # named cases: no file read to find them
    chosen = _figure_cases(ds, None, fold=0)
    assert sorted(reads) == sorted(ids)  # each case read once for its foreground
    assert len(chosen) == 2 and all(ds.case_id(i) == c for c, i in chosen.items())
    with pytest.raises(ValueError, match="are not test cases of fold 0"):
        _figure_cases(ds, ["nope"], fold=0)


def test_paper_protocol_scoring_keeps_no_case_in_memory(small_brats_cases, monkeypatch, tmp_path):
    """The paper-protocol pass reads each test case once; its CaseDataset cached them all, so a
    full-size test fold stayed in memory (GBs) to the end of the pass."""
    from types import SimpleNamespace

    from pam_monai.data import get_spec
    from pam_monai.experiments import predict

    held = []

    def rows(net, dataset, slice_batch_size, device, threshold):
        for i in range(len(dataset)):
            dataset[i]
        held.append((dataset._cache, threshold))
        return []

    monkeypatch.setattr(predict, "load_network", lambda *a: None)
    monkeypatch.setattr(predict, "paper_protocol_rows", rows)
    monkeypatch.setattr(predict, "write_paper_protocol", lambda rows, path: None)
    run = SimpleNamespace(
        variant=SimpleNamespace(network="unet"), options={}, model=None, fold=0, paper_protocol_csv=None
    )
    run.metrics_csv = _metrics_csv(tmp_path, {"c": 0.5})
    ctx = SimpleNamespace(
        spec=get_spec("brats"),
        fold_data={0: {"test": small_brats_cases}},
        foreground_label=None,
        device="cpu",
        slice_batch_size=4,
        threshold=0.3,
    )
    runner_module._score_paper_protocol(run, ctx)
    assert held == [(None, 0.3)]  # and the masks cut at the grid's --threshold, as metrics.csv's


def _metrics_csv(folder, ious: dict) -> Path:
    from pam_monai.experiments.results import METRICS

    path = folder / "metrics.csv"
    lines = [",".join(["case", *METRICS, "target_empty", "pred_empty"])]
    lines += [
        ",".join([case, *(str(iou) if m == "iou" else "0.5" for m in METRICS), "False", "False"])
        for case, iou in ious.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_paper_protocol_predictions_other_than_the_evaluations_are_named(tmp_path, monkeypatch, caplog):
    """The paper protocol's rows carry each case's IoU on its own grid to show they come from the
    evaluation's predictions; nothing compared it with metrics.csv, so a per-slice table of other
    masks (another device's rounding) went unnoticed. A difference is named; equal values are not."""
    import logging
    from types import SimpleNamespace

    from pam_monai.experiments import predict

    rows = [{"case": "a", "case_iou": 0.25}, {"case": "b", "case_iou": 0.5000001}]
    monkeypatch.setattr(predict, "load_network", lambda *a: None)
    monkeypatch.setattr(predict, "paper_protocol_rows", lambda *a: rows)
    monkeypatch.setattr(predict, "write_paper_protocol", lambda rows, path: None)
    run = SimpleNamespace(
        name="fpa/seed0/fold0", variant=SimpleNamespace(network="fpa"), options={}, model=None, fold=0
    )
    run.paper_protocol_csv = None
    ctx = SimpleNamespace(
        spec=SimpleNamespace(in_channels=4),
        fold_data={0: {"test": []}},
        foreground_label=None,
        device="cpu",
        slice_batch_size=4,
        threshold=0.5,
    )
    import pam_monai.engines as engines

    monkeypatch.setattr(engines, "CaseDataset", lambda *a, **k: None)
    for ious, named in (({"a": 0.25, "b": 0.5}, False), ({"a": 0.3, "b": 0.5}, True)):
        caplog.clear()
        run.metrics_csv = _metrics_csv(tmp_path, ious)
        with caplog.at_level(logging.WARNING, logger="pam_monai.experiments"):
            runner_module._score_paper_protocol(run, ctx)
        said = "the paper protocol's predictions are not the evaluation's" in caplog.text
        assert said == named, caplog.text
        if named:
            assert "a: 0.25 against 0.3" in caplog.text and "b:" not in caplog.text


def test_grid_checks_the_data_once_not_in_every_run(tmp_path, monkeypatch):
    """Each bundle run checked the whole data set at the start of its training and again of its
    evaluation (every case read: ~2 minutes for 285 full-size BraTS cases, hours over a grid). The
    grid checks it once, every split of its folds, and its runs are told to skip it."""
    import pam_monai.data as data_module
    from pam_monai.data import synth

    folds_checked, given = [], []
    check = data_module.check_dataset

    def counted(*args, **kwargs):
        folds_checked.append(kwargs.get("fold"))
        return check(*args, **kwargs)

    def fake_execute(run, bundle, overrides, identity, ctx):
        given.append(overrides.get("check_data"))
        return fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"])

    monkeypatch.setattr(data_module, "check_dataset", counted)
    monkeypatch.setattr(runner_module, "_execute", fake_execute)
    data = synth("brats", tmp_path / "data", cases=6, slices=4)
    common = {**GRID, "paper_protocol": False, "figures": False, "output": str(tmp_path / "out")}
    run_experiment(**common, folds="0,1", dataset_dir=str(data))
    assert folds_checked == [[0, 1]] and given == [False] * 8  # 2 networks x 2 seeds x 2 folds
    run_experiment(**common, folds="0,1", dataset_dir=str(data))  # all finished: nothing to check
    assert folds_checked == [[0, 1]]
    for files in (("train.json",), ("train.json", "evaluate.json")):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(
            [str(Path(__file__).parents[1] / "bundles" / "brats_fpa" / "configs" / f) for f in files]
        )
        assert parser["check_data"] is True and "check=@check_data" in parser["data"]


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock: POSIX")
@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_grid_runs_unlocked_with_a_warning_where_the_file_system_has_no_flock(tmp_path, monkeypatch, code):
    """An output folder on a file system without ``flock`` (NFS without its lock daemon: ENOLCK;
    Lustre without ``-o flock``: ENOSYS; some FUSE and SMB mounts: EOPNOTSUPP) stopped every
    experiment call with a bare "[Errno 37] No locks available", naming no file. The grid now runs
    unlocked, with a warning naming the lock file, the folder, what is lost and the way out."""
    import errno
    import fcntl

    calls = []

    def no_flock(fd, operation):
        calls.append(operation)
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "exp"
    out.mkdir()
    with pytest.warns(RuntimeWarning) as caught:
        with runner_module._grid_lock(out):
            ran = True
    assert ran and calls == [fcntl.LOCK_EX | fcntl.LOCK_NB], calls  # nothing to release
    message = str(caught[0].message)
    assert message.startswith(f"{out / '.experiment.lock'}: its file system does not lock files"), message
    assert f"a second experiment call into {out} meanwhile is not refused" in message, message
    assert "--output" in message and "-o flock" in message, message
    assert (out / ".experiment.lock").read_text().startswith(f"process {os.getpid()},")


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock: POSIX")
def test_an_unlocked_second_grid_call_keeps_the_files_of_a_run_in_training(small_grid, monkeypatch):
    """Without ``flock`` a second call on a grid runs beside the first: it took the first's run in
    progress for killed (and recorded it so in runs.jsonl) and, with no checkpoint yet to resume
    from, cleared its models/ and eval/, the run's training lock with them, and trained there beside
    it. It is refused now, before anything is removed, by the live training's lock, and records
    nothing of the live run."""
    import errno
    import fcntl

    from pam_monai.atomic import _HOST
    from pam_monai.runlock import LOCK_NAME, RunLockError, _proc_start

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    trained = []
    monkeypatch.setattr(
        runner_module._Bundle, "train", lambda self, overrides, resume: trained.append(resume)
    )
    models = Path(small_grid["output"]) / "runs" / "unet" / "seed0" / "fold0" / "models"
    models.mkdir(parents=True)
    (models / "model_key_metric.pt").write_bytes(b"the first call's best weights so far")
    events = Path(small_grid["output"]) / "runs.jsonl"  # the first call's start of the run
    events.write_text(
        json.dumps({"time": "2026-01-01T00:00:00", "event": "start", "run": "runs/unet/seed0/fold0"}) + "\n"
    )
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the first call
    try:
        holder = {"pid": first.pid, "host": _HOST, "hostname": "here", "proc_start": _proc_start(first.pid)}
        (models / LOCK_NAME).write_text(
            json.dumps({**holder, "started": "2026-01-01T00:00:00", "token": "t"})
        )
        with (
            pytest.warns(RuntimeWarning, match="does not lock files"),
            pytest.raises(
                RunLockError, match=rf"{models}: another training is writing into it \(process {first.pid}"
            ),
        ):
            run_experiment(**small_grid)
    finally:
        first.kill()
        first.wait()
    assert sorted(p.name for p in models.iterdir()) == [LOCK_NAME, "model_key_metric.pt"] and trained == []
    # nor is the live run recorded killed in runs.jsonl: the second call's own attempt follows, refused
    recorded = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["event"] for e in recorded] == ["start", "start", "failed"], recorded
    assert "another training is writing into it" in recorded[-1]["error"], recorded


@pytest.mark.parametrize("raised", [True, False])
def test_a_failing_clean_up_after_a_bundle_does_not_hide_its_terminated(monkeypatch, caplog, raised):
    """The clean-up after each bundle (its TensorBoard writers, torch.compile's caches, the
    garbage) ran in a ``finally``: after a SIGTERM in the middle of an import, a step that imports
    it again raised and replaced the run's ``Terminated``, so the run was recorded failed instead of
    interrupted (and the grid ended with status 1, not 143). Every step is taken now, the run's own
    error goes on and a warning names the step that failed; after a run that ended, it is raised."""
    import gc
    import weakref

    from pam_monai.engines import Terminated

    class Workflow:
        def __init__(self):
            self.parser = type(
                "P", (), {"ref_resolver": type("R", (), {"resolved_content": {"w": "writer"}})}
            )

        def initialize(self):
            pass

        def run(self):
            if raised:
                raise Terminated()

        def finalize(self):
            pass

    done = []

    def reset_compiler():
        done.append("reset")
        raise ImportError("cannot import name '_inductor' from 'torch'")

    made = []

    def workflow(self, files, run_id, overrides):
        made.append(weakref.ref(wf := Workflow()))
        return wf

    def collect(*a):
        # after a run that ended the workflow is dropped before the garbage is collected (after one
        # that raised, the error's traceback still holds it)
        done.append("gc" if raised or made[0]() is None else "gc, the workflow still held")
        return real_collect(*a)

    monkeypatch.setattr(runner_module._Bundle, "_workflow", workflow)
    monkeypatch.setattr(runner_module, "close_writers", lambda objects: done.append(("close", objects)))
    monkeypatch.setattr(runner_module, "_reset_compiler", reset_compiler)
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", collect)
    with caplog.at_level("WARNING", logger="pam_monai.experiments"):
        with pytest.raises(Terminated if raised else ImportError):
            runner_module._Bundle(None, None)._run([], "training", {})
    assert done == [("close", ["writer"]), "reset", "gc"], done
    if raised:
        assert "after the run that raised, resetting torch.compile's caches failed" in caplog.text, (
            caplog.text
        )
        assert "ImportError: cannot import name '_inductor'" in caplog.text, caplog.text
    else:
        assert not caplog.text


def test_grid_lock_on_windows_uses_msvcrt_byte_locks(tmp_path, monkeypatch):
    """Windows has no fcntl: the grid was not locked there at all. msvcrt's byte-range lock is taken
    past the holder's line, so a refused call can still read who holds the grid."""
    import types

    held: dict = {}  # (file, offset) -> holder: another process's locks
    calls = []

    def locking(fd, mode, nbytes):
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        calls.append((mode, key[1], nbytes))
        if mode == fake.LK_NBLCK:
            if key in held:
                raise PermissionError(13, "Permission denied")
            held[key] = "us"
        else:
            held.pop(key)

    fake = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl raises ImportError, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    out = tmp_path / "exp"
    out.mkdir()
    with runner_module._grid_lock(out):
        assert calls == [(fake.LK_NBLCK, runner_module._WINDOWS_LOCK_OFFSET, 1)]
        with pytest.raises(
            RuntimeError, match=rf"another experiment call is running this grid \(process {os.getpid()},"
        ):
            with runner_module._grid_lock(out):
                pass
    assert calls[-1] == (fake.LK_UNLCK, runner_module._WINDOWS_LOCK_OFFSET, 1) and not held
    with runner_module._grid_lock(out):  # released: the next call takes it
        pass


def test_runner_workflows_do_not_warn_about_their_own_logging_choice():
    """The runner keeps its logging (logging_file=False); MONAI's WARNING about that choice was
    printed twice per run of a grid, among the warnings a user should read."""
    import logging

    configs = Path(__file__).resolve().parents[1] / "bundles" / "brats_fpa" / "configs"
    bundle = runner_module._Bundle(configs / "train.json", configs / "evaluate.json")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    monai_log = logging.getLogger("monai.bundle.workflows")
    monai_log.addHandler(handler)  # its own handler prints to the stream of its first import
    try:
        bundle._workflow([bundle.train_json], "training", {})
    finally:
        monai_log.removeHandler(handler)
    assert seen and not [m for m in seen if m.startswith("Logging file is set to False")], seen
    assert not monai_log.filters  # only while the runner builds its workflow


def test_grid_masks_are_cut_at_the_bundles_threshold(small_grid, monkeypatch):
    """The paper protocol and fig5 cut the probabilities at 0.5 whatever --threshold the grid gave
    its runs' evaluations: their masks and case IoUs disagreed with metrics.csv."""
    from pam_monai.experiments.predict import predict_case

    net = torch.nn.Conv2d(2, 1, 1)  # logit = channel 0
    with torch.no_grad():
        net.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        net.bias.zero_()
    image = torch.stack([torch.linspace(-3, 3, 16 * 16 * 2).view(16, 16, 2), torch.zeros(16, 16, 2)])
    prob = torch.sigmoid(image[0]).numpy()
    np.testing.assert_array_equal(predict_case(net.eval(), image, threshold=0.3), prob > 0.3)
    assert (prob > 0.3).sum() > (prob > 0.5).sum()
    contexts = []

    def fake_execute(run, bundle, overrides, identity, ctx):
        contexts.append(ctx)
        return fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"])

    monkeypatch.setattr(runner_module, "_execute", fake_execute)
    run_experiment(**small_grid, threshold=0.3)
    assert contexts and {c.threshold for c in contexts} == {0.3}


@pytest.mark.parametrize("given", ["ckpt_dir", "ckpt_path", "output_dir"])
def test_grid_refuses_one_checkpoint_or_output_folder_for_every_run(small_grid, given):
    """--ckpt_path (evaluate.json's) had every run's evaluation read one checkpoint; --ckpt_dir and
    --output_dir had every run write into one folder: each run's are in its own folder."""
    with pytest.raises(ValueError, match=rf"\['{given}'\]: set by the runner for each run"):
        run_experiment(**small_grid, **{given: "/tmp/one"})


def _config_bundle(tmp_path, config: dict):
    """The runner's bundle of one small ``config`` as its train.json (and evaluate.json)."""
    train_json = tmp_path / "configs" / "train.json"
    train_json.parent.mkdir()
    train_json.write_text(json.dumps(config))
    (train_json.parent / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    return runner_module._Bundle(train_json, train_json)


def test_grid_runs_close_their_tensorboard_writers(tmp_path):
    """The runner runs every bundle of the grid in one process; MONAI's TensorBoardStatsHandler
    never closes its SummaryWriter, whose flush thread (and the writer) then outlived the run: two
    more threads per training run, for the rest of the grid."""
    import threading

    config = {
        "imports": ["$import monai"],
        "log_dir": str(tmp_path / "eval"),
        "train": {"handlers": [{"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir"}]},
        "validate": {
            "handlers": [
                {"_target_": "StatsHandler"},
                {"_target_": "TensorBoardStatsHandler", "log_dir": "@log_dir"},
            ]
        },
        "training": ["$@train#handlers", "$@validate#handlers"],
        "run": "@training",
    }
    bundle = _config_bundle(tmp_path, config)

    before = set(threading.enumerate())
    for _ in range(3):
        bundle.train({}, resume=False)
    assert set(threading.enumerate()) - before == set()


def test_grid_runs_compile_each_network_afresh(tmp_path):
    """torch.compile's caches live as long as the process, which runs the whole grid: each network
    variant (another shape of the same forward code) took one more of dynamo's 8 recompilations,
    and from the ninth variant on (fig7_fpa has 15) training ran uncompiled, with only a warning."""
    config = {
        "imports": ["$import torch"],
        "n": 1,
        "backend": None,
        "training": ["$torch.compile(torch.nn.Linear(@n, 1), backend=@backend)(torch.ones(2, @n))"],
        "run": "@training",
    }
    bundle = _config_bundle(tmp_path, config)
    compiled = []

    def backend(graph, inputs):  # dynamo hands it each graph it compiles
        compiled.append(graph)
        return graph.forward

    for n in range(1, 11):  # ten variants, each a new shape of torch.nn.Linear.forward
        bundle.train({"n": n, "backend": backend}, resume=False)
    assert len(compiled) == 10


def test_a_run_that_raised_is_not_finalized(tmp_path):
    """The bundles' finalize closes the writers of their handler lists; after a run that raised
    before making them (preparing the data), it would make them, data and all, just to close them,
    and its error would hide the run's. As ``monai.bundle.run``, the runner finalizes a run that
    ended only."""
    finalized = tmp_path / "finalized"
    config = {
        "training": ["$1 / 0"],
        "run": "@training",
        "finalize": [f"$open({str(finalized)!r}, 'w').close()"],
    }
    bundle = _config_bundle(tmp_path, config)
    with pytest.raises(RuntimeError, match="Failed to evaluate"):
        bundle.train({}, resume=False)
    assert not finalized.exists()
    config["training"] = ["$1"]
    bundle.train_json.write_text(json.dumps(config))
    bundle.train({}, resume=False)
    assert finalized.exists()


def test_num_workers_tells_runs_apart_with_train_transforms(tmp_path, monkeypatch):
    """num_workers has no effect on a run, unless the bundle's train_transforms augment: each
    DataLoader worker then draws from its own seed, so a finished run of another num_workers has
    other weights, and a grid re-run with it took that run as its own."""
    from pam_monai.data import ensure_dataset

    monkeypatch.setattr(runner_module, "_execute", _fake_execute_with_weights)
    data, _ = ensure_dataset("brats", tmp_path / "none", output=tmp_path / "synthetic", slices=8)
    noise = [{"_target_": "RandGaussianNoised", "keys": ["image"], "prob": 0.5, "std": 0.05}]
    common = {
        **GRID,
        "networks": "unet",
        "seeds": 1,
        "paper_protocol": False,
        "figures": False,
        "dataset_dir": str(data),
    }
    run_experiment(**common, output=str(tmp_path / "plain"))
    again = run_experiment(**{**common, "num_workers": 2}, output=str(tmp_path / "plain"))
    assert again.executed == [] and len(again.runs) == 1  # the finished run is this one
    run_experiment(**common, output=str(tmp_path / "augmented"), train_transforms=noise)
    with pytest.raises(
        ValueError, match=r"finished with other parameters .*num_workers: 0 \(done\) vs 2 \(now\)"
    ):
        run_experiment(
            **{**common, "num_workers": 2}, output=str(tmp_path / "augmented"), train_transforms=noise
        )


def test_folds_follow_the_datalist_s_number_of_folds(tmp_path):
    # a datalist built with 3 folds: 'all' is its 3 folds (not 0..4, where folds 3 and 4 failed in
    # the grid's fourth run), and fold 3 is refused up front naming the datalist
    path = tmp_path / "three_folds.json"
    path.write_text(
        json.dumps({"n_folds": 3, "training": [{"image": "a.nii.gz", "label": "b.nii.gz", "fold": 0}]})
    )
    assert runner_module._folds("all", "brats", str(path)) == [0, 1, 2]
    with pytest.raises(ValueError, match="has 3 folds 0..2"):
        runner_module._folds("0,3", "brats", str(path))
    assert runner_module._folds("all", "brats") == [0, 1, 2, 3, 4]


def test_experiment_sets_up_logging_on_the_command_line_only(tmp_path, monkeypatch):
    """``experiment()`` is the CLI's entry and exported for Python use: called from Python with no
    logging set up, it still gave the root logger a handler at INFO (basicConfig), which changed
    that program's logging. It now does so on the command line only, where nothing else would."""
    import logging
    from types import SimpleNamespace

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as a program that set up no logging (pytest adds its own)
    monkeypatch.setattr(root, "level", root.level)  # restored after the test
    done = SimpleNamespace(results_md=tmp_path / "results.md")
    monkeypatch.setattr(runner_module, "run_experiment", lambda **kwargs: done)
    monkeypatch.setattr(sys, "argv", ["my_script.py"])
    assert runner_module.experiment(output=str(tmp_path)) == str(done.results_md)
    assert root.handlers == []
    monkeypatch.setattr(sys, "argv", ["python -m pam_monai", "experiment", "--output", str(tmp_path)])
    runner_module.experiment(output=str(tmp_path))
    assert len(root.handlers) == 1 and root.level == logging.INFO


# A grid run by `python -m pam_monai experiment` that waits at one point (argv[1]) for a SIGTERM:
# it writes the file "waiting" into argv[2] there, then waits (up to a minute) for the signal.
_WAIT_FOR_SIGTERM = r"""
import sys, time
from pathlib import Path

stage, marks, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]

def wait():
    (marks / "waiting").write_text(stage)
    deadline = time.monotonic() + 60
    while not (marks / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)

def before(owner, name, when=lambda *a, **k: True):
    real = getattr(owner, name)
    def hooked(*args, **kwargs):
        if when(*args, **kwargs) and not (marks / "waiting").exists():
            wait()
        return real(*args, **kwargs)
    setattr(owner, name, hooked)

from pam_monai.data import slices
from pam_monai.engines import termination
from pam_monai.experiments import runner

if stage == "preparing":  # a run's training prepares its slices (in the pool's threads)
    before(slices, "preprocess_case")
elif stage == "epoch":  # the trainer runs (its StopOnTerminate installed)
    real_install = termination.StopOnTerminate.install
    def install(self, engine=None):
        real_install(self, engine)
        if engine is not None and not (marks / "waiting").exists():
            wait()
    termination.StopOnTerminate.install = install
elif stage == "between":  # the run is done, the next not started
    real_append = runner._append_event
    def append(path, **event):
        real_append(path, **event)
        if event.get("event") == "done" and not (marks / "waiting").exists():
            wait()
    runner._append_event = append
elif stage == "scoring":  # the tables are made
    before(runner, "_run_result")
sys.argv = ["pam_monai"] + argv
from pam_monai.cli import main
main()
"""


def _grid_command(small_grid: dict) -> list[str]:
    args = ["experiment", "--threads", "1"]
    for key, value in small_grid.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return args


def _stop_grid_at(stage: str, small_grid: dict, marks: Path) -> subprocess.CompletedProcess:
    """Run the grid in a child process, send it a SIGTERM once it waits at ``stage``; the result."""
    import signal
    import time

    marks.mkdir()
    cmd = [sys.executable, "-c", _WAIT_FOR_SIGTERM, stage, str(marks), *_grid_command(small_grid)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (marks / "waiting").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=240)[0]
    finally:
        (marks / "go").touch()  # a pool's threads waiting there go on
        process.kill()
    return subprocess.CompletedProcess(cmd, process.returncode, output)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "events"),
    [
        ("preparing", ["start", "interrupted"]),
        ("epoch", ["start", "interrupted"]),
        ("between", ["start", "done"]),
        ("scoring", ["start", "done"]),
    ],
)
def test_a_grid_stopped_by_sigterm_anywhere_records_its_run_and_says_how_to_continue(
    small_grid, tmp_path, stage, events
):
    """`python -m pam_monai experiment` runs the bundles in its own process, where their
    stop_on_terminate does nothing: a SIGTERM outside an epoch (a run's data preparation, between
    runs, the tables) ended the grid at once, with status -15, its run in flight recorded by nothing
    (the next call called it killed). It now stops as after Ctrl-C: the run recorded `interrupted`,
    a finished one kept, results.csv never cut, status 143 and a message saying how to go on; the
    same command, run again, finishes the grid."""
    stopped = _stop_grid_at(stage, small_grid, tmp_path / "marks")
    out = Path(small_grid["output"])
    assert stopped.returncode == 128 + 15, stopped.stdout[-3000:]
    assert "stopped by SIGTERM (preempted or killed); re-run the same command to continue" in stopped.stdout
    recorded = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert [(e["event"], e["run"]) for e in recorded] == [(e, "runs/unet/seed0/fold0") for e in events]
    run = out / "runs" / "unet" / "seed0" / "fold0"
    assert (run / "done.json").is_file() == (events[-1] == "done")
    assert not (out / "results.csv").exists()  # written whole (atomically) by the call that finishes
    assert not list(out.rglob("*.tmp")), "a half-written file was left"
    if stage in ("preparing", "scoring"):  # the same command goes on: the run is resumed or skipped
        again = subprocess.run(
            [sys.executable, "-m", "pam_monai", *_grid_command(small_grid)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(read_case_metrics(run / "eval" / "metrics.csv")) == 1
        assert (out / "results.csv").read_text().count("\n") == 2  # the header and the run's case
        recorded = [json.loads(x)["event"] for x in (out / "runs.jsonl").read_text().splitlines()]
        assert recorded == events + (["start", "done"] if stage == "preparing" else [])


def test_the_grid_stops_on_sigterm_while_it_runs_and_gives_the_callers_handler_back(small_grid, monkeypatch):
    """While run_experiment runs, SIGTERM is the grid's (a Terminated saying how to continue); then
    the caller's handler is the process's again."""
    import signal

    def callers(signum, frame):
        pass

    during = []

    def execute(run, b, o, identity, ctx):
        during.append(signal.getsignal(signal.SIGTERM))
        return fake_finish(run, identity, ["c1,0.5,0.6,3.0,0.001,0.2,False,False"])

    monkeypatch.setattr(runner_module, "_execute", execute)
    before = signal.signal(signal.SIGTERM, callers)
    try:
        run_experiment(**small_grid)
        assert signal.getsignal(signal.SIGTERM) is callers
    finally:
        signal.signal(signal.SIGTERM, before)
    assert getattr(during[0], "stops_on_terminate", False), during
    before = signal.signal(signal.SIGTERM, during[0])
    try:
        with pytest.raises(runner_module.Terminated, match="re-run the same command to continue"):
            during[0](signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second SIGTERM ends the call at once
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_sigterm_while_a_failed_run_cleans_up_stops_a_keep_going_grid(small_grid, tmp_path, monkeypatch):
    """A SIGTERM reaching a run that cleans up after its own error waits for the clean-up
    (StopOnTerminate logs it there); with --keep_going the grid then went on with its next run and
    the SIGTERM (a preemption) was lost: the call trained on until it was killed. Now the run is
    recorded failed and the grid stops as on any SIGTERM (Terminated, exit 143)."""
    import signal

    from ignite.engine import Engine

    from pam_monai.engines import StopOnTerminate, Terminated
    from pam_monai.engines.cleanup import clean_up_on_error

    started = []

    def failing_run(run, b, o, identity, ctx):
        started.append(run.name)

        def release_lock(engine, error):  # a clean-up before StopOnTerminate's, signalled meanwhile
            if len(started) == 1 and not getattr(release_lock, "sent", False):
                release_lock.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

        def step(engine, batch):
            raise RuntimeError("boom")

        engine = Engine(step)
        clean_up_on_error(engine, release_lock)
        StopOnTerminate().attach(engine)
        engine.run(range(2), max_epochs=1)

    monkeypatch.setattr(runner_module, "_execute", failing_run)
    with pytest.raises(Terminated):
        run_experiment(**{**small_grid, "seeds": "0,1"}, keep_going=True)
    assert started == ["unet seed 0 fold 0"]
    events = [json.loads(x) for x in (tmp_path / "exp" / "runs.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "failed"]


def test_a_sigterm_held_back_before_the_grid_does_not_stop_it(small_grid, monkeypatch):
    """A SIGTERM that StopOnTerminate held back while an earlier run of this process (the caller's
    own, before run_experiment) cleaned up is not this grid's: the grid forgets it at its start,
    and its --keep_going goes on after a failed run instead of stopping with Terminated."""
    import signal

    from pam_monai.engines.handlers import take_held_sigterm

    # the module that holds it (where take_held_sigterm lives), as StopOnTerminate holds it
    monkeypatch.setattr(sys.modules[take_held_sigterm.__module__], "_held_sigterm", signal.SIGTERM)
    started = []

    def failing_run(run, b, o, identity, ctx):
        started.append(run.name)
        raise RuntimeError("boom")

    monkeypatch.setattr(runner_module, "_execute", failing_run)
    with pytest.raises(RuntimeError, match=r"2 run\(s\) failed"):
        run_experiment(**{**small_grid, "seeds": "0,1"}, keep_going=True)
    assert started == ["unet seed 0 fold 0", "unet seed 1 fold 0"]


def test_a_failed_run_of_a_keep_going_grid_holds_nothing_of_it_into_the_next(small_grid, monkeypatch):
    """The error of a failed run holds its traceback and that the frames of the run (its workflow:
    the network, the optimizer, the tensors on the GPU), in a cycle with the error wherever a frame
    holds it (Ignite's ``_handle_exception`` raises the error it was given): dropping the workflow
    freed nothing, and a --keep_going grid trained its next run beside the failed one's memory until
    the garbage was next collected. Now the grid keeps the error's text and releases the frames before
    the next run; the error is reported as before."""
    import gc
    import weakref

    class Held:  # the failed run's network, optimizer, CUDA tensors
        pass

    made, seen = [], []

    def raise_it(error):  # Ignite's Engine._handle_exception: its frame holds the error (a cycle)
        raise error

    def train(self, overrides, resume):
        seen.append([ref() is None for ref in made])  # at each run's start: the earlier runs' memory
        network = Held()
        made.append(weakref.ref(network))
        raise_it(RuntimeError(f"out of memory in run {len(made)}"))

    monkeypatch.setattr(runner_module._Bundle, "train", train)
    gc.disable()  # only the grid's own release counts, not a collection that happens to run meanwhile
    try:
        with pytest.raises(
            RuntimeError, match=r"2 run\(s\) failed .*out of memory in run 1.*out of memory in run 2"
        ):
            run_experiment(**{**small_grid, "seeds": "0,1"}, keep_going=True)
    finally:
        gc.enable()
    assert seen == [[], [True]]
    events = [json.loads(x) for x in (Path(small_grid["output"]) / "runs.jsonl").read_text().splitlines()]
    assert [e.get("error") for e in events if e["event"] == "failed"] == [
        "RuntimeError: out of memory in run 1",
        "RuntimeError: out of memory in run 2",
    ]
