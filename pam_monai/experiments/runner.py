"""The experiment runner: train and evaluate every (network, seed, fold) through the bundle,
resume a half-finished grid, and write the paper's tables and figures.

    python -m pam_monai experiment --dataset brats --networks fpa,unet --seeds 2 --epochs 2 --output DIR
    python -m pam_monai experiment --preset table6 --seeds 3 --output DIR
    python -m pam_monai experiment --networks 'fpa[dilation=6,depthwise=false,expansion=2]' --output DIR

Layout of ``DIR``::

    experiment.json                      the grid and its settings (rewritten by every call)
    runs.jsonl                           one line per run started / finished / failed / interrupted
                                         (killed: found by the next call)
    .experiment.lock                     held by the running call: a second call on DIR is refused
    runs/<variant>/seed<k>/fold<f>/      a run's bundle_root: models/, eval/metrics.csv, done.json
    results.csv  results.md              one row per (run, case); the paper's table layout
                                         (IoU, Dice, FP, FN: fractions in the .csv files,
                                         percent in results.md; HD95 in mm, px for 2-D images)
    comparison.csv                       paired per-case comparison with --reference, and whether
                                         it holds in every pairing of seeds (see .compare)
    fig4_attention.png fig5_overlays.png fig7_ablation.png
    synthetic_data/  cache/              synthetic stand-in (when DIR/data holds no data set), slice cache

A run is finished when its ``eval/metrics.csv`` and its ``done.json`` exist; ``done.json`` is
written last, atomically, with the run's parameters. Re-running the same command skips finished
runs, resumes an interrupted one from ``models/checkpoint_last.pt`` (the bundle's
``resume=True``), and redoes a run that left no checkpoint. A finished run made with other
settings (``--epochs`` ...) is an error, not silently mixed into the table.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import check_writable, remove_orphaned_temps
from ..data import get_spec
from ..data.datalist import FOLDED, datalist_n_folds, fold_kind, load_datalist
from ..engines import Terminated, as_bool, atomic_write_text, close_writers
from ..engines.process_settings import kept_process_settings, run_every_step
from ..engines.termination import raise_terminated_on_sigterm, take_held_sigterm
from ..runlock import RunLockError, refuse_if_held
from ..shell import quote
from .compare import comparison_csv, default_reference, paired_comparison
from .results import RunResult, markdown_report, read_case_metrics, results_csv
from .variants import (
    ABLATION_AXIS,
    Variant,
    ablation_options,
    effective_options,
    parse_networks,
    preset_networks,
)

__all__ = ["ExperimentResult", "Run", "experiment", "run_experiment"]

log = logging.getLogger("pam_monai.experiments")

MARKER = "done.json"
STARTED = "run.json"
VERSION = 1
# what a grid stopped by SIGTERM tells to do: its command, run again, skips the finished runs
CONTINUE = (
    "re-run the same command to continue: finished runs are skipped, the interrupted one resumes from "
    "its models/checkpoint_last.pt (redone when it has none), then results.csv and results.md are written"
)
# bundle ids the runner sets itself for every run (the folders and checkpoint follow bundle_root:
# one given for the grid would have every run write, or every evaluation read, the same one)
RESERVED = (
    "bundle_root",
    "network_name",
    "seed",
    "fold",
    "resume",
    "data",
    "data_seed",
    "task",
    "ckpt_dir",
    "ckpt_path",
    "output_dir",
)
# overrides that do not change a run's result (not compared when resuming)
NO_EFFECT = ("num_workers", "device", "cache_dir", "synthetic_dir", "logging_file")


def _no_effect(overrides: dict) -> tuple[str, ...]:
    """:data:`NO_EFFECT`, less ``num_workers`` with ``train_transforms``: each DataLoader worker
    draws the augmentation from its own seed, so the number of workers changes the draws and the
    weights (a finished run of another ``num_workers`` is not this run)."""
    if overrides.get("train_transforms"):
        return tuple(k for k in NO_EFFECT if k != "num_workers")
    return NO_EFFECT


def _finished(run_dir: Path) -> bool:
    """A run is finished when its ``eval/metrics.csv`` and its ``done.json`` exist."""
    return (run_dir / MARKER).is_file() and (run_dir / "eval" / "metrics.csv").is_file()


@dataclass(frozen=True)
class Run:
    """One (variant, seed, fold) of the grid; ``dir`` is its bundle_root."""

    variant: Variant
    seed: int
    fold: int
    root: Path
    options: dict = field(hash=False, compare=False, default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.root / "runs" / self.variant.dirname / f"seed{self.seed}" / f"fold{self.fold}"

    @property
    def name(self) -> str:
        return f"{self.variant.label} seed {self.seed} fold {self.fold}"

    @property
    def marker(self) -> Path:
        return self.dir / MARKER

    @property
    def metrics_csv(self) -> Path:
        return self.dir / "eval" / "metrics.csv"

    @property
    def paper_protocol_csv(self) -> Path:
        return self.dir / "eval" / "paper_protocol.csv"

    @property
    def checkpoint_last(self) -> Path:
        return self.dir / "models" / "checkpoint_last.pt"

    @property
    def model(self) -> Path:
        return self.dir / "models" / "model.pt"

    def finished(self) -> bool:
        return _finished(self.dir)

    def identity(self, settings: dict) -> dict:
        """What done.json / run.json record and what a later call must match."""
        return _jsonable(
            {
                "network": self.variant.network,
                "variant": self.variant.label,
                "options": self.options,
                "seed": self.seed,
                "fold": self.fold,
                "settings": settings,
            }
        )


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` did: runs executed now, runs found finished, files written
    (``finished``: the runs finished when it returned)."""

    output: Path
    runs: list[Run]
    finished: list[Run]
    executed: list[Run]
    skipped: list[Run]
    failed: list[tuple[Run, str]]
    results_csv: Path | None
    results_md: Path | None
    figures: list[Path]
    synthetic: bool

    @property
    def complete(self) -> bool:
        return len(self.finished) == len(self.runs)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


OUTPUT = "<output>"


def _portable(settings: dict, root: Path) -> dict:
    """``settings`` with absolute paths inside the experiment's folder written as ``<output>/...``,
    so that a grid moved or copied elsewhere still matches its finished and interrupted runs (a
    stand-in data set lives in the folder); recorded absolute paths of earlier versions map the same.
    The words ``true`` / ``false`` are the booleans (the command line gives ``--deterministic true``
    as a string, ``True`` as a bool: one setting, not two)."""
    base = Path(root).resolve()

    def portable(value):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not (isinstance(value, str) and os.path.isabs(value)):
            return value
        try:
            rel = Path(value).resolve().relative_to(base)
        except ValueError:
            return value
        return f"{OUTPUT}/{rel.as_posix()}" if rel.parts else OUTPUT

    return {k: portable(v) for k, v in settings.items()} if isinstance(settings, dict) else settings


