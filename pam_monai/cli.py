"""Command line: ``python -m pam_monai <command> [--flags]`` (Python Fire).

Each command lives in the module that owns the work; this file only dispatches, importing
lazily so that ``python -m pam_monai --help`` stays fast.
"""

from __future__ import annotations

import importlib

# command name -> "module:function"
COMMANDS = {
    "datalist": "pam_monai.data.commands:datalist",
    "synth": "pam_monai.data.commands:synth",
    "check": "pam_monai.data.commands:check",
    "convert_msd": "pam_monai.data.commands:convert_msd",
    "convert_folders": "pam_monai.data.commands:convert_folders",
    "convert_dicom": "pam_monai.data.commands:convert_dicom",
    "convert_isles22": "pam_monai.data.commands:convert_isles22",
    "experiment": "pam_monai.experiments.runner:experiment",
    "bench": "pam_monai.bench:bench",
    "bundle": "pam_monai.bundle_templates.own_data:bundle",
    "ensemble": "pam_monai.engines.ensemble:ensemble",
    "score": "pam_monai.engines.score:score",
    "compare": "pam_monai.experiments.compare_folders:compare",
}

# what ``python -m pam_monai --help`` lists beside each command (its module is not imported for it)
SUMMARIES = {
    "datalist": "Write a data set's case list (decathlon-format JSON) with the paper's split.",
    "synth": "Write a small synthetic stand-in for a data set, in its published layout.",
    "check": "Check every case of a data set and name each problem found.",
    "convert_msd": "Convert a Medical Segmentation Decathlon task into the nnU-Net v2 raw layout.",
    "convert_folders": "Convert plain folders of images and labels into the nnU-Net v2 raw layout.",
    "convert_dicom": "Convert DICOM series into NIfTI image files for training or inference.",
    "convert_isles22": "Convert ISLES 2022 (BIDS) into the nnU-Net v2 raw layout.",
    "experiment": "Train and evaluate a grid of networks x seeds x folds; write the tables and figures.",
    "bench": "Benchmark the training step, data pipeline, inference and HD95.",
    "bundle": "Make a MONAI bundle for your own data set (nnU-Net v2 raw layout).",
    "ensemble": "Average several models' saved probabilities into one mask.",
    "score": "Score a folder of predicted masks against a data set's labels.",
    "compare": "Compare evaluated folders (metrics.csv) case by case: differences, Wilcoxon p, Holm.",
}


# training, evaluation and inference are the bundles' workflows, not commands of this CLI: a user
# who types one of these is shown the bundle command instead of Fire's "Cannot find key"
BUNDLE_WORKFLOWS = {
    "train": "training",
    "training": "training",
    "fit": "training",
    "evaluate": "evaluating",
    "evaluating": "evaluating",
    "eval": "evaluating",
    "validate": "evaluating",
    "infer": "inferring",
    "inferring": "inferring",
    "inference": "inferring",
    "predict": "inferring",
    "segment": "inferring",
}
_BUNDLE_CONFIGS = {
    "training": "bundles/brats_fpa/configs/train.json",
    "evaluating": "\"['bundles/brats_fpa/configs/train.json','bundles/brats_fpa/configs/evaluate.json']\"",
    "inferring": "bundles/brats_fpa/configs/inference.json --input_dir <folder of new cases>",
}


def _workflow_hint(command: str) -> str | None:
    """What to run for a training / evaluation / inference command, or None for other words."""
    workflow = BUNDLE_WORKFLOWS.get(command.lower())
    if workflow is None:
        return None
    return (
        f"pam_monai: {command!r} is a bundle workflow, not a command of this CLI; run\n"
        f"  python -m monai.bundle run {workflow} --config_file {_BUNDLE_CONFIGS[workflow]}\n"
        "(any bundle under bundles/, or one made by python -m pam_monai bundle; see README.md); "
        f"the commands here: {', '.join(COMMANDS)}"
    )


def _lazy(name: str, target: str):
    module, func = target.split(":")

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), func)(*args, **kwargs)

    call.__name__ = func
    call.__doc__ = f"{SUMMARIES[name]} (python -m pam_monai {name} --help)"
    return call


def unknown_flags(func, args: list[str]) -> list[str]:
    """The ``--flags`` in ``args`` that ``func`` does not take (Fire would report them only after
    running the command). Functions with ``**options`` pass unknown flags on and check them there."""
    import inspect

    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    unknown = []
    for token in args:
        if token == "--":  # Fire's own flags follow
            break
        if not token.startswith("--") or len(token) == 2:
            continue
        key = token[2:].split("=", 1)[0].replace("-", "_")
        if key == "help" or key in params or (key.startswith("no") and key[2:] in params):
            continue
        unknown.append(token.split("=", 1)[0])
    return unknown


