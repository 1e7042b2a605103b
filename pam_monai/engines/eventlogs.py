"""TensorBoard event files that a resumed training continues without repeating steps.

A training killed mid-epoch has logged steps after its last checkpoint; the resumed run logs them
again, and TensorBoard shows both (its own remedy, a ``SessionLog.START`` at the resumed step,
drops every tag of the folder from that step on: it cannot tell the training loss, logged by
iteration, from the validation metrics, logged by epoch, which share ``eval/``). So the resume
drops from the earlier event files what was logged after the checkpoint, tag by tag in its own unit,
and only the tags that the resumed run logs again: the folder is also the evaluation's
(``output_dir``), and scalars a resume would not write back (an evaluation's ``test_*``, the user's
own) would be lost for good.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_path

__all__ = ["training_tags", "trim_event_logs"]

log = logging.getLogger(__name__)

# what the bundles' training logs by default: train_loss by iteration, the validation's metrics
# (val_iou, ..., train.json's validate#metrics#prefix) by epoch; training_tags reads the run's own
ITERATION_TAGS = ("train_loss",)
EPOCH_TAG_PREFIXES = ("val_",)


def training_tags(engine) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The TensorBoard tags a trainer logs, as its handlers name them: by iteration the ``tag_name``
    of its own TensorBoard handlers that log iterations (``train_loss``), by epoch the prefixes of
    its validators' :class:`~pam_monai.engines.CaseMetrics` (``val_``: ``validate#metrics#prefix``,
    which a user may rename); the bundles' defaults for either where no such handler is attached."""
    from monai.handlers import TensorBoardStatsHandler

    from .case_metrics import CaseMetrics
    from .cleanup import _attached, _handler_table

    own = [
        getattr(getattr(func, "__wrapped__", func), "__self__", None)
        for handlers in _handler_table(engine).values()
        for func, _, _ in handlers
    ]
    iteration = [h.tag_name for h in own if isinstance(h, TensorBoardStatsHandler) and h.iteration_log]
    prefixes = [h.prefix for h in _attached(engine) if isinstance(h, CaseMetrics)]
    iteration_tags, epoch_tag_prefixes = tuple(dict.fromkeys(iteration)), tuple(dict.fromkeys(prefixes))
    return iteration_tags or ITERATION_TAGS, epoch_tag_prefixes or EPOCH_TAG_PREFIXES


def _stale(
    event, iteration: int, epoch: int, iteration_tags: Iterable[str], epoch_tag_prefixes: tuple[str, ...]
) -> bool:
    if not event.HasField("summary") or not event.summary.value:
        return False
    tags = {v.tag for v in event.summary.value}
    if tags & set(iteration_tags):
        return event.step > iteration
    if any(tag.startswith(epoch_tag_prefixes) for tag in tags):
        return event.step > epoch
    return False  # a tag the training does not log: the resumed run would not write it back


def trim_event_logs(
    log_dir: str | os.PathLike,
    iteration: int,
    epoch: int,
    iteration_tags: Iterable[str] = ITERATION_TAGS,
    epoch_tag_prefixes: tuple[str, ...] = EPOCH_TAG_PREFIXES,
) -> list[Path]:
    """Remove from the TensorBoard event files in ``log_dir`` the scalars logged after a checkpoint
    taken at ``iteration`` / ``epoch`` (``iteration_tags`` are logged by iteration, the tags that
    start with one of ``epoch_tag_prefixes`` by epoch; other tags are kept, the resumed run does not
    log them), each file rewritten atomically. Called as the run starts, before it logs: the files of
    its own writers hold no scalar yet and are left as they are (rewriting a file that a writer has
    open would send its events to a removed file). A file that cannot be rewritten (held open by
    TensorBoard on Windows) is left as it is with a WARNING: the training resumes all the same.
    Returns the files rewritten (none without TensorBoard, which then has written no event file)."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        return []
    folder = Path(log_dir)
    rewritten = []
    files = sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
    for path in files:
        records = list(RawEventFileLoader(str(path)).Load())
        kept = [
            r
            for r in records
            if not _stale(Event.FromString(r), iteration, epoch, iteration_tags, epoch_tag_prefixes)
        ]
        if len(kept) == len(records):
            continue
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                writer = RecordWriter(f)
                for record in kept:
                    writer.write(record)
        except OSError as e:  # a tidier log is not worth a training that does not resume
            # (Windows: TensorBoard, open on the folder, holds the file; a read-only folder)
            log.warning(
                "resume: %s: could not remove the %d scalar(s) logged after the checkpoint (%s); TensorBoard "
                "shows those steps twice: delete the file, or close TensorBoard before resuming",
                path,
                len(records) - len(kept),
                e,
            )
            continue
        rewritten.append(path)
    return rewritten
