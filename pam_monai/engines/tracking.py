"""Experiment tracking: TensorBoard writers made when first used (:class:`TensorBoardStatsHandler`),
MLflow runs given the bundle's ``log_every`` and settings and ended FAILED or KILLED when the run
raises (:class:`TrackingEvery`), the MLflow store made under a lock (:func:`prepare_tracking_store`),
and MONAI's executed config kept out of the output folder until the run's checks pass
(:func:`hold_executed_config`)."""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import TensorBoardStatsHandler as _MonaiTensorBoardStatsHandler

from .cleanup import _attached, clean_up_on_error
from .termination import Terminated
from .training import EveryIterations
from .workflow import _running_workflow

__all__ = [
    "TensorBoardStatsHandler",
    "TrackingEvery",
    "hold_executed_config",
    "prepare_tracking_store",
    "save_executed_config",
]

log = logging.getLogger("pam_monai")


_NOT_YET = object()  # the writer a TensorBoardStatsHandler makes when it first writes


class TensorBoardStatsHandler(_MonaiTensorBoardStatsHandler):
    """MONAI's ``TensorBoardStatsHandler`` whose own ``SummaryWriter`` (and its flush thread) is
    made when it first writes, not when the handler is made.

    A bundle makes its handler lists before the run: when a handler after it failed to be made
    (a mistyped ``_target_``, an optional package missing), the writers already made were never
    closed (:class:`~pam_monai.engines.CloseWritersOnError`, which closes them on error, is
    attached with the engine only, and ``finalize`` does not run), their flush threads alive for
    the rest of the process (a notebook). Takes MONAI's arguments; ``close`` closes a writer it made, if any."""

    def __init__(self, summary_writer=None, log_dir: str = "./runs", *args, **kwargs) -> None:
        from torch.utils.tensorboard import SummaryWriter  # without tensorboard, fails here, as MONAI's

        self._made = None
        self._make = lambda: SummaryWriter(log_dir=log_dir)
        # MONAI's arguments in MONAI's order (its own handler's positional use keeps working)
        super().__init__(_NOT_YET if summary_writer is None else summary_writer, log_dir, *args, **kwargs)
        self.internal_writer = summary_writer is None
        self._check_writer_attribute()

    def _check_writer_attribute(self) -> None:
        """MONAI keeps the writer in its private ``_writer``, which this class makes a property:
        a MONAI that renamed it would write to the placeholder (an AttributeError at the first
        log). There the writer is made at once, as MONAI's is, with a warning."""
        renamed = [name for name, value in vars(self).items() if value is _NOT_YET]
        if renamed:
            from ..internals import changed

            feature = "making the TensorBoard writer at the first write; it is made now"
            warnings.warn(
                changed("monai", "TensorBoardHandler._writer", feature), RuntimeWarning, stacklevel=3
            )
            self._made = self._make()
            for name in renamed:
                setattr(self, name, self._made)

    @property
    def _writer(self):
        if self._made is None:
            self._made = self._make()
        return self._made

    @_writer.setter
    def _writer(self, writer) -> None:
        self._made = None if writer is _NOT_YET else writer

    def close(self) -> None:
        if self.internal_writer and self._made is not None:
            self._made.close()


