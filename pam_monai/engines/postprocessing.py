"""Foreground masks from logits: ONE rule for validation, evaluation, inference and the experiments.

A voxel is foreground when its foreground probability is strictly above the threshold,
``sigmoid(logit) > 0.5``, i.e. ``logit > 0``. A logit of exactly 0 (no evidence either way; common
where a bias-free head sees all-zero features after a ReLU) is background. REFERENCE.md section 4
states RFNA's rule the same way: foreground where the reversed-label probability is below 0.5.
MONAI's ``AsDiscreted(threshold=0.5)`` keeps ``>= 0.5`` and would call such voxels foreground, so
the bundles use :class:`ForegroundMaskd` instead: evaluation and inference then give identical
masks.

Own 2-D images that were resized for the network (a :class:`~pam_monai.engines.CaseDataset` case
with ``restore`` = ``"resize"`` and a ``label_full``) are cut on their own pixels, as inference
cuts them: the probabilities resized bilinearly to the image's size
(:func:`pam_monai.data.ops.resize_probabilities`), then ``> threshold``. Cutting on the small grid
and resizing the mask (nearest neighbour) would put steps of the resize factor along every outline.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..data.ops import resize_probabilities

__all__ = ["ForegroundMaskd", "foreground_mask"]


def foreground_mask(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Boolean mask ``sigmoid(logits) > threshold`` (computed in float32; foreground-polarity logits).

    Example::

        >>> foreground_mask(torch.tensor([-1.0, 0.0, 1e-3]))
        tensor([False, False,  True])
    """
    return torch.sigmoid(logits.float()) > _probability(threshold)


# the flag that sets it (bundles, ensemble), and 50 meant as 50 %
_THRESHOLD_FIX = "pass --threshold a fraction, e.g. 0.5 (not a percentage)"


def _probability(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(
            f"threshold must be a probability in (0, 1), got {threshold!r}: {_THRESHOLD_FIX}"
        ) from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}: {_THRESHOLD_FIX}")
    return value


class ForegroundMaskd(MapTransform):
    """Dictionary transform: replace logits under ``keys`` by the float 0/1 mask of :func:`foreground_mask`
    (MONAI meta data kept), the bundles' post-processing in place of ``Activationsd(sigmoid=True)`` +
    ``AsDiscreted(threshold=0.5)``, which thresholds with ``>=``.

    A resized own 2-D image (the data carries ``restore`` = ``"resize"`` and ``label_full``, see
    :class:`~pam_monai.engines.CaseDataset`; MONAI's evaluators hand the post-processing the
    batch's entries too) gets its mask on its own pixels: ``sigmoid(logits)`` resized bilinearly
    to ``label_full``'s height and width and cut there, exactly as inference writes the mask
    (:func:`pam_monai.data.restore_mask`). :class:`~pam_monai.engines.CaseMetrics` then scores
    it as it is."""

    def __init__(
        self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = _probability(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        own = own_grid(d)
        for key in self.key_iterator(d):
            x = d[key]
            if own is not None and tuple(x.shape[-2:]) != own:  # to the image's pixels, cut there
                prob = resize_probabilities(torch.sigmoid(x.float()), own)
                mask = torch.from_numpy((prob > self.threshold).astype(np.float32)).to(x.device)
            else:
                mask = foreground_mask(x, self.threshold).to(torch.float32)
            if hasattr(x, "copy_meta_from"):  # MetaTensor: keep the affine and friends
                mask = type(x)(mask, meta=x.meta, applied_operations=x.applied_operations)
            d[key] = mask
        return d


def own_grid(data: Mapping) -> tuple[int, int] | None:
    """The image's own height and width when ``data`` is a resized 2-D case (``restore`` =
    ``"resize"``, with a ``label_full``), else None. A collated batch's ``restore`` is a list."""
    restore, full = data.get("restore"), data.get("label_full")
    if full is None:
        return None
    restore = restore if isinstance(restore, (list, tuple)) else [restore]
    if not restore or any(r != "resize" for r in restore):
        return None
    return tuple(int(n) for n in full.shape[-2:])
