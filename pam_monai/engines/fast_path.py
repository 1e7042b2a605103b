"""The GPU fast path of the bundles' training.

The fast path (``fast: true`` in the bundles, the default where a GPU is present) is: cuDNN
benchmark and TF32 (:func:`~pam_monai.engines.process_settings.setup_run`), bf16 autocast and
``torch.compile`` (the trainer's ``amp`` and ``compile``, :func:`compile_by_default`), fused AdamW,
and in :func:`fast_network` channels-last tensors, the fusible instance norm, the up-sampling as
matrix products and FPA's dilated convolutions as fused taps; batches come from tensors already on
the device (:class:`~pam_monai.engines.loaders.DeviceSliceLoader`). ``tests/test_fast_path.py``
checks that it computes the same function as the plain fp32 path; ``python -m pam_monai bench``
measures it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .flags import as_bool

__all__ = ["compile_by_default", "fast_network", "use_fast_norm"]

log = logging.getLogger("pam_monai")


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
