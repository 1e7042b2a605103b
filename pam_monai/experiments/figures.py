"""Figures like the paper's, as PNG (matplotlib figures outside pyplot, written atomically).

- :func:`attention_figure` (Figure 4): input slice, then the channel-averaged attention map of
  the deepest encoder block (the ``bridge`` FPA / RFNA block) of each attention network.
- :func:`overlay_figure` (Figures 5, 6): per chosen case, the input slice with the ground truth,
  then each network's prediction on it: TP yellow, FN blue (the paper's colours), FP red, zoomed to the lesion.
- :func:`ablation_figure` (Figure 7): IoU and HD95 per FPA / RFNA configuration, grouped by
  depthwise / full convolutions, x = dilation (FPA) or down-sampling ratio (RFNA), one bar per
  channel expansion, error bars = sample std over runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

__all__ = [
    "ablation_figure",
    "attention_figure",
    "display_slice",
    "FIGURE_FILES",
    "make_figures",
    "overlay_figure",
    "save_png",
]

FIGURE_NETWORKS_MAX = 8

# the paper's Figures 5 and 6: "Blue: False Negatives, Yellow: True Positives" (they show no FP colour)
TP_COLOUR = (1.0, 0.85, 0.0)
FN_COLOUR = (0.15, 0.35, 1.0)
FP_COLOUR = (0.95, 0.1, 0.1)


def _subplots(*grid: int, figsize: tuple[float, float], squeeze: bool = False):
    """A figure on an Agg canvas of its own and its axes, outside pyplot, which needs a backend:
    ``matplotlib.use("Agg")`` switched the whole program's (a ``plt.show()`` after the figures
    showed nothing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # the figure's canvas: what it draws, lays out and saves with
    return fig, fig.subplots(*grid, squeeze=squeeze)


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically (no half-written PNG)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def display_slice(image: np.ndarray) -> np.ndarray:
    """A displayable 2-D image from one preprocessed slice ``C x H x W``: channel 0 (FLAIR for
    BRATS, CBF for ISLES) as grey values, or RGB for 3 channels of CityScapes; robust min-max."""

    def scale(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, (1, 99))
        return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)

    if image.shape[0] == 3:
        return np.stack([scale(c) for c in image], axis=-1)
    return scale(image[0])


def _rgb(grey: np.ndarray) -> np.ndarray:
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=-1)


def overlay(
    grey: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    alpha: float = 0.6,
    annotated: np.ndarray | None = None,
) -> np.ndarray:
    """RGB image: ``grey`` with TP yellow, FN blue (the paper's colours) and FP red blended in; with ``annotated`` (sparse
    annotations) only there: a prediction on unannotated pixels is none of them (left grey)."""
    out = _rgb(grey).astype(float).copy()
    if annotated is not None:
        pred, target = pred & annotated, target & annotated
    for mask, colour in (
        (pred & target, TP_COLOUR),
        (~pred & target, FN_COLOUR),
        (pred & ~target, FP_COLOUR),
    ):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour)
    return out


