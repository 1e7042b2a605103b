"""Training-step throughput: forward, batch-pooled soft Dice on sigmoid, backward, AdamW step.

The step is the bundles' step (``pam_monai.networks.loss_for`` around MONAI's
``DiceLoss(sigmoid=True, batch=True, smooth_nr=1, smooth_dr=1)``, AdamW) on random inputs of a
fixed shape. Networks are measured in one process so that their ratios share the machine's state;
on the CPU the (network, mode) pairs are interleaved in ``rounds`` so that a burst of load from
another process hits all of them alike, and the spread of the per-round ratios is reported.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .modes import Mode

__all__ = ["TrainCase", "bench_train", "build_network", "make_case", "step_peak_bytes"]

log = logging.getLogger("pam_monai.bench")


def records_cuda_graphs(compile_mode: str | None) -> bool:
    """Whether ``torch.compile(mode=compile_mode)`` records CUDA graphs: the mode's own option
    (reduce-overhead, max-autotune), else inductor's setting (``--inductor triton.cudagraphs=True``)."""
    from torch._inductor import config, list_mode_options

    options = list_mode_options(compile_mode) if compile_mode else {}
    return bool(options.get("triton.cudagraphs", config.triton.cudagraphs))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_PEAK_KIND = (
    "tensors held (parameters, AdamW state, inputs) + the peak of one step's tensor allocations "
    "(torch.profiler)"
)


