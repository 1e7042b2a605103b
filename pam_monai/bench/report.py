"""Tables and JSON of benchmark results; merging the results of several runs (the GPU script)."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path

__all__ = ["format_report", "merge", "write_json"]


def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def _rate(v, none: str = "-") -> str:
    """A rate in slices/s: whole numbers with thousands separators, three significant digits
    below 100 (a loaded CPU delivers under one slice a second, which ``,.0f`` printed as 0)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, ",.0f") if abs(v) >= 100 else format(v, ".3g")


def _bytes(v) -> str:
    if v is None:
        return "-"
    return f"{v / 2**30:.2f} GiB" if v >= 2**30 else f"{v / 2**20:.0f} MiB"


def _train_table(rows: list[dict]) -> list[str]:
    lines = [
        "| network | mode | params | batch | step ms (median) | slices/s | peak memory | cost x U-Net (median; min; rounds: median (range)) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("error") and "slices_per_s" not in r:
            lines.append(
                f"| {r['network']} | {r['mode']} | {r.get('params', 0):,} | {r.get('batch')} | error | - | - | {r['error'][:80]} |"
            )
            continue
        rounds = r.get("cost_vs_unet_rounds") or []
        # the median ratio of pooled steps can land between a quiet and a loaded mode (an even
        # count averages the middle two): the rounds' own median ratio is what a burst leaves alone
        spread = (
            f"{statistics.median(rounds):.2f} ({min(rounds):.2f}-{max(rounds):.2f})"
            if len(rounds) > 1
            else "-"
        )
        cost = (
            f"{_fmt(r.get('cost_vs_unet'), '.2f')}; {_fmt(r.get('cost_vs_unet_min'), '.2f')}; {spread}"
            if r.get("cost_vs_unet") is not None
            else "-"
        )
        lines.append(
            f"| {r['network']} | {r['mode']} | {r['params']:,} | {r['batch']} | {_fmt(r.get('step_ms_median'))} "
            f"| {_rate(r.get('slices_per_s'))} | {_bytes(r.get('peak_bytes'))} | {cost} |"
        )
    return lines


def _data_table(data: dict, train_rate: float | None, train_size: list | None = None) -> list[str]:
    lines = [
        f"synthetic BRATS: {data.get('cases')} cases x {data.get('slices_per_case')} slices, {data.get('samples', '?')} "
        f"training slices; per-volume preparation once: {_fmt(data.get('prepare_s_per_case'), '.2f')} s per case",
        "",
        "| loader (+ FlipPrepareBatch on the device) | slices/s delivered | vs fastest training step |",
        "|---|---|---|",
    ]
    for e in data.get("loaders", []):
        rate = e.get("slices_per_s")
        vs = f"{rate / train_rate:.2f}x" if rate and train_rate else "-"
        lines.append(
            f"| {e['loader']} | {_rate(rate) if rate else 'error: ' + str(e.get('error'))[:60]} | {vs} |"
        )
    if train_rate:
        line = f"(fastest training step in these results: {_rate(train_rate)} slices/s"
        shape = data.get("slice_shape")
        if train_size and shape and list(train_size) != list(shape):
            # the CPU's default step is at 80 x 80: per slice cheaper than the pipeline's slices
            line += (
                f" of {'x'.join(map(str, train_size))}, against the pipeline's slices of "
                f"{'x'.join(map(str, shape))}"
            )
        lines.append(line + ")")
    return lines


def _infer_table(rows: list[dict]) -> list[str]:
    lines = ["| network | mode | volume | seconds (median) | slices/s |", "|---|---|---|---|---|"]
    for r in rows:
        vol = "x".join(map(str, r.get("volume", [])))
        if r.get("error"):
            lines.append(f"| {r['network']} | {r['mode']} | {vol} | error: {r['error'][:60]} | - |")
        else:
            lines.append(
                f"| {r['network']} | {r['mode']} | {vol} | {_fmt(r.get('seconds_median'), '.3f')} "
                f"| {_rate(r.get('slices_per_s'))} |"
            )
    return lines


def _loader(row: dict) -> str:
    """The bundle row's loader, and whether it dropped each epoch's incomplete last batch (then
    ``iterations/epoch`` is ``samples // batch``, not rounded up)."""
    return row["loader"] + (", drop_last" if row.get("drop_last") else "")


def _fast(row: dict) -> str:
    """The bundle row's fast path, with its compile mode when one was set (CUDA graphs, say)."""
    mode = row.get("compile_mode") if row.get("compile") else None
    return ("yes" if row["fast"] else "no") + (f" [mode={mode}]" if mode else "")


def _bundle_table(rows: list[dict], train: list[dict]) -> list[str]:
    lines = [
        "| network | log_every | fast | loader | batch | iterations/epoch | slices/s (epochs after the first) | vs its training step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "slices_per_s" not in r:
            lines.append(
                f"| {r['network']} | {r.get('log_every')} | - | - | {r.get('batch')} | - | error | {r.get('error', '')[:80]} |"
            )
            continue
        # the step of the same network, batch and crop in the mode the bundle ran (fast or plain)
        same = [
            t
            for t in train
            if t["network"] == r["network"]
            and t.get("batch") == r["batch"]
            and list(t.get("size") or [])[-2:] == list(r["size"])
            and t.get("slices_per_s")
            and t["mode"].split(" [")[0] == ("fast" if r["fast"] else "fp32")
        ]
        # the step compiled in the bundle's own compile mode first
        mode = r.get("compile_mode") if r.get("compile") else None
        label = re.compile(rf"\[mode={re.escape(mode)}[],]") if mode else None  # not a longer mode's name
        same.sort(key=lambda t: (not label.search(t["mode"])) if label else ("[" in t["mode"]))
        vs = f"{r['slices_per_s'] / same[0]['slices_per_s']:.2f}x of {same[0]['mode']}" if same else "-"
        lines.append(
            f"| {r['network']} | {r['log_every']} | {_fast(r)} | {_loader(r)} | {r['batch']} | "
            f"{r['iterations_per_epoch']} | {_rate(r['slices_per_s'])} | {vs} |"
        )
    lines += [
        "",
        "Whole epochs of the bundle's trainer (batch fetch, flips, MONAI's iteration, handlers; no validation), "
        "against the bare training step of the same network in the same run.",
    ]
    return lines


def fastest_train_rate(train: list[dict]) -> float | None:
    rates = [r["slices_per_s"] for r in train if r.get("slices_per_s")]
    return max(rates) if rates else None


def format_report(result: dict) -> str:
    """A plain-text report (markdown tables) of a :func:`pam_monai.bench.bench` result."""
    meta = result.get("meta", {})
    out = [
        f"device: {meta.get('device_name', meta.get('device'))} | torch {meta.get('torch')} | "
        f"threads {meta.get('threads')} | {meta.get('date', '')}",
    ]
    train = result.get("train") or []
    if train:
        r0 = train[0]
        out += [
            "",
            f"## Training step (forward + soft Dice + backward + AdamW), batch {r0.get('batch')} x "
            f"{'x'.join(map(str, r0.get('size', [])))}",
            "",
            *_train_table(train),
            "",
            "cost x U-Net: step time / the 3-stage U-Net's step time in the same mode and run "
            "(ratio of median times; ratio of minimum times; median and range of the per-round ratios, "
            "each round's networks timed side by side).",
        ]
        # what the figure counts differs between CUDA (the allocator's peak) and the CPU (tensors)
        kinds = sorted({r["peak_kind"] for r in train if r.get("peak_kind") not in (None, "-")})
        if kinds:
            out.append("peak memory: " + "; ".join(kinds) + ".")
        modes = {r["mode"]: r.get("flags") for r in train}
        out.append("modes: " + "; ".join(f"{m} = {_describe(f)}" for m, f in modes.items()))
    if result.get("data"):
        size = next((r.get("size") for r in train if r.get("slices_per_s")), None)
        out += ["", "## Data pipeline", "", *_data_table(result["data"], fastest_train_rate(train), size)]
    if result.get("infer"):
        out += [
            "",
            "## Whole-volume inference (z-score, crop, slices through the network, threshold, un-crop)",
            "",
        ]
        out += _infer_table(result["infer"])
    h = result.get("hd95")
    if h:
        shape = "x".join(map(str, h.get("shape", [])))
        out += ["", f"## HD95 on a {shape} pair with a tumour-sized lesion (CPU)", ""]
        if h.get("error"):
            out.append(f"error: {h['error']}")
        else:
            out += [
                "| pair | lesion voxels | ours (s, median) | MONAI (s, median) | MONAI / ours | freed memory kept: "
                "MONAI / ours | HD95 ours | HD95 MONAI | ours in MONAI's convention |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for name, row in [
                ("synthetic ellipsoid", h),
                *((f"{x['name']} ET", x) for x in h.get("lesions") or []),
            ]:
                out.append(
                    f"| {name} | {row['voxels_target']} | {row['ours_s']:.4f} | {row['monai_s']:.4f} | "
                    f"{row['speedup']:.1f}x | {_kept_speedup(row)} | {row['ours_hd95']:.3f} | "
                    f"{row['monai_hd95']:.3f} | {_same_answer(row)} |"
                )
            out += [
                "",
                "ours: pam_monai.metrics.hd95 (95th percentile of the union of both directed sets); MONAI: "
                "compute_hausdorff_distance(percentile=95) (the larger directed 95th percentile); ours in "
                "MONAI's convention: the larger directed 95th percentile of our distance sets (untimed), "
                "which must equal MONAI's value for the speed ratio to compare equal answers. Each pair is "
                "timed in a fresh process (glibc's allocator in its initial state). Freed memory "
                "kept: both timed again with glibc keeping freed memory in the process (as this project's "
                "CPU inference and evaluation do), where MONAI's volume-sized allocations no longer fault "
                "in fresh pages: its best case.",
            ]
    profiled = [r for r in train if r.get("profile") and not r["profile"].get("error")]
    if profiled:
        out += ["", "## Where the step's time goes (torch.profiler)"]
        for r in profiled:
            p = r["profile"]
            groups = ", ".join(f"{g} {ms:.2f}" for g, ms in p["groups"].items())
            busy = ""
            if "CUDA" in p["unit"] and r.get("step_ms_median"):
                # kernels that fill well under the step mean the host cannot launch them faster
                busy = f" ({100 * p['total_ms'] / r['step_ms_median']:.0f}% of the {r['step_ms_median']:.1f} ms step"
                if r.get("host_ms_median"):
                    busy += f"; the host issues a step in {r['host_ms_median']:.1f} ms"
                busy += ")"
            out += ["", f"{r['network']} / {r['mode']}: {p['total_ms']:.2f} {p['unit']}{busy}; {groups}", ""]
            out += ["| ms/step | share | calls/step | kernel or op |", "|---|---|---|---|"]
            out += [
                f"| {k['ms']:.3f} | {100 * k['share']:.1f}% | {k['calls']} | `{k['name'][:70]}` |"
                for k in p["top"][:6]
            ]
    if result.get("bundle"):
        out += [
            "",
            "## The bundle's training loop (brats train.json through monai.bundle's ConfigWorkflow)",
            "",
        ]
        out += _bundle_table(result["bundle"], train)
    errors = result.get("errors") or []
    if errors:
        out += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(out)


def _same_answer(row: dict) -> str:
    """The HD95 row's check that ours, in MONAI's convention, gives MONAI's value (older JSON: -)."""
    if "same_answer" not in row:
        return "-"
    verdict = "same" if row["same_answer"] else "DIFFERENT: the speed ratio compares unequal answers"
    return f"{row['ours_hd95_monai_convention']:.3f} ({verdict})"


def _kept_speedup(row: dict) -> str:
    """The HD95 row's ratio with freed memory kept (older JSON: -)."""
    kept = row.get("kept_memory")
    return f"{kept['speedup']:.1f}x" if kept else "-"


def hd95_disagreements(h: dict | None) -> list[str]:
    """Error lines for the HD95 pairs on which ours, in MONAI's convention, differs from MONAI."""
    if not h or h.get("error"):
        return []
    rows = [("synthetic ellipsoid", h), *((f"{x['name']} ET", x) for x in h.get("lesions") or [])]
    return [
        f"hd95 {name}: ours in MONAI's convention {row['ours_hd95_monai_convention']:.4f} != MONAI's "
        f"{row['monai_hd95']:.4f}: the two find different surfaces; look at "
        "pam_monai/metrics/surface.py before quoting the speed ratio"
        for name, row in rows
        if row.get("same_answer") is False
    ]


def _describe(flags: dict | None) -> str:
    if not flags:
        return "?"
    on = [k for k, v in flags.items() if v]
    return "+".join(on) if on else "plain fp32"


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write ``result`` as JSON (atomically: temporary file, then rename)."""
    from ..atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")


def merge(*paths: str | os.PathLike, output: str | os.PathLike | None = None) -> dict:
    """Merge bench JSON files (one per GPU-script stage) into one result, recompute the U-Net
    ratios across them (same card, same script run) and print the report.

    Args:
        paths: JSON files written by ``python -m pam_monai bench --output ...``.
        output: where to write the merged JSON (optional).
    """
    merged: dict = {"meta": {}, "train": [], "infer": [], "errors": [], "sources": []}
    for p in paths:
        try:
            r = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            merged["errors"].append(f"{p}: {e}")
            continue
        source = len(merged["sources"])
        merged["sources"].append(str(p))
        merged["meta"] = merged["meta"] or r.get("meta", {})
        merged["train"] += [{**row, "source": source} for row in r.get("train") or []]
        merged["infer"] += r.get("infer") or []
        merged.setdefault("bundle", [])
        merged["bundle"] += r.get("bundle") or []
        merged["errors"] += r.get("errors") or []
        for key in ("data", "hd95"):
            if r.get(key):
                merged[key] = r[key]

    # the U-Net of the same mode, batch and size is the reference: from the same file when it has
    # one (its ratios were measured side by side), else from another stage of the same run
    # flags that leave the U-Net unchanged (it has no FastConv2d) do not split the reference
    def key(row: dict) -> tuple:
        flags = row.get("flags")
        mode = (
            tuple(sorted(k for k, v in flags.items() if v and k not in ("taps", "refconv")))
            if flags
            else row["mode"]
        )
        return mode, row["batch"], tuple(row.get("size") or ())

    unets = [r for r in merged["train"] if r["network"] == "unet" and r.get("step_ms_median")]
    for r in merged["train"]:
        if not r.get("step_ms_median"):
            continue
        same = [u for u in unets if key(u) == key(r)]
        u = next((u for u in same if u["source"] == r["source"]), same[0] if same else None)
        if u is None:
            continue
        r["cost_vs_unet"] = r["step_ms_median"] / u["step_ms_median"]
        r["cost_vs_unet_min"] = r["step_ms_min"] / u["step_ms_min"]
        if u["source"] != r["source"]:
            r.pop("cost_vs_unet_rounds", None)
            r["reference"] = f"unet of {merged['sources'][u['source']]}"
    if output:
        write_json(merged, output)
    print(format_report(merged))
    return merged
