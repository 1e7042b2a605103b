"""``python -m pam_monai bench``: structure of its tables and JSON (a tiny CPU run; no timing checks)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from pam_monai.bench import format_report, merge, parse_modes, run_bench
from pam_monai.bench.modes import parse_mode


def test_modes_parse_per_device():
    fast_gpu = parse_mode("fast", "cuda")
    assert fast_gpu.amp and fast_gpu.norm and fast_gpu.compile and fast_gpu.fused
    assert fast_gpu.cl and fast_gpu.mm and fast_gpu.taps and not fast_gpu.gather
    previous = parse_mode("fast-cl-mm-taps", "cuda")  # the CUDA fast path before run 2 on the H200
    assert not (previous.cl or previous.mm or previous.taps) and previous.compile
    fast_cpu = parse_mode("fast", "cpu")
    assert fast_cpu.norm and fast_cpu.fused and not (fast_cpu.amp or fast_cpu.cl or fast_cpu.compile)
    eager = parse_mode("fast-compile", "cuda")
    assert eager.amp and eager.norm and not eager.compile
    assert parse_mode("fp32+norm", "cpu").flags() == {
        "amp": False,
        "cl": False,
        "norm": True,
        "compile": False,
        "fused": False,
        "taps": False,
        "gather": False,
        "mm": False,
        "welford": False,
        "nchwatt": False,
        "plane": False,
        "refconv": False,
    }
    assert parse_mode("fast+gather", "cuda").gather and not parse_mode("fast", "cuda").gather
    assert [m.name for m in parse_modes("fp32,bf16", "cpu")] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="unknown flag"):
        parse_mode("fast+turbo", "cpu")
    with pytest.raises(ValueError, match="unknown mode"):
        parse_mode("fp64", "cpu")


def test_welford_flag_gives_the_norms_their_former_statistics():
    """``+welford`` is the A/B's before for the norm's statistics: every fusible norm of the network
    takes ``var_mean``; without the flag they choose by dtype (``auto``). Without ``norm`` there is
    no fusible norm to choose for, which is refused rather than silently measuring nothing."""
    from pam_monai.bench.train import build_network
    from pam_monai.networks.blocks import FastInstanceNorm

    cpu = torch.device("cpu")
    for mode, impl in (("fast+welford", "var_mean"), ("fast", "auto")):
        norms = [
            m
            for m in build_network("fpa", parse_mode(mode, "cpu"), cpu).modules()
            if isinstance(m, FastInstanceNorm)
        ]
        assert norms and {m.impl for m in norms} == {impl}, mode
    with pytest.raises(ValueError, match="welford chooses the fusible norm's statistics; add norm"):
        build_network("unet", parse_mode("fp32+welford", "cpu"), cpu)


@pytest.mark.parametrize("flag", ["nchwatt", "plane"])
def test_fpa_only_flags_are_refused_for_networks_without_fpa_blocks(flag):
    """``+nchwatt`` / ``+plane`` change FPA blocks: on the U-Net or RFNA a row labelled with them
    measured the plain network; refused there, applied to FPA."""
    from pam_monai.bench.train import build_network
    from pam_monai.networks.blocks import FPABlock

    cpu = torch.device("cpu")
    for name in ("unet", "rfna"):
        with pytest.raises(ValueError, match=f"nchwatt / plane change FPA blocks, and {name} has none"):
            build_network(name, parse_mode(f"fast+{flag}", "cpu"), cpu)
    blocks = [
        m
        for m in build_network("fpa", parse_mode(f"fast+{flag}", "cpu"), cpu).modules()
        if isinstance(m, FPABlock)
    ]
    assert blocks and all(m.contiguous_attention or m.plane_kernels for m in blocks)


def test_modes_docstrings_say_what_fast_holds():
    """`bench --help` sends readers to pam_monai.bench.modes for the flags: a flag it calls 'off in
    ``fast``' must be off in CUDA's fast mode, and parse_mode's example must be what it returns."""
    import re

    from pam_monai.bench import modes
    from pam_monai.bench.modes import Mode

    fast_gpu = parse_mode("fast", "cuda")
    for flag, text in re.findall(r"^- ``(\w+)``: (.*?)(?=^- |^``|\Z)", modes.__doc__, re.S | re.M):
        if "off in ``fast``" in text:
            assert not getattr(fast_gpu, flag), f"modes.py says {flag} is off in fast; CUDA's fast has it"
    example = re.search(r'``"(\S+)"`` -> ``(Mode\(.*?\))``\s+on CUDA', parse_mode.__doc__)
    assert eval(example.group(2), {"Mode": Mode}) == parse_mode(example.group(1), "cuda")


