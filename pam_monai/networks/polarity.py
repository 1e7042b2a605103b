"""Label polarity: RFNA trains on reversed labels, users always see foreground.

The paper trains RFNA with the labels reversed (1 = background, Xu et al., BMVC 2020, section
3.2) and the authors' code then reads the foreground where ``sigmoid(logit) < 0.5``. Here that
reversal is part of the model's contract, in two pieces:

* :class:`~pam_monai.networks.nets.RFNAUNet` returns FOREGROUND logits by default (its head
  predicts the reversed labels and ``forward`` negates them: ``sigmoid(-z) = 1 - sigmoid(z)``),
  so inference, metrics and saved files need nothing special; ``as_foreground`` wraps a network
  built with ``foreground_output=False``.
* :func:`loss_for` wraps the training loss so that it is computed exactly as the paper does,
  on the reversed-polarity probabilities against the reversed labels:
  ``loss(reversed_logits, 1 - target)``. Dice is not symmetric in foreground and background, so
  this differs from (and is the paper's alternative to) training on foreground labels.

Networks declare what they need with two attributes: ``train_on_reversed_labels`` (bool) and
``output_polarity`` (``"foreground"`` or ``"reversed"``); networks without them are plain.

Unannotated voxels (own data with nnU-Net's ``ignore`` label; their target value is
:data:`pam_monai.data.ops.IGNORE`) stay unannotated under the reversal: ``loss_for(...,
ignore=True)`` leaves them out of the loss (:class:`IgnoredVoxelsLoss`) in either polarity.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.ops import IGNORE

__all__ = [
    "ForegroundOutput",
    "IgnoredVoxelsLoss",
    "ReversedLabelLoss",
    "as_foreground",
    "loss_for",
    "trains_on_reversed_labels",
    "unwrap_network",
]


#: The logit of an unannotated voxel: its sigmoid is exactly 0 in every float type (fp16 included),
#: and unlike -inf it gives BCE ``(1 - t) x + max(-x, 0) + ...`` a 0, not -inf + inf = NaN.
CERTAIN_BACKGROUND = -1e4


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    for attr in ("module", "_orig_mod"):
        while isinstance(getattr(network, attr, None), nn.Module):
            network = getattr(network, attr)
    return network


def trains_on_reversed_labels(network: nn.Module) -> bool:
    """Whether the network is trained on reversed labels (RFNA)."""
    return bool(getattr(unwrap_network(network), "train_on_reversed_labels", False))


def output_polarity(network: nn.Module) -> str:
    return str(getattr(unwrap_network(network), "output_polarity", "foreground"))


class ReversedLabelLoss(nn.Module):
    """``loss(reversed_logits, 1 - target)``: train on reversed labels (RFNA, paper section 3.2).

    Args:
        loss: a loss on logits and binary targets, e.g. ``monai.losses.DiceLoss(sigmoid=True)``.
        input_is_foreground: the network's output is in foreground polarity (``RFNAUNet``'s
            default) and is negated to get the reversed-polarity logits the loss sees.
        ignore: the targets mark unannotated voxels with :data:`~pam_monai.data.ops.IGNORE`, kept
            as they are for the :class:`IgnoredVoxelsLoss` that ``loss`` must then hold (and may
            only hold then): ``ReversedLabelLoss(IgnoredVoxelsLoss(loss), ignore=True)``, what
            :func:`loss_for` builds.

    Example::

        >>> from monai.losses import DiceLoss
        >>> loss = ReversedLabelLoss(DiceLoss(sigmoid=True, batch=True))
    """

    def __init__(self, loss: nn.Module, input_is_foreground: bool = True, ignore: bool = False) -> None:
        super().__init__()
        _check_binary(loss)
        _check_ignore(loss, ignore)
        self.loss = loss
        self.input_is_foreground = input_is_foreground
        self.ignore = ignore  # targets may hold IGNORE, which stays IGNORE
        self._channels_checked = False  # once, at the first step: the network's channels do not change

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self._channels_checked:
            _check_channels(self.loss, input.shape[1])
            self._channels_checked = True
        reversed_logits = -input if self.input_is_foreground else input
        reversed_target = 1.0 - target
        if self.ignore:
            reversed_target = torch.where(target == IGNORE, target, reversed_target)
        return self.loss(reversed_logits, reversed_target)


def _check_binary(loss: nn.Module) -> None:
    """Refuse a loss over mutually exclusive classes: the reversal ``1 - target`` (and the negated
    logits) is defined per sigmoid channel (paper section 3.2: binary labels). Class indices
    became -1, -2 (an index error deep in the loss), and under softmax ``1 - one-hot`` is no
    distribution and the negated logits' softmax no complement, so training was silently wrong."""
    # MONAI's flags: ``softmax`` (Dice losses), ``use_softmax`` (FocalLoss), ``to_onehot_y``
    exclusive = isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)) or any(
        getattr(m, flag, False) is True
        for m in loss.modules()
        for flag in ("softmax", "use_softmax", "to_onehot_y")
    )
    if exclusive:
        raise ValueError(
            f"ReversedLabelLoss: the loss {type(loss).__name__} is over mutually exclusive classes (softmax, "
            "class-index targets), but RFNA's label reversal (1 - target) is defined for binary targets on "
            "sigmoid outputs; use a sigmoid loss (e.g. monai.losses.DiceLoss(sigmoid=True, batch=True)) on one "
            "binary channel per class."
        )