class TrackingEvery:
    """Give ``--tracking mlflow`` (MONAI's ``MLFlowHandler``, appended to the trainer's handlers by
    ``monai.bundle run``) the bundle's ``log_every`` and the run's settings.

    MONAI's settings log the loss (and the learning rate) at every iteration: a wait for the GPU
    and a database write after each step, where the bundles' own loggers read the loss every
    ``log_every`` iterations. At the run's start this re-registers each attached ``MLFlowHandler``'s
    iteration logging through :class:`EveryIterations` and gives it ``params`` to record (MONAI's
    records only ``max_epochs`` and ``epoch_length``). List it before the tracking handler: its
    start runs first. The parameters are logged at the first epoch's start, once the handler has
    its run, those the run has not logged yet: a resumed run (a killed one stays active, and the
    bundles name each run) continues its MLflow run, where a changed value (more ``epochs``) was
    refused ("Changing param values is not allowed") and stopped the training. evaluate.json lists
    it among its evaluator's handlers for the parameters alone (what it evaluated: network, weights,
    data, split, seed, fold): its tracking handler logs no loss. When the engine's run raises, it
    ends the run FAILED, KILLED when Ctrl-C or a SIGTERM stopped it (MONAI's handler ends it on
    completion only; it stayed RUNNING), then lets the error go on (:func:`clean_up_on_error`); a
    resumed training continues its failed or killed run, set back to RUNNING at its start.

    Args:
        every: log the loss every ``every`` iterations (and each epoch's first and last).
        params: the run's settings, logged as MLflow parameters.
        end_run: start a new MLflow run at the engine's start and end it when the engine's run
            completes. MONAI's tracking handler of an evaluator (evaluate.json's, from MONAI's
            validator settings) leaves it active, and continues any named run that is not FINISHED
            (a failed or killed evaluation's): the next evaluation, of other weights, continued it
            and kept the first one's parameters.
    """

    def __init__(self, every: int = 1, params: dict | None = None, end_run: bool = False) -> None:
        self.every = EveryIterations(every)
        self.params = dict(params or {})
        self.end_run = bool(end_run)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.EPOCH_STARTED, self.log_params)
        clean_up_on_error(engine, self.end_failed)

    @staticmethod
    def _trackers(engine: Engine) -> list:
        """The trainer's own MLFlowHandlers (its validator's logs the metrics by epoch, into the
        same run)."""
        from monai.handlers import MLFlowHandler

        ours = [
            h for h in _attached(engine) if isinstance(h, MLFlowHandler) and engine.has_event_handler(h.start)
        ]
        return list({id(h): h for h in ours}.values())

    def __call__(self, engine: Engine) -> None:
        for handler in self._trackers(engine):
            if self.end_run and handler.cur_run is None:
                self._new_run(handler)
            if self.end_run and not engine.has_event_handler(handler.close, Events.COMPLETED):
                engine.add_event_handler(Events.COMPLETED, handler.close)  # after its own, which logs
            if not engine.has_event_handler(self.mark_running, Events.STARTED):
                # after the handler's start, which picks the run: Ignite fires the handlers added
                # while an event fires, so it runs at this start too
                engine.add_event_handler(Events.STARTED, self.mark_running)
            if handler.iteration_log is True and engine.has_event_handler(
                handler.iteration_completed, Events.ITERATION_COMPLETED
            ):
                engine.remove_event_handler(handler.iteration_completed, Events.ITERATION_COMPLETED)
                engine.add_event_handler(
                    Events.ITERATION_COMPLETED(event_filter=self.every), handler.iteration_completed
                )
                handler.iteration_log = self.every

    @staticmethod
    def _new_run(handler) -> None:
        """Give ``handler`` a run of its own before its start: MONAI's continues the latest named
        run that is not FINISHED, a failed (or killed) evaluation's, whose ``ckpt_path`` it kept."""
        _set_experiment(handler)
        name = handler.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"  # MONAI's default name
        handler.cur_run = handler.client.create_run(
            experiment_id=handler.experiment.experiment_id, run_name=name
        )

    def mark_running(self, engine: Engine) -> None:
        """Set each tracking handler's run back to RUNNING when its start continued a run that had
        ended (a failed training's, ended FAILED by :meth:`end_failed`): it stayed FAILED while the
        resumed training ran, FINISHED only at its end."""
        for handler in self._trackers(engine):
            run = handler.cur_run
            if run is not None and run.info.status != "RUNNING":  # as MONAI's start fetched it
                handler.client.update_run(run.info.run_id, status="RUNNING")
                handler.cur_run = handler.client.get_run(run.info.run_id)

    @classmethod
    def _all_trackers(cls, engine: Engine) -> list:
        """The trainer's own MLFlowHandlers, then its validator's (through its ValidationHandler)."""
        from monai.handlers import MLFlowHandler

        found = cls._trackers(engine) + [h for h in _attached(engine) if isinstance(h, MLFlowHandler)]
        return list({id(h): h for h in found}.values())

    def end_failed(self, engine: Engine, error: BaseException) -> None:
        """End each tracking handler's run FAILED when the engine's run raises, KILLED when it was
        stopped (Ctrl-C, a SIGTERM: :class:`~pam_monai.engines.StopOnTerminate`) (MONAI's ends it
        on COMPLETED only: it stayed RUNNING), and close the handler, its validator's too (MONAI's
        validator settings never close it: it kept the run, which its close would end FINISHED,
        and a store of its own stayed open). A failure here is logged: the run's error goes on."""
        status = "KILLED" if isinstance(error, (KeyboardInterrupt, Terminated)) else "FAILED"
        ended = set()  # run ids: the trainer's and its validator's handlers log into one run
        for handler in self._all_trackers(engine):
            run, handler.cur_run = handler.cur_run, None  # its close would end the run FINISHED
            try:
                try:
                    if run is not None and run.info.run_id not in ended:
                        ended.add(run.info.run_id)
                        handler.client.set_terminated(run.info.run_id, status)
                finally:
                    handler.close()  # releases its SQLite store, as on COMPLETED
            except Exception as e:  # noqa: BLE001 - the engine's error is the one to report
                log.warning("MLflow: could not end the run as %s (%s: %s)", status, type(e).__name__, e)

    def log_params(self, engine: Engine) -> None:
        """Log ``params`` into each tracking handler's run, but those it has logged (once a run)."""
        for handler in self._trackers(engine):
            run = getattr(handler, "cur_run", None)
            if run is None or getattr(handler, "_params_logged", None) == run.info.run_id:
                continue
            from mlflow.entities import Param  # here: without --tracking mlflow need not be installed

            logged = handler.client.get_run(run.info.run_id).data.params
            params = {k: str(v) for k, v in self.params.items() if k not in (handler.experiment_param or {})}
            kept = {k: v for k, v in params.items() if k in logged and logged[k] != v}
            if kept:
                log.warning(
                    "MLflow run %s (resumed) keeps its parameters %s; this run has %s (a run's parameters "
                    "cannot change: give it another run_name to track it apart)",
                    run.info.run_name,
                    ", ".join(f"{k}={logged[k]}" for k in kept),
                    ", ".join(f"{k}={v}" for k, v in kept.items()),
                )
            new = [Param(k, v) for k, v in params.items() if k not in logged]
            if new:
                handler.client.log_batch(run_id=run.info.run_id, metrics=[], params=new, tags=[])
            handler._params_logged = run.info.run_id