def test_cost_ratio_per_round_median_is_reported():
    """A default CPU run under load gave RFNA 8.05x the U-Net by the median of its 12 pooled steps
    (the even count averaged a quiet 0.17 s step with a loaded one) while three of four rounds
    said 1.62-1.68: the table and the JSON now also give the median of the per-round ratios."""
    from pam_monai.bench.train import TrainCase, summarise

    mode = parse_mode("fp32", "cpu")
    unet = TrainCase("unet", mode, 1, None, torch.device("cpu"), times=[0.1] * 4)
    unet.round_medians = [0.1, 0.1, 0.1, 0.1]
    rfna = TrainCase("rfna", mode, 1, None, torch.device("cpu"), times=[0.16, 0.17, 3.2, 0.165])
    rfna.round_medians = [0.162, 0.168, 3.198, 0.164]
    row = summarise([unet, rfna], 4, 80)[1]
    assert row["cost_vs_unet_rounds_median"] == pytest.approx(1.66)
    text = format_report({"meta": {}, "train": summarise([unet, rfna], 4, 80)})
    assert "| 1.68; 1.60; 1.66 (1.62-31.98) |" in text


def test_inference_bench_segments_a_raw_case_as_case_predictor_does():
    """The inference stage timed an already normalised case (the z-score, a per-volume pass over
    all 36 million voxels, left out: about 0.2 s on the CPU, more than the 0.08 s a GPU takes for
    the network). It now times the path from a raw case to its mask, which must give what
    preprocess_case, the network and restore_prediction give."""
    import numpy as np

    from pam_monai.bench.train import build_network
    from pam_monai.bench.volume import raw_case, segment_case
    from pam_monai.data import preprocess_case, restore_prediction
    from pam_monai.engines import SliceWiseInferer, foreground_mask

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    net = build_network("unet", parse_mode("fp32", "cpu"), cpu).eval()
    inferer = SliceWiseInferer(slice_batch_size=4)
    image = raw_case((176, 150, 2))  # cropped along one axis, padded along the other
    assert image.min() == 0 and image.max() > 100  # raw: far from normalised
    item = {
        "case": "c",
        "image": image,
        "label": None,
        "affine": np.eye(4),
        "original_shape": image.shape[1:],
    }
    x = torch.from_numpy(preprocess_case("brats", item)["image"])[None]
    with torch.inference_mode():
        logits = inferer(x, net)
    expected = restore_prediction(
        "brats", foreground_mask(logits)[0, 0].to(torch.uint8).numpy(), image.shape[1:]
    )
    got = segment_case(image, net, inferer, cpu, 160)
    assert got.dtype == np.uint8 and got.shape == image.shape[1:]
    np.testing.assert_array_equal(got, expected)


def test_data_table_says_when_the_step_ran_on_smaller_slices():
    """On the CPU the training step runs at 4x80x80 while the pipeline delivers 4x160x160 slices:
    'vs fastest training step' compares slices of different sizes, and the table must say so."""
    row = {"network": "unet", "mode": "fp32", "params": 1, "batch": 4, "size": [4, 80, 80]}
    row |= {"step_ms_median": 100.0, "slices_per_s": 40.0}
    data = {"cases": 2, "slices_per_case": 155, "slice_shape": [4, 160, 160]}
    data["loaders"] = [{"loader": "DataLoader(num_workers=0)", "slices_per_s": 400.0}]
    text = format_report({"meta": {}, "train": [row], "data": data})
    assert "| DataLoader(num_workers=0) | 400 | 10.00x |" in text
    assert "40 slices/s of 4x80x80, against the pipeline's slices of 4x160x160)" in text
    same = format_report({"meta": {}, "train": [{**row, "size": [4, 160, 160]}], "data": data})
    assert "(fastest training step in these results: 40 slices/s)" in same