def _recorded_identity(record: dict, run: Run) -> dict:
    """The identity a run's ``done.json`` / ``run.json`` holds, its settings made portable."""
    record = dict(record or {})
    if "settings" in record:
        record["settings"] = _portable(record["settings"], run.root)
    return record


def _as_list(value, name: str) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out += _as_list(v, name)
        return out
    if isinstance(value, int):
        return [value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _seeds(seeds) -> list[int]:
    """``3`` -> [0, 1, 2] (a count); ``[0, 5]`` or ``"0,5"`` -> those seeds."""
    if isinstance(seeds, bool):
        raise ValueError(f"seeds: expected a count or a list, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    if isinstance(seeds, str) and "," not in seeds and seeds.strip().isdigit():
        return _seeds(int(seeds))
    out = [int(s) for s in _as_list(seeds, "seeds")]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds: expected a count or distinct seeds, got {seeds!r}")
    return out


def _folds(folds, dataset: str, datalist=None) -> list[int]:
    """The grid's folds; a datalist of the user's own split (``datalist``: its path) has one,
    fold 0, as the data sets with fixed lists."""
    data = _read_datalist(datalist)
    fixed = dataset in FOLDED and data is not None and fold_kind(dataset, data) == "own"
    n_folds = _n_folds(data)
    if str(folds).strip().lower() == "all":
        out = list(range(n_folds)) if dataset in FOLDED and not fixed else [0]
    else:
        out = [int(f) for f in _as_list(folds, "folds")]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"folds: expected distinct fold numbers or 'all', got {folds!r}")
    if fixed and out != [0]:
        raise ValueError(
            f"--folds {folds}: {datalist} gives one fixed split of its own ('training' / 'validation' lists, no "
            "'fold' fields): pass --folds 0, or give each training entry a 'fold' (python -m pam_monai datalist "
            "writes them) to cross-validate"
        )
    if fixed and "test" not in data:
        raise ValueError(
            f"{datalist} gives a split of its own without a 'test' list, and a grid scores every run on its test "
            "split: add a 'test' list of the cases to score, or train and evaluate with the bundle (evaluate.json "
            "--eval_split val scores the validation cases)"
        )
    if dataset in FOLDED:
        bad = [f for f in out if not 0 <= f < n_folds]
        if bad:
            where = f"{datalist} has {n_folds} folds" if datalist else f"{dataset} folds are"
            raise ValueError(f"--folds: {where} 0..{n_folds - 1}, got {bad}")
    elif out != [0]:
        raise ValueError(f"{dataset} has one fixed split (fold 0 only), got folds {out}")
    return out


def _read_datalist(datalist) -> dict | None:
    """The datalist at ``datalist`` (a path), or None without one or when it cannot be read (the
    data preparation that reads it names the problem)."""
    if not datalist:
        return None
    try:
        return load_datalist(datalist)
    except (OSError, ValueError):
        return None


def _n_folds(data: dict | None) -> int:
    """The number of folds of the cross-validation datalist ``data`` (None: the datalist command's
    default, 5)."""
    try:
        return datalist_n_folds(data) if data is not None else 5
    except ValueError:  # named by the data check
        return 5


def _network_key(variant: Variant, global_options: dict | None = None) -> str:
    """A network with its options once the defaults (and the grid's --network_options) are filled
    in: two spellings of one network agree."""
    options = {**ablation_options(variant), **effective_options(variant, global_options)}
    return json.dumps([variant.network, options], sort_keys=True, default=str)


def _grid_label(spec: str, variants: Sequence[Variant], global_options: dict | None = None) -> str | None:
    """The grid's label of one network however it is spelled ('FPA', 'fpa[dilation=9]' for fpa:
    9 is its default), or None when it is not in the grid."""
    try:
        asked = parse_networks(spec)
    except ValueError:
        return None
    if len(asked) != 1:
        return None
    key = _network_key(asked[0], global_options)
    return next((v.label for v in variants if _network_key(v, global_options) == key), None)


def _variants(networks, preset, global_options: dict | None = None) -> list[Variant]:
    specs: list[str] = []
    if preset:
        for p in _as_list(preset, "preset"):
            specs += preset_networks(p)
    if networks is not None:
        specs += [networks] if isinstance(networks, str) else [str(n) for n in networks]
    if not specs:
        specs = ["fpa", "rfna"]
    variants = parse_networks(specs)
    # two spellings of one network (fpa, fpa[dilation=9]: 9 is its default) would train it twice and
    # be shown as two networks; one of them would also hide the other in Figure 7
    seen: dict[str, str] = {}
    for v in variants:
        key = _network_key(v, global_options)
        if key in seen:
            raise ValueError(
                f"--networks: {seen[key]!r} and {v.label!r} are the same network (the same options once its "
                "defaults are filled in); list it once"
            )
        seen[key] = v.label
    # run folders differing in letter case only are one folder on macOS and Windows (and folder names
    # keep letters, digits and ._- only): the second network's runs would replace the first's
    folders: dict[str, Variant] = {}
    for v in variants:
        other = folders.setdefault(v.dirname.casefold(), v)
        if other is not v:
            raise ValueError(
                f"--networks: {other.label!r} and {v.label!r} would share one run folder (runs/{other.dirname} and "
                f"runs/{v.dirname}: folder names keep letters, digits and ._- only, and letter case does not tell "
                "folders apart on macOS and Windows); keep one, or spell their options to differ otherwise"
            )
    return variants


def bundle_configs(dataset: str, output: Path) -> tuple[Path, Path]:
    """``(train.json, evaluate.json)`` of the data set's bundle: the repository's
    ``bundles/<dataset>_fpa/configs`` when present, else rendered from the templates into
    ``<output>/bundle/configs`` (an installed package has no ``bundles/``)."""
    import pam_monai

    dataset = "brats" if dataset == "nnunet" else dataset  # own data: the volumetric workflow, --task nnunet
    configs = Path(pam_monai.__file__).resolve().parents[1] / "bundles" / f"{dataset}_fpa" / "configs"
    if not ((configs / "train.json").is_file() and (configs / "evaluate.json").is_file()):
        from ..bundle_templates.build import bundle_files

        target = output / "bundle"
        for rel, text in bundle_files(dataset, "fpa").items():
            atomic_write_text(target / rel, text)
        configs = target / "configs"
    return configs / "train.json", configs / "evaluate.json"


def _check_overrides(overrides: dict, *configs: Path) -> None:
    """Refuse options that are not ids of the bundle's configs (``--epoch`` for ``--epochs`` would
    otherwise be passed along and ignored, and the grid would train with the default)."""
    import difflib

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    known = [k for k in parser.get() if isinstance(k, str)]
    unknown = [k for k in overrides if k not in parser]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"--{k}" + (f" (did you mean --{close[0]}?)" if close else ""))
        raise ValueError(
            f"unknown option(s) {', '.join(hints)}: neither the runner's nor an id of the bundle ({configs[0]})"
        )


