"""Per-case metrics of an evaluation: :func:`score_case` (IoU, Dice, HD95, FP and FN rates of one
case on its own grid), :class:`CaseMetrics` (an evaluator's handler; the cases of every process
under ``torchrun``) and :func:`write_case_metrics` (``metrics.csv`` and ``summary.json``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DistributedSampler

from ..atomic import atomic_write_text, folder_lock
from ..metrics import case_metrics, split_ignored, summarize
from .cleanup import _handler_table, clean_up_on_error
from .data import evaluation_grid, on_case_grid

__all__ = ["METRICS", "CaseMetrics", "score_case", "scored_with", "write_case_metrics"]

log = logging.getLogger("pam_monai")


METRICS = ("iou", "dice", "hd95", "fp_rate", "fn_rate")


METRICS_LOCK = ".metrics.lock"  # held while metrics.csv and summary.json are written (write_case_metrics)


def scored_with(spec, foreground_label=None, empty_value: float | None = None, grid="labels") -> dict:
    """How the cases were scored, as summary.json records it (``scored_with``, written by ``score``
    and a bundle's evaluation alike), for ``python -m pam_monai compare``: the data set (its name,
    and whether its cases are volumes, whose HD95 is in mm, or 2-D images, in pixels), the
    foreground labels, the HD95 of a case with one empty mask (None: the image diagonal) and the
    grid scored (``"labels"``: each label's own; ``[height, width]``: the network's, as a CityScapes
    evaluation scores, where a pixel of HD95 is another length). The data set's folder is not
    recorded: the same data may lie elsewhere on another machine."""
    fg, _ = spec.resolve_labels(foreground_label)
    return {
        "dataset": spec.name,
        "foreground_label": [int(v) for v in fg],
        "empty_value": None if empty_value is None else float(empty_value),
        "volumetric": bool(spec.volumetric),
        "grid": grid,
    }


def score_case(
    pred,
    label,
    label_full=None,
    restore: str = "crop",
    spacing=None,
    empty_value: float | None = None,
    threshold: float = 0.5,
) -> dict:
    """:func:`pam_monai.metrics.case_metrics` of a prediction on the case's own grid
    (:func:`~pam_monai.engines.data.on_case_grid`, which cuts resized probabilities at
    ``threshold``), over its annotated voxels when the label marks unannotated ones
    (:func:`pam_monai.metrics.split_ignored`); None for a case without any annotated voxel
    (nothing to score)."""
    pred, label = on_case_grid(pred, label, label_full, restore, threshold)
    target, annotated = split_ignored(label)
    if annotated is not None and not annotated.any():
        return None
    return case_metrics(pred, target, spacing=spacing, empty_value=empty_value, annotated=annotated)


class CaseMetrics:
    """Per-case IoU, Dice, HD95 (in the case's physical units), FP rate and FN rate for an evaluator.

    On every iteration it reads the binarised ``pred`` and the ``label`` of each case of the batch
    (decollated, MONAI's default, or ``B x C x spatial`` from an evaluator with ``decollate=False``)
    (and the case's ``spacing``; with a ``label_full`` in the batch, see
    :class:`~pam_monai.engines.CaseDataset`, the prediction is put back into the case's own grid,
    zeros outside the crop, and scored against that label; a resized own 2-D image's ``pred``
    arrives on its own pixels already, cut there by :class:`~pam_monai.engines.ForegroundMaskd`
    from bilinearly resized probabilities, as inference cuts it), computes :func:`pam_monai.metrics.case_metrics`
    (over the annotated voxels only, where the label marks unannotated ones), and at the end
    of the run puts the means into ``engine.state.metrics`` as ``<prefix>iou``, ``<prefix>hd95``,
    ... (so checkpoint savers and stats handlers see them) and, with ``output_dir``, writes
    ``metrics.csv`` (one row per case) and ``summary.json`` (mean, std, median, counts of empty
    cases).

    Under ``torch.distributed``, with a ``DistributedSampler`` dealing the cases to the processes
    (``multi_gpu_train.json``), each process scores its own share and every process ends the run
    with all of them: the rows are gathered, each case once (the sampler repeats cases so that
    every process gets as many) and in the data set's order, so all processes hold the metrics of
    one process that scored every case.

    Args:
        prefix: prefix of the metric names in ``engine.state.metrics`` (``"val_"``).
        output_dir: where to write the per-case CSV and the summary; None writes nothing.
        empty_value: HD95 of a case where exactly one mask is empty (None: the image diagonal).
        dataset: the data set's :class:`~pam_monai.data.DatasetSpec`; given, summary.json records
            how the cases were scored (:func:`scored_with`, with ``foreground_label`` and
            ``empty_value``), as ``score`` does, so that ``compare`` can check it.
        foreground_label: the foreground label(s) the labels were binarised with (None: the default).
        network, bundle: the network's and the bundle's names, recorded in summary.json where
            given (``compare`` names the folder after them).
    """

    def __init__(
        self,
        prefix: str = "val_",
        output_dir: str | None = None,
        empty_value: float | None = None,
        dataset=None,
        foreground_label=None,
        network: str | None = None,
        bundle: str | None = None,
    ) -> None:
        self.prefix = prefix
        self.output_dir = output_dir
        self.empty_value = empty_value
        self.record = (
            {}
            if dataset is None
            else {
                "scored_with": scored_with(dataset, foreground_label, empty_value, evaluation_grid(dataset))
            }
        )
        self.record.update({k: str(v) for k, v in (("network", network), ("bundle", bundle)) if v})
        self.rows: list[dict] = []
        self.unscored: list[str] = []  # cases without an annotated voxel (sparse annotations)
        # where the loader delivered each row and each unscored case (gathered across processes)
        self._row_positions: list[int] = []
        self._unscored_positions: list[int] = []
        self._seen = 0
        # from the epoch's start (after the evaluator's STARTED collectives) until its rows are sent
        self._owes_rows = False

    def attach(self, engine: Engine) -> None:
        table = _handler_table(engine)  # before Ignite is asked to attach anything
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        # first in line at EPOCH_COMPLETED, so savers and loggers see the new values
        table[Events.EPOCH_COMPLETED].insert(0, (self._complete, (engine,), {}))
        clean_up_on_error(engine, self._failed)

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        self.unscored = []
        self._row_positions = []
        self._unscored_positions = []
        self._seen = 0
        self._owes_rows = True

    def _update(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, dict):  # an evaluator with decollate=False: B x C x spatial tensors
            output = [{k: output[k][i] for k in ("pred", "label")} for i in range(len(output["pred"]))]
        items = output if isinstance(output, list) else [output]
        batch = engine.state.batch
        # MONAI decollates the batch into a list of per-case dicts; a collated dict also works
        metas = batch if isinstance(batch, list) else [_pick(batch, i) for i in range(len(items))]
        for item, meta in zip(items, metas):
            position = self._seen
            self._seen += 1
            pred = _numpy(item["pred"])
            label = _numpy(item["label"])
            if pred.shape[0] == 1:  # one channel: the binary mask
                pred, label = pred[0], label[0]
            spacing = meta.get("spacing")
            spacing = (
                None if spacing is None else tuple(float(s) for s in _numpy(spacing).ravel()[: pred.ndim])
            )
            case = str(meta.get("case", len(self.rows)))
            scores = score_case(
                pred, label, meta.get("label_full"), meta.get("restore", "crop"), spacing, self.empty_value
            )
            if scores is None:
                log.warning("%s: no annotated voxel (all 'ignore'): not scored", case)
                self.unscored.append(case)
                self._unscored_positions.append(position)
                continue
            self.rows.append({"case": case, **scores})
            self._row_positions.append(position)

    def _complete(self, engine: Engine) -> None:
        self._gather_ranks(engine)
        if not self.rows and self.unscored:  # else no metric at all: a KeyError in the checkpoint saver
            raise ValueError(
                f"{self.prefix.rstrip('_') or 'evaluation'}: none of its {len(self.unscored)} case(s) "
                f"({', '.join(self.unscored[:5])}{', ...' if len(self.unscored) > 5 else ''}) has an annotated voxel "
                "(all 'ignore'): nothing to score; annotate one of them or choose another fold / split"
            )
        if not self.rows:
            return
        summary = summarize(self.rows)
        for name in METRICS:
            engine.state.metrics[f"{self.prefix}{name}"] = summary[name]["mean"]
        engine.state.metrics[f"{self.prefix}empty_targets"] = summary["target_empty"]
        engine.state.metrics[f"{self.prefix}missed_cases"] = sum(
            1 for r in self.rows if r["pred_empty"] and not r["target_empty"]
        )
        self.summary = summary
        if self.output_dir:
            self.write(self.output_dir)

    def write(self, output_dir: str | os.PathLike) -> None:
        write_case_metrics(self.rows, output_dir, {**self.summary, **self.record})

    def _failed(self, engine: Engine, error: BaseException) -> None:
        """Under ``torch.distributed``, a process that failed before sending its rows sends the
        error instead, so the others, waiting for its rows, stop at once with its message rather
        than wait ``dist_timeout_minutes`` (a dead peer is not noticed by NCCL, nor across nodes by
        torchrun); then the error goes on as it would have (:func:`clean_up_on_error`)."""
        # an interrupt (Ctrl-C) or exit is not held up waiting for the others
        if isinstance(error, Exception) and self._distributed(engine) and self._owes_rows:
            self._owes_rows = False
            mine = ([], [], f"{type(error).__name__}: {error}")
            try:
                torch.distributed.all_gather_object([None] * torch.distributed.get_world_size(), mine)
            except Exception as e:  # the others are gone too: the error of this process is the one to see
                log.warning("could not tell the other processes of this error: %s", e)

    @staticmethod
    def _distributed(engine: Engine) -> bool:
        """Whether the cases are dealt to the processes (a ``DistributedSampler`` under ``torch.distributed``)."""
        sampler = getattr(getattr(engine.state, "dataloader", None), "sampler", None)
        dist = torch.distributed
        return isinstance(sampler, DistributedSampler) and dist.is_available() and dist.is_initialized()

    def _gather_ranks(self, engine: Engine) -> None:
        """Every process's rows and unscored cases, in every process, keyed by the data set index
        the loader's ``DistributedSampler`` gave each position (nothing to do without one); a
        process that failed instead (:meth:`_failed`) makes every process raise its error."""
        if not self._distributed(engine):
            return
        sampler = engine.state.dataloader.sampler
        indices = list(sampler)  # the same order the loader drew (same epoch, same seed)
        if len(indices) != self._seen:
            raise RuntimeError(
                f"{self.prefix.rstrip('_') or 'evaluation'}: this process scored {self._seen} case(s), its "
                f"DistributedSampler dealt it {len(indices)}: a run of part of an epoch (epoch_length) "
                "cannot be gathered across processes"
            )
        mine = (
            [(indices[p], row) for p, row in zip(self._row_positions, self.rows)],
            [(indices[p], case) for p, case in zip(self._unscored_positions, self.unscored)],
            None,
        )
        gathered: list = [None] * torch.distributed.get_world_size()
        self._owes_rows = False
        torch.distributed.all_gather_object(gathered, mine)
        failed = [f"process {rank}: {error}" for rank, (_, _, error) in enumerate(gathered) if error]
        if failed:
            raise RuntimeError(
                f"{self.prefix.rstrip('_') or 'evaluation'}: {'; '.join(failed)}; every process stops "
                "(see that process's log for where it failed)"
            )
        rows: dict[int, dict] = {}
        unscored: dict[int, str] = {}
        for their_rows, their_unscored, _ in gathered:
            for index, row in their_rows:
                rows.setdefault(index, row)  # a case dealt twice (the sampler's padding) counts once
            for index, case in their_unscored:
                unscored.setdefault(index, case)
        self.rows = [rows[i] for i in sorted(rows)]
        self.unscored = [unscored[i] for i in sorted(unscored)]


def write_case_metrics(rows: list[dict], output_dir: str | os.PathLike, summary: dict | None = None) -> dict:
    """``metrics.csv`` (one row per case) and ``summary.json`` (:func:`pam_monai.metrics.summarize`)
    of per-case rows into ``output_dir``, atomically, and a log line; returns the summary.

    Two writes, each atomic: a process killed between them leaves the new metrics.csv beside the
    summary of the one before. summary.json's ``metrics_csv_sha256`` (not in the returned summary),
    the SHA-256 of the metrics.csv it summarises, tells them apart. Both are written under one lock
    of the folder (``.metrics.lock``): two evaluations writing there at once left one's summary
    beside (and hashing) the other's metrics.csv; now the second waits, and its pair replaces the first's."""
    out = Path(output_dir)
    summary = summary if summary is not None else summarize(rows)
    fields = ["case", *METRICS, "target_empty", "pred_empty"]
    lines = [",".join(fields)]
    for r in rows:
        lines.append(",".join(_csv(r[k]) for k in fields))
    with folder_lock(out, METRICS_LOCK):
        csv_path = atomic_write_text(out / "metrics.csv", "\n".join(lines) + "\n")
        # the file's bytes as written (a Windows text write turns each \n into \r\n)
        digest = hashlib.sha256(csv_path.read_bytes()).hexdigest()
        atomic_write_text(
            out / "summary.json", json.dumps({**summary, "metrics_csv_sha256": digest}, indent=2) + "\n"
        )
    unit = {"hd95": _hd95_unit(summary.get("scored_with"))}
    parts = [f"{m} {summary[m]['mean']:.4g} +- {summary[m]['std']:.3g}{unit.get(m, '')}" for m in METRICS]
    log.info(
        "%d cases (%d with an empty target, %d with an empty prediction): %s; per-case rows in %s",
        summary["count"],
        summary["target_empty"],
        summary["pred_empty"],
        ", ".join(parts),
        out / "metrics.csv",
    )
    return summary


def _hd95_unit(settings) -> str:
    """HD95's unit as ``settings`` (:func:`scored_with`) say: mm for volumes, pixels for 2-D images
    (of the network's grid where that was scored, as a CityScapes evaluation); "" unrecorded."""
    if not isinstance(settings, dict) or "volumetric" not in settings:
        return ""
    if settings["volumetric"]:
        return " mm"
    grid = settings.get("grid", "labels")
    return " pixels" if grid == "labels" else f" pixels of the {' x '.join(map(str, grid))} grid"


def _numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pick(batch, i: int) -> dict:
    if not isinstance(batch, dict):
        return {}
    out = {}
    for k in ("case", "spacing", "label_full", "restore"):
        if k in batch:
            out[k] = batch[k][i]
    return out


def _csv(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
