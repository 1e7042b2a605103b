"""The running MONAI workflow, found from the call stack and the command line: the bundle's folder
(:func:`bundle_root`), a config entry as the user wrote it (:func:`config_as_given`), the configs
given to ``python -m monai.bundle`` and whether this process is one."""

from __future__ import annotations

import ast
import inspect
import math
import os
import sys
import warnings
from pathlib import Path

__all__ = ["bundle_root", "config_as_given"]


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


#: ``monai.bundle run``'s own arguments: not config ids, never carried into another command
_RUN_ARGUMENTS = frozenset(
    {"config_file", "meta_file", "logging_file", "args_file", "tracking", "run_id", "init_id", "final_id"}
)


def _overrides_on_command_line() -> list[tuple[str, str]]:
    """The config-id overrides (``--id value`` or ``--id=value``) of a ``python -m monai.bundle
    ...`` command (torchrun's too) as typed, without ``monai.bundle run``'s own arguments, else []."""
    argv = sys.argv
    if not argv or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py"):
        return []
    pairs, i = [], 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            continue  # the command and run names
        key, eq, value = arg[2:].partition("=")
        if not eq:  # refused without a value (config_checks), so the next word is the value
            if i >= len(argv):
                break
            value, i = argv[i], i + 1
        if key not in _RUN_ARGUMENTS:
            pairs.append((key, value))
    return pairs


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


def _run_by_monai_bundle() -> bool:
    main = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return (
        main is not None
        and main.name == "__main__.py"
        and main.parent.name == "bundle"
        and (main.parent.parent.name == "monai")
    )