def _device_expr(device: str) -> str:
    device = str(device).strip()
    if not re.fullmatch(r"[a-z]+(:\d+)?", device):
        raise ValueError(f"device: expected e.g. 'cpu' or 'cuda:0', got {device!r}")
    return f"$torch.device('{device}')"


def _describe(e: BaseException) -> str:
    """``Type: message`` of ``e``, with the exception that caused it (MONAI wraps a bundle's error
    as "Failed to evaluate ConfigExpression"; the cause names the file or the setting), found as
    the command line's one-line error finds it."""
    from ..cli import _root_cause

    text = f"{type(e).__name__}: {e}"
    root = _root_cause(e)
    if root is not e:
        text += f" (caused by {type(root).__name__}: {root})"
    return " ".join(text.split())  # one line: MONAI's message holds a newline


def _check_figure_flags(cases, networks, labels: list[str], test_items: Sequence[dict], fold: int) -> None:
    """Refuse --figure_networks / --figure_cases that the figures would refuse, before any training
    (the figures are drawn after the whole grid, and their error stopped results.md from being written)."""
    from ..data.preprocess import case_name

    if networks:
        wanted = [v.label for v in parse_networks(networks)]
        missing = [n for n in wanted if n not in labels]
        if missing:
            raise ValueError(f"--figure_networks {missing}: not networks of the grid {labels}")
    wanted_cases = _as_list(cases, "figure_cases")
    if wanted_cases:
        known = [case_name(item) for item in test_items]
        unknown = [c for c in wanted_cases if c not in known]
        if unknown:
            raise ValueError(f"--figure_cases {unknown} are not test cases of fold {fold}: {sorted(known)}")


def _append_event(path: Path, **event) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        # a line cut by a kill must not swallow the next event
        cut = f.tell() > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}) + "\n"
        f.write((b"\n" if cut else b"") + line.encode())


def _close_killed_runs(path: Path, unlocked: bool = False) -> list[str]:
    """Runs whose last event in ``runs.jsonl`` is ``start`` belong to a call that was killed (SIGKILL,
    power loss: no ``interrupted`` event could be written); record that, once, and return them. A run
    that finished (its ``done.json`` and metrics are in place) before the kill took its call, between
    its marker and its ``done`` event, gets that ``done`` event instead: it was not killed, and is
    neither resumed nor redone. Under the grid's lock no other call can be running them; ``unlocked``
    (no ``flock``) a run whose training lock a live process holds is another call's run in progress,
    not a killed one, and is left unrecorded (its evaluation, after the lock is released, cannot be
    told apart from a kill)."""
    if not path.is_file():
        return []
    last = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if isinstance(event, dict) and "run" in event:
            last[event["run"]] = event.get("event")
    killed = []
    for run, event in last.items():
        if event != "start":
            continue
        folder = path.parent / run
        if _finished(folder):
            try:
                seconds = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("seconds")
            except (OSError, ValueError, AttributeError):
                seconds = None
            _append_event(
                path,
                event="done",
                run=run,
                seconds=seconds,
                note="finished before the call running it was killed",
            )
            continue
        if unlocked and _training_held(folder):
            continue
        killed.append(run)
        _append_event(path, event="killed", run=run, note="no end event: the call running it was killed")
    return killed


def _training_held(folder: Path) -> bool:
    """Whether a live training holds the run folder's models/ or eval/ (its training lock)."""
    try:
        refuse_if_held(folder / "models", folder / "eval")
    except RunLockError:
        return True
    return False


# Windows locks byte ranges, and a locked byte cannot be read by others: lock one far beyond the
# holder's line (a range past the end of the file is allowed) so that a second call can name the holder.
_WINDOWS_LOCK_OFFSET = 1 << 20


def _lock(f, lock: bool) -> bool:
    """Take (``lock``) or release the advisory lock on the open file ``f``; False when another
    process holds it. Without a locking module the call is let through, as before locks existed."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(f, (fcntl.LOCK_EX | fcntl.LOCK_NB) if lock else fcntl.LOCK_UN)
        except BlockingIOError:
            return False
        return True
    try:
        import msvcrt
    except ImportError:
        return True
    f.seek(_WINDOWS_LOCK_OFFSET)
    try:
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK if lock else msvcrt.LK_UNLCK, 1)
    except OSError:  # EACCES / EDEADLOCK: held by another process
        return False
    finally:
        f.seek(0)
    return True


@contextlib.contextmanager
def _grid_lock(output_dir: Path):
    """One call at a time per grid: a second one would train the same runs into the same folders.
    Yields True; on a file system without ``flock`` None: the grid runs unlocked, with a warning
    (:func:`_lock_or_warn`)."""
    with open(output_dir / ".experiment.lock", "a+", encoding="utf-8") as f:
        locked = _lock_or_warn(f, output_dir)
        if locked is False:
            f.seek(0)
            holder = f.read().strip() or "its process id unknown"
            raise RuntimeError(
                f"{output_dir}: another experiment call is running this grid ({holder}); wait for it to "
                "finish, or use another --output"
            )
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        try:
            yield locked
        finally:
            if locked:
                _lock(f, False)


def _lock_or_warn(f, output_dir: Path) -> bool | None:
    """:func:`_lock` on the grid's lock file; None, with a RuntimeWarning, where its file system
    refuses ``flock`` (NFS without its lock daemon: ENOLCK; Lustre without ``-o flock``: ENOSYS;
    some FUSE and SMB mounts: EOPNOTSUPP). The bare OSError named no file and stopped every call
    there; refusing would leave such clusters no grid at all (before the lock, no grid was locked)."""
    try:
        return _lock(f, True)
    except OSError as e:
        warnings.warn(
            f"{f.name}: its file system does not lock files ({e.strerror or e}): this grid runs unlocked, "
            f"and a second experiment call into {output_dir} meanwhile is not refused (a run in training is "
            "kept by its training lock, a run being evaluated is not: the second call could take it up): start one "
            "call per folder at a time, or give --output a folder on a file system "
            "that locks files (a local disk, NFS with its lock daemon, Lustre mounted with -o flock)",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def _stop_grid_on_terminate() -> None:
    """From now on a SIGTERM raises :class:`Terminated` (exit status 143) wherever the main thread
    is, as Ctrl-C raises ``KeyboardInterrupt``: the run in flight is recorded ``interrupted``.

    The bundles run in this process, where their ``stop_on_terminate`` does nothing, and the
    engines' :class:`StopOnTerminate` covers their epochs only: a SIGTERM while a run's data were
    prepared, between runs or while the tables were written ended the grid at once, its run
    recorded by nothing (the next call found it ``killed``). The caller's handler comes back with
    :func:`kept_process_settings`; the first SIGTERM puts back the default, so that a second ends
    the call at once (as :class:`StopOnTerminate` does, seeing ``stops_on_terminate``)."""
    take_held_sigterm()  # one held back before this grid (a caller's own run) is not this grid's
    if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
        raise_terminated_on_sigterm(CONTINUE)


def _count_params(variant: Variant, options: dict, spec) -> int:
    """The network's parameters; a crop it cannot take (RFNA on small own images) is refused here,
    before the grid's first run, not at that network's first training step."""
    from ..networks import get_network
    from ..networks.blocks.convolutions import check_crop

    net = get_network(
        variant.network, spatial_dims=2, in_channels=spec.in_channels, out_channels=1, options=options
    )
    check_crop(net, spec.crop_size, f"{variant.label} on {spec.title}: the crop")
    return sum(p.numel() for p in net.parameters())


def _no_logging_file_warning(record: logging.LogRecord) -> bool:
    """Drop MONAI's "Logging file is set to False, skipping logging." (the runner's choice, not a
    problem: a WARNING in every run's log read as one)."""
    return not record.getMessage().startswith("Logging file is set to False")


