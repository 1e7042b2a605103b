"""TensorBoard event files that a resumed training continues without repeating steps.

A training killed mid-epoch has logged steps after its last checkpoint; the resumed run logs them
again, and TensorBoard shows both (its own remedy, a ``SessionLog.START`` at the resumed step,
drops every tag of the folder from that step on: it cannot tell the training loss, logged by
iteration, from the validation metrics, logged by epoch, which share ``eval/``). So the resume
drops from the earlier event files what was logged after the checkpoint, tag by tag in its own unit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..atomic import atomic_path

__all__ = ["trim_event_logs"]

log = logging.getLogger(__name__)

# the tags logged by iteration (the bundles' train_loss); every other scalar is logged by epoch
ITERATION_TAGS = ("train_loss",)


def _stale(event, iteration: int, epoch: int, iteration_tags: Iterable[str]) -> bool:
    if not event.HasField("summary") or not event.summary.value:
        return False
    tags = {v.tag for v in event.summary.value}
    limit = iteration if tags & set(iteration_tags) else epoch
    return event.step > limit


def trim_event_logs(
    log_dir: str | os.PathLike, iteration: int, epoch: int, iteration_tags: Iterable[str] = ITERATION_TAGS
) -> list[Path]:
    """Remove from the TensorBoard event files in ``log_dir`` the scalars logged after a checkpoint
    taken at ``iteration`` / ``epoch`` (``iteration_tags`` are logged by iteration, the others by
    epoch), each file rewritten atomically. Called as the run starts, before it logs: the files of
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
        kept = [r for r in records if not _stale(Event.FromString(r), iteration, epoch, iteration_tags)]
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
