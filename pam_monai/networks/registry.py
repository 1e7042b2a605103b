"""One name -> constructor table for every network of the paper (timm's registry style).

Bundle configs and tests iterate over :data:`NETWORKS`, so a network registered here is
trained, evaluated and tested everywhere without new code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from .nets import AttentionUNet3, CBAMUNet3, DilatedUNet3, FPAUNet, GCUNet3, RFNAUNet, SCSEUNet3, UNet3

__all__ = ["NETWORKS", "NetworkSpec", "get_network"]


@dataclass(frozen=True)
class NetworkSpec:
    cls: type[nn.Module]
    defaults: dict = field(default_factory=dict)
    description: str = ""
    paper_params: int | None = None  # parameters at spatial_dims=2, in_channels=4, out_channels=1


NETWORKS: dict[str, NetworkSpec] = {
    "unet": NetworkSpec(UNet3, {}, "3-stage U-Net (the paper's backbone)", 3_129_248),
    "wunet": NetworkSpec(UNet3, {"features": (64, 128, 256, 512)}, "3-stage U-Net at width 64", 12_506_944),
    "d6unet": NetworkSpec(DilatedUNet3, {"dilation": 6}, "U-Net with dilation 6 in c2-c4", 3_129_248),
    "d9unet": NetworkSpec(DilatedUNet3, {"dilation": 9}, "U-Net with dilation 9 in c2-c4", 3_129_248),
    "aunet": NetworkSpec(AttentionUNet3, {}, "Attention U-Net (additive skip gates)", 3_161_843),
    "cscunet": NetworkSpec(SCSEUNet3, {}, "U-Net with concurrent spatial and channel SE", 3_140_448),
    "cbamunet": NetworkSpec(CBAMUNet3, {}, "U-Net with CBAM", 3_142_942),
    "gcnunet": NetworkSpec(GCUNet3, {}, "U-Net with global context blocks", 3_157_264),
    "fpa": NetworkSpec(FPAUNet, {}, "False Positive Attention U-Net (the paper)", 4_231_584),
    "rfna": NetworkSpec(RFNAUNet, {}, "Reverse False Negative Attention U-Net (the paper)", None),
}


def get_network(
    name: str,
    spatial_dims: int = 2,
    in_channels: int = 4,
    out_channels: int = 1,
    options: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered network by name.

    Args:
        name: one of :data:`NETWORKS` (case-insensitive): ``unet wunet d6unet d9unet aunet cscunet
            cbamunet gcnunet fpa rfna``.
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (1 for binary segmentation).
        options: network options overriding the registered defaults, as a dict (what bundle
            configs pass as ``network_options``) and/or as keyword arguments (e.g. ``dilation=6``
            for ``fpa``, ``ratio=4`` for ``rfna``, ``norm=("instance", {"affine": True})``).

    Example::

        >>> net = get_network("fpa", spatial_dims=2, in_channels=4, out_channels=1, dilation=6)
    """
    key = str(name).lower()
    if key not in NETWORKS:
        raise ValueError(f"Unknown network {name!r}; registered networks: {', '.join(NETWORKS)}.")
    spec = NETWORKS[key]
    kwargs = {**spec.defaults, **(options or {}), **kwargs}
    takes = _options_of(spec.cls)
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise TypeError(
            f"get_network({name!r}): bad option for {spec.cls.__name__}: unknown {unknown}; "
            f"{spec.cls.__name__} takes: {', '.join(takes)}."
        )
    try:
        return spec.cls(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs
        )
    except (TypeError, ValueError) as e:
        # same base type, chained: callers that catch it still do, and the traceback shows where
        kind = TypeError if isinstance(e, TypeError) else ValueError
        raise kind(_build_error(name, spec.cls.__name__, spatial_dims, kwargs, e)) from e


# options that MONAI's layer factories resolve deep inside the blocks, and how to resolve one alone
_FACTORY_OPTIONS = {
    "norm": lambda value, dims: get_norm_layer(value, dims, 8),
    "gate_norm": lambda value, dims: get_norm_layer(value, dims, 8),
    "act": lambda value, dims: get_act_layer(value),
}


def _build_error(name: str, cls_name: str, spatial_dims: int, options: dict, error: Exception) -> str:
    """The message for a network that could not be built: the option at fault when a norm or act
    factory refuses it alone (MONAI's own message names neither the network nor the option), else
    every option given, without claiming one is at fault (a deep error may be a bug)."""
    for key, resolve in _FACTORY_OPTIONS.items():
        value = options.get(key)
        if value is None:
            continue
        try:
            resolve(value, spatial_dims)
        except (TypeError, ValueError) as refused:
            return f"get_network({name!r}): bad option for {cls_name}: {key}={value!r}: {refused}"
    if str(error).startswith(f"{cls_name}:"):  # the network checked the option and named it
        return f"get_network({name!r}): {error}"
    given = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"
    return (
        f"get_network({name!r}): {cls_name} could not be built with {given}: {error} "
        "(check these options; if they are right, the traceback above shows the failing code)"
    )


def _options_of(cls: type[nn.Module]) -> list[str]:
    """The options a network class takes besides the three that ``get_network`` always passes."""
    always = {"self", "spatial_dims", "in_channels", "out_channels"}
    return [p for p in inspect.signature(cls.__init__).parameters if p not in always]