def _reset_compiler() -> None:
    """Forget what ``torch.compile`` compiled for the run (when anything could have been).

    Its caches live as long as the process, which runs every bundle of the grid: each network
    variant is another shape of the same ``forward`` code, one more of dynamo's 8 recompilations
    (``recompile_limit``), and from the ninth variant on (``fig7_fpa`` has 15) training ran
    uncompiled, with only a warning. Compiling a network again reads inductor's kernels from its
    cache on disk. Through the public ``torch.compiler.reset`` (``torch._dynamo`` is private); only
    where dynamo was loaded, so that a run that compiled nothing does not load it."""
    if "torch._dynamo" in sys.modules:
        import torch.compiler

        torch.compiler.reset()


def _made_objects(workflow) -> list:
    """The objects a MONAI ``ConfigWorkflow`` made from its config (``parser.ref_resolver.resolved_content``:
    MONAI's attributes, not a documented API). A MONAI that renamed them raised an AttributeError
    in place of the run's own error, in the clean-up after it; now a warning names MONAI, its
    version and what is left undone (the run's TensorBoard writers stay open until the process ends)."""
    made = getattr(getattr(getattr(workflow, "parser", None), "ref_resolver", None), "resolved_content", None)
    if isinstance(made, dict):
        return list(made.values())
    from ..internals import changed

    feature = "closing the TensorBoard writers of a run that raised (they stay open until the process ends)"
    warnings.warn(
        changed("monai", "ConfigParser.ref_resolver.resolved_content", feature), RuntimeWarning, stacklevel=2
    )
    return []


def _clean_up_run(held: list, raised: bool) -> None:
    """After a bundle's run: close the TensorBoard writers it made (``finalize`` closes them too,
    after a run that ended), drop the workflow (``held`` is emptied), forget what ``torch.compile``
    compiled and collect the garbage; every step even where another fails. After a run that raised
    a failure is logged and the run's own error goes on: a SIGTERM in the middle of an import
    leaves the import half done, a clean-up step importing it then raised, and the run was
    recorded failed on that error instead of ``interrupted`` by its ``Terminated``. After a run
    that ended the first failure is raised. After a run that raised, its error's traceback still
    holds the workflow: a --keep_going grid releases it before its next run (:func:`_release_failed_run`)."""
    steps = {
        "closing its TensorBoard writers": lambda: close_writers(_made_objects(held[0])),
        "dropping its workflow": held.clear,
        "resetting torch.compile's caches": _reset_compiler,
        "collecting the garbage": gc.collect,
    }
    run_every_step(steps, raised, "after the run that raised, %s failed (its own error goes on): %s: %s", log)


class _Bundle:
    """Runs the bundle's training and evaluation in this process (MONAI ``ConfigWorkflow``)."""

    def __init__(self, train_json: Path, evaluate_json: Path) -> None:
        self.train_json = train_json
        self.evaluate_json = evaluate_json

    def _workflow(self, files: Sequence[Path], run_id: str, overrides: dict):
        from monai.bundle import ConfigWorkflow

        # logging_file=False keeps the runner's logging; MONAI warns about it at every run of the grid
        monai_log = logging.getLogger("monai.bundle.workflows")
        monai_log.addFilter(_no_logging_file_warning)
        try:
            wf = ConfigWorkflow(
                config_file=[str(f) for f in files],
                meta_file=str(files[0].parent / "metadata.json"),
                logging_file=False,
                run_id=run_id,
                workflow_type=None,
                **overrides,
            )
        finally:
            monai_log.removeFilter(_no_logging_file_warning)
        return wf

    def _run(self, files: Sequence[Path], run_id: str, overrides: dict) -> None:
        held = [self._workflow(files, run_id, overrides)]  # emptied by the clean-up, before gc
        held[0].initialize()
        try:
            held[0].run()
            # after a run that raised, finalize would make what the run never got to (the data, the
            # handlers) just to close it: monai.bundle.run does not call it then either
            held[0].finalize()
        except BaseException:
            _clean_up_run(held, raised=True)
            raise
        _clean_up_run(held, raised=False)

    def train(self, overrides: dict, resume: bool) -> None:
        self._run([self.train_json], "training", {**overrides, "resume": resume})

    def evaluate(self, overrides: dict) -> None:
        self._run([self.train_json, self.evaluate_json], "evaluating", overrides)


