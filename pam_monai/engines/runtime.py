"""Run set-up: the bundle's folder, seeds, the deterministic mode and the GPU fast path.

The fast path (``fast: true`` in the bundles, the default where a GPU is present) is: cuDNN
benchmark and TF32 (:func:`setup_run`), bf16 autocast and ``torch.compile`` (the trainer's ``amp``
and ``compile``), fused AdamW, and in :func:`fast_network` channels-last tensors, the fusible
instance norm, the up-sampling as matrix products and FPA's dilated convolutions as fused taps;
batches come from tensors already on the device
(:class:`~pam_monai.engines.loaders.DeviceSliceLoader`). ``tests/test_fast_path.py`` checks that
it computes the same function as the plain fp32 path; ``python -m pam_monai bench`` measures it.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "as_bool",
    "bundle_root",
    "check_compile_mode",
    "check_device",
    "check_evaluate_json_layered",
    "check_network_channels",
    "check_outputs",
    "check_override_ids",
    "check_schedule",
    "check_inference_tracking",
    "check_single_process",
    "check_training_settings",
    "compile_by_default",
    "fast_network",
    "kept_process_settings",
    "prepare_tracking_store",
    "refuse_training_with",
    "setup_run",
    "show_error_cause",
    "use_fast_norm",
]

log = logging.getLogger("pam_monai")


def _config_files_on_command_line() -> list[str]:
    """The ``--config_file`` of a ``python -m monai.bundle ...`` command (torchrun's too), else []."""
    argv = sys.argv
    if not argv or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return []
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        else:
            continue
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        return [str(v) for v in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]
    return []


def _running_workflow():
    """The MONAI ``ConfigWorkflow`` whose config is being evaluated, found on the call stack
    (``monai.bundle run``, ``monai.bundle.load`` and friends build one), or None."""
    from monai.bundle import ConfigWorkflow

    frame = sys._getframe(1)
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, ConfigWorkflow):
                return owner
            frame = frame.f_back
    finally:
        del frame  # a frame held here would keep every caller's locals alive
    return None


def _running_workflow_configs() -> Path | None:
    """The ``configs/`` folder of the running MONAI ``ConfigWorkflow`` (MONAI itself takes the
    bundle's root from it for ``sys.path``), or None."""
    workflow = _running_workflow()
    return _configs_folder(workflow) if workflow is not None else None


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


def check_inference_tracking() -> None:
    """``--tracking mlflow`` given to inference: MONAI adds its tracking handler to the evaluator's
    handlers, which inference.json keeps (``handlers``, used by nothing) only so that MONAI can (an
    ``evaluator`` given as a reference made MONAI fail with "'str' object does not support item
    assignment"). Inference has no labels, so nothing to track: say so, and run without it."""
    parser = getattr(_running_workflow(), "parser", None)
    if parser is not None and parser.get("handlers"):
        log.warning(
            "--tracking: inference has no labels, so no metrics or losses to track; it runs without a "
            "tracking handler (MONAI saved its config as config_<time>.json in --output_dir). Track "
            "training (train.json) and evaluation (evaluate.json)"
        )


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


def _configs_folder(workflow) -> Path | None:
    """The ``configs/`` folder of a ``ConfigWorkflow`` (MONAI's ``config_root_path``, an attribute
    it does not document), or None; a MONAI without it is named in a warning (its AttributeError
    stopped every bundle), and the bundle's folder is then found as outside a workflow."""
    root = getattr(workflow, "config_root_path", None)
    if root is None:
        from ..internals import changed

        feature = "finding the bundle's folder from the running workflow (the command line's config is used)"
        warnings.warn(
            changed("monai", "ConfigWorkflow.config_root_path", feature), RuntimeWarning, stacklevel=4
        )
        return None
    root = Path(root)
    return root if root.name == "configs" else None


def bundle_root(where: str | None = None) -> str:
    """The bundle's folder, where its ``models/``, ``eval/`` and ``cache/`` go: the folder above the
    ``configs/`` of the config that MONAI's workflow runs (``monai.bundle run`` / ``load``, in a
    shell or in Python), or that ``python -m monai.bundle`` was given (as MONAI finds a bundle's
    ``metadata.json`` and ``logging.conf``); else ``where`` (its place below the working
    folder, e.g. ``bundles/brats_fpa``) when it is there, or ``.`` when the working folder is a
    bundle (holds ``configs/``: a downloaded bundle run from its own folder). Anywhere else this
    refuses, rather than filling the working folder with a bundle's outputs: pass ``--bundle_root``."""
    configs = _running_workflow_configs()
    if configs is not None:
        return str(configs.parent)
    files = _config_files_on_command_line()  # e.g. ckpt_export, which parses without a workflow
    if files and Path(files[0]).parent.name == "configs":
        return str(Path(files[0]).parent.parent)
    if where and os.path.isdir(os.path.join(where, "configs")):
        return where
    if os.path.isdir("configs"):
        return "."
    raise ValueError(
        f"bundle_root: {os.getcwd()} is not a bundle's folder (no configs/ here"
        + (f", nor {where}/configs below it" if where else "")
        + "), and models/, eval/ and cache/ would be written here: run from the bundle's own folder or "
        "pass --bundle_root path/to/the/bundle"
    )


