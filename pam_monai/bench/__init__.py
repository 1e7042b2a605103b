"""``python -m pam_monai bench``: training-step, data-pipeline, inference and HD95 benchmarks.

See ``benchmarks/README.md`` for the latest figures and the exact commands, and
``benchmarks/gpu_check.sh`` for the one-shot GPU run.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.util
import inspect
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch

from .modes import Mode, parse_modes
from .report import format_report, hd95_disagreements, merge, write_json

__all__ = ["Mode", "bench", "format_report", "merge", "parse_modes", "run_bench", "write_json"]

log = logging.getLogger("pam_monai.bench")

STAGES = ("train", "data", "infer", "hd95", "bundle")

# defaults per device: (batch, size, steps, warmup, rounds)
DEFAULTS = {
    "cuda": {
        "batch": 50,
        "size": 160,
        "steps": 20,
        "warmup": 5,
        "rounds": 1,
        "data_cases": 4,
        "infer_repeats": 3,
    },
    "cpu": {
        "batch": 4,
        "size": 80,
        "steps": 3,
        "warmup": 2,
        "rounds": 4,
        "data_cases": 2,
        "infer_repeats": 1,
    },
    "quick": {
        "batch": 2,
        "size": 32,
        "steps": 1,
        "warmup": 1,
        "rounds": 2,
        "data_cases": 1,
        "infer_repeats": 1,
    },
}


def _names(value, all_names) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    items = [i.strip().lower() for i in items if str(i).strip()]
    if items == ["all"]:
        return list(all_names)
    unknown = [i for i in items if i not in all_names]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; registered: {', '.join(all_names)}")
    return items


def _ints(value) -> tuple[int, ...]:
    if isinstance(value, (int, float)):
        return (int(value),)
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    return tuple(int(v) for v in value)


def _device(device: str) -> torch.device:
    device = str(device).lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return dev


def _meta(device: torch.device, settings: dict) -> dict:
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
        "settings": settings,
    }
    try:
        import monai

        meta["monai"] = monai.__version__
    except ImportError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    meta["cpu"] = cpu
    if device.type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
        meta["cudnn"] = torch.backends.cudnn.version()
    else:
        meta["device_name"] = f"CPU: {cpu} ({torch.get_num_threads()} threads)"
    return meta


def load_hd95_bench():
    """``benchmarks/hd95_bench.py``'s module (the repository's, beside the package)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "hd95_bench.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (the HD95 benchmark lives in the repository, not the package)"
        )
    spec = importlib.util.spec_from_file_location("pam_monai_hd95_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_inductor_settings(spec: str | dict | None) -> dict:
    """Set ``torch._inductor.config`` entries from ``"name=value,..."`` (values as Python literals).

    Returns the settings applied, for the record. Unknown names are refused with the name.

    Example:
        >>> apply_inductor_settings(None)
        {}
    """
    if not spec:
        return {}
    import ast

    from torch._inductor import config

    if isinstance(spec, dict):
        pairs = spec.items()
    else:  # Fire may hand over "a=1,b=2" as a string or a tuple of strings
        items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
        pairs = [str(item).split("=", 1) for item in items if str(item).strip()]
        bad = [item for item in pairs if len(item) != 2]
        if bad:
            raise ValueError(f"--inductor: expected name=value pairs, got {'='.join(bad[0])!r}")
    applied = {}
    for name, text in pairs:
        name = name.strip()
        value = ast.literal_eval(text.strip()) if isinstance(text, str) else text
        owner, _, attr = name.rpartition(".")
        target = config
        for part in owner.split(".") if owner else []:
            target = getattr(target, part, None)
        if target is None or not hasattr(target, attr):
            raise ValueError(f"--inductor: torch._inductor.config has no setting {name!r}")
        setattr(target, attr, value)
        applied[name] = value
    return applied


@contextlib.contextmanager
def _kept_logging_and_inductor(inductor) -> Iterator[None]:
    """The root logger (``run_bench`` configures it for its progress lines) and, with ``inductor``,
    ``torch._inductor.config`` as they were before the block."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    config = None
    if inductor:
        from torch._inductor import config

        saved = config.save_config()
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        if config is not None:
            config.load_config(saved)


def _keeps_the_process_as_it_was(run):
    """``run_bench`` in another program (a notebook, a test) leaves its settings behind: threads,
    RNGs, cuDNN flags, inductor settings and the root logger come back afterwards."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        # imports MONAI: not at this module's import
        from ..engines.process_settings import kept_process_settings

        inductor = inspect.signature(run).bind(*args, **kwargs).arguments.get("inductor")
        with kept_process_settings(), _kept_logging_and_inductor(inductor):
            return run(*args, **kwargs)

    return wrapper


@_keeps_the_process_as_it_was
def run_bench(
    device: str = "auto",
    networks: str | None = None,
    modes: str = "fp32,fast",
    batch: int | None = None,
    size: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    rounds: int | None = None,
    stages: str = "train,data,infer,hd95",
    infer_networks: str | None = None,
    infer_modes: str | None = None,
    infer_repeats: int | None = None,
    volume: str = "240,240,155",
    crop: int = 160,
    slice_batch_size: int = 64,
    data_cases: int | None = None,
    data_slices: int = 155,
    data_workers: str = "0,2",
    hd95_repeats: int = 3,
    hd95_shape: str = "155,240,240",
    hd95_segs: str | None = None,
    bundle_log_every: str = "1,10",
    bundle_epochs: int | None = None,
    bundle_cases: int = 8,
    bundle_slices: int = 64,
    bundle_fast: bool | None = None,
    compile_mode: str | None = None,
    inductor: str | None = None,
    profile: int = 0,
    threads: int | None = None,
    reference: bool = True,
    seed: int = 0,
    output: str | None = "outputs/bench.json",
    quick: bool = False,
    verbose: bool = False,
) -> dict:
    """Benchmark the training step, the data pipeline, whole-volume inference and HD95.

    Prints markdown tables and writes the results as JSON. Every stage, network and mode is
    guarded: a failure is recorded in the results (``errors``) and the rest still runs. The
    process's settings it changes (threads, RNGs, cuDNN benchmark, ``inductor``, the root logger
    for ``verbose``) are restored when it returns.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        networks: comma-separated registered networks or ``all`` (default ``unet,fpa,rfna``;
            ``unet,fpa`` with ``quick``, as RFNA needs inputs over 64 pixels); the 3-stage ``unet``
            is always added as the reference of the cost ratios.
        modes: comma-separated modes (``fp32``, ``bf16``, ``fast``, with ``+flag``/``-flag``; see
            the module pam_monai.bench.modes).
        batch: slices per training step (CUDA 50, the paper's BRATS batch; CPU 4).
        size: slice height and width (CUDA 160, the paper's BRATS crop; CPU 80).
        steps: timed steps per round (CUDA 20, CPU 3).
        warmup: untimed steps first (CUDA 5: ``torch.compile`` compiles here; CPU 2).
        rounds: CPU: rounds of interleaved timed steps over all (network, mode) pairs (4).
        stages: comma-separated subset of ``train,data,infer,hd95,bundle`` (``bundle``: the BRATS
            bundle's whole training loop, ``pam_monai.bench.trainer``; not in the default).
        infer_networks: networks for whole-volume inference (CUDA: ``networks``; CPU: ``fpa``).
        infer_modes: modes for inference (CUDA: ``modes``; CPU: ``fp32``).
        infer_repeats: timed inference runs (median reported).
        volume: ``H,W,D`` of the inference case (BRATS 240,240,155).
        crop: in-plane centre crop before the network (BRATS 160).
        slice_batch_size: slices per network call in inference.
        data_cases: synthetic BRATS cases for the data pipeline (CUDA 4, CPU 2).
        data_slices: axial slices per synthetic case (155 as BRATS).
        data_workers: ``DataLoader`` worker counts to measure, comma-separated.
        hd95_repeats: timed HD95 runs per implementation.
        hd95_shape: volume shape of the HD95 pair.
        hd95_segs: comma-separated BraTS ``*_seg.nii.gz`` files: their enhancing tumours give
            further HD95 pairs with real lesion shapes.
        bundle_log_every: stage ``bundle``: the bundle's ``log_every`` values to compare, comma-separated.
        bundle_epochs: stage ``bundle``: epochs per run, all but the first timed (CUDA 4, CPU 3, quick 2).
        bundle_cases: stage ``bundle``: synthetic BRATS cases (3 of 5 train).
        bundle_slices: stage ``bundle``: axial slices per synthetic case.
        bundle_fast: stage ``bundle``: the bundle's ``fast`` (default: its own, CUDA available).
        compile_mode: ``torch.compile`` mode (default: PyTorch's default mode); stage ``bundle``: the bundle's ``compile_mode``.
        inductor: ``torch._inductor.config`` settings for the compiled modes, comma-separated
            ``name=value`` pairs (Python literals), e.g. ``layout_optimization=False`` or
            ``triton.cudagraphs=True``; recorded in the JSON's ``meta``.
        profile: after the timed steps, profile this many steps per (network, mode) with
            ``torch.profiler`` and report the top CUDA kernels (CPU ATen ops) and the time per
            kind of work (convolutions, reductions, element-wise, up-sampling, copies, optimizer).
        threads: ``torch.set_num_threads`` (default: PyTorch's choice).
        reference: add the 3-stage ``unet`` to the training networks as the reference of the cost
            ratios (``--reference=False`` measures only the named networks, e.g. one compiled network
            per process; ``pam_monai.bench.merge`` computes the ratios across such runs).
        seed: seed of inputs and weights.
        output: JSON file to write (``""`` or ``None``: none).
        quick: tiny shapes and one step each (a smoke test; figures mean nothing).
        verbose: log progress.

    Returns:
        ``{"meta", "train", "data", "infer", "hd95", "errors"}``.
    """
    options = dict(locals())  # every argument as given, for the record (meta.settings.options)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    from ..networks import NETWORKS

    if threads:
        torch.set_num_threads(int(threads))
    dev = _device(device)
    d = dict(DEFAULTS["quick" if quick else ("cuda" if dev.type == "cuda" else "cpu")])
    batch = int(d["batch"] if batch is None else batch)
    size = int(d["size"] if size is None else size)
    steps = int(d["steps"] if steps is None else steps)
    warmup = int(d["warmup"] if warmup is None else warmup)
    rounds = int((1 if dev.type == "cuda" else d["rounds"]) if rounds is None else rounds)
    for name, value, least in (
        ("batch", batch, 1),
        ("size", size, 8),
        ("steps", steps, 1),
        ("rounds", rounds, 1),
    ):
        if value < least:  # a 0 used to fall back to the default without a word
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    stage_list = [s.strip() for s in (stages.split(",") if isinstance(stages, str) else stages) if s.strip()]
    bad = [s for s in stage_list if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; stages: {', '.join(STAGES)}")
    net_list = _names(networks or ("unet,fpa" if quick else "unet,fpa,rfna"), NETWORKS)
    if reference and "unet" not in net_list and "train" in stage_list:
        net_list = ["unet", *net_list]
    mode_list = parse_modes(modes, dev.type)
    if dev.type == "cuda":
        infer_nets = _names(infer_networks, NETWORKS) if infer_networks else [n for n in net_list]
        infer_mode_list = parse_modes(infer_modes, dev.type) if infer_modes else mode_list
    else:
        infer_nets = _names(infer_networks or ("unet" if quick else "fpa"), NETWORKS)
        infer_mode_list = parse_modes(infer_modes or "fp32", dev.type)
    vol = _ints(volume)
    if quick:
        vol, crop = (48, 48, 4), 32
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    inductor_settings = apply_inductor_settings(inductor)
    settings = {
        "batch": batch,
        "size": size,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "stages": stage_list,
        "networks": net_list,
        "modes": [m.name for m in mode_list],
        "quick": bool(quick),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "compile_mode": compile_mode,
        "inductor": inductor_settings,
        "options": options,
    }
    result: dict = {
        "meta": _meta(dev, settings),
        "train": [],
        "data": None,
        "infer": [],
        "hd95": None,
        "bundle": [],
        "errors": [],
    }
    timings = {}

    def guarded(stage: str, fn):
        t = time.perf_counter()
        try:
            return fn()
        except Exception as e:
            msg = f"{stage}: {type(e).__name__}: {e}"
            log.error("%s\n%s", msg, traceback.format_exc())
            result["errors"].append(msg)
            return None
        finally:
            timings[stage] = round(time.perf_counter() - t, 2)

    if "train" in stage_list:
        from .train import bench_train

        def tagged(rows: list[dict]) -> list[dict]:
            # compiled rows under other inductor settings or another torch.compile mode are their
            # own mode (and U-Net reference)
            parts = [f"{k}={v}" for k, v in inductor_settings.items()]
            if compile_mode:
                parts.insert(0, f"mode={compile_mode}")
            label = ",".join(parts)
            for r in rows:
                if label and (r.get("flags") or {}).get("compile") and "inductor" not in r:
                    r["inductor"] = dict(inductor_settings)
                    r["mode"] = f"{r['mode']} [{label}]"
                    r["flags"] = {**r["flags"], f"inductor:{label}": True}
            return rows

        def save_partial(rows: list[dict]) -> None:  # a killed stage keeps its finished pairs
            result["train"] = tagged(rows)
            if output:
                write_json(result, output)

        result["train"] = (
            guarded(
                "train",
                lambda: bench_train(
                    net_list,
                    mode_list,
                    dev,
                    batch,
                    size,
                    steps,
                    warmup,
                    rounds,
                    seed,
                    compile_mode,
                    profile=int(profile),
                    on_result=save_partial,
                ),
            )
            or result["train"]
        )
        result["train"] = tagged(result["train"])
        result["errors"] += [
            f"train {r['network']}/{r['mode']}: {r['error']}" for r in result["train"] if r.get("error")
        ]
    if "data" in stage_list:
        from .pipeline import bench_data

        cl = any(m.cl for m in mode_list) and dev.type == "cuda"
        result["data"] = guarded(
            "data",
            lambda: bench_data(
                dev,
                batch,
                cases=int(data_cases or d["data_cases"]),
                slices=12 if quick else int(data_slices),
                workers=_ints(data_workers),
                channels_last=cl,
                min_batches=3 if quick else 20,
                min_seconds=0.0 if quick else 2.0,
                seed=seed,
            ),
        )
    if "infer" in stage_list:
        from .volume import bench_volume

        result["infer"] = (
            guarded(
                "infer",
                lambda: bench_volume(
                    infer_nets,
                    infer_mode_list,
                    dev,
                    volume=tuple(vol),
                    crop=int(crop),
                    slice_batch_size=int(slice_batch_size),
                    repeats=int(infer_repeats or d["infer_repeats"]),
                    seed=seed,
                ),
            )
            or []
        )
        result["errors"] += [
            f"infer {r['network']}/{r['mode']}: {r['error']}" for r in result["infer"] if r.get("error")
        ]
    if "hd95" in stage_list:
        shape = (40, 48, 48) if quick else _ints(hd95_shape)
        reps = 1 if quick else int(hd95_repeats)
        segs = [x for x in (hd95_segs or "").split(",") if x]
        result["hd95"] = guarded(
            "hd95", lambda: load_hd95_bench().bench_hd95(repeats=reps, shape=shape, segs=segs)
        )
        result["errors"] += hd95_disagreements(result["hd95"])
    if "bundle" in stage_list:
        from .trainer import bench_bundle

        def save_bundle(rows: list[dict]) -> None:
            result["bundle"] = rows
            if output:
                write_json(result, output)

        result["bundle"] = (
            guarded(
                "bundle",
                lambda: bench_bundle(
                    net_list,
                    dev,
                    batch,
                    size,
                    log_every=_ints(bundle_log_every),
                    epochs=int(bundle_epochs or (2 if quick else 4 if dev.type == "cuda" else 3)),
                    cases=5 if quick else int(bundle_cases),
                    slices=12 if quick else int(bundle_slices),
                    fast=bundle_fast,
                    compile_mode=compile_mode,
                    seed=seed,
                    on_result=save_bundle,
                ),
            )
            or result["bundle"]
        )
        result["errors"] += [
            f"bundle {r['network']}/{r['mode']}: {r['error']}" for r in result["bundle"] if r.get("error")
        ]
    result["meta"]["stage_seconds"] = timings
    if output:
        path = write_json(result, output)
        result["meta"]["output"] = str(path)
    print(format_report(result))
    if output:
        print(f"\nJSON: {output}")
    return result


@functools.wraps(run_bench)
def bench(*args, **kwargs) -> None:
    """The command line's ``bench``: :func:`run_bench` without a return value (which Fire would
    print); exits with code 1 when a measurement failed (the tables and the JSON still hold the rest)."""
    result = run_bench(*args, **kwargs)
    if result["errors"]:
        raise SystemExit(
            f"bench: {len(result['errors'])} measurement(s) failed (see 'Errors' above and in the JSON)"
        )