def _execute(run: Run, bundle: _Bundle, overrides: dict, identity: dict, ctx: _Context) -> dict:
    """Train, evaluate (and score the paper protocol of) one run; write its marker last."""
    started = time.time()
    resume = False
    if run.dir.is_dir():
        # unlocked (no flock), another call may be training this run: refused before its files are
        # cleared below (its lock with them), not after. Locked, no other call runs the grid: a lock
        # here is a dead call's, another host's too, and goes with the files as ever
        if ctx.unlocked:
            refuse_if_held(run.dir / "models", run.dir / "eval")
        prior = run.dir / STARTED
        same = (
            prior.is_file()
            and _recorded_identity(json.loads(prior.read_text(encoding="utf-8")).get("identity"), run)
            == identity
        )
        if same and run.checkpoint_last.is_file():
            resume = True
        else:
            for sub in ("models", "eval"):
                shutil.rmtree(run.dir / sub, ignore_errors=True)
            for name in (MARKER, STARTED):
                (run.dir / name).unlink(missing_ok=True)
    atomic_write_text(
        run.dir / STARTED,
        json.dumps({"identity": identity, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n",
    )
    run_overrides = {
        **overrides,
        "bundle_root": str(run.dir),
        "network_name": run.variant.network,
        "network_options": run.options,
        "seed": run.seed,
        "fold": run.fold,
    }
    bundle.train(run_overrides, resume=resume)
    if not run.model.is_file():
        raise RuntimeError(f"{run.name}: training wrote no {run.model}")
    bundle.evaluate(run_overrides)
    if not run.metrics_csv.is_file():
        raise RuntimeError(f"{run.name}: evaluation wrote no {run.metrics_csv}")
    if ctx.paper_protocol and ctx.spec.volumetric:
        _score_paper_protocol(run, ctx)
    cases = read_case_metrics(run.metrics_csv)
    done = {
        **identity,
        "params": ctx.params[run.variant],
        "resumed": resume,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.time() - started, 2),
        "test_cases": len(cases),
        "test_iou_mean": sum(c["iou"] for c in cases) / len(cases),
        "version": VERSION,
    }
    atomic_write_text(run.marker, json.dumps(done, indent=2) + "\n")  # LAST: the run is finished
    return done


@dataclass
class _Context:
    dataset: str
    spec: Any
    output: Path
    fold_data: dict
    params: dict
    paper_protocol: bool
    device: str
    slice_batch_size: int
    foreground_label: Any = None  # the bundle's --foreground_label: the scored target is the trained one
    threshold: float = 0.5  # the bundle's --threshold: the paper protocol and figures cut as metrics.csv
    unlocked: bool = False  # the grid runs without its lock (no flock): another call may be running it


def _score_paper_protocol(run: Run, ctx: _Context) -> None:
    from ..engines import CaseDataset
    from .predict import load_network, paper_protocol_rows, write_paper_protocol

    net = load_network(run.variant.network, run.options, ctx.spec.in_channels, run.model, ctx.device)
    # one pass over the test cases: cached, a full-size fold stayed in memory to the end (GBs)
    ds = CaseDataset(ctx.fold_data[run.fold]["test"], ctx.spec, ctx.foreground_label, cache=False)
    rows = paper_protocol_rows(net, ds, ctx.slice_batch_size, ctx.device, ctx.threshold)
    _check_same_predictions(run, rows)
    write_paper_protocol(rows, run.paper_protocol_csv)


def _check_same_predictions(run: Run, rows: list[dict]) -> None:
    """Warn when the paper protocol's per-case IoU (its prediction put back on the case's grid)
    differs from the evaluation's ``metrics.csv``: its per-slice table would then describe other
    masks than the run's per-case table (another device's or precision's rounding, say)."""
    evaluated = {r["case"]: r["iou"] for r in read_case_metrics(run.metrics_csv)}
    differ = [
        f"{r['case']}: {r['case_iou']:.6g} against {evaluated[r['case']]:.6g}"
        for r in rows
        if r["case"] in evaluated
        and abs(r["case_iou"] - evaluated[r["case"]]) > 1e-5 * max(1.0, abs(r["case_iou"]))
    ]
    if differ:
        log.warning(
            "%s: the paper protocol's predictions are not the evaluation's: their per-case IoU differs from "
            "%s in %d case(s) (%s); its per-slice table describes other masks than results.md's per-case one",
            run.name, run.metrics_csv, len(differ), "; ".join(differ[:5]) + ("; ..." if len(differ) > 5 else ""),
        )  # fmt: skip


def _check_finished(run: Run, identity: dict) -> None:
    done = _recorded_identity(json.loads(run.marker.read_text(encoding="utf-8")), run)
    recorded = {k: done.get(k) for k in identity}
    if recorded != identity:
        diff = [k for k in identity if recorded.get(k) != identity[k]]
        detail = ""
        for part in ("settings", "options"):  # what differs inside them, by key
            if part in diff and isinstance(identity[part], dict):
                a, b = recorded.get(part) or {}, identity[part]
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                detail += f"; {part} differ in " + ", ".join(
                    f"{k}: {a.get(k)!r} (done) vs {b.get(k)!r} (now)" for k in keys
                )
        raise ValueError(
            f"{run.dir} was finished with other parameters ({', '.join(diff)}{detail}). "
            "Use a new --output for new settings, or delete that run to redo it."
        )


def _check_data_once(spec, root, overrides: dict, folds: Sequence[int]) -> None:
    """Check the data set as the bundles would (:func:`pam_monai.data.check_dataset`, every split of
    every fold of the grid), once: each bundle run reads every case again to check it (~0.4 s per
    full-size BraTS case: ~2 minutes for 285 cases at the start of every training and every
    evaluation, hours over a grid), so the grid's runs are given ``check_data`` false."""
    from ..data import check_dataset

    report = check_dataset(
        spec,
        root,
        overrides.get("foreground_label"),
        progress=True,
        datalist=overrides.get("data_list_file_path") or None,
        datalist_splits=["train", "val", "test"],
        fold=list(folds),
    )
    report.raise_if_failed()
    report.log(logging.getLogger("pam_monai.experiments"))


def run_experiment(
    dataset: str = "brats",
    networks: str | Iterable[str] | None = None,
    seeds: int | Iterable[int] = 1,
    folds: int | str | Iterable[int] = "0",
    output: str = "outputs/experiment",
    preset: str | None = None,
    paper_protocol: bool = False,
    figures: bool = True,
    data_seed: int = 0,
    max_runs: int | None = None,
    keep_going: bool = False,
    threads: int | None = None,
    figure_cases: str | Iterable[str] | None = None,
    figure_networks: str | Iterable[str] | None = None,
    reference: str | None = None,
    command: str | None = None,
    **overrides,
) -> ExperimentResult:
    """The runner behind :func:`experiment` (same arguments); returns what it did."""
    import torch

    dataset = str(dataset).lower()
    if dataset == "nnunet" and not overrides.get("dataset_dir"):
        raise ValueError("own data (--dataset nnunet): pass --dataset_dir, the folder with its dataset.json")
    spec = get_spec(dataset, root=overrides.get("dataset_dir"), crop_size=overrides.get("crop_size"))
    spec.resolve_labels(overrides.get("foreground_label"))  # a label typo: refused before any run
    # "--figures false" arrives from the command line as the string "false" (Fire parses only
    # True / False), and bool("false") is True
    paper_protocol, figures, keep_going = as_bool(paper_protocol), as_bool(figures), as_bool(keep_going)
    global_options = overrides.get("network_options")
    global_options = global_options if isinstance(global_options, dict) else None
    variants = _variants(networks, preset, global_options)
    labels = [v.label for v in variants]
    if max_runs is not None and int(max_runs) < 0:
        raise ValueError(f"--max_runs must be 0 or more, got {max_runs}")
    if reference is not None:
        label = _grid_label(str(reference), variants, global_options)
        if label is None:
            raise ValueError(f"--reference {reference!r} is not one of the grid's networks {labels}")
        reference = label
    if figure_networks:  # unknown ones are refused with the figure cases, before any training
        figure_networks = [
            _grid_label(a.label, variants, global_options) or a.label for a in parse_networks(figure_networks)
        ]
    seed_list = _seeds(seeds)
    fold_list = _folds(folds, dataset, overrides.get("data_list_file_path"))
    output_dir = check_writable(Path(output).resolve(), "--output DIR")
    output_dir.mkdir(parents=True, exist_ok=True)
    bad = sorted(set(overrides) & set(RESERVED))
    if bad:
        raise ValueError(
            f"{bad}: set by the runner for each run (use --seeds, --folds, --networks, --data_seed; each run's "
            "models/ and eval/ are in its folder runs/<variant>/seed<k>/fold<f> under --output)"
        )
    if str(overrides.get("eval_split", "test")) != "test":  # results.md, the paper protocol and figures: test
        raise ValueError(
            f"--eval_split {overrides['eval_split']!r}: a grid scores every run on its fold's test split, as its "
            "tables say; to score another split, run a trained run's bundle (runs/<variant>/seed<k>/fold<f>) "
            "with the bundle's evaluate.json and --eval_split"
        )
    if paper_protocol and not spec.volumetric:
        raise ValueError(
            f"--paper_protocol aggregates the slices of 3-D cases; {dataset} cases are single images, whose "
            "per-image table is the paper's protocol already"
        )
    _check_overrides(overrides, *bundle_configs(dataset, output_dir))
    # the caller's threads, RNGs, flags, sys.path and SIGTERM handler come back
    with kept_process_settings():
        _stop_grid_on_terminate()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            with _grid_lock(output_dir) as locked:
                return _run_grid(
                    dataset=dataset, spec=spec, variants=variants, seed_list=seed_list, fold_list=fold_list,
                    output_dir=output_dir, paper_protocol=paper_protocol, figures=figures,
                    data_seed=int(data_seed), max_runs=max_runs, keep_going=keep_going,
                    figure_cases=figure_cases, figure_networks=figure_networks, command=command,
                    overrides=overrides, reference=reference, unlocked=not locked,
                )  # fmt: skip
        except Terminated as e:  # a bundle's (StopOnTerminate) says "--resume true": not the grid's way on
            stopped = Terminated(e.signum, CONTINUE)
            log.error("experiment %s: %s", output_dir, stopped)  # a SystemExit prints nothing
            raise stopped from None


def _run_grid(
    *,
    dataset,
    spec,
    variants,
    seed_list,
    fold_list,
    output_dir,
    paper_protocol,
    figures,
    data_seed,
    max_runs,
    keep_going,
    figure_cases,
    figure_networks,
    command,
    overrides,
    reference=None,
    unlocked=False,
) -> ExperimentResult:
    import torch

    from ..engines import prepare_data

    global_options = dict(overrides.pop("network_options", None) or {})
    stand_in = not overrides.get("dataset_dir")  # a --dataset_dir given must hold the data set
    overrides.setdefault("dataset_dir", str(output_dir / "data"))
    overrides.setdefault("synthetic_dir", str(output_dir / "synthetic_data"))
    overrides.setdefault("cache_dir", str(output_dir / "cache"))
    for key in ("dataset_dir", "synthetic_dir", "cache_dir", "data_list_file_path"):
        if overrides.get(key):
            overrides[key] = str(Path(overrides[key]).resolve())
    device = (
        str(overrides["device"])
        if "device" in overrides
        else ("cuda:0" if torch.cuda.is_available() else "cpu")
    )
    bundle_overrides = {**overrides, "data_seed": int(data_seed), "synthetic_stand_in": stand_in}
    if spec.name == "nnunet":
        bundle_overrides["task"] = "nnunet"
    if "device" in bundle_overrides:
        bundle_overrides["device"] = _device_expr(bundle_overrides["device"])
    settings = _portable(
        _jsonable(
            {
                "dataset": dataset,
                "data_seed": int(data_seed),
                **{k: v for k, v in overrides.items() if k not in _no_effect(overrides)},
            }
        ),
        output_dir,
    )

    runs = [
        Run(v, s, f, output_dir, effective_options(v, global_options))
        for v in variants
        for f in fold_list
        for s in seed_list
    ]
    params = {v: _count_params(v, effective_options(v, global_options), spec) for v in variants}
    # before the data are prepared: a refused call (another --data_seed) must not regenerate the
    # stand-in that the finished runs were trained and tested on
    skipped, pending = [], []
    for run in runs:
        if run.finished():
            _check_finished(run, run.identity(settings))
            skipped.append(run)
        else:
            pending.append(run)

    fold_data = {
        f: prepare_data(
            spec,
            overrides["dataset_dir"],
            overrides.get("data_list_file_path") or None,
            fold=f,
            synthetic_dir=overrides["synthetic_dir"],
            seed=int(data_seed),
            check=False,
            stand_in=stand_in,
        )
        for f in fold_list
    }
    if pending:  # once for the grid, not at the start of every run's training and evaluation
        _check_data_once(spec, fold_data[fold_list[0]]["root"], overrides, fold_list)
        bundle_overrides["check_data"] = False
    if figures:
        _check_figure_flags(
            figure_cases,
            figure_networks,
            [v.label for v in variants],
            fold_data[fold_list[0]]["test"],
            fold_list[0],
        )
    synthetic = any(d["synthetic"] for d in fold_data.values())
    data_root = str(fold_data[fold_list[0]]["root"])
    ctx = _Context(
        dataset,
        spec,
        output_dir,
        fold_data,
        params,
        bool(paper_protocol),
        device,
        int(overrides.get("batch_size", 32)),
        overrides.get("foreground_label"),
        float(overrides.get("threshold", 0.5)),
        unlocked=unlocked,
    )
    # only now: a call refused above (a finished run made with other settings) must not rewrite
    # the record of the grid that is on disk
    atomic_write_text(
        output_dir / "experiment.json",
        json.dumps(
            _jsonable(
                {
                    "command": command,
                    "dataset": dataset,
                    "synthetic": synthetic,
                    "data_root": data_root,
                    "networks": [v.label for v in variants],
                    "seeds": seed_list,
                    "folds": fold_list,
                    "network_options": global_options,
                    "settings": settings,
                    "runs": len(runs),
                }
            ),
            indent=2,
        )
        + "\n",
    )
    if max_runs is not None:
        pending = pending[: max(int(max_runs), 0)]
    log.info(
        "experiment %s: %d runs (%d networks x %d seeds x %d folds); %d finished, %d to run now",
        output_dir,
        len(runs),
        len(variants),
        len(seed_list),
        len(fold_list),
        len(skipped),
        len(pending),
    )
    if synthetic:
        log.warning(
            "experiment: the data are a SYNTHETIC stand-in (%s); results say nothing about %s",
            data_root,
            spec.title,
        )

    bundle = _Bundle(*bundle_configs(dataset, output_dir))
    events = output_dir / "runs.jsonl"
    killed = _close_killed_runs(events, unlocked=unlocked)
    if killed:
        log.warning(
            "experiment: %s: killed by an earlier call (no end event); resumed or redone now",
            ", ".join(killed),
        )
    orphans = remove_orphaned_temps(output_dir, recursive=True)
    if orphans:  # a killed call's half-written checkpoints, tables and masks
        log.info(
            "experiment: removed %d temporary file(s) of killed writers under %s", len(orphans), output_dir
        )
    executed, failed = _execute_pending(
        pending, len(runs), len(skipped), bundle, bundle_overrides, settings, ctx, keep_going
    )
    finished = [r for r in runs if r.finished()]
    csv_path, md_path, figure_paths = _write_reports(
        runs,
        finished,
        ctx,
        variants=variants,
        seed_list=seed_list,
        fold_list=fold_list,
        paper_protocol=paper_protocol,
        figures=figures,
        figure_cases=figure_cases,
        figure_networks=figure_networks,
        reference=reference,
        synthetic=synthetic,
        data_root=data_root,
        command=command,
        settings={**settings, "network_options": global_options} if global_options else settings,
    )
    result = ExperimentResult(
        output_dir, runs, finished, executed, skipped, failed, csv_path, md_path, figure_paths, synthetic
    )
    if failed:
        raise RuntimeError(
            f"{len(failed)} run(s) failed (results of the others are in {md_path}): "
            + "; ".join(f"{r.name}: {e}" for r, e in failed)
        )
    return result


def _release_failed_run(error: BaseException) -> None:
    """Free what a failed run's error holds of it before the grid's next run (``--keep_going``).

    Its traceback holds the run's frames, and their locals the workflow (network, optimizer, CUDA
    tensors), in a cycle with the error wherever a frame holds it (Ignite's ``_handle_exception``
    raises the error it was given): the clean-up's collection ran while the error was still
    raised, and the next run trained beside the failed one's memory. The grid keeps the error's
    text (:func:`_describe`); the frames' locals are cleared, the error's chain's too (a clean-up's
    error has the run's as its context), and the garbage collected."""
    pending, seen = [error], set()
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)  # frames still running (this one's) are left
        pending += [e.__cause__, e.__context__]
    gc.collect()