def _set_experiment(handler) -> None:
    """Set a MONAI ``MLFlowHandler``'s ``experiment``, made if need be: MONAI's own (private
    ``_set_experiment``: retries a concurrent creation, refuses a deleted experiment), else, where a
    MONAI dropped it, the same through MLflow's public client (it failed with an AttributeError)."""
    own = getattr(handler, "_set_experiment", None)
    if callable(own):
        own()
        return
    client, name = handler.client, handler.experiment_name
    experiment = handler.experiment or client.get_experiment_by_name(name)
    if experiment is None:
        location = getattr(handler, "artifact_location", None)
        experiment = client.get_experiment(client.create_experiment(name, artifact_location=location))
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted: restore it, or track into another with --experiment_name"
        )
    handler.experiment = experiment


def prepare_tracking_store(uri: str | None = None) -> None:
    """Make the run's MLflow SQLite database (``--tracking mlflow``: MONAI's ``@output_dir/mlruns.db``)
    under a lock, before its tracking handlers open it. Each MLflow client that finds the tables
    missing creates them: two runs started together into one folder (two evaluations, a grid) both
    did, and one failed ("duplicate column name: step"), its run lost. Here the first makes them
    while the others wait on ``<db>.lock``, then find them made. ``uri``: the tracking address;
    None for those the running workflow's MLflow handlers will use (none without tracking). Only
    for ``sqlite:`` addresses: a server or another database makes its tables itself."""
    for each in [uri] if uri else _workflow_tracking_uris():
        path = _sqlite_file(each) if isinstance(each, str) else None
        if path is None:
            continue
        import mlflow  # here: without --tracking mlflow need not be installed

        from ..atomic import folder_lock

        with folder_lock(path.parent, path.name + ".lock"):
            mlflow.MlflowClient(tracking_uri=each)  # makes the tables of a new database


