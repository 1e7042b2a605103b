"""Experiment tracking: the MLflow store of ``--tracking mlflow`` made under a lock before its
handlers open it (:func:`prepare_tracking_store`)."""

from __future__ import annotations

import os
from pathlib import Path

from .workflow import _running_workflow

__all__ = ["prepare_tracking_store"]


def prepare_tracking_store(uri: str | None = None) -> None:
    """Make the run's MLflow SQLite database (``--tracking mlflow``: MONAI's ``@output_dir/mlruns.db``)
    under a lock, before its tracking handlers open it. Each MLflow client that finds the tables
    missing creates them: two runs started together into one folder (two evaluations, a grid) both
    did, and one failed ("duplicate column name: step"), its run lost. Here the first makes them
    while the others wait on ``<db>.lock``, then find them made. ``uri``: the tracking address;
    None for the running workflow's (none without tracking). Only for ``sqlite:`` addresses: a
    server or another database makes its tables itself."""
    uri = uri or _workflow_tracking_uri()
    path = _sqlite_file(uri) if isinstance(uri, str) else None
    if path is None:
        return
    import mlflow  # here: without --tracking mlflow need not be installed

    from ..atomic import folder_lock

    with folder_lock(path.parent, path.name + ".lock"):
        mlflow.MlflowClient(tracking_uri=uri)  # makes the tables of a new database


def _workflow_tracking_uri() -> str | None:
    """The tracking address of the running MONAI ``ConfigWorkflow``: ``MLFLOW_TRACKING_URI``, else
    its ``tracking_uri`` id (MONAI's handler's order); None without a workflow or without tracking
    (the variable alone, set for other work, imports no MLflow)."""
    parser = getattr(_running_workflow(), "parser", None)
    if parser is None or "tracking_uri" not in parser:
        return None
    return os.environ.get("MLFLOW_TRACKING_URI") or parser.get_parsed_content("tracking_uri")


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` address, or None (another scheme, an in-memory one)."""
    if not uri.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url  # MLflow's own dependency

    database = make_url(uri).database
    return Path(database).absolute() if database and database != ":memory:" else None