def _execute_pending(
    pending: list[Run],
    planned: int,
    finished_before: int,
    bundle: _Bundle,
    bundle_overrides: dict,
    settings: dict,
    ctx: _Context,
    keep_going: bool,
) -> tuple[list[Run], list[tuple[Run, str]]]:
    """Train and evaluate the runs of ``pending`` in turn, each start and end in ``runs.jsonl``;
    returns the runs done and those that failed (with ``keep_going``; else the first failure raises)."""
    from ..progress import progress_bar

    output_dir = ctx.output
    events = output_dir / "runs.jsonl"
    executed: list[Run] = []
    failed: list[tuple[Run, str]] = []
    bar = progress_bar(total=planned, initial=finished_before, desc="experiment", unit="run", file=sys.stderr)
    try:
        for i, run in enumerate(pending, start=1):
            identity = run.identity(settings)
            log.info(
                "experiment: run %d/%d now (%d of %d in the grid): %s -> %s",
                i,
                len(pending),
                finished_before + i,
                planned,
                run.name,
                run.dir,
            )
            folder = run.dir.relative_to(output_dir).as_posix()  # "/" on every system: a grid moves
            _append_event(events, event="start", run=folder)
            try:
                done = _execute(run, bundle, bundle_overrides, identity, ctx)
            except (KeyboardInterrupt, Terminated):  # Ctrl-C; a SIGTERM (StopOnTerminate)
                _append_event(events, event="interrupted", run=folder)
                log.warning(
                    "experiment: interrupted during %s; re-run the same command to continue", run.name
                )
                raise
            except Exception as e:
                why = _describe(e)
                _append_event(events, event="failed", run=folder, error=why)
                signum = take_held_sigterm()  # a SIGTERM held back while the run cleaned up
                if signum is not None and keep_going:
                    raise Terminated(signum, CONTINUE) from e
                if not keep_going:
                    raise
                log.error("experiment: %s failed (%s); going on (--keep_going)", run.name, why)
                failed.append((run, why))
                _release_failed_run(e)
                continue
            executed.append(run)
            _append_event(events, event="done", run=folder, seconds=done["seconds"])
            log.info(
                "experiment: finished %s in %.1f s%s: test IoU %.4f over %d cases",
                run.name,
                done["seconds"],
                " (resumed)" if done["resumed"] else "",
                done["test_iou_mean"],
                done["test_cases"],
            )
            bar.update(1)
    finally:
        bar.close()

    return executed, failed


