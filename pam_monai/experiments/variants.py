"""Network variants and the paper's experiment presets.

A grid names its networks as registry names (:data:`pam_monai.networks.NETWORKS`), optionally
with options in brackets::

    fpa                                        # the registered defaults
    fpa[dilation=6,depthwise=false,expansion=2]
    rfna[ratio=4]

Option values are read as JSON where they parse (``true``, ``6``, ``[8,16,32,64]``), else as
strings. A variant's identity is its network and its own options, sorted by name, so
``fpa[expansion=2,dilation=6]`` and ``fpa[dilation=6,expansion=2]`` are the same variant (and
the same run folder).

Presets (``--preset``) are the paper's experiments:

=============  ===========================================================================
``table5``     fpa, rfna, unet, aunet, cscunet, gcnunet, cbamunet (Table 5, BRATS)
``table6``     unet, wunet, d6unet, d9unet (Table 6, branches removed / capacity)
``fig7_fpa``   FPA dilation 6, 9, 12 x (depthwise, expansion 2, 4, 8 | full, expansion 1, 2)
``fig7_rfna``  RFNA ratio 2, 4, 8 x (depthwise, expansion 2, 4, 8 | full, expansion 1, 2)
=============  ===========================================================================
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..networks import NETWORKS

__all__ = [
    "BACKBONE_FEATURES",
    "PRESETS",
    "Variant",
    "ablation_options",
    "effective_options",
    "parse_networks",
    "parse_variant",
    "preset_networks",
]

# the backbone's widths (UNet3's default); networks registered at other widths scale with it
BACKBONE_FEATURES = (32, 64, 128, 256)

_FIG7_DEPTHWISE = (2, 4, 8)  # expansion ratios with depthwise convolutions (paper section 4.3)
_FIG7_FULL = (1, 2)  # expansion ratios with full convolutions


def _fig7(network: str, key: str, values: Sequence[int]) -> list[str]:
    out = []
    for v in values:
        out += [f"{network}[{key}={v},depthwise=true,expansion={e}]" for e in _FIG7_DEPTHWISE]
        out += [f"{network}[{key}={v},depthwise=false,expansion={e}]" for e in _FIG7_FULL]
    return out


PRESETS: dict[str, list[str]] = {
    "table5": ["fpa", "rfna", "unet", "aunet", "cscunet", "gcnunet", "cbamunet"],
    "table6": ["unet", "wunet", "d6unet", "d9unet"],
    "fig7_fpa": _fig7("fpa", "dilation", (6, 9, 12)),
    "fig7_rfna": _fig7("rfna", "ratio", (2, 4, 8)),
}

# the option of each attention network that Figure 7's x axis varies
ABLATION_AXIS = {"fpa": "dilation", "rfna": "ratio"}


def _format_value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


def _parse_value(text: str) -> Any:
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` at ``sep`` outside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced brackets in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced brackets in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Variant:
    """A registered network with its own options (``options``: sorted ``(name, value)`` pairs)."""

    network: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def options_dict(self) -> dict:
        return {k: _thaw(v) for k, v in self.options}

    @property
    def label(self) -> str:
        """``fpa`` or ``fpa[depthwise=false,dilation=6,expansion=2]``: the name in tables."""
        if not self.options:
            return self.network
        return f"{self.network}[{','.join(f'{k}={_format_value(v)}' for k, v in self.options_dict.items())}]"

    @property
    def dirname(self) -> str:
        """A file-system-safe folder name: ``fpa`` or ``fpa-depthwise_false-dilation_6-expansion_2``."""
        parts = [self.network] + [f"{k}_{_format_value(v)}" for k, v in self.options_dict.items()]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("_")


def _check_options(network: str, options: dict) -> None:
    cls = NETWORKS[network].cls
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "spatial_dims", "in_channels", "out_channels")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{network}: unknown option(s) {unknown}; {cls.__name__} takes {allowed}")


def parse_variant(text: str) -> Variant:
    """``"fpa[dilation=6,depthwise=false]"`` -> ``Variant("fpa", (("depthwise", False), ("dilation", 6)))``."""
    text = text.strip()
    m = re.fullmatch(r"([A-Za-z0-9_]+)\s*(?:\[(.*)\])?", text, flags=re.S)
    if not m:
        raise ValueError(f"cannot read network {text!r}; expected NAME or NAME[key=value,...]")
    name = m.group(1).lower()
    if name not in NETWORKS:
        raise ValueError(f"unknown network {m.group(1)!r}; registered networks: {', '.join(NETWORKS)}")
    options: dict[str, Any] = {}
    for item in _split_top(m.group(2) or ""):
        if "=" not in item:
            raise ValueError(f"{text!r}: option {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ValueError(f"{text!r}: bad option name {key!r}")
        if key in options:
            raise ValueError(f"{text!r}: option {key!r} given twice")
        options[key] = _parse_value(value)
    _check_options(name, options)
    return Variant(name, tuple(sorted((k, _freeze(v)) for k, v in options.items())))


def parse_networks(networks: str | Iterable[str]) -> list[Variant]:
    """A comma-separated list (or a list) of network specs -> variants, duplicates removed in order."""
    items: list[str] = []
    for entry in [networks] if isinstance(networks, str) else list(networks):
        items += _split_top(str(entry))
    if not items:
        raise ValueError("no network given")
    seen: dict[Variant, None] = {}
    for item in items:
        seen.setdefault(parse_variant(item), None)
    return list(seen)


def preset_networks(preset: str) -> list[str]:
    """The network specs of a preset (``table5``, ``table6``, ``fig7_fpa``, ``fig7_rfna``)."""
    key = str(preset).lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return list(PRESETS[key])


def effective_options(variant: Variant, global_options: dict | None = None) -> dict:
    """The ``network_options`` a run passes to the bundle: global options, then the variant's own.

    A global ``features`` gives the BACKBONE's widths; a network registered at another width
    (``wunet``: 64, 128, 256, 512) keeps its ratio to the backbone, so ``features=[8,16,32,64]``
    makes wunet ``[16,32,64,128]``: a small WUnet is still twice as wide as the small U-Net.
    """
    out = dict(global_options or {})
    defaults = NETWORKS[variant.network].defaults
    if "features" in out and "features" in defaults and "features" not in variant.options_dict:
        scale = [d / b for d, b in zip(defaults["features"], BACKBONE_FEATURES)]
        out["features"] = [round(f * s) for f, s in zip(out["features"], scale)]
    out.update(variant.options_dict)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def ablation_options(variant: Variant) -> dict:
    """All constructor options of the variant's network with their values (registered and class
    defaults filled in): what Figure 7 groups by."""
    spec = NETWORKS[variant.network]
    params = inspect.signature(spec.cls.__init__).parameters
    out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    out.update(spec.defaults)
    out.update(variant.options_dict)
    return out
