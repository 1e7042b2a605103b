"""Benchmark modes: which parts of the fast path a measurement switches on.

A mode is a base name with optional ``+flag`` / ``-flag`` modifiers, e.g. ``fp32``, ``fast``,
``fast-compile`` (the fast path in eager mode), ``fp32+norm``. Flags:

- ``amp``: bf16 autocast of the forward pass (the loss is computed in fp32);
- ``cl``: channels-last network and inputs;
- ``norm``: the fusible instance norm (:func:`pam_monai.engines.fast_path.use_fast_norm`);
- ``compile``: ``torch.compile`` of the network (forward and backward);
- ``fused``: fused AdamW;
- ``taps``: FPA's dilated depthwise convolutions as a sum of taps also on CUDA / when compiled
  (``pam_monai.networks.blocks.fastconv.use_tap_convs``; part of CUDA's ``fast``);
- ``gather``: the decoders' up-sampling with a gather-only backward pass instead of
  ``F.interpolate``, whose compiled backward scatters with atomics
  (``pam_monai.networks.blocks.resize.linear_resize``; an experiment, off in ``fast``);
- ``mm``: the decoders' up-sampling as matrix products (``matmul_resize``: GEMMs forward and
  backward, in the tensors' memory layout; ``pam_monai.networks.blocks.resize.matmul_resize``);
- ``welford``: the fusible norm's statistics of bf16 inputs from ``torch.var_mean`` (Welford),
  as before 2026-11-27, instead of shifted sums (``FastInstanceNorm(impl="var_mean")``; off in
  ``fast``: the before of an A/B in one run);
- ``nchwatt``: FPA's attention branches on the contiguous layout with their 1x1 convolutions as
  matrix products, inside a channels-last network (``fast_network(contiguous_attention=True)``;
  an experiment, off in ``fast``);
- ``plane``: ``nchwatt`` with each of FPA's ``dilated conv -> norm -> ReLU`` units as one Triton
  kernel per direction (``fast_network(plane_kernels=True)``; an experiment, off in ``fast``);
- ``refconv``: the reference convolutions: ``FastConv2d``'s CPU routes off, i.e. the blocks as
  plain ``nn.Conv2d`` (the implementation before the CPU work), to measure both in one run.

``fast`` is the fast path of the device, as the bundles' ``fast`` flag sets it: on CUDA
``amp+cl+norm+compile+fused+mm+taps``. Channels-last alone made every network slower (H100 and
H200, 2026-11-26) because ``F.interpolate``'s compiled backward scatters with atomics, slower
still in channels-last; with the up-sampling as GEMMs (``mm``) it halves the U-Net's kernel time
(H200: 8.2 against 13.3 ms per step) and with FPA's dilated convolutions as taps FPA is fastest
too (24.5 against 32.3 ms); ``fast-cl-mm-taps`` is the CUDA fast path before that. On the CPU only ``norm`` and ``fused``, because bf16 (without AMX), channels-last (ANCHORS.md)
and compilation (about a minute per network on 2 cores) make CPU steps slower or the benchmark
too long there; add them with ``fast+amp+cl+compile`` to measure them anyway.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

__all__ = ["FLAGS", "Mode", "parse_mode", "parse_modes"]

FLAGS = (
    "amp",
    "cl",
    "norm",
    "compile",
    "fused",
    "taps",
    "gather",
    "mm",
    "welford",
    "nchwatt",
    "plane",
    "refconv",
)


@dataclass(frozen=True)
class Mode:
    """One benchmark setting (see the module docstring)."""

    name: str
    amp: bool = False
    cl: bool = False
    norm: bool = False
    compile: bool = False
    fused: bool = False
    taps: bool = False
    gather: bool = False
    mm: bool = False
    welford: bool = False
    nchwatt: bool = False
    plane: bool = False
    refconv: bool = False

    def flags(self) -> dict:
        d = asdict(self)
        d.pop("name")
        return d

    def describe(self) -> str:
        on = [f for f in FLAGS if getattr(self, f)]
        return "+".join(on) if on else "plain fp32"


def _base(name: str, device_type: str) -> dict:
    if name == "fp32":
        return {}
    if name == "bf16":
        return {"amp": True}
    if name == "fast":
        if device_type == "cuda":
            return {
                "amp": True,
                "cl": True,
                "norm": True,
                "compile": True,
                "fused": True,
                "mm": True,
                "taps": True,
            }
        return {"norm": True, "fused": True}
    raise ValueError(f"unknown mode {name!r}: a mode is fp32, bf16 or fast, with +flag / -flag from {FLAGS}")


def parse_mode(text: str, device_type: str) -> Mode:
    """``"fast-compile"`` -> ``Mode(name="fast-compile", amp=True, cl=True, norm=True, fused=True, mm=True, taps=True)``
    on CUDA."""
    text = str(text).strip()
    parts = re.split(r"([+-])", text)
    flags = _base(parts[0], device_type)
    for sign, flag in zip(parts[1::2], parts[2::2]):
        if flag not in FLAGS:
            raise ValueError(f"mode {text!r}: unknown flag {flag!r} (flags: {', '.join(FLAGS)})")
        flags[flag] = sign == "+"
    return Mode(name=text, **flags)


def parse_modes(modes, device_type: str) -> list[Mode]:
    """A comma-separated string (or a list) of modes."""
    items = modes.split(",") if isinstance(modes, str) else list(modes)
    return [parse_mode(m, device_type) for m in items if str(m).strip()]