def _remove_stale_figures(output_dir: Path, written: list[Path]) -> None:
    """Delete the figures an earlier call wrote into ``output_dir`` that this call did not (fig7 of an
    ablation grid since narrowed, fig4 of a grid that no longer has FPA / RFNA): beside the new
    results.md they would show other networks' runs."""
    from .figures import FIGURE_FILES

    kept = {Path(p).name for p in written}
    for name in FIGURE_FILES:
        path = output_dir / name
        if name not in kept and path.is_file():
            log.info("experiment: removed %s of an earlier call (not made from this grid's runs)", path)
            path.unlink()


def _write_reports(
    runs: list[Run],
    finished: list[Run],
    ctx: _Context,
    *,
    variants,
    seed_list,
    fold_list,
    paper_protocol,
    figures,
    figure_cases,
    figure_networks,
    reference,
    synthetic: bool,
    data_root: str,
    command,
    settings: dict,
) -> tuple[Path, Path, list[Path]]:
    """The grid's tables and figures from its finished runs: ``results.csv``, ``comparison.csv``
    (or none), ``results.md`` and the figures; the paper's per-slice protocol first where missing."""
    spec, dataset, output_dir = ctx.spec, ctx.dataset, ctx.output
    if paper_protocol and spec.volumetric:
        for run in finished:
            if not run.paper_protocol_csv.is_file():
                log.info("experiment: paper protocol of %s (inference on its test cases)", run.name)
                _score_paper_protocol(run, ctx)
    elif paper_protocol:
        log.warning(
            "experiment: %s cases are single 2-D images: the per-slice protocol equals the per-case one",
            dataset,
        )

    results = [_run_result(run, ctx, paper_protocol and spec.volumetric) for run in finished]
    csv_path = atomic_write_text(output_dir / "results.csv", results_csv(results, synthetic=synthetic))
    figure_paths: list[Path] = []
    if figures and finished:
        from .figures import make_figures

        figure_paths = make_figures(
            runs=runs,
            results=results,
            ctx=ctx,
            seeds=seed_list,
            folds=fold_list,
            cases=_as_list(figure_cases, "figure_cases") or None,
            networks=[v.label for v in parse_networks(figure_networks)] if figure_networks else None,
        )
        _remove_stale_figures(output_dir, figure_paths)
    order = [v.label for v in variants]
    reference = (reference or default_reference(order)) if len(order) > 1 else None
    comparison = None
    if reference is not None and finished:
        comparison = (reference, paired_comparison(results, reference, order))
        atomic_write_text(output_dir / "comparison.csv", comparison_csv(comparison[1]))
    else:  # no comparison this time: a comparison.csv of an earlier grid in this folder would contradict results.md
        (output_dir / "comparison.csv").unlink(missing_ok=True)
    md = markdown_report(
        results,
        dataset=dataset,
        dataset_title=spec.title,
        synthetic=synthetic,
        data_root=data_root,
        order=order,
        planned=len(runs),
        command=command,
        settings=settings,
        paper_protocol=paper_protocol and spec.volumetric,
        figures=[p.name for p in figure_paths],
        distance_unit="mm" if spec.volumetric else "px",
        resized_back=spec.name == "nnunet" and not spec.volumetric,
        sparse=spec.ignore_label is not None,
        comparison=comparison,
        seeds_folds=(seed_list, fold_list),
    )
    md_path = atomic_write_text(output_dir / "results.md", md)
    log.info(
        "experiment: %d of %d runs finished; wrote %s and %s", len(finished), len(runs), csv_path, md_path
    )
    return csv_path, md_path, figure_paths