def _window(target: np.ndarray, preds: Sequence[np.ndarray], min_size: int = 48) -> tuple[int, int, int, int]:
    """A square window twice the size of the lesion (at least ``min_size``), centred on it; on
    the predictions when the target is empty; the whole image when all are empty. False
    positives far from the lesion fall outside it: the first column shows the whole slice."""
    shape = target.shape
    mask = target
    if not mask.any():
        mask = np.zeros(shape, bool)
        for p in preds:
            mask |= p
    if not mask.any():
        return 0, shape[0], 0, shape[1]
    rows, cols = np.nonzero(mask)
    extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    size = min(max(2 * extent, min_size), min(shape))
    cr, cc = (rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2
    r0 = int(np.clip(cr - size // 2, 0, shape[0] - size))
    c0 = int(np.clip(cc - size // 2, 0, shape[1] - size))
    return r0, r0 + size, c0, c0 + size


def overlay_figure(
    rows: Sequence[dict],
    networks: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Figures 5 / 6: one row per case.

    Args:
        rows: per case ``{"case": str, "slice": int, "image": C x H x W, "target": H x W bool,
            "preds": {network: H x W bool}, "iou": {network: float}}`` (``iou``: per-case 3-D IoU),
            and ``"annotated": H x W bool`` for sparse annotations (outside it nothing is coloured;
            its border dotted on the ground truth).
        networks: column order (labels of ``preds``).
        path: the PNG to write.
        title: figure title.
    """
    from matplotlib.patches import Patch, Rectangle

    n_rows, n_cols = len(rows), len(networks) + 1
    # each row: an image as tall as its column is wide times the tallest slice's height / width (own
    # volumes are often taller than wide; the zoomed windows are square) and a two-line title above
    # it (2.5 per square row let titles overlap the row above); at most twice as tall: a taller slice
    # is drawn narrower in its cell instead
    tall = min(2.0, max(1.0, *(r["target"].shape[0] / r["target"].shape[1] for r in rows)))
    fig, axes = _subplots(n_rows, n_cols, figsize=(2.3 * n_cols, (2.3 * tall + 0.6) * n_rows + 0.6))
    for i, row in enumerate(rows):
        grey = display_slice(row["image"])
        target = row["target"]
        r0, r1, c0, c1 = _window(target, list(row["preds"].values()))
        ax = axes[i, 0]
        ax.imshow(_rgb(grey), interpolation="nearest")
        if target.any():
            ax.contour(target, levels=[0.5], colors=[TP_COLOUR], linewidths=0.8)
        annotated = row.get("annotated")
        if annotated is not None and not annotated.all():  # sparse annotations: their border
            ax.contour(annotated, levels=[0.5], colors=["white"], linewidths=0.6, linestyles="dotted")
        ax.add_patch(
            Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="yellow", lw=0.8, ls="--")
        )
        where = f"slice {row['slice']}, " if row.get("slice") is not None else ""
        ax.set_title(f"{row['case']}\n{where}ground truth", fontsize=7)
        for j, net in enumerate(networks, start=1):
            ax = axes[i, j]
            img = overlay(grey, row["preds"][net], target, annotated=row.get("annotated"))[r0:r1, c0:c1]
            ax.imshow(img, interpolation="nearest")
            iou = row.get("iou", {}).get(net)
            ax.set_title(f"{net}" + (f"\ncase IoU {100 * iou:.1f} %" if iou is not None else ""), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Patch(color=TP_COLOUR, label="TP"),
        Patch(color=FN_COLOUR, label="FN"),
        Patch(color=FP_COLOUR, label="FP"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_png(fig, path)


def attention_figure(
    image: np.ndarray,
    target: np.ndarray,
    maps: dict[str, np.ndarray],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Figure 4: the input slice, then each network's channel-averaged bridge attention map.

    Args:
        image: the slice ``C x H x W``.
        target: its ground truth ``H x W`` (drawn as a contour on every panel).
        maps: network label -> attention map (``h x w``, any resolution; shown stretched to ``H x W``).
        path: the PNG to write.
    """
    n = len(maps) + 1
    fig, axes = _subplots(1, n, figsize=(2.8 * n, 3.0))
    h, w = target.shape
    ax = axes[0, 0]
    ax.imshow(_rgb(display_slice(image)), interpolation="nearest")
    if target.any():
        ax.contour(target, levels=[0.5], colors=[TP_COLOUR], linewidths=0.8)
    ax.set_title("input + ground truth", fontsize=8)
    for ax, (name, amap) in zip(axes[0, 1:], maps.items()):
        im = ax.imshow(amap, cmap="jet", extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
        if target.any():
            ax.contour(target, levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(f"{name}\nbridge attention {amap.shape[0]}x{amap.shape[1]}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def ablation_figure(
    records: Sequence[dict], path: str | os.PathLike, title: str = "", hd95_unit: str = "mm"
) -> Path:
    """Figure 7: one row per block (FPA, RFNA), panels IoU and HD95 x depthwise / full convolutions.

    Args:
        records: per variant ``{"network": "fpa"|"rfna", "axis": "dilation"|"ratio", "x": int,
            "depthwise": bool, "expansion": int, "shared": bool (optional), "iou": [per-run means],
            "hd95": [per-run means], "options": dict (optional: all the network's options)}``;
            options that differ between a block's records besides those plotted (``norm``,
            ``features``) are named in the series, so that no configuration hides another.
        path: the PNG to write.
        hd95_unit: "mm", or "px" for 2-D images without a physical spacing (CityScapes).
    """
    blocks = [b for b in ("fpa", "rfna") if any(r["network"] == b for r in records)]
    if not blocks:
        raise ValueError("no FPA / RFNA variant to plot")
    panels = [("iou", True), ("iou", False), ("hd95", True), ("hd95", False)]
    fig, axes = _subplots(len(blocks), 4, figsize=(14, 3.2 * len(blocks)))
    letter = iter("abcdefghijklmnop")
    for i, block in enumerate(blocks):
        recs = [r for r in records if r["network"] == block]
        axis_name = recs[0]["axis"]
        xs = sorted({r["x"] for r in recs})
        other = _other_options(recs)
        for j, (metric, depthwise) in enumerate(panels):
            ax = axes[i, j]
            group = [r for r in recs if r["depthwise"] == depthwise]
            conv = "depthwise" if depthwise else "full"
            ax.set_title(f"({next(letter)}) {block.upper()}, {conv} convs", fontsize=9)
            if not group:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            # one series per expansion (and FPA's parameter sharing): no configuration hides another
            series = sorted({(r["expansion"], r.get("shared", False), other[id(r)]) for r in group})
            width = 0.8 / len(series)
            for k, (e, shared, rest) in enumerate(series):
                label = f"expansion {e}" + (", shared" if shared else "") + (f", {rest}" if rest else "")
                for x_i, x in enumerate(xs):
                    found = [
                        r
                        for r in group
                        if r["expansion"] == e
                        and r.get("shared", False) == shared
                        and other[id(r)] == rest
                        and r["x"] == x
                    ]
                    if not found:
                        continue
                    vals = np.asarray(found[0][metric], dtype=float) * (100 if metric == "iou" else 1)
                    ax.bar(
                        x_i + (k - (len(series) - 1) / 2) * width,
                        vals.mean(),
                        width,
                        # a standard deviation needs two runs: one run gets no error bar, not a zero one
                        yerr=vals.std(ddof=1) if vals.size > 1 else None,
                        color=f"C{k}",
                        capsize=2,
                        label=label,
                    )
                    label = None  # one legend entry per series
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels([str(x) for x in xs])
            ax.set_xlabel(axis_name)
            ax.set_ylabel("IoU (%)" if metric == "iou" else f"HD95 ({hd95_unit})")
            ax.legend(fontsize=7)
    # what a bar and its error bar are (a caption needs it: not a std over cases, not a CI)
    note = (
        "bar: mean over runs (seeds x folds) of each run's mean over its test cases; "
        "error bar: sample std over those runs (none for one run)"
    )
    fig.suptitle(f"{title}\n{note}" if title else note, fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def _other_options(recs: Sequence[dict]) -> dict[int, str]:
    """``id(record) -> "norm=batch"``: the options, besides the plotted axis, depthwise, expansion
    and sharing, in which a block's records differ (two FPA variants at dilation 9, expansion 4
    that differ in ``norm`` shared one bar, and the second was not drawn)."""
    plotted = {recs[0]["axis"], "depthwise", "expansion", "shared"}
    keys = sorted({k for r in recs for k in r.get("options", {})} - plotted)
    differ = [k for k in keys if len({repr(r.get("options", {}).get(k)) for r in recs}) > 1]
    return {
        id(r): ", ".join(f"{k}={_format_option(r.get('options', {}).get(k))}" for k in differ) for r in recs
    }


def _format_option(value) -> str:
    """Widths as ``32-64-128-256``, a MONAI layer ``("instance", {...})`` by its name."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return value[0]
    if isinstance(value, (list, tuple)):
        return "-".join(_format_option(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------- from a grid
FIGURE_FILES = ("fig4_attention.png", "fig5_overlays.png", "fig7_ablation.png")  # what make_figures writes


def _representative(runs, finished_labels: set, seeds, fold):
    """Per variant label, its finished run of the first seed on ``fold`` (else another seed)."""
    out = {}
    for run in runs:
        if run.fold != fold or not run.finished():
            continue
        label = run.variant.label
        if label not in out or (run.seed == seeds[0] and out[label].seed != seeds[0]):
            out[label] = run
    return {k: v for k, v in out.items() if k in finished_labels}


def _figure_fold(runs, finished_labels: set, seeds, folds, wanted=None) -> int:
    """The fold the figures show: the first of ``folds`` with a finished run of every wanted label
    (``wanted``: the figure networks, else every finished one), else the one with the most of them.

    The first fold alone left the figures out when its runs had not finished (``--max_runs``, a
    failed run under ``--keep_going``) although another fold's had."""
    labels = set(wanted) if wanted else finished_labels
    best, best_count = folds[0], -1
    for fold in folds:
        reps = _representative(runs, finished_labels, seeds, fold)
        count = sum(lab in reps for lab in labels)
        if count == len(labels):
            return fold
        if count > best_count:
            best, best_count = fold, count
    return best


def _seeds_shown(reps, labels) -> str:
    """Which trained run of each network a figure shows (one seed's, not a mean over seeds)."""
    seeds = {lab: reps[lab].seed for lab in labels}
    if len(set(seeds.values())) == 1:
        return f"each network's seed {next(iter(seeds.values()))} run, not a mean over seeds"
    return "runs shown: " + ", ".join(f"{lab} seed {seed}" for lab, seed in seeds.items())


def _figure_cases(ds, cases, fold: int) -> dict[str, int]:
    """``case -> index`` in ``ds`` (a :class:`~pam_monai.engines.CaseDataset`) of the test cases the
    overlays show: ``cases``, else the two with the most foreground (one case when none has any).
    The IDs come from the datalist entries and the foreground from one case read at a time: reading
    every case into a caching data set held a whole full-size test fold in memory (~88 MB per BraTS
    case) for two cases shown."""
    by_case = {ds.case_id(i): i for i in range(len(ds))}
    if cases:
        unknown = [c for c in cases if c not in by_case]
        if unknown:
            raise ValueError(f"figure_cases {unknown} are not test cases of fold {fold}: {sorted(by_case)}")
        return {c: by_case[c] for c in cases}
    fg = {}
    for case, index in by_case.items():
        sample = ds[index]
        if "label" in sample:
            fg[case] = float((sample["label"] == 1).sum())
    chosen = [c for c in sorted(fg, key=lambda c: -fg[c]) if fg[c] > 0][:2] or sorted(fg)[:1]
    return {c: by_case[c] for c in chosen}


def _data_name(ctx) -> str:
    """The data set as figure titles name it: ``"brats (SYNTHETIC stand-in)"`` for the stand-in, so a
    figure copied out of the grid (into slides, a paper) cannot pass for one of the real data set."""
    synthetic = any(d.get("synthetic") for d in ctx.fold_data.values())
    return f"{ctx.dataset} (SYNTHETIC stand-in)" if synthetic else ctx.dataset


def make_figures(runs, results, ctx, seeds, folds, cases=None, networks=None) -> list[Path]:
    """Write the grid's figures into ``ctx.output``; returns the paths written.

    fig5 and fig4 use the first fold's test cases (the first with a finished run of every network
    shown, see :func:`_figure_fold`) and, per network, its run of the first seed;
    fig7 is written when the grid has two or more variants of FPA or RFNA.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logging.getLogger("pam_monai.experiments").warning(
            "figures: matplotlib is not installed; no figure written"
        )
        return []
    import torch

    from ..engines import CaseDataset
    from ..metrics import split_ignored
    from .predict import attention_map, load_network, predict_case, score_on_case_grid

    written: list[Path] = []
    finished_labels = {r.variant for r in results}
    fold = _figure_fold(runs, finished_labels, seeds, folds, networks)
    if fold != folds[0]:
        logging.getLogger("pam_monai.experiments").info(
            "figures: fold %d's test cases (fold %d's runs have not all finished)", fold, folds[0]
        )
    reps = _representative(runs, finished_labels, seeds, fold)
    order = [lab for lab in dict.fromkeys(r.variant.label for r in runs) if lab in reps]
    if networks:
        # a grid network (checked before training) without a finished run yet (--max_runs, a failed
        # run under --keep_going): left out, not an error after the runs that stops results.md
        missing = [n for n in networks if n not in reps]
        if missing:
            logging.getLogger("pam_monai.experiments").warning(
                "figures: %s left out: no finished run on fold %d yet (re-run the command to finish the grid)",
                ", ".join(missing),
                fold,
            )
        order = [n for n in networks if n in reps]
    elif len(order) > FIGURE_NETWORKS_MAX:
        order = order[:FIGURE_NETWORKS_MAX]
    if not order:
        return written

    ds = CaseDataset(ctx.fold_data[fold]["test"], ctx.spec, ctx.foreground_label, cache=False)
    chosen = _figure_cases(ds, cases, fold)

    def best_slice(label: np.ndarray) -> int | None:
        if label.ndim == 2:
            return None
        return int(np.argmax(label.reshape(-1, label.shape[-1]).sum(0)))

    def take(arr, k):  # the k-th axial slice of ``... x H x W x D`` (2-D images: unchanged)
        return arr if k is None else arr[..., k]

    nets = {}
    for lab in order:
        run = reps[lab]
        nets[lab] = load_network(
            run.variant.network, run.options, ctx.spec.in_channels, run.model, ctx.device
        )

    rows = []
    for case, index in chosen.items():
        sample = ds[index]
        image = sample["image"].numpy()
        label, annotated = split_ignored(sample["label"][0].numpy())  # sparse annotations: their voxels only
        label = label > 0.5
        k = best_slice(label)
        preds, ious = {}, {}
        for lab, net in nets.items():
            prob = predict_case(
                net, sample["image"], ctx.slice_batch_size, ctx.device, ctx.spec.crop_size, probabilities=True
            )
            pred = prob > ctx.threshold  # predict_case's mask, cut as metrics.csv's
            # on the case's own grid, as metrics.csv (the crop's label would leave out what it cuts;
            # resized own images: their probabilities cut on their pixels)
            scores = score_on_case_grid(pred, sample, prob, ctx.threshold)
            ious[lab] = float("nan") if scores is None else scores["iou"]
            preds[lab] = take(pred, k)
        rows.append(
            {
                "case": case,
                "slice": k,
                "image": take(image, k),
                "target": take(label, k),
                "annotated": None if annotated is None else take(annotated, k),
                "preds": preds,
                "iou": ious,
            }
        )
    # the panels show one trained model per network, not the table's mean over runs: say which
    title = (
        f"{_data_name(ctx)} fold {fold} test cases: TP yellow, FN blue, FP red (zoomed to twice the lesion; case IoU "
        f"over the whole case)\n{_seeds_shown(reps, order)}"
    )
    if any(r["annotated"] is not None for r in rows):
        title += (
            "\nsparse annotations: scored and coloured on the annotated voxels only (their border dotted)"
        )
    written.append(overlay_figure(rows, order, ctx.output / FIGURE_FILES[1], title=title))

    # Figure 4: bridge attention of every FPA / RFNA variant (first chosen case, its best slice)
    row = rows[0]
    maps = {}
    for lab, net in nets.items():
        a = attention_map(net, torch.as_tensor(row["image"]).to(ctx.device))
        if a is not None:
            maps[lab] = a
    if maps:
        where = f" slice {row['slice']}" if row["slice"] is not None else ""
        title = f"{_data_name(ctx)} {row['case']}{where}: channel-mean attention of the deepest encoder block"
        title += f" ({_seeds_shown(reps, maps)})"
        if any(reps[lab].variant.network == "rfna" for lab in maps):
            title += " (RFNA is trained on reversed labels)"
        written.append(
            attention_figure(row["image"], row["target"], maps, ctx.output / FIGURE_FILES[0], title)
        )

    # Figure 7: per FPA / RFNA configuration
    records = []
    by_variant: dict[str, list] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    for rs in by_variant.values():
        r0 = rs[0]
        axis = r0.extra.get("axis")
        if axis is None:
            continue
        opts = r0.extra["ablation"]
        records.append(
            {
                "network": r0.network,
                "axis": axis,
                "x": opts[axis],
                "depthwise": bool(opts["depthwise"]),
                "expansion": opts["expansion"],
                "shared": bool(opts.get("shared", False)),  # FPA's one dilated conv applied twice
                "options": opts,
                "iou": [r.mean("iou") for r in rs],
                "hd95": [r.mean("hd95") for r in rs],
            }
        )
    counts = {b: sum(rec["network"] == b for rec in records) for b in ("fpa", "rfna")}
    records = [rec for rec in records if counts[rec["network"]] >= 2]
    if records:
        written.append(
            ablation_figure(
                records,
                ctx.output / FIGURE_FILES[2],
                title=f"{_data_name(ctx)}: FPA / RFNA configurations",
                hd95_unit="mm" if ctx.spec.volumetric else "px",
            )
        )
    return written
