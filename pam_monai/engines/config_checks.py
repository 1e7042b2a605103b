"""Checks of a run's settings before any work: command-line overrides (unknown ids, flags that are
not true or false), the device, the training settings and schedule, the network's channels, the
output folders, the config files' order, one process per workflow; each refusal names the id (or
the file) and what to pass."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import torch

from .error_report import show_error_cause
from .flags import as_bool
from .workflow import _config_files_on_command_line, _running_workflow

__all__ = [
    "check_compile_mode",
    "check_device",
    "check_evaluate_json_layered",
    "check_inference_tracking",
    "check_network_channels",
    "check_outputs",
    "check_override_ids",
    "check_schedule",
    "check_single_process",
    "check_training_settings",
    "refuse_training_with",
]

log = logging.getLogger("pam_monai")


def check_inference_tracking() -> None:
    """``--tracking mlflow`` given to inference: MONAI adds its tracking handler to the evaluator's
    handlers, which inference.json keeps (``handlers``, used by nothing) only so that MONAI can (an
    ``evaluator`` given as a reference made MONAI fail with "'str' object does not support item
    assignment"). Inference has no labels, so nothing to track: say so, and run without it. Nothing
    of it is written either: the handler is never built (no MLflow database), and inference.json
    sets ``save_execute_config`` false, so MONAI saves no config_<time>.json among the masks."""
    parser = getattr(_running_workflow(), "parser", None)
    if parser is not None and parser.get("handlers"):
        log.warning(
            "--tracking: inference has no labels, so no metrics or losses to track; it runs without a "
            "tracking handler and records nothing (no MLflow run, no saved config). Track training "
            "(train.json) and evaluation (evaluate.json)"
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


def _tracking_ids(tracking) -> dict:
    """The ids MONAI's experiment tracking adds to the config (``--tracking mlflow``: ``tracking_uri``,
    ``experiment_name``, ``run_name``, ...), which ``--<id>`` may set as MONAI documents, with their
    defaults; a settings file (``--tracking my_settings.json``) adds its own ``configs``. As
    ``ConfigWorkflow`` reads them. The entries of ``configs`` named in ``handlers_id`` (``trainer``,
    ``validator``, ``evaluator``: MLflow handlers) are no ids: ``patch_bundle_tracking`` adds them to
    their engine's handler list (or nowhere, without that engine), so ``--trainer`` is nobody's."""
    if not tracking:
        return {}
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    else:
        try:
            settings = ConfigParser.load_config_files(tracking)
        except Exception:  # MONAI's own reading of it names the problem
            return {}
    if not isinstance(settings, dict) or not isinstance(settings.get("configs"), dict):
        return {}
    handlers = settings.get("handlers_id")
    handlers = handlers if isinstance(handlers, dict) else {}
    return {key: value for key, value in settings["configs"].items() if key not in handlers}


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
    names = ", ".join(Path(f).name for f in (files if isinstance(files, (list, tuple)) else [files]))
    _refuse_tracking_placeholders(overrides, names, known)
    unknown = [
        key for key in overrides if not key.startswith("_meta_") and key not in parser and key not in known
    ]
    if not unknown:
        _check_flag_values(parser, overrides, known)
        return
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


# ids the bundles' configs keep only for MONAI's --tracking, which adds its evaluator's MLflow handler
# to the list ``handlers`` when there is an engine ``evaluator`` (inference.json's is ``@predictor``;
# without ``handlers`` MONAI failed on an ``--evaluator`` given to train.json, "'str' object does not
# support item assignment"): nothing of the bundles reads them
_FOR_MONAI_TRACKING = ("evaluator", "handlers")
# the ids of MONAI's tracking settings that a run may set (MONAI's docs: --tracking_uri, ...)
_TRACKING_SETTINGS = ("tracking_uri", "experiment_name", "run_name", "save_execute_config")


def _refuse_tracking_placeholders(overrides: dict, names: str, tracking: dict) -> None:
    """Refuse ``--evaluator`` and ``--handlers`` (:data:`_FOR_MONAI_TRACKING`), with or without
    ``--tracking``: the bundles track their engines (``train#trainer``, ``validate#evaluator``) as
    they are, and an ``evaluator`` given to train.json made MONAI's tracking fail, naming no option,
    or (inference.json) replaced a reference nothing reads. ``tracking``: the ids --tracking adds."""
    given = [key for key in overrides if key in _FOR_MONAI_TRACKING]
    if not given:
        return
    settable = ", ".join(f"--{key}" for key in _TRACKING_SETTINGS if not tracking or key in tracking)
    raise ValueError(
        f"--{given[0]}: not an id to set in {names}: MONAI's --tracking reads evaluator and handlers as an "
        "engine and its handler list to add an MLflow handler to, and nothing else reads them; --tracking "
        "mlflow tracks the bundles' engines as they are (train#trainer, and validate#evaluator for validation "
        f"and evaluation): leave --{given[0]} out; what --tracking lets you set is {settable} (MONAI's "
        "tracking settings, or those of your --tracking settings file)"
    )


def _check_flag_values(parser, overrides: dict, tracking: dict) -> None:
    """Refuse a command-line value that is not true or false for an id the configs read as one:
    ``as_bool`` said "not a boolean flag: 'maybe'" deep in the run, naming no id (``--amp``,
    ``--resume``?), or took any other value (a list) for True; and one that is not a whole number
    for the counts of ``_COUNTS``; ``tracking``: the ids ``--tracking`` adds, with their defaults."""
    import json

    flags = set(re.findall(r"as_bool\(@(\w+)\)", json.dumps(parser.get())))
    _check_values_given(_with_tracking_ids(parser, tracking), overrides, flags)
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


def _check_values_given(parser, overrides: dict, flags: set) -> None:
    """Refuse ``True`` for an id that is no true/false flag: MONAI's command line (Fire) makes an id
    given without a value (``--dataset_dir --epochs 1``) ``True``, and the run then died on it in
    config code (``TypeError: expected str, bytes or os.PathLike object, not bool``), naming no id.
    As the pam_monai commands refuse such flags (``cli.flags_without_value``)."""
    empty = [
        f"--{key}"
        for key, value in overrides.items()
        if value is True and key in parser and key not in flags and not _may_be_bool(parser, key)
    ]
    if empty:
        raise ValueError(
            f"{', '.join(empty)} given without a value (MONAI read it as True, which this id does not "
            f"take): pass one after each (e.g. {empty[0]} VALUE); the bundle's docs/README.md lists its ids, "
            "MONAI's tracking settings (monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS) those --tracking adds"
        )


def _with_tracking_ids(parser, tracking: dict):
    """A copy of ``parser`` with the ids ``--tracking`` adds that its configs lack, at their defaults,
    as ``ConfigWorkflow.patch_bundle_tracking`` adds them: ``--run_name`` without a value reached
    MLflow as True. Only for telling whether an id takes true or false: ``save_execute_config`` is
    True by default, but a path is as good, so its values are not checked as a flag's."""
    import copy

    from monai.bundle import ConfigParser

    if not tracking:
        return parser
    merged = ConfigParser(copy.deepcopy(parser.get()))  # the run's own parser is left as it was
    for key, default in tracking.items():
        if key not in merged:
            merged[key] = default
    return merged


def _may_be_bool(parser, key: str, depth: int = 0) -> bool:
    """Whether the config's default of ``key`` is, or may be, true or false: a bool, a reference to
    one, or an expression that looks boolean (a comparison, ``not``, ``and``/``or``, ``as_bool(...)``,
    ``is_...()``/``has_...()``); one that cannot be read is given the benefit of the doubt."""
    import ast

    from monai.bundle.utils import EXPR_KEY, ID_REF_KEY

    value = parser[key]
    if isinstance(value, bool):
        return True
    if not isinstance(value, str) or not value.startswith((EXPR_KEY, ID_REF_KEY)):
        return False  # a number, a text, a list, None: no true/false flag
    if value.startswith(ID_REF_KEY):
        ref = value[len(ID_REF_KEY) :]
        return depth > 5 or ref not in parser or _may_be_bool(parser, ref, depth + 1)
    code = re.sub(rf"{re.escape(ID_REF_KEY)}[\w#]+", "ref", value[len(EXPR_KEY) :])
    try:
        return _looks_bool(ast.parse(code.strip(), mode="eval").body)
    except SyntaxError:
        return True


def _looks_bool(node) -> bool:
    """Whether an expression's syntax tree may give true or false (see ``_may_be_bool``)."""
    import ast

    if isinstance(node, (ast.Compare, ast.BoolOp)) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    ):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, bool)
    if isinstance(node, ast.IfExp):
        return _looks_bool(node.body) or _looks_bool(node.orelse)
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        return name == "as_bool" or name.startswith(("is_", "has_"))
    return not isinstance(node, (ast.BinOp, ast.JoinedStr, ast.Dict, ast.List, ast.Tuple, ast.Set))


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
    files = ",".join(f"'{f}'" for f in _train_then_evaluate(_given_config_files()))
    raise ValueError(
        f"evaluate.json: {problem}; pass train.json first: python -m monai.bundle run evaluating "
        f'--config_file "[{files}]" with the training\'s overrides (--dataset_dir, ...)'
    )


def _given_config_files() -> list[str]:
    """The config files as the user gave them: the command line's ``--config_file``, else the
    running workflow's folder (MONAI keeps the first file's folder as given, relative or not, and
    wants all in it), else none."""
    given = _config_files_on_command_line()
    if given:
        return given
    folder = getattr(_running_workflow(), "config_root_path", None)
    return [os.path.join(str(folder), "evaluate.json")] if folder is not None else []


def _train_then_evaluate(given: list[str]) -> list[str]:
    """``given`` in the order evaluate.json needs: train.json first (added beside evaluate.json if
    missing) and evaluate.json last, the other files between them as given; paths kept as typed,
    so the suggested command runs from where the user ran theirs."""
    evaluate = _named(given, "evaluate.json") or [os.path.join("configs", "evaluate.json")]
    train = _named(given, "train.json") or [os.path.join(os.path.dirname(evaluate[0]), "train.json")]
    return train + [f for f in given if f not in train + evaluate] + evaluate


def _named(files: list[str], name: str) -> list[str]:
    """The paths among ``files`` whose file name is ``name``."""
    return [f for f in files if os.path.basename(f) == name]


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