def _run_result(run: Run, ctx: _Context, with_paper_protocol: bool) -> RunResult:
    from .predict import read_paper_protocol

    pp = None
    if with_paper_protocol and run.paper_protocol_csv.is_file():
        pp = read_paper_protocol(run.paper_protocol_csv)
    return RunResult(
        dataset=ctx.dataset,
        network=run.variant.network,
        variant=run.variant.label,
        options=run.options,
        seed=run.seed,
        fold=run.fold,
        params=ctx.params[run.variant],
        cases=read_case_metrics(run.metrics_csv),
        paper_protocol=pp,
        extra={"ablation": ablation_options(run.variant), "axis": ABLATION_AXIS.get(run.variant.network)},
    )


def experiment(
    dataset: str = "brats",
    networks: str | None = None,
    seeds: int = 1,
    folds: str = "0",
    output: str = "outputs/experiment",
    preset: str | None = None,
    paper_protocol: bool = False,
    figures: bool = True,
    data_seed: int = 0,
    max_runs: int | None = None,
    keep_going: bool = False,
    threads: int | None = None,
    figure_cases: str | None = None,
    figure_networks: str | None = None,
    reference: str | None = None,
    **overrides,
) -> str:
    """Train and evaluate every (network, seed, fold) through the data set's bundle, then write
    ``results.csv``, ``results.md`` and the figures into ``output``. Re-running the same command
    continues an interrupted grid: finished runs are skipped, an interrupted run is resumed from
    its last checkpoint. On the command line it logs INFO lines to stderr; called from Python it
    leaves logging as the caller set it up.

    Args:
        dataset: brats (5-fold cross-validation), isles or cityscapes (one fixed split), or nnunet:
            own data in the nnU-Net v2 raw layout (5-fold; --dataset_dir is its folder with
            dataset.json; --foreground_label picks labels by value or name, --crop_size the crop).
        networks: comma-separated registry names, each optionally with options:
            ``fpa,rfna,unet`` or ``'fpa[dilation=6,depthwise=false,expansion=2]'``. Default
            ``fpa,rfna`` (or only the preset's networks when --preset is given).
        seeds: a number of seeds (3 -> seeds 0, 1, 2) or a list ``0,5``. Seeds repeat the
            training on the same split; with 2 or more per network the paired comparison also says
            whether a difference holds in every pairing of seeds (1 seed: training variance unknown).
        folds: folds of brats and nnunet (0-4), e.g. ``0``, ``0,1,2,3,4`` or ``all``; isles and
            cityscapes, and a --data_list_file_path of a split of your own ('training' / 'validation'
            lists, no 'fold' fields): 0 only.
        output: experiment folder (see the module docstring for its layout).
        preset: the paper's experiments: table5, table6, fig7_fpa, fig7_rfna (networks given as
            well are added after the preset's).
        paper_protocol: also score every test slice on its own and add the PAPER PROTOCOL
            tables (per-slice aggregation, clearly labelled; for comparison with the paper only).
        figures: write fig4_attention.png, fig5_overlays.png and (for FPA / RFNA variants)
            fig7_ablation.png (needs matplotlib).
        data_seed: seed of the datalist's split and of a synthetic stand-in (the same for every run).
        max_runs: run at most this many of the unfinished runs now, then write the tables.
        keep_going: after a failed run, go on with the next one (and fail at the end).
        threads: torch CPU threads (on a busy CPU, 1 can be several times faster than the default).
        figure_cases: case IDs for fig5 (default: the two test cases of the first fold with the
            most foreground).
        figure_networks: networks (labels) for fig5 (default: every network of the grid, at most 8).
        reference: the network (label) every other is compared with, case by case and seed pairing
            by seed pairing, in results.md's paired comparison and comparison.csv (default: unet
            when in the grid, else the first).
        **overrides: passed to every bundle run: --epochs, --batch_size, --learning_rate,
            --num_workers, --dataset_dir (default OUTPUT/data; for the paper's data sets a
            SYNTHETIC stand-in is generated when it holds none; own data needs it), --data_list_file_path, --device (cpu, cuda:0),
            --deterministic, --network_options '{"features": [8, 16, 32, 64]}' (for every
            network; a wider network such as wunet keeps its width ratio) ...

    Returns:
        the path of results.md.
    """
    if overrides.pop("help", None) or overrides.pop("h", None):
        # Fire hands --help to a function with **kwargs as an argument: never start a grid for it
        return "Usage: python -m pam_monai experiment [--flags]\n\n" + inspect.cleandoc(
            experiment.__doc__ or ""
        )
    cmd = None
    if _from_cli():  # from Python the caller's logging setup is left alone
        _setup_logging()
        cmd = "python -m pam_monai " + " ".join(quote(a) for a in sys.argv[1:])
    result = run_experiment(
        dataset=dataset,
        networks=networks,
        seeds=seeds,
        folds=folds,
        output=output,
        preset=preset,
        paper_protocol=paper_protocol,
        figures=figures,
        data_seed=data_seed,
        max_runs=max_runs,
        keep_going=keep_going,
        threads=threads,
        figure_cases=figure_cases,
        figure_networks=figure_networks,
        reference=reference,
        command=cmd,
        **overrides,
    )
    return str(result.results_md)


# it prints its docstring for --help itself (above): the CLI passes --help on to it
experiment.answers_help = True


def _from_cli() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "experiment"


def _setup_logging() -> None:
    """The command line's logging: INFO lines on stderr, unless the root logger already has a handler."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