def _check_channels(loss: nn.Module, channels: int) -> None:
    """Refuse MONAI's ``DiceCELoss`` on several channels: whatever its ``sigmoid``, its cross-entropy
    term is then a softmax one over the channels (``self.ce if input.shape[1] != 1``), which the
    reversal makes wrong as :func:`_check_binary` says; on one channel it is a binary one."""
    from monai.losses import DiceCELoss

    if channels > 1 and any(isinstance(m, DiceCELoss) for m in loss.modules()):
        raise ValueError(
            f"ReversedLabelLoss: MONAI's DiceCELoss on {channels} channels takes a softmax cross-entropy over "
            "them (its sigmoid=True applies to the Dice term only), but RFNA's label reversal (1 - target) is "
            "defined per binary sigmoid channel; use monai.losses.DiceLoss(sigmoid=True) plus "
            "torch.nn.BCEWithLogitsLoss, or DiceCELoss on a one-channel network."
        )


def _check_ignore(loss: nn.Module, ignore: bool) -> None:
    """Refuse a ``ReversedLabelLoss`` whose ``ignore`` does not match its loss: either way it would
    train on the unannotated voxels silently (as foreground of weight 2, or reversed to -1)."""
    holds = any(isinstance(m, IgnoredVoxelsLoss) for m in loss.modules())
    if ignore and not holds:
        raise ValueError(
            f"ReversedLabelLoss(ignore=True): the loss {type(loss).__name__} does not leave the unannotated "
            "voxels (IGNORE) out and would learn them as foreground; pass IgnoredVoxelsLoss(loss), or build "
            "it with pam_monai.networks.loss_for(network, loss, ignore=True)."
        )
    if holds and not ignore:
        raise ValueError(
            "ReversedLabelLoss: the loss holds an IgnoredVoxelsLoss but ignore=False, so unannotated voxels "
            "(IGNORE) would be reversed to 1 - IGNORE and scored; pass ignore=True, or build it with "
            "pam_monai.networks.loss_for(network, loss, ignore=True)."
        )


class IgnoredVoxelsLoss(nn.Module):
    """``loss`` over the annotated voxels only: where the target is :data:`~pam_monai.data.ops.IGNORE`
    the logit becomes :data:`CERTAIN_BACKGROUND` and the target 0, i.e. certain and correct
    background. A Dice loss on sigmoid probabilities then gets nothing from those voxels (in its
    intersection and its sums: the same value as MONAI's ``MaskedDiceLoss`` with the annotated voxels
    as mask) and no gradient flows through them. A voxel-wise loss (BCE, MONAI's ``DiceCELoss``) gets
    a zero from each, which a mean over voxels still counts in its denominator.

    Example::

        >>> from monai.losses import DiceLoss
        >>> loss = IgnoredVoxelsLoss(DiceLoss(sigmoid=True, batch=True))
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignored = target == IGNORE
        return self.loss(input.masked_fill(ignored, CERTAIN_BACKGROUND), target.masked_fill(ignored, 0.0))


def loss_for(network: nn.Module, loss: nn.Module, ignore: bool = False) -> nn.Module:
    """The training loss for ``network``: ``loss`` itself, or wrapped in :class:`ReversedLabelLoss` for RFNA.

    Bundle configs build their loss with this, so that ``--network_name rfna`` trains exactly as
    the paper does without a separate config. ``ignore``: the targets mark unannotated voxels
    (the data set has an ``ignore`` label), which the loss leaves out (:class:`IgnoredVoxelsLoss`).
    """
    if ignore:
        loss = IgnoredVoxelsLoss(loss)
    if not trains_on_reversed_labels(network):
        return loss
    return ReversedLabelLoss(
        loss, input_is_foreground=output_polarity(network) == "foreground", ignore=ignore
    )


class ForegroundOutput(nn.Module):
    """Wraps a network that returns reversed-polarity logits so that it returns foreground logits."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.network(x)


def as_foreground(network: nn.Module) -> nn.Module:
    """``network`` itself if it returns foreground logits, else wrapped in :class:`ForegroundOutput`."""
    return ForegroundOutput(network) if output_polarity(network) == "reversed" else network
