"""Slice-wise 2-D inference over whole volumes (the paper's networks are 2-D)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import Inferer, sliding_window_inference

from .flags import as_bool

__all__ = ["SliceWiseInferer"]


class SliceWiseInferer(Inferer):
    """Apply a 2-D network to every axial slice of ``B x C x H x W x D`` volumes.

    The slices are stacked into batches of ``slice_batch_size`` (one network call per batch, not
    per slice) and the outputs are stacked back into ``B x C' x H x W x D``. A 2-D input
    (``B x C x H x W``, CityScapes) is passed to the network unchanged, so the same evaluator
    serves every data set. MONAI's ``SliceInferer`` does the same through sliding windows, which
    costs more when the window is the whole slice.

    Slices larger than ``roi_size`` (own volumes larger in-plane than the crop the network was
    trained on) are segmented whole with MONAI's sliding window of ``roi_size``: half-overlapping
    windows whose logits are blended with Gaussian weights, as nnU-Net predicts, so no part of
    the slice is left out and every window is the size the network was trained on.

    Args:
        slice_batch_size: slices per network call (windows per call, for larger slices).
        channels_last: give the network channels-last slices (the GPU fast path).
        roi_size: the trained in-plane size ``(h, w)``; None: every slice is passed whole.
        overlap: the sliding windows' overlap.
    """

    def __init__(
        self,
        slice_batch_size: int = 64,
        channels_last: bool = False,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.5,
    ) -> None:
        super().__init__()
        if slice_batch_size < 1:
            raise ValueError(f"slice_batch_size must be >= 1, got {slice_batch_size}")
        self.slice_batch_size = int(slice_batch_size)
        self.channels_last = as_bool(channels_last)
        self.roi_size = tuple(int(r) for r in roi_size) if roi_size is not None else None
        self.overlap = float(overlap)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim == 4:
            return network(self._layout(inputs), *args, **kwargs)
        if inputs.ndim != 5:
            raise ValueError(
                f"SliceWiseInferer expects B x C x H x W [x D] inputs, got shape {tuple(inputs.shape)}"
            )
        b, c, h, w, d = inputs.shape
        slices = inputs.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)  # B*D x C x H x W

        def call(x: torch.Tensor) -> torch.Tensor:
            return network(self._layout(x), *args, **kwargs)

        if self.roi_size is not None and (h > self.roi_size[0] or w > self.roi_size[1]):
            run = lambda chunk: sliding_window_inference(  # noqa: E731
                chunk, self.roi_size, self.slice_batch_size, call, overlap=self.overlap, mode="gaussian"
            )
        else:
            run = call
        outs = [run(chunk) for chunk in slices.split(self.slice_batch_size)]
        out = torch.cat(outs)
        return out.reshape(b, d, out.shape[1], h, w).permute(0, 2, 3, 4, 1).contiguous()

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