def config_as_given(id: str):
    """The content of ``id`` in the bundle config being parsed as the user gave it: ``_target_``
    and arguments, references and expressions as written (the bundles' ``model.json`` records
    ``train_transforms`` so, not by class name: a reader can reproduce the run). JSON-serialisable:
    a value JSON cannot hold (a Python object given to ``monai.bundle.run``) is its ``repr``.

    For a config's own expressions (``"$pam_monai.engines.config_as_given('train_transforms')"``):
    it reads the content from MONAI's resolver that evaluates them, up the call stack."""
    from monai.bundle.reference_resolver import ReferenceResolver

    frame = inspect.currentframe()
    try:
        while frame is not None:
            resolver = frame.f_locals.get("self")
            if isinstance(resolver, ReferenceResolver) and id in resolver.items:
                return _as_json(resolver.items[id].get_config())
            frame = frame.f_back
    finally:
        del frame  # a frame held here would keep every caller's locals alive
    raise RuntimeError(
        f"config_as_given({id!r}): no bundle config with the id {id!r} is being parsed; call it from an "
        "expression of that config"
    )


def _as_json(value):
    """``value`` with what JSON cannot hold (objects, NaN) as its ``repr``."""
    if isinstance(value, dict):
        return {str(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return value if value is None or isinstance(value, (str, bool, int)) else repr(value)


def as_bool(value) -> bool:
    """A command-line flag as a bool: ``--resume true`` arrives as the string "true" (Fire parses
    only ``True``/``False``), and a plain ``bool("false")`` would be True."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean flag: {value!r} (use true or false)")
    return bool(value)


def show_error_cause() -> None:
    """Under ``python -m monai.bundle`` (and ``torchrun -m monai.bundle``), end an uncaught error's
    traceback with its cause. MONAI wraps every error of a config expression in a ``RuntimeError``
    ("Failed to evaluate ConfigExpression: ...") that quotes the expression, so the message naming the
    file and the fix sat in the middle of the traceback and the last lines showed config code. Other
    processes (Python, notebooks, tests, the experiment runner) keep their hook.

    Under torchrun the cause also goes into the process's error file, so that torchrun's summary
    of the failure, the last lines it prints, names it for the process that failed (it said "To
    enable traceback see: ..." beside the other processes' secondary errors)."""
    hook = sys.excepthook
    if getattr(hook, "shows_cause", False) or not _run_by_monai_bundle():
        return

    def excepthook(kind, error, traceback):
        hook(kind, error, traceback)
        from ..cli import _root_cause

        cause = _root_cause(error)
        if cause is not error:
            print(f"\n{type(cause).__name__}: {cause}", file=sys.stderr)
        _write_torchrun_error_file(cause)

    excepthook.shows_cause = True
    sys.excepthook = excepthook


def _write_torchrun_error_file(cause: BaseException) -> None:
    """Write ``cause`` into the error file torchrun gives each process (``TORCHELASTIC_ERROR_FILE``)
    in the format of torch's ``@record``, which torchrun's summary reads, with the cause's own
    traceback (MONAI's wrapping quotes config code), or the error of the process that failed first
    when this one failed after it (:class:`~pam_monai.engines.StopEveryProcessOnError`); nothing
    outside torchrun."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    import traceback as tb

    from .handlers import StopEveryProcessOnError

    text = f"{type(cause).__name__}: {cause}"
    first = StopEveryProcessOnError.failed_first_elsewhere
    # torchrun takes the failure with the earliest whole second for the root cause, the lowest
    # rank on a tie: a process that failed second may be shown as the root, with the first's error
    text = f"{first}; this process failed then, {text}" if first else text
    # the summary shows the traceback, not the message: its last line is the one to read
    callstack = "".join(tb.format_exception(cause)) + (
        f"(this process failed after {first})\n" if first else ""
    )
    _write_error_file(text, callstack)


def _write_error_file(message: str, callstack: str) -> None:
    """Write ``message`` into torchrun's error file of this process (``TORCHELASTIC_ERROR_FILE``,
    ``@record``'s format), which its agent's closing summary shows (``callstack``); nothing outside
    torchrun. For a process that ends without an exception of its own too (os._exit)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import json
    import time

    from ..atomic import atomic_write_text

    error = {"message": message, "extraInfo": {"py_callstack": callstack, "timestamp": str(int(time.time()))}}
    try:  # whole or not at all: the agent reads it once the process has ended
        atomic_write_text(path, json.dumps({"message": error}))
    except OSError as e:  # the summary then says less; the log names the error anyway
        print(f"could not write torchrun's error file {path}: {e}", file=sys.stderr)


def _run_by_monai_bundle() -> bool:
    main = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return (
        main is not None
        and main.name == "__main__.py"
        and main.parent.name == "bundle"
        and (main.parent.parent.name == "monai")
    )


def check_single_process() -> None:
    """Refuse a one-process workflow (``train.json`` without ``multi_gpu_train.json``, evaluation,
    inference) started by ``torchrun`` with several processes: without a process group each would
    run the whole workflow, on every slice and the same device, writing the same ``models/`` and
    ``eval/``, while the user thinks the GPUs share the work."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            f"torchrun started {world} processes (WORLD_SIZE={world}), but this workflow runs in one: each "
            "would do all of it, on the same device, writing the same files; train on several GPUs with "
            "configs/multi_gpu_train.json after train.json in --config_file, and evaluate or infer without "
            "torchrun"
        )


def _workflow_overrides() -> tuple[object, dict, object] | None:
    """The config files, the id overrides and the ``tracking`` argument given to MONAI's
    ``create_workflow`` (``monai.bundle run``), found on the call stack while it initialises the
    workflow, or None."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow

    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not create_workflow.__code__:
        frame = frame.f_back
    if frame is None:
        return None
    # MONAI's local variables, not an API: a MONAI that renamed them would leave every id unchecked
    args, files = frame.f_locals.get("_args"), frame.f_locals.get("config_file")
    if not isinstance(args, dict) or files is None:
        from ..internals import changed

        feature = "the check of command-line override ids (a mistyped --<id> is not refused)"
        warnings.warn(
            changed(
                "monai",
                "the local variables _args and config_file of monai.bundle.scripts.create_workflow",
                feature,
            ),
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    # what is not a parameter of the workflow (run_id, tracking, ...) MONAI applies as an id override
    named = set(inspect.signature(ConfigWorkflow.__init__).parameters) | {"workflow_name", "args_file"}
    return files, {k: v for k, v in args.items() if k not in named}, args.get("tracking")


def _tracking_ids(tracking) -> set[str]:
    """The ids MONAI's experiment tracking adds to the config (``--tracking mlflow``: ``tracking_uri``,
    ``experiment_name``, ``run_name``, ...), which ``--<id>`` may set as MONAI documents; a
    settings file (``--tracking my_settings.json``) adds its own ``configs``. As ``ConfigWorkflow``
    reads them."""
    if not tracking:
        return set()
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    else:
        try:
            settings = ConfigParser.load_config_files(tracking)
        except Exception:  # MONAI's own reading of it names the problem
            return set()
    configs = settings.get("configs") if isinstance(settings, dict) else None
    return set(configs) if isinstance(configs, dict) else set()


def check_override_ids() -> None:
    """Refuse command-line overrides (``python -m monai.bundle run ... --<id> <value>``) of ids that
    none of the run's configs has: MONAI adds such an id to the config and nothing reads it, so a
    typo (``--epoch 2``) or an id of another workflow (``--learning_rate`` to inference) was
    ignored without a word. Python callers (``monai.bundle.run``) are left to add ids of their own."""
    from monai.bundle import ConfigParser

    found = _workflow_overrides() if _config_files_on_command_line() else None
    if not found:
        return
    files, overrides, tracking = found
    parser = ConfigParser()
    parser.read_config(files)
    known = _tracking_ids(tracking)
    unknown = [
        key for key in overrides if not key.startswith("_meta_") and key not in parser and key not in known
    ]
    if not unknown:
        _check_flag_values(parser, overrides)
        return
    names = ", ".join(Path(f).name for f in (files if isinstance(files, (list, tuple)) else [files]))
    ids = [str(k) for k in parser.get()]
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, ids, n=1)
        lines.append(f"--{key}: no such id in {names}" + (f" (did you mean --{close[0]}?)" if close else ""))
    raise ValueError(
        "; ".join(lines)
        + ": MONAI would add it and nothing would read it; the overridable ids are listed in "
        "the bundle's docs/README.md"
    )


def _check_flag_values(parser, overrides: dict) -> None:
    """Refuse a command-line value that is not true or false for an id the configs read as one:
    ``as_bool`` said "not a boolean flag: 'maybe'" deep in the run, naming no id (``--amp``,
    ``--resume``?), or took any other value (a list) for True; and one that is not a whole number
    for the counts of ``_COUNTS``."""
    import json

    flags = set(re.findall(r"as_bool\(@(\w+)\)", json.dumps(parser.get())))
    # an expression or a reference (--seed '$1+1', --resume @fast) is MONAI's to resolve: its value
    # is checked where it is read, as a default's is
    overrides = {key: value for key, value in overrides.items() if not _is_config_syntax(value)}
    bad = {
        key: value
        for key, value in overrides.items()
        if (key in flags or (key in parser and isinstance(parser[key], bool))) and not _is_flag(value)
    }
    if bad:
        given = ", ".join(f"--{key} {value!r}" for key, value in bad.items())
        raise ValueError(
            f"{given}: not a true/false flag; pass true or false (e.g. --{next(iter(bad))} true)"
        )
    for key in _COUNTS:
        if key in overrides and key in parser and not _is_count(overrides[key]):
            raise ValueError(
                f"--{key} {overrides[key]!r}: not a whole number of 0 or more; pass e.g. --{key} {parser[key]}"
            )


# ids read as whole numbers >= 0 without a check of their own: int() said "invalid literal for int()
# with base 10: 'abc'" naming no id (the others, e.g. epochs and batch_size, have their checks)
_COUNTS = ("seed", "data_seed", "fold", "num_workers")


def _is_config_syntax(value) -> bool:
    """Whether MONAI reads ``value`` as an expression, a reference or a macro, not as it is."""
    from monai.bundle.utils import EXPR_KEY, ID_REF_KEY, MACRO_KEY

    return isinstance(value, str) and value.startswith((EXPR_KEY, ID_REF_KEY, MACRO_KEY))


def _is_count(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.strip().isdigit()


def _is_flag(value) -> bool:
    if isinstance(value, (bool, int)):
        return True
    try:
        return isinstance(value, str) and as_bool(value) in (True, False)
    except ValueError:
        return False


def check_device(device) -> None:
    """Refuse, naming the ``device`` id, a device PyTorch does not know (``--device gpu``) or a CUDA
    GPU this machine lacks: PyTorch refused them later, while the data loader was built, naming no
    id ("Torch not compiled with CUDA enabled")."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device: {str(device)!r} is not a device PyTorch knows (e.g. cpu, cuda, cuda:1): pass --device "
            "cpu or --device cuda:N, or leave it out (the first GPU when there is one, else the CPU)"
        ) from None
    if device.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        raise ValueError(
            f"device: {str(device)!r}, but this PyTorch finds no CUDA GPU: pass --device cpu, or leave it out "
            "(the first GPU when there is one, else the CPU)"
        )
    if (device.index or 0) >= count:
        raise ValueError(
            f"device: {str(device)!r}, but this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}: "
            "pass one of them with --device"
        )


def _check_number(value, key: str, kind: type, least: float, above: bool, example) -> None:
    """Refuse a setting that is not a number of ``kind`` (int: whole) at or ``above`` ``least``, naming
    its id and a value to pass: the text's own when it reads as one (a quoted ``"1e-3"``)."""
    whole = kind is int and isinstance(value, int) or kind is float and isinstance(value, (int, float))
    if whole and not isinstance(value, bool) and (value > least if above else value >= least):
        return
    what = ("a whole number" if kind is int else "a number") + (
        f" above {least:g}" if above else f" of {least:g} or more"
    )
    try:
        fixed = kind(str(value))
        example = fixed if (fixed > least if above else fixed >= least) else example
    except ValueError:
        pass
    raise ValueError(f"{key}: {value!r} is not {what}: pass --{key} {example}")


def check_training_settings(learning_rate, weight_decay, batch_size, network_options) -> None:
    """Refuse, naming the id, training settings of another type than the run needs: a config copy
    edited with a quoted number (``"learning_rate": "1e-3"``), or options that Fire could not parse
    and passed on as text (``--network_options "{features: [8]}"``), failed in AdamW ("'<=' not
    supported between instances of 'float' and 'str'"), the DataLoader ("got batch_size=8") or
    the network factory ("'str' object is not a mapping")."""
    _check_number(learning_rate, "learning_rate", float, 0, True, 0.0001)
    _check_number(weight_decay, "weight_decay", float, 0, False, 1e-05)
    _check_number(batch_size, "batch_size", int, 1, False, 8)
    if not isinstance(network_options, dict):
        raise ValueError(
            f"network_options: {network_options!r} is not a mapping of options (Fire passes text it cannot "
            "parse on as text): quote its keys, e.g. --network_options \"{'features': [8, 16, 32, 64]}\""
        )


def _count(value, key: str, what: str = "epochs") -> int:
    """A count (of epochs, iterations) from a config or the command line, or an error naming its id."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{key}: {value!r} is not a number of {what} (a whole number, 1 or more): pass --{key} N"
        )
    return value


def check_schedule(epochs, val_interval, log_every=1, validation: bool = True) -> None:
    """Refuse, before any data is read, a training schedule that Ignite would refuse only later and
    without naming the id (``--epochs 0``, ``--val_interval 0``) or that was silently changed
    (``--log_every 0`` read the loss every iteration); warn of one that never validates
    (``val_interval`` above ``epochs``): ``models/model.pt``, the weights evaluation and inference
    load, is then not written, which went unsaid. ``validation=False``: the caller (the benchmark's
    bundle stage) switched validation off on purpose, so there is nobody to warn."""
    epochs, val_interval = _count(epochs, "epochs"), _count(val_interval, "val_interval")
    _count(log_every, "log_every", "iterations")
    if validation and val_interval > epochs:
        log.warning(
            "val_interval: %d > epochs %d: no epoch is validated, so models/model.pt (the best validation "
            "IoU, which evaluation and inference load) is not written, only models/checkpoint_last.pt: "
            "pass --val_interval %d or less to validate",
            val_interval,
            epochs,
            epochs,
        )


def check_network_channels(in_channels, out_channels, spec) -> None:
    """Refuse, before any data is read, a ``network_def`` edited to channels the data and the loss do
    not have (``in_channels`` is ``len(@spec.channels)``: the data's; one output, the foreground
    logit): PyTorch's convolution or MONAI's Dice loss refused it only at the first step, after the
    data were prepared, naming neither setting. ``spec``: the run's
    :class:`~pam_monai.data.DatasetSpec`."""
    if in_channels != spec.in_channels:
        raise ValueError(
            f"network_def#in_channels: {in_channels}, but {spec.name} images have {spec.in_channels} channels "
            f'({", ".join(spec.channels)}): set it back to "$len(@spec.channels)" (the data\'s; own data take '
            "theirs from dataset.json's channel_names)"
        )
    if out_channels != 1:
        raise ValueError(
            f"network_def#out_channels: {out_channels}, but the bundles' networks return one foreground logit "
            "(sigmoid, Dice loss on the target): set it back to 1 and choose the target with --foreground_label"
        )


def refuse_training_with(config: str) -> None:
    """Refuse ``run training`` with ``config`` (``evaluate.json``) merged over ``train.json``: its
    validation would be the evaluation's, loading ``models/model.pt`` into the network being trained
    and scoring the test split, every ``val_interval`` epochs."""
    raise ValueError(
        f"training: {config} is in --config_file, and its evaluation would replace the validation (loading "
        "models/model.pt into the network being trained, on the test split): train with train.json alone "
        "(and multi_gpu_train.json), then evaluate with `run evaluating`"
    )


def check_evaluate_json_layered(configs_read: list) -> None:
    """Refuse ``evaluate.json`` read without ``train.json`` before it (``configs_read``: the files
    that added themselves to it, in ``--config_file`` order). Its ``validate#...`` keys edit
    train.json's validation: alone (read thanks to its ``+validate`` keys) MONAI stopped on a
    missing reference, and read before train.json its edits were overwritten."""
    if "train.json" in configs_read and configs_read[-1] == "evaluate.json":
        return
    show_error_cause()  # under monai.bundle the traceback then ends with this message
    problem = (
        "train.json came after it in --config_file, and replaced its edits of the validation"
        if "train.json" in configs_read
        else "it was read without train.json, whose validation it edits"
    )
    raise ValueError(
        f"evaluate.json: {problem}; pass train.json first: python -m monai.bundle run evaluating "
        "--config_file \"['configs/train.json','configs/evaluate.json']\" with the training's overrides (--dataset_dir, ...)"
    )


def check_outputs(folders: dict) -> None:
    """Refuse, before any data is read, output folders the workflow could not write (the bundles:
    ``{"ckpt_dir": ..., "output_dir": ...}``): a bundle in a shared read-only folder ran a whole
    evaluation or training epoch before failing on its first write. The error names the folder and
    the override, the folder's id, that sends it elsewhere (``--output_dir DIR``)."""
    from ..atomic import check_writable

    for key, folder in folders.items():
        # a resume reads its checkpoint from the new folder: it must be copied there first
        where = f"--{key} DIR" + (
            " (to resume, copy this folder's checkpoints there first)" if key == "ckpt_dir" else ""
        )
        check_writable(folder, where)


def _has_triton() -> bool:
    """Whether Triton, which ``torch.compile`` needs on a GPU, is there: PyTorch's own check, which
    is private (``torch.utils._triton``); where a PyTorch moved it, whether ``triton`` imports (its
    absence read as "no Triton" and turned compiling off on every GPU, with a wrong warning)."""
    try:
        from torch.utils._triton import has_triton_package
    except ImportError:
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return bool(has_triton_package())


def compile_by_default(fast, device) -> bool:
    """The bundles' ``compile``: with ``fast``, but on a GPU only where ``torch.compile`` can build
    its kernels: with Triton, which PyTorch's Linux CUDA wheels bring and its Windows wheels do not
    (compiling failed at the first step there). ``--compile true`` still forces it."""
    if not as_bool(fast):
        return False
    if torch.device(device).type != "cuda" or _has_triton():
        return True
    log.warning(
        "fast: training without torch.compile: on %s it needs Triton, which this PyTorch lacks (its Windows "
        "builds do); --compile true forces it",
        device,
    )
    return False


def check_compile_mode(compile, compile_mode) -> None:
    """Warn that ``compile_mode`` is ignored while ``compile`` is false (the default on the CPU):
    it was dropped without a word. A warning, not a refusal, so that one command line serves a GPU
    machine, where it applies, and a CPU one."""
    if compile_mode and not as_bool(compile):
        log.warning(
            "compile_mode: %r is ignored because compile is false (the default without --fast, and on the "
            "CPU): pass --compile true to compile with it, or leave --compile_mode out",
            compile_mode,
        )


_threads_before_deterministic: int | None = None  # the intra-op threads a deterministic run set to 1


def setup_run(seed: int = 0, deterministic: bool = False, fast: bool = False, rank: int = 0) -> None:
    """Seed every RNG; optionally make the run bit-reproducible; switch on the fast path's flags.

    This configures the process (the bundles call it first): every flag below is set both ways,
    from the arguments alone, so that a run in a process where another ran before (the experiment
    runner, a notebook) gets its own settings, not the last run's.

    Args:
        seed: seed of torch, NumPy and Python's ``random``.
        deterministic: the documented deterministic mode: deterministic algorithms only
            (``torch.use_deterministic_algorithms``, ``cudnn.deterministic``; with
            ``CUBLAS_WORKSPACE_CONFIG`` set where unset), cuDNN benchmark off, one intra-op thread on
            the CPU, so that two runs with the same seed give the same weights. Without it,
            deterministic algorithms are off (MONAI's ``set_determinism`` restricted cuDNN to its
            deterministic algorithms in every seeded run, the fast path's too), and the thread count
            a deterministic run before it set to 1 comes back.
        fast: cuDNN benchmark and TF32 matmuls (GPU only; ignored with ``deterministic``); without
            it, both off.
        rank: the process's rank under ``torchrun``: its RNGs are seeded with ``seed + rank``, so
            that each process draws its own random flips (with one seed, every process flipped
            the same positions of its batch). What must agree needs no shared seed: DDP starts
            every process from rank 0's weights, the ``DistributedSampler`` shards by its own seed.
    """
    from monai.utils import set_determinism

    deterministic, fast = as_bool(deterministic), as_bool(fast)
    set_determinism(seed=int(seed) + int(rank), use_deterministic_algorithms=deterministic)
    fast = fast and not deterministic and torch.cuda.is_available()
    torch.backends.cudnn.deterministic = deterministic  # set_determinism sets it True for any seed
    torch.backends.cudnn.benchmark = fast
    torch.backends.cuda.matmul.allow_tf32 = fast
    if fast:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default already; a user's False is kept otherwise
    _set_deterministic_threads(deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        log.info("deterministic mode: seed %d, deterministic algorithms, 1 CPU thread", seed)


def _set_deterministic_threads(deterministic: bool) -> None:
    """One intra-op thread in deterministic mode; the count from before it once a run is not."""
    global _threads_before_deterministic
    if deterministic:
        if _threads_before_deterministic is None:
            _threads_before_deterministic = torch.get_num_threads()
        torch.set_num_threads(1)
    elif _threads_before_deterministic is not None:
        if torch.get_num_threads() == 1:  # not changed by the caller since
            torch.set_num_threads(_threads_before_deterministic)
        _threads_before_deterministic = None


@contextlib.contextmanager
def kept_process_settings() -> Iterator[None]:
    """Restore after the block what :func:`setup_run` and MONAI's ``ConfigWorkflow`` change in the
    process: intra-op threads, deterministic algorithms, the cuDNN and TF32 flags,
    ``CUBLAS_WORKSPACE_CONFIG``, the RNG states of torch (CUDA's too: one not started before the
    block is seeded as the caller's ``torch.manual_seed`` left it), NumPy and ``random``, MONAI's
    global seed (which seeds every ``Compose`` made after ``set_determinism``), and ``sys.path`` (a
    workflow adds its bundle's folder at every run). For library calls that run bundles in this
    process (:func:`pam_monai.experiments.run_experiment`): the caller's program goes on as before.
    So does its SIGTERM handler (the runner's stops the grid while it runs), in the main thread.
    """
    import random
    import signal
    import threading

    import monai.utils.misc as monai_misc
    import numpy as np

    saved = _flags()
    threads_before_deterministic = _threads_before_deterministic
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    # CUDA not started: it takes the seed of the caller's last ``torch.manual_seed`` when it starts
    cuda_seed = torch.initial_seed()
    path = list(sys.path)
    monai_seed = monai_misc.get_seed()
    main = threading.current_thread() is threading.main_thread()  # Python's rule for handlers
    sigterm = signal.getsignal(signal.SIGTERM) if main else None

    def put_back_sigterm() -> None:
        if main:  # None: a handler set outside Python, which cannot be put back; the default is the closest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if sigterm is None else sigterm)

    def put_back_flags() -> None:
        global _threads_before_deterministic
        _set_flags(saved)
        _threads_before_deterministic = threads_before_deterministic
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas

    def put_back_rngs() -> None:
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        else:  # set_determinism's torch.manual_seed (a random seed where MONAI had none) replaced it
            torch.cuda.manual_seed_all(cuda_seed)

    steps = {
        "the SIGTERM handler": put_back_sigterm,
        # MONAI's public setter (its ``_seed`` is private); the RNGs and cuDNN flags it sets too
        # are put back after it
        "MONAI's global seed": lambda: monai_misc.set_determinism(seed=monai_seed),
        "the threads and deterministic, cuDNN and TF32 flags": put_back_flags,
        "the RNG states": put_back_rngs,
        "sys.path": lambda: sys.path.__setitem__(slice(None), path),
    }
    try:
        yield
    except BaseException:
        _put_back(steps, raised=True)
        raise
    _put_back(steps, raised=False)


def _put_back(steps: dict, raised: bool) -> None:
    """Run each of :func:`kept_process_settings`' ``steps``, every one even where another fails.
    After a block that raised (a SIGTERM in the middle of an import leaves it half done, and
    ``torch.use_deterministic_algorithms`` imports ``torch._inductor`` again), a failure is
    warned about: the block's error goes on (it ended the grid on an unrelated ImportError, status
    1 instead of 143); otherwise the first failure is raised."""
    run_every_step(steps, raised, "the caller's %s could not be put back after the run that raised: %s: %s")


def run_every_step(steps: dict, raised: bool, after_error: str, logger: logging.Logger = log) -> None:
    """Run each of ``steps`` (``{what: callable}``), every one even where another fails. After a
    block that raised (``raised``) a failure is logged to ``logger`` with ``after_error`` % (what,
    error type, error) and the block's own error goes on; otherwise the first failure is raised."""
    failed = []
    for what, step in steps.items():
        try:
            step()
        except Exception as e:
            failed.append((what, e))
    if failed and not raised:
        raise failed[0][1]
    for what, e in failed:
        logger.warning(after_error, what, type(e).__name__, e)


def _flags() -> dict:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return {
        "threads": torch.get_num_threads(),
        "deterministic": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "cudnn": (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32),
        "matmul_tf32": matmul.allow_tf32,
    }


def _set_flags(flags: dict) -> None:
    cudnn = torch.backends.cudnn
    torch.set_num_threads(flags["threads"])
    on, warn_only = flags["deterministic"]
    torch.use_deterministic_algorithms(on, warn_only=warn_only)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = flags["cudnn"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]


def use_fast_norm(network: nn.Module) -> nn.Module:
    """Replace every ``nn.InstanceNorm{1,2,3}d`` without running statistics by the
    :class:`~pam_monai.networks.blocks.norm.FastInstanceNorm` of the same size, in place.

    The same function (instance normalisation), the same ``weight`` / ``bias`` parameter objects
    (so an optimizer built before or after still holds them), the same state dict; only the
    implementation changes (one that ``torch.compile`` fuses with the ReLU that follows and that
    keeps channels-last / bf16 tensors as they are). Returns ``network``.

    Example::

        >>> from pam_monai.networks import get_network
        >>> net = use_fast_norm(get_network("fpa"))
    """
    from ..networks.blocks.norm import FastInstanceNorm1d, FastInstanceNorm2d, FastInstanceNorm3d

    kinds = {
        nn.InstanceNorm1d: FastInstanceNorm1d,
        nn.InstanceNorm2d: FastInstanceNorm2d,
        nn.InstanceNorm3d: FastInstanceNorm3d,
    }
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            fast_cls = kinds.get(type(child))
            if fast_cls is None or child.track_running_stats:
                continue
            fast = fast_cls(child.num_features, eps=child.eps, affine=False)
            fast.affine = child.affine
            if child.affine:
                fast.weight, fast.bias = child.weight, child.bias  # the same Parameter objects
            fast.train(child.training)
            setattr(parent, name, fast)
    return network


def fast_network(
    network: nn.Module,
    channels_last: bool = False,
    fast_norm: bool = False,
    resize: str | None = None,
    taps: bool = False,
    contiguous_attention: bool = False,
    plane_kernels: bool = False,
) -> nn.Module:
    """The network on the fast path. Every option keeps the function and the state dict.

    Args:
        network: a network (already on its device).
        channels_last: convert to ``torch.channels_last`` (3-D networks: ``torch.channels_last_3d``;
            for GPUs; slower on CPUs).
        fast_norm: swap ``nn.InstanceNorm`` for :class:`~pam_monai.networks.blocks.norm.FastInstanceNorm`.
        resize: the decoders' bilinear up-sampling (:class:`~pam_monai.networks.blocks.resize.LinearResize`):
            ``"interpolate"`` (``F.interpolate``), ``"matmul"`` (GEMMs in the tensors' layout: the
            GPU fast path with channels-last, whose ``F.interpolate`` backward scatters with atomics)
            or ``"gather"``; ``None`` leaves the network's choice.
        taps: FPA's dilated depthwise convolutions as fused sums of taps also on the GPU and under
            ``torch.compile`` (:func:`~pam_monai.networks.blocks.fastconv.use_tap_convs`), instead of
            cuDNN's grouped kernels (slow at dilation 9, in channels-last above all). 2-D only: a
            3-D network's ``Conv3d`` keeps cuDNN's (oneDNN's) kernels, as the CPU routes do.
        contiguous_attention: FPA's attention branches on the contiguous layout, their 1x1
            convolutions as matrix products, in a channels-last network
            (:func:`~pam_monai.networks.blocks.fpa.use_contiguous_attention`; an experiment, not yet
            measured on a GPU, off in the bundles).
        plane_kernels: FPA's attention branches contiguous with each ``dilated conv -> norm -> ReLU``
            unit as one Triton kernel per direction
            (:func:`~pam_monai.networks.blocks.plane_kernels.use_plane_kernels`; an experiment, not yet
            measured on a GPU, off in the bundles).

    Example::

        >>> from pam_monai.networks import get_network
        >>> net = fast_network(get_network("fpa"), channels_last=True, fast_norm=True, resize="matmul", taps=True)
    """
    from ..networks.blocks.fastconv import use_tap_convs
    from ..networks.blocks.fpa import use_contiguous_attention
    from ..networks.blocks.resize import use_resize

    if as_bool(contiguous_attention):
        network = use_contiguous_attention(network)
    if as_bool(plane_kernels):
        from ..networks.blocks.plane_kernels import use_plane_kernels

        network = use_plane_kernels(network)
    if resize is not None:
        network = use_resize(network, str(resize))
    if as_bool(taps):
        network = use_tap_convs(network)
    if as_bool(fast_norm):
        network = use_fast_norm(network)
    if as_bool(channels_last):
        # channels-last for 2-D networks' 4-D weights, its 3-D form for 3-D networks' 5-D ones
        # (``Module.to(memory_format=torch.channels_last)`` refuses a 5-D weight)
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        _to_memory_formats(network, formats)
    return network


def _to_memory_formats(network: nn.Module, formats: dict) -> None:
    """Each parameter and buffer of ``network`` of a dimension in ``formats`` in that memory format,
    in place: the same ``Parameter`` objects (their ``data`` replaced, as ``Module.to`` does) and
    buffers (gradients, if any, keep their layout), through public calls (``Module._apply``, which
    ``Module.to`` uses, is private)."""
    with torch.no_grad():
        for module in network.modules():
            for param in module.parameters(recurse=False):
                if param.dim() in formats:
                    param.data = param.data.contiguous(memory_format=formats[param.dim()])
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer.dim() in formats:
                    setattr(module, name, buffer.contiguous(memory_format=formats[buffer.dim()]))