def _workflow_tracking_uris() -> list[str]:
    """The tracking addresses of the running MONAI ``ConfigWorkflow``: its ``tracking_uri`` id
    (``--tracking_uri``, a settings file's id; also for a handler made in an expression), and the
    address each of its MLflow handlers will use, found as MONAI's ``MLFlowHandler`` finds it:
    ``MLFLOW_TRACKING_URI``, else its ``tracking_uri`` argument, else ``mlruns.db`` in the working
    folder. The id alone missed a ``--tracking`` settings file that writes the address into its
    handlers' entries or gives none. [] without a workflow or without tracking (the variable
    alone, set for other work, imports no MLflow)."""
    parser = getattr(_running_workflow(), "parser", None)
    if parser is None:
        return []
    found = [parser.get_parsed_content("tracking_uri")] if "tracking_uri" in parser else []
    found = [os.environ.get("MLFLOW_TRACKING_URI") or uri for uri in found]
    for id in _mlflow_handler_ids(parser.get()):
        if not _disabled(parser, id):
            given = parser.get_parsed_content(f"{id}#tracking_uri") if "tracking_uri" in parser[id] else None
            found.append(os.environ.get("MLFLOW_TRACKING_URI") or given or _monai_default_tracking_uri())
    return [uri for i, uri in enumerate(found) if uri and uri not in found[:i]]


def _mlflow_handler_ids(config, id: str = "") -> list[str]:
    """The ids of the MLflow handlers (``_target_`` ``MLFlowHandler``, by any path) in ``config``."""
    from monai.bundle.utils import ID_SEP_KEY

    items = (
        config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    )
    found = []
    if isinstance(config, dict) and str(config.get("_target_", "")).rsplit(".", 1)[-1] == "MLFlowHandler":
        found.append(id)
    for key, value in items:
        found += _mlflow_handler_ids(value, f"{id}{ID_SEP_KEY}{key}" if id else str(key))
    return found


def _disabled(parser, id: str) -> bool:
    """Whether the component ``id`` is ``_disabled_`` (MONAI's tracking handlers on ranks above 0)."""
    if "_disabled_" not in parser[id]:
        return False
    disabled = parser.get_parsed_content(f"{id}#_disabled_")
    return disabled.lower().strip() == "true" if isinstance(disabled, str) else bool(disabled)


def _monai_default_tracking_uri() -> str | None:
    """The address MONAI's ``MLFlowHandler`` takes without one (``mlruns.db`` in the working folder),
    or None for a MONAI that has none of its own (before 1.6.1: MLflow's default)."""
    from monai.utils import optional_import

    to_uri, found = optional_import("monai.utils", name="path_to_sqlite_uri")
    return to_uri(os.path.join(os.getcwd(), "mlruns.db")) if found else None


# the name MONAI gives the executed config it writes for --tracking (``config_%Y%m%d_%H%M%S.json``),
# at the end of the expression it sets save_execute_config to
_EXECUTED_CONFIG = re.compile(r" \+ '/(config_\d{8}_\d{6}\.json)'$")


def hold_executed_config() -> None:
    """Take the executed config MONAI's ``--tracking`` writes (``<output_dir>/config_<time>.json``,
    made while MONAI creates the workflow, before any of the bundle's checks can run) out of the
    output folder, and that folder too when nothing else is in it, until the checks have passed:
    :func:`save_executed_config` writes it again at the end of ``initialize``. A run refused by a
    check (``--trainer x``, ``--epochs 0``) left it behind, in an ``eval/`` of its own. A path given
    as ``save_execute_config`` is the user's and left where MONAI wrote it."""
    workflow = _running_workflow()
    path = _executed_config(getattr(workflow, "parser", None))
    if path is None:
        return
    workflow._held_executed_config = path
    path.unlink(missing_ok=True)  # missing: another process of the run (torchrun) took it first
    try:
        path.parent.rmdir()  # only when empty: MONAI made it for the config
    except OSError:
        pass


def save_executed_config() -> None:
    """Write the executed config that :func:`hold_executed_config` took aside where MONAI wrote it
    (its tracking handlers log it from there), as MONAI writes it, once every check has passed."""
    import json

    from ..atomic import atomic_write_text

    workflow = _running_workflow()
    path = getattr(workflow, "_held_executed_config", None)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(workflow.parser.get()))  # MONAI's export_config_file: json.dump
    workflow._held_executed_config = None


def _executed_config(parser) -> Path | None:
    """The file of the executed config MONAI wrote for ``--tracking`` under its own name in the
    output folder, or None (no tracking, ``save_execute_config`` false or a path of the user's)."""
    given = parser.get("save_execute_config") if parser is not None else None
    name = _EXECUTED_CONFIG.search(given) if isinstance(given, str) else None
    if name is None:
        return None
    return Path(parser.get_parsed_content("output_dir")).absolute() / name.group(1)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` address, or None (another scheme, an in-memory one)."""
    if not uri.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url  # MLflow's own dependency

    database = make_url(uri).database
    return Path(database).absolute() if database and database != ":memory:" else None