def step_peak_bytes(step) -> int:
    """Peak bytes of the tensors that one call of ``step`` allocates and still holds at any moment
    (CPU): the running sum of ``torch.profiler``'s allocation and free events, in order.

    The process's peak RSS cannot tell one network's memory from another's in one process: glibc
    keeps freed memory that the next network's steps reuse (a default CPU run gave RFNA 9 MiB
    and the U-Net 34 MiB). Blocks allocated before the call and freed in it (the gradients that
    ``zero_grad`` drops) are not reported by the profiler, so the sum never counts them.

    Example:
        >>> step_peak_bytes(lambda: torch.empty(1 << 20, dtype=torch.uint8)) >= 1 << 20
        True
    """
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() == torch.autograd.DeviceType.CPU:
            live += e.nbytes()
            peak = max(peak, live)
    return peak


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages of ``tensors``."""
    seen = {}
    for t in tensors:
        if torch.is_tensor(t):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@dataclass
class TrainCase:
    """One (network, mode) under measurement."""

    network: str
    mode: Mode
    params: int
    step: object  # callable running one training step
    device: torch.device
    times: list = field(default_factory=list)
    host_times: list = field(default_factory=list)
    round_medians: list = field(default_factory=list)
    peak_bytes: int | None = None
    peak_kind: str = "-"
    warmup_s: float = 0.0
    # compiled with CUDA graphs: the graphs' memory pool is allocated while they are recorded (in
    # the warm-up); timed replays allocate nothing, so their own peak would leave it out
    cuda_graphs: bool = False
    warmup_peak_bytes: int | None = None
    error: str | None = None
    profile: dict | None = None
    held_bytes: object = None  # callable: bytes of the tensors the case holds between steps


def build_network(name: str, mode: Mode, device: torch.device) -> torch.nn.Module:
    """A registered 2-D BRATS network (4 -> 1 channels) on ``device`` in the layout and norm of ``mode``."""
    from ..engines.fast_path import fast_network
    from ..networks import get_network
    from ..networks.blocks import FastConv2d, FastInstanceNorm, FPABlock

    if mode.gather and mode.mm:
        raise ValueError(f"mode {mode.name!r}: gather and mm are two implementations of one up-sampling")
    net = get_network(name, spatial_dims=2, in_channels=4, out_channels=1)
    if mode.refconv:  # the blocks' reference implementation: plain nn.Conv2d everywhere
        for m in net.modules():
            if isinstance(m, FastConv2d):
                m.__class__ = torch.nn.Conv2d
    resize = "gather" if mode.gather else "matmul" if mode.mm else None
    net = fast_network(
        net.to(device),
        channels_last=mode.cl,
        fast_norm=mode.norm,
        resize=resize,
        taps=mode.taps,
        contiguous_attention=mode.nchwatt,
        plane_kernels=mode.plane,
    )
    if (mode.nchwatt or mode.plane) and not any(isinstance(m, FPABlock) for m in net.modules()):
        # a row labelled with the flag would measure the plain network
        raise ValueError(f"mode {mode.name!r}: nchwatt / plane change FPA blocks, and {name} has none")
    if mode.welford:  # the norm's statistics as before shifted sums (an A/B in one run)
        if not mode.norm:
            raise ValueError(f"mode {mode.name!r}: welford chooses the fusible norm's statistics; add norm")
        for m in net.modules():
            if isinstance(m, FastInstanceNorm):
                m.impl = "var_mean"
    return net


def make_case(
    name: str,
    mode: Mode,
    device: torch.device,
    batch: int,
    size: int,
    seed: int = 0,
    compile_mode: str | None = None,
) -> TrainCase:
    """Build network, loss, optimizer and data for one (network, mode) and return its step."""
    from monai.losses import DiceLoss

    from ..networks import loss_for

    torch.manual_seed(seed)
    net = build_network(name, mode, device)
    params = sum(p.numel() for p in net.parameters())
    net.train()
    loss_fn = loss_for(net, DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0))
    opt_kwargs = {"lr": 1e-4, "weight_decay": 1e-5}
    if mode.fused:
        opt_kwargs["fused"] = True
    opt = torch.optim.AdamW(net.parameters(), **opt_kwargs)
    model = torch.compile(net, mode=compile_mode) if mode.compile else net
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g).to(device)
    y = (torch.rand(batch, 1, size, size, generator=g) > 0.9).float().to(device)
    if mode.cl:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=mode.amp):
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()
        return loss

    def held_bytes() -> int:
        state = [v for s in opt.state.values() for v in s.values()]
        return tensor_bytes([*net.parameters(), *state, x, y])

    cuda_graphs = mode.compile and device.type == "cuda" and records_cuda_graphs(compile_mode)
    return TrainCase(
        network=name,
        mode=mode,
        params=params,
        step=step,
        device=device,
        cuda_graphs=cuda_graphs,
        held_bytes=held_bytes,
    )


def _timed_steps(case: TrainCase, n: int) -> list[float]:
    times = []
    for _ in range(n):
        _sync(case.device)
        t = time.perf_counter()
        case.step()
        issued = time.perf_counter()
        _sync(case.device)
        times.append(time.perf_counter() - t)
        # CUDA runs asynchronously: the time until step() returns is the host's share (launches);
        # close to the step's time means the GPU waits for the host
        case.host_times.append(issued - t)
    return times


def _warm(case: TrainCase, warmup: int) -> None:
    try:
        if case.cuda_graphs:
            torch.cuda.reset_peak_memory_stats(case.device)
        t = time.perf_counter()
        for _ in range(max(warmup, 1)):
            case.step()
        _sync(case.device)
        case.warmup_s = time.perf_counter() - t
        if case.cuda_graphs:
            case.warmup_peak_bytes = torch.cuda.max_memory_allocated(case.device)
    except Exception as e:
        case.error = f"warm-up: {type(e).__name__}: {e}"
        log.error("train %s/%s: %s\n%s", case.network, case.mode.name, case.error, traceback.format_exc())


def _measure(case: TrainCase, steps: int) -> None:
    device = case.device
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            times = _timed_steps(case, steps)
            case.peak_bytes = max(case.peak_bytes or 0, torch.cuda.max_memory_allocated(device))
            case.peak_kind = "torch.cuda.max_memory_allocated"
            if case.cuda_graphs:
                case.peak_bytes = max(case.peak_bytes, case.warmup_peak_bytes or 0)
                case.peak_kind = "torch.cuda.max_memory_allocated, warm-up included (CUDA graphs)"
        else:  # the peak is measured once, untimed (_cpu_peak)
            times = _timed_steps(case, steps)
        case.times.extend(times)
        case.round_medians.append(statistics.median(times))
    except Exception as e:
        case.error = f"step: {type(e).__name__}: {e}"
        log.error("train %s/%s: %s\n%s", case.network, case.mode.name, case.error, traceback.format_exc())


def _cpu_peak(case: TrainCase) -> None:
    """The case's own peak memory on the CPU, from one more (untimed) step: see
    :func:`step_peak_bytes`."""
    try:
        case.peak_bytes = case.held_bytes() + step_peak_bytes(case.step)
        case.peak_kind = CPU_PEAK_KIND
    except Exception as e:  # the timings stand without it
        log.error("train %s/%s: peak memory: %s", case.network, case.mode.name, e)


def _progress(case: TrainCase, what: str) -> None:
    """One line per finished piece of work, flushed: a stage killed by its time box still shows how far it got."""
    med = f"{statistics.median(case.times) * 1e3:.1f} ms/step" if case.times else ""
    err = f" ERROR {case.error}" if case.error else ""
    print(
        f"[bench] train {case.network}/{case.mode.name}: {what} (warm-up {case.warmup_s:.1f} s) {med}{err}",
        flush=True,
    )


def _kernel_group(name: str) -> str:
    n = name.lower()
    # inductor's kernels first: their names list the fused ops ("convolution_backward" included)
    if n.startswith("triton_"):
        if "index_put" in n or "scatter" in n:
            return "up-sampling / scatter"
        if n.startswith(("triton_red", "triton_per")):
            return "reductions (norms, loss)"
        return "element-wise"
    if any(k in n for k in ("nchwtonhwc", "nhwctonchw", "tensortransform", "memcpy", "copy_kernel")):
        return "copies / layout"
    conv_keys = (
        "conv",
        "cudnn",
        "xmma",
        "implicit",
        "dgrad",
        "wgrad",
        "fprop",
        "sm90",
        "cutlass",
        "gemm",
        "nvjet",
    )
    if any(k in n for k in conv_keys):
        return "convolution / GEMM"
    if "upsample" in n or "interp" in n or "index_put" in n or "scatter" in n or "atomic" in n:
        return "up-sampling / scatter"
    if "reduce" in n or "norm" in n or "var_mean" in n:
        return "reductions (norms, loss)"
    if "elementwise" in n or "vectorized" in n:
        return "element-wise"
    if "cat" in n or "copy" in n or "transpose" in n:
        return "copies / layout"
    if "adam" in n or "foreach" in n:
        return "optimizer"
    return "other"


def profile_steps(case: TrainCase, steps: int, top: int = 30) -> dict:
    """``torch.profiler`` over ``steps`` training steps: the ``top`` kernels (CUDA) or ATen ops (CPU)
    by self time per step, and the time per kind of work."""
    from torch.profiler import ProfilerActivity, profile

    cuda = case.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    _sync(case.device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            case.step()
        _sync(case.device)
    rows = []
    for e in prof.key_averages():
        if cuda:
            t = getattr(e, "self_device_time_total", None)
            if t is None:
                t = getattr(e, "self_cuda_time_total", 0)
            if getattr(e, "device_type", None) is not None and "CUDA" not in str(e.device_type):
                continue
        else:
            if not e.key.startswith("aten::"):
                continue
            t = e.self_cpu_time_total
        if t and t > 0:
            rows.append((t / 1e3 / steps, e.key, e.count // max(steps, 1)))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) or 1.0
    groups: dict[str, float] = {}
    for ms, name, _ in rows:
        g = _kernel_group(name)
        groups[g] = groups.get(g, 0.0) + ms
    return {
        "unit": "ms per step (self " + ("CUDA kernel" if cuda else "CPU") + " time)",
        "total_ms": total,
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top": [{"name": n[:120], "ms": ms, "share": ms / total, "calls": c} for ms, n, c in rows[:top]],
    }


def _profile(case: TrainCase, steps: int) -> None:
    try:
        case.profile = profile_steps(case, steps)
    except Exception as e:
        log.error("train %s/%s: profile failed: %s", case.network, case.mode.name, e)
        case.profile = {"error": f"{type(e).__name__}: {e}"}


def _build(
    name: str, mode: Mode, device: torch.device, batch: int, size: int, seed: int, compile_mode
) -> TrainCase:
    try:
        return make_case(name, mode, device, batch, size, seed, compile_mode)
    except Exception as e:  # one bad pair must not stop the others
        log.error("train %s/%s: build failed: %s\n%s", name, mode.name, e, traceback.format_exc())
        case = TrainCase(network=name, mode=mode, params=0, step=None, device=device)
        case.error = f"build: {type(e).__name__}: {e}"
        return case


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_train(
    networks: list[str],
    modes: list[Mode],
    device: torch.device,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    rounds: int = 1,
    seed: int = 0,
    compile_mode: str | None = None,
    profile: int = 0,
    on_result=None,
) -> list[dict]:
    """Measure every (network, mode); returns one result dict per pair (see :func:`summarise`).

    On CUDA (or with ``rounds=1``) the pairs run one after the other, each alone in memory, so
    that ``torch.cuda.max_memory_allocated`` is its own peak, and ``on_result(rows)`` is called with
    the rows so far after each pair (the caller saves them: a time box that kills the process keeps
    what was done). On the CPU with ``rounds > 1`` all pairs are built first and their timed steps
    interleaved round by round. ``profile > 0`` adds a ``torch.profiler`` summary of that many
    steps per pair (after the timed ones).
    """
    pairs = [(name, mode) for mode in modes for name in networks]
    if device.type == "cuda" or rounds <= 1:
        results = []
        for name, mode in pairs:
            case = _build(name, mode, device, batch, size, seed, compile_mode)
            if not case.error:
                _warm(case, warmup)
                _progress(case, "warm")
            for _ in range(max(rounds, 1)):
                if not case.error:
                    _measure(case, steps)
            if device.type == "cpu" and not case.error:
                _cpu_peak(case)
            if profile and not case.error:
                _profile(case, profile)
            _progress(case, "done")
            case.step = case.held_bytes = None
            results.append(case)
            _free(device)
            if on_result is not None:
                on_result(summarise(results, batch, size))
        return summarise(results, batch, size)
    cases = [_build(name, mode, device, batch, size, seed, compile_mode) for name, mode in pairs]
    for case in cases:
        if not case.error:
            _warm(case, warmup)
            _progress(case, "warm")
    for r in range(rounds):
        for case in cases:
            if not case.error:
                _measure(case, steps)
        print(f"[bench] train: round {r + 1}/{rounds} done", flush=True)
        if on_result is not None:
            on_result(summarise(cases, batch, size))
    for case in cases:
        if device.type == "cpu" and not case.error:
            _cpu_peak(case)
        if profile and not case.error:
            _profile(case, profile)
        case.step = case.held_bytes = None
    _free(device)
    return summarise(cases, batch, size)


def summarise(cases: list[TrainCase], batch: int, size: int) -> list[dict]:
    """Per case: median/min step time, slices/s, peak memory, and the cost relative to the U-Net
    of the same mode (ratio of median step times; also of minimum times, and per round)."""
    ref = {c.mode.name: c for c in cases if c.network == "unet" and not c.error and c.times}
    out = []
    for c in cases:
        r = {
            "network": c.network,
            "mode": c.mode.name,
            "flags": c.mode.flags(),
            "params": c.params,
            "batch": batch,
            "size": [4, size, size],
            "steps": len(c.times),
            "rounds": len(c.round_medians),
            "warmup_s": round(c.warmup_s, 3),
            "error": c.error,
        }
        if c.profile is not None:
            r["profile"] = c.profile
        if c.times:
            med, best = statistics.median(c.times), min(c.times)
            if c.device.type == "cuda" and c.host_times:
                r["host_ms_median"] = statistics.median(c.host_times) * 1e3
            r.update(
                step_ms_median=med * 1e3,
                step_ms_min=best * 1e3,
                step_ms_p75=float(np.percentile(c.times, 75)) * 1e3,  # interpolated: never below the median
                slices_per_s=batch / med,
                peak_bytes=c.peak_bytes,
                peak_kind=c.peak_kind,
            )
            u = ref.get(c.mode.name)
            if u is not None:
                r["cost_vs_unet"] = med / statistics.median(u.times)
                r["cost_vs_unet_min"] = best / min(u.times)
                if len(c.round_medians) == len(u.round_medians) and c.round_medians:
                    per_round = [a / b for a, b in zip(c.round_medians, u.round_medians)]
                    r["cost_vs_unet_rounds"] = per_round
                    r["cost_vs_unet_rounds_median"] = statistics.median(per_round)
        out.append(r)
    return out