def test_report_says_what_peak_memory_measures():
    """The CPU's figure is not the CUDA allocator's peak: the report must say what it counts."""
    from pam_monai.bench.train import CPU_PEAK_KIND

    row = {"network": "unet", "mode": "fp32", "params": 1, "batch": 4, "size": [4, 80, 80]}
    row |= {"step_ms_median": 180.0, "slices_per_s": 22.0, "peak_bytes": 2**27}
    row["peak_kind"] = CPU_PEAK_KIND
    text = format_report({"meta": {"device": "cpu"}, "train": [row]})
    assert f"peak memory: {CPU_PEAK_KIND}." in text and "| 128 MiB |" in text


def test_step_peak_bytes_is_the_most_held_at_once():
    """A step that frees 1 MiB, then holds 2 + 1 MiB, peaks at 3 MiB (not 4: the freed block is
    not counted twice, nor the whole process's memory)."""
    from pam_monai.bench.train import step_peak_bytes

    def step():
        a = torch.empty(1 << 20, dtype=torch.uint8)
        del a
        return torch.empty(1 << 21, dtype=torch.uint8), torch.empty(1 << 20, dtype=torch.uint8)

    assert 3 << 20 <= step_peak_bytes(step) < (3 << 20) + (64 << 10)


def test_cpu_peak_memory_is_each_networks_own():
    """In one process the peak RSS growth was not a network's memory: glibc keeps freed memory
    that the next network's steps reuse, and a default CPU run reported RFNA (9.25M parameters)
    at 9 MiB and the U-Net at 34 MiB (FPA: 74, then 34 in its fast mode). Each network's figure now holds at least its parameters,
    their gradients and AdamW's two moments, and grows with the network."""
    from pam_monai.bench.train import CPU_PEAK_KIND, bench_train

    rows = bench_train(["unet", "fpa"], parse_modes("fp32", "cpu"), torch.device("cpu"), 2, 32, 1, 1, 2)
    for r in rows:
        assert r["peak_kind"] == CPU_PEAK_KIND
        assert r["peak_bytes"] >= 4 * 4 * r["params"], r  # fp32 weights, gradients, two moments
    unet, fpa = rows
    assert fpa["peak_bytes"] > unet["peak_bytes"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = run_bench(device="cpu", quick=True, modes="fp32,fast", output=str(out))
    return result, out


def test_quick_cpu_bench_writes_every_section(quick_run):
    result, out = quick_run
    saved = json.loads(out.read_text())
    assert set(saved) == {"meta", "train", "data", "infer", "hd95", "bundle", "errors"}
    assert saved["bundle"] == []  # not a default stage
    assert saved["errors"] == []
    meta = saved["meta"]
    assert meta["device"] == "cpu" and meta["settings"]["quick"] is True
    assert {"torch", "threads", "cpu", "stage_seconds"} <= set(meta)

    train = saved["train"]
    assert [(r["network"], r["mode"]) for r in train] == [
        ("unet", "fp32"),
        ("fpa", "fp32"),
        ("unet", "fast"),
        ("fpa", "fast"),
    ]
    for r in train:
        assert r["error"] is None
        assert r["params"] > 0 and r["batch"] == 2 and r["size"] == [4, 32, 32]
        assert r["step_ms_median"] > 0 and r["slices_per_s"] > 0
        assert r["cost_vs_unet"] > 0 and len(r["cost_vs_unet_rounds"]) == r["rounds"]
        assert r["flags"]["norm"] == (r["mode"] == "fast")
    assert [r["cost_vs_unet"] for r in train if r["network"] == "unet"] == [1.0, 1.0]

    loaders = saved["data"]["loaders"]
    assert [e["loader"] for e in loaders] == [
        "DataLoader(num_workers=0)",
        "DataLoader(num_workers=2)",
        "DeviceSliceLoader",
    ]
    assert all(e["slices_per_s"] > 0 and "error" not in e for e in loaders)
    assert saved["data"]["samples"] > 0 and saved["data"]["prepare_s"] > 0

    (infer,) = saved["infer"]
    assert infer["error"] is None and infer["seconds_median"] > 0 and infer["volume"] == [4, 48, 48, 4]

    hd95 = saved["hd95"]
    assert hd95["ours_s"] > 0 and hd95["monai_s"] > 0 and hd95["speedup"] > 0

    # the printed report has every table
    text = format_report(result)
    for heading in ("## Training step", "## Data pipeline", "## Whole-volume inference", "## HD95"):
        assert heading in text
    assert "| fpa | fast |" in text


def test_bundle_stage_times_the_bundles_training_loop(tmp_path, caplog):
    """The stage runs the BRATS bundle's train.json through MONAI's workflow and counts every
    training slice of each timed epoch (MONAI decollates the batch into a list of slices). It
    switches validation off on purpose: the users' "no epoch is validated" warning is not logged."""
    out = tmp_path / "bench.json"
    with caplog.at_level(logging.WARNING):
        result = run_bench(
            device="cpu",
            quick=True,
            stages="bundle",
            networks="unet",
            bundle_log_every="1,10",
            output=str(out),
        )
    assert not [r.getMessage() for r in caplog.records if "no epoch is validated" in r.getMessage()]
    rows = json.loads(out.read_text())["bundle"]
    assert result["errors"] == [] and [(r["network"], r["log_every"]) for r in rows] == [
        ("unet", 1),
        ("unet", 10),
    ]
    for r in rows:
        assert (
            r["loader"] == "DataLoader" and r["fast"] is False and r["size"] == [32, 32] and r["batch"] == 2
        )
        assert r["epochs_timed"] == 1 and r["slices_timed"] == r["samples"] > 0 and r["slices_per_s"] > 0
        assert r["iterations_per_epoch"] == -(-r["samples"] // 2) and r["drop_last"] is False  # not compiled
    assert "## The bundle's training loop" in format_report(result)
    assert all(r["compile_mode"] is None for r in rows)
    compiled = {**rows[0], "loader": "DeviceSliceLoader", "drop_last": True, "iterations_per_epoch": 7}
    assert "| unet | 1 | no | DeviceSliceLoader, drop_last | 2 | 7 |" in format_report(
        {**result, "bundle": [compiled]}
    )
    # CUDA graphs in the bundle loop: the row says so and is compared with the step in that mode
    graphs = {**compiled, "fast": True, "compile": True, "compile_mode": "reduce-overhead"}
    steps = [
        {"network": "unet", "params": 1, "batch": 2, "size": [4, 32, 32], "mode": mode}
        | {"slices_per_s": speed, "step_ms_median": 2e3 / speed}
        for mode, speed in (
            ("fast", 1.0),
            ("fast [mode=reduce-overhead-x]", 2.0),  # another mode whose name starts alike
            ("fast [mode=reduce-overhead]", 4.0),
        )
    ]
    table = format_report({**result, "train": steps, "bundle": [graphs]})
    assert "| unet | 1 | yes [mode=reduce-overhead] | DeviceSliceLoader, drop_last | 2 | 7 |" in table
    assert f"{rows[0]['slices_per_s'] / 4.0:.2f}x of fast [mode=reduce-overhead] |" in table


def test_bundle_stage_passes_the_compile_mode_to_the_bundle(monkeypatch):
    """``--compile_mode`` reaches the bundle stage as the bundle's own ``compile_mode`` override (the
    GPU script's bundle_fpa_cg: CUDA graphs inside the bundle's training loop)."""
    from pam_monai.bench import trainer

    seen = []
    compiled = [True, False, False]  # whether the bundle compiled: a GPU, then the CPU
    monkeypatch.setattr(
        trainer,
        "_run",
        lambda config, root, overrides, device: (
            seen.append(overrides) or {"slices_per_s": 1.0, "compile": compiled.pop(0)}
        ),
    )
    monkeypatch.setattr(trainer, "_without_validation", lambda config, epochs: {})
    monkeypatch.setattr("pam_monai.data.synth", lambda *a, **k: "data")
    rows = trainer.bench_bundle(
        ["fpa"], torch.device("cpu"), 2, 32, log_every=(10,), compile_mode="reduce-overhead"
    )
    assert (
        seen[0]["compile_mode"] == "reduce-overhead"
        and rows[0]["mode"] == "bundle, log_every 10 [mode=reduce-overhead]"
    )
    # not compiled (the CPU's default): no compile mode ran, the row does not claim one
    rows = trainer.bench_bundle(
        ["fpa"], torch.device("cpu"), 2, 32, log_every=(10,), compile_mode="reduce-overhead"
    )
    assert rows[0]["mode"] == "bundle, log_every 10"
    rows = trainer.bench_bundle(["fpa"], torch.device("cpu"), 2, 32, log_every=(10,))
    assert "compile_mode" not in seen[2] and rows[0]["mode"] == "bundle, log_every 10"


def test_merge_recomputes_ratios_across_stage_files(quick_run, tmp_path):
    result, out = quick_run
    # split the quick run into a U-Net file and an FPA file, as the GPU script writes them
    unet = {**result, "train": [dict(r) for r in result["train"] if r["network"] == "unet"], "data": None}
    fpa = {**result, "train": [dict(r) for r in result["train"] if r["network"] == "fpa"], "hd95": None}
    for r in fpa["train"]:
        r.pop("cost_vs_unet", None)
    paths = []
    for name, part in (("unet", unet), ("fpa", fpa)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(part, default=str))
        paths.append(p)
    merged = merge(*paths, output=tmp_path / "merged.json")
    assert json.loads((tmp_path / "merged.json").read_text())["sources"] == [str(p) for p in paths]
    by = {(r["network"], r["mode"]): r for r in merged["train"]}
    for mode in ("fp32", "fast"):
        expected = by[("fpa", mode)]["step_ms_median"] / by[("unet", mode)]["step_ms_median"]
        assert by[("fpa", mode)]["cost_vs_unet"] == pytest.approx(expected)
    assert merged["data"] and merged["hd95"]


def test_inductor_settings_are_applied_recorded_and_checked():
    from torch._inductor import config

    from pam_monai.bench import apply_inductor_settings

    before = (config.split_reductions, config.triton.cudagraphs)
    try:
        applied = apply_inductor_settings(
            f"split_reductions={not before[0]}, triton.cudagraphs={not before[1]}"
        )
        assert applied == {"split_reductions": not before[0], "triton.cudagraphs": not before[1]}
        assert (config.split_reductions, config.triton.cudagraphs) == (not before[0], not before[1])
        assert apply_inductor_settings(("split_reductions=True",)) == {"split_reductions": True}
        with pytest.raises(ValueError, match="name=value"):
            apply_inductor_settings("split_reductions")
        with pytest.raises(ValueError, match="no setting .triton.nothing."):
            apply_inductor_settings("triton.nothing=1")
    finally:
        config.split_reductions, config.triton.cudagraphs = before


def test_bench_command_exits_non_zero_when_a_measurement_failed(tmp_path):
    """The guarded stages keep going, but a run with a failure must not look like a success."""
    from pam_monai.bench import bench

    out = tmp_path / "b.json"
    with pytest.raises(SystemExit, match=r"1 measurement\(s\) failed"):
        bench(device="cpu", stages="hd95", hd95_shape="40,100", output=str(out))
    assert json.loads(out.read_text())["errors"]


def test_json_records_every_option_of_the_run(tmp_path):
    """The JSON recorded the training settings but not the other stages' options (HD95 repeats,
    the seed, the data pipeline's workers ...) unless they were typed on the command line: every
    argument of the run is now in ``meta.settings.options``."""
    import inspect

    out = tmp_path / "b.json"
    run_bench(device="cpu", stages="hd95", hd95_shape="40,48,48", hd95_repeats=2, seed=3, output=str(out))
    options = json.loads(out.read_text())["meta"]["settings"]["options"]
    assert set(options) == set(inspect.signature(run_bench).parameters)
    assert options["hd95_repeats"] == 2 and options["seed"] == 3 and options["data_workers"] == "0,2"


def test_hd95_rows_say_whether_both_answers_are_the_same(monkeypatch, tmp_path):
    """A speed ratio of unequal answers must not pass silently: the table shows ours in MONAI's
    convention beside MONAI's value, and a pair where they differ is a failed measurement."""
    import types

    import pam_monai.bench as B

    row = {"shape": (40, 48, 48), "voxels_pred": 9, "voxels_target": 10, "ours_s": 0.001}
    row |= {"monai_s": 0.01, "speedup": 10.0, "ours_hd95": 2.0, "monai_hd95": 2.5}
    row |= {"ours_hd95_monai_convention": 3.0, "same_answer": False, "lesions": []}
    fake = types.SimpleNamespace(bench_hd95=lambda **kw: dict(row))
    monkeypatch.setattr(B, "load_hd95_bench", lambda: fake)
    result = run_bench(device="cpu", stages="hd95", output=str(tmp_path / "b.json"))
    assert any("hd95 synthetic ellipsoid" in e and "!= MONAI's 2.5000" in e for e in result["errors"])
    assert "| 3.000 (DIFFERENT: the speed ratio compares unequal answers) |" in format_report(result)
    same = {**row, "ours_hd95_monai_convention": 2.5, "same_answer": True}
    assert "| 2.500 (same) |" in format_report({"hd95": same})


def test_peak_memory_under_cuda_graphs_includes_their_recording(monkeypatch):
    """Under CUDA graphs the graphs' memory pool is allocated while they are recorded (the warm-up)
    and timed replays allocate nothing: the H100 run of 2026-11-27 reported 89 MiB for FPA at batch
    50. The peak must then include the warm-up; without CUDA graphs it stays the timed steps' own."""
    from pam_monai.bench import train as bench_train_mod

    state = {"allocated": 0, "peak": 0}

    def step():
        if state.pop("recording", False):  # the first call records the graphs: 5 GiB in their pool
            state["peak"] = max(state["peak"], 5 << 30)
        state["peak"] = max(state["peak"], 100 << 20)  # a replay: parameters, gradients, input

    def reset(device=None):
        state["peak"] = 0

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    for graphs, expected in ((True, 5 << 30), (False, 100 << 20)):
        state.update(recording=True, peak=0)
        case = bench_train_mod.TrainCase(
            network="fpa", mode=parse_mode("fast", "cuda"), params=1, step=step,
            device=torch.device("cuda"), cuda_graphs=graphs,
        )  # fmt: skip
        bench_train_mod._warm(case, 2)
        bench_train_mod._measure(case, 3)
        assert case.error is None
        assert case.peak_bytes == expected, (graphs, case.peak_bytes)
        assert ("CUDA graphs" in case.peak_kind) == graphs
    assert bench_train_mod.records_cuda_graphs("reduce-overhead")
    assert bench_train_mod.records_cuda_graphs("max-autotune")
    assert not bench_train_mod.records_cuda_graphs("max-autotune-no-cudagraphs")
    assert not bench_train_mod.records_cuda_graphs(None)


def test_cuda_graphs_of_the_inductor_setting_count_as_cuda_graphs():
    """``--inductor triton.cudagraphs=True`` (the bench's own example) records CUDA graphs in any
    mode that does not set it: its peak memory must include their recording too (it was taken for
    a run without them, the replays' peak alone)."""
    from torch._inductor import config

    from pam_monai.bench.train import records_cuda_graphs

    with config.patch({"triton.cudagraphs": True}):  # what apply_inductor_settings sets
        assert records_cuda_graphs(None) and records_cuda_graphs("default")
        assert records_cuda_graphs("max-autotune-no-cudagraphs")  # its options leave the setting alone
    with config.patch({"triton.cudagraphs": False}):
        assert records_cuda_graphs("reduce-overhead")  # the mode's own options override the setting
        assert not records_cuda_graphs(None)


def test_run_times_ms_times_each_call_on_the_host_without_a_gpu():
    """The benchmark scripts' timer: one figure per call, in milliseconds (a 5 ms sleep takes 5+)."""
    import time

    from pam_monai.bench.timing import run_times_ms

    calls = []
    times = run_times_ms(lambda: (calls.append(1), time.sleep(0.005)), repeats=3, device="cpu")
    assert len(times) == 3 and len(calls) == 3
    assert all(5.0 <= t < 1000.0 for t in times), times


@pytest.mark.parametrize("verdict", ["plane kernels ok", "plane kernels: 1 case(s) FAILED", None])
def test_gpu_check_times_the_plane_kernels_only_after_plane_check_passed(tmp_path, verdict):
    """gpu_check.sh on a GPU lease: when ``plane_check`` ran and did not pass (wrong kernels, a failed
    Triton compile, the fallback path, its time box), the plane stages and variants still ran, each
    compiling FPA or its c2 level first (minutes of a 15-minute lease) to time a broken or absent
    kernel. Now they are skipped, loudly; a call whose ONLY leaves plane_check out runs them. Python
    is a stub here that records each call and prints ``verdict`` for plane_check."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    root = Path(__file__).resolve().parents[1]
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python3"
    said = f'echo "{verdict}"; exit {0 if verdict == "plane kernels ok" else 1}' if verdict else "exit 0"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{calls}"\n'
        '[ "$1" = - ] && { cat >/dev/null; exit 0; }\n'
        f'case "$*" in *plane_kernels_check.py*) {said};; esac\n'
        "exit 0\n"
    )
    stub.chmod(0o755)
    stages = (
        "cg_fpa_plane_b128 fpa_c2_variants"
        if verdict is None
        else "plane_check cg_fpa_plane_b128 fpa_c2_variants"
    )
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        PY=str(stub),
        ONLY=stages,
        PATH=f"{tmp_path}:{os.environ['PATH']}",
    )
    run = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    made = calls.read_text().splitlines()
    variants = next(c for c in made if "fpa_branch_gpu.py" in c).split("--variants ")[1].split()[0].split(",")
    plane_timed = any("--modes fast+plane" in c for c in made)
    if verdict == "plane kernels: 1 case(s) FAILED":
        assert not plane_timed and not any(v.startswith("fpa_plane") for v in variants), made
        assert variants == ["fpa", "fpa_nchw", "fpa_normfn", "fpa_mk", "fpa_aggr", "fpa_cdt"], variants
        assert "== SKIP cg_fpa_plane_b128: plane_check did not pass" in run.stdout, run.stdout
    else:  # passed, or not run in this call (ONLY): the plane kernels are timed
        assert plane_timed and {"fpa_plane", "fpa_plane_small", "fpa_plane_large"} <= set(variants), made
        assert "SKIP" not in run.stdout, run.stdout


def test_slow_rates_are_not_printed_as_zero():
    """A loaded CPU's bundle loop delivers under one slice a second: ``,.0f`` printed it as 0."""
    row = {"network": "fpa", "log_every": 10, "fast": False, "loader": "DataLoader", "batch": 2}
    row |= {"iterations_per_epoch": 12, "slices_per_s": 0.4123}
    text = format_report({"meta": {}, "bundle": [row]})
    assert "| 12 | 0.412 |" in text
    assert "| 12 | 6,213 |" in format_report({"meta": {}, "bundle": [{**row, "slices_per_s": 6213.4}]})


def test_plane_kernels_check_keeps_its_verdict_when_stopped_while_writing(tmp_path, monkeypatch):
    """plane_kernels_check.py writes its verdict first so that the time box (``timeout``) that
    kills the timing keeps it, then rewrites the file with the timing: a kill during that rewrite
    left a cut file, the verdict lost. The rewrite now replaces the file whole or not at all."""
    import io
    from pathlib import Path

    from benchmarks.plane_kernels_check import save

    out = tmp_path / "plane_check.txt"
    save(["plane kernels ok"], str(out))
    real_open = io.open

    class Killed:
        """A file whose first write stops half-way, as the time box's signal would stop it."""

        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[:3])
            self.f.flush()
            raise KeyboardInterrupt

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    def killed_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return Killed(f) if "w" in mode and Path(file).parent == tmp_path else f

    monkeypatch.setattr("builtins.open", killed_open)
    monkeypatch.setattr(io, "open", killed_open)
    with pytest.raises(KeyboardInterrupt):
        save(["plane kernels ok", "one attention unit ..."], str(out))
    monkeypatch.undo()
    assert out.read_text() == "plane kernels ok\n"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_benchmark_scripts_write_their_files_atomically():
    """The GPU benchmarks run under a time box (benchmarks/gpu_check.sh's ``timeout``) that may kill
    them while they write: fpa_branch_gpu.py rewrote its JSON after every variant with ``open(..., "w")``
    and ``json.dump``, so a kill then cut the file and lost every variant measured before. Their
    outputs now go through atomic_write_text (a temporary file, then a rename). Path.write_text and
    write_bytes write straight to the name too; dicom_scan_bench.py's scratch data set (``folder /
    ...``, files it then scans) is no output."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    direct = re.compile(r"""open\([^)]*["'][wa]b?["']|json\.dump\(|\.write_(text|bytes)\(""")
    scratch = re.compile(r"^\(folder / ")
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(root.glob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if direct.search(line) and not (path.name == "dicom_scan_bench.py" and scratch.match(line.strip()))
    ]
    assert not found, found


def test_gpu_check_keeps_the_stages_archive_when_killed_while_packing_it(tmp_path):
    """gpu_check.sh packs the stages into $OUT/stages.tar.gz after every stage, so that a call cut
    short still brings back what was measured; it packed straight into that name, so a call killed
    while packing (the lease's limit) left a cut archive and lost every stage. It now packs beside
    it and renames. Here ``tar`` is a stub: its first call packs, its second is killed half-way,
    with the script."""
    import os
    import shutil
    import subprocess
    import tarfile
    from pathlib import Path

    if shutil.which("bash") is None or shutil.which("tar") is None:
        pytest.skip("needs bash and tar")
    root = Path(__file__).resolve().parents[1]
    python = tmp_path / "python3"
    python.write_text(
        '#!/usr/bin/env bash\n[ "$1" = - ] && cat >/dev/null\necho "plane kernels ok"\nexit 0\n'
    )
    tar = tmp_path / "tar"
    count = tmp_path / "tar_calls"
    tar.write_text(
        "#!/usr/bin/env bash\n"
        f'n=$(cat "{count}" 2>/dev/null || echo 0); echo $((n + 1)) > "{count}"\n'
        f'[ "$n" = 0 ] && exec {shutil.which("tar")} "$@"\n'
        'echo cut > "$2"\n'  # -czf FILE -C WORK .: half an archive, then the kill
        'rm -rf "$4"\n'  # the script's work folder, which its kill leaves behind
        "kill -9 $PPID\n"
        "exit 137\n"
    )
    for stub in (python, tar):
        stub.chmod(0o755)
    out = tmp_path / "out"
    env = dict(
        os.environ,
        OUT=str(out),
        PY=str(python),
        ONLY="plane_check fpa_c2_variants",
        PATH=f"{tmp_path}:{os.environ['PATH']}",
    )
    subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")],
        cwd=root,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert count.read_text().strip() == "2"
    with tarfile.open(out / "stages.tar.gz") as archive:
        assert "./plane_check.log" in archive.getnames()
