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
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ForegroundOutput",
    "ReversedLabelLoss",
    "as_foreground",
    "loss_for",
    "trains_on_reversed_labels",
    "unwrap_network",
]


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

    Example::

        >>> from monai.losses import DiceLoss
        >>> loss = ReversedLabelLoss(DiceLoss(sigmoid=True, batch=True))
    """

    def __init__(self, loss: nn.Module, input_is_foreground: bool = True) -> None:
        super().__init__()
        self.loss = loss
        self.input_is_foreground = input_is_foreground

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        reversed_logits = -input if self.input_is_foreground else input
        return self.loss(reversed_logits, 1.0 - target)


def loss_for(network: nn.Module, loss: nn.Module) -> nn.Module:
    """The training loss for ``network``: ``loss`` itself, or wrapped in :class:`ReversedLabelLoss` for RFNA.

    Bundle configs build their loss with this, so that ``--network_name rfna`` trains exactly as
    the paper does without a separate config.
    """
    if not trains_on_reversed_labels(network):
        return loss
    return ReversedLabelLoss(loss, input_is_foreground=output_polarity(network) == "foreground")


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