def flags_without_value(func, args: list[str]) -> list[str]:
    """The ``--flags`` in ``args`` of ``func``'s parameters that take a value but are given none
    (last, or followed by another flag or Fire's separator ``-``): Fire makes such a flag ``True``,
    so ``--output`` alone wrote the datalist to a file named ``True``. True/false parameters may
    stand alone."""
    import inspect

    params = inspect.signature(func).parameters
    missing = []
    for i, token in enumerate(args):
        if token == "--":  # Fire's own flags follow
            break
        if not token.startswith("--") or "=" in token:
            continue
        param = params.get(token[2:].replace("-", "_"))
        if param is None or param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if "bool" in str(param.annotation) or isinstance(param.default, bool):
            continue
        following = args[i + 1] if i + 1 < len(args) else None
        if following is None or following == "-" or following.startswith("--"):
            missing.append(token)
    return missing


def _help_for_fire(func, args: list[str]) -> list[str]:
    """``args``, or Fire's own ``-- --help`` when they ask for help and ``func`` takes ``**options``:
    Fire hands ``--help`` to such a function as an option, fails on its missing arguments and shows
    the help as an error, exit code 2 (``synth --help``). A function that answers ``help`` itself
    (``experiment``, which prints its docstring) keeps it."""
    import inspect

    before_fire_flags = args[: args.index("--")] if "--" in args else args
    asked = any(token in ("--help", "-h") for token in before_fire_flags)
    params = inspect.signature(func).parameters
    takes_options = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if asked and takes_options and not getattr(func, "answers_help", False):
        return ["--", "--help"]
    return args


# the data set's folder is --root for check and datalist, --dataset_dir for bundle, score, experiment
# and the bundles: a user who follows one command's example types the other's name
DATA_FOLDER_FLAGS = ("root", "dataset_dir")


def _data_folder_hint(func, bad: list[str]) -> str:
    """``; this command takes the data set's folder as --root`` when ``bad`` holds the other name."""
    import inspect

    params = inspect.signature(func).parameters
    for flag in bad:
        key = flag[2:].replace("-", "_")
        other = next((f for f in DATA_FOLDER_FLAGS if f != key), None) if key in DATA_FOLDER_FLAGS else None
        if other in params:
            return f"; this command takes the data set's folder as --{other}"
    return ""


def _root_cause(error: BaseException) -> BaseException:
    """The innermost cause (MONAI wraps a config expression's error in a RuntimeError), except that
    an error whose message already quotes its cause, or whose cause has no message (a bare
    ``EOFError``), is the one to show: it names the file or the value that the cause (e.g. a
    ``JSONDecodeError``) does not."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        cause = error.__cause__ or error.__context__
        # (MONAI's "Failed to evaluate ConfigExpression: ..." quotes the expression, which may hold a
        # short cause such as KeyError('train') by chance: never stop at it)
        ours = not str(error).startswith("Failed to evaluate")
        # a cause without a message (a bare EOFError) says less than the error that names its file
        if ours and (not str(cause) or str(cause) in str(error)):
            break
        error = cause
    return error


def _quit_on_closed_output() -> None:
    """End quietly when the reader of the output went away (``... --help | head``): it printed
    "error: [Errno 32] Broken pipe" as if the command had failed. Exit status 141, a shell's for a
    process ended by SIGPIPE; standard output goes to the null device so that Python's closing flush
    does not raise again (the recipe of Python's ``signal`` documentation)."""
    import os
    import sys

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(141)


def main(argv: list[str] | None = None) -> None:
    """Dispatch; refuse unknown flags before any work, and report the usual failures of a run (bad
    values, missing or foreign files) as one ``error:`` line with exit code 1 instead of a
    traceback (``PAM_MONAI_TRACEBACK=1`` shows it)."""
    import difflib
    import os
    import sys

    import fire

    # a folder or case named in letters the output's encoding lacks (Windows' code page when the output
    # goes to a file or a pipe) must not end a finished command with a UnicodeEncodeError
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in COMMANDS:
        hint = _workflow_hint(argv[0])
        if hint:
            sys.exit(hint)
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        if close and not argv[0].startswith("-"):
            sys.exit(
                f"pam_monai: unknown command {argv[0]!r}; did you mean {close[0]!r}? (python -m pam_monai --help)"
            )
    if not (argv and argv[0] in COMMANDS):
        fire.Fire({name: _lazy(name, t) for name, t in COMMANDS.items()}, command=argv, name="pam_monai")
        return
    name = f"pam_monai {argv[0]}"
    # resolve the real function so that --help shows its own docstring and arguments
    module, func = COMMANDS[argv[0]].split(":")
    target = getattr(importlib.import_module(module), func)
    bad = unknown_flags(target, argv[1:])
    if bad:
        hint = _data_folder_hint(target, bad)
        sys.exit(f"{name}: error: unknown flag(s) {', '.join(bad)}{hint} (see python -m {name} --help)")
    empty = flags_without_value(target, argv[1:])
    if empty:
        sys.exit(
            f"{name}: error: {', '.join(empty)} given without a value: pass one after each "
            f"(e.g. {empty[0]} VALUE; see python -m {name} --help)"
        )
    try:
        fire.Fire(target, command=_help_for_fire(target, argv[1:]), name=name)
    except BrokenPipeError:
        _quit_on_closed_output()
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("PAM_MONAI_TRACEBACK"):
            raise
        cause = _root_cause(e)
        message = str(e) if cause is e else f"{str(cause) or type(cause).__name__}"
        sys.exit(f"{name}: error: {message}\n(PAM_MONAI_TRACEBACK=1 shows the traceback)")
