"""FPA and RFNA networks: the paper's blocks in the encoder of the 3-stage U-Net.

Mou-Cheng Xu, Neil P. Oxtoby, Daniel C. Alexander, Joseph Jacob,
"Learning To Pay Attention To Mistakes", BMVC 2020. https://arxiv.org/abs/2007.15131
"""

from __future__ import annotations

from collections.abc import Sequence

from ..blocks import DEFAULT_ACT, DEFAULT_NORM
from .unet3 import UNet3

__all__ = ["FPAUNet", "RFNAUNet"]


class FPAUNet(UNet3):
    """3-stage U-Net whose c2, c3, c4 and bridge are False Positive Attention blocks.

    4,231,584 parameters at 4 input channels with the defaults (the paper's 4.2M).

    Args:
        spatial_dims, in_channels, out_channels, features, norm, act: as :class:`UNet3`.
        dilation: dilation of the attention branch (paper ablation: 6, 9, 12).
        depthwise: depthwise (default) or full dilated convolutions.
        expansion: attention-branch channel expansion (depthwise: 2, 4, 8; full: 1, 2).
        shared: one dilated convolution applied twice (the paper's "parameter sharing").

    Example::

        >>> import torch
        >>> net = FPAUNet(spatial_dims=2, in_channels=4, out_channels=1)
        >>> net(torch.randn(1, 4, 160, 160)).shape
        torch.Size([1, 1, 160, 160])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        dilation: int = 9,
        depthwise: bool = True,
        expansion: int = 4,
        shared: bool = False,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
    ) -> None:
        options = {"dilation": dilation, "depthwise": depthwise, "expansion": expansion, "shared": shared}
        super().__init__(
            spatial_dims, in_channels, out_channels, features, "fpa", options, norm=norm, act=act
        )


class RFNAUNet(UNet3):
    """3-stage U-Net whose c2, c3, c4 and bridge are Reverse False Negative Attention blocks.

    RFNA is trained on reversed labels (1 = background). This network's head predicts those
    reversed labels, and ``forward`` returns their negation, i.e. FOREGROUND logits
    (``sigmoid(-z) = 1 - sigmoid(z)``), so that everything downstream (probabilities, masks,
    metrics, saved files) is in foreground polarity. Train it with the loss on reversed labels:
    :func:`pam_monai.networks.polarity.loss_for` wraps a loss accordingly (the class attribute
    ``train_on_reversed_labels`` tells it to).

    With the defaults this has 9,253,280 parameters at 4 input channels, not the paper's 5.63M:
    see the README ("RFNA's parameter count").

    Args:
        spatial_dims, in_channels, out_channels, features, norm, act: as :class:`UNet3`.
        ratio: down-sampling ratio of the attention branch (2, 4 or 8; paper default 8).
        depthwise: depthwise (default) or full 3x3 convolutions in the attention branch.
        expansion: channel expansion of ``W_r1`` (4).
        foreground_output: return foreground logits (default). ``False`` returns the raw
            reversed-polarity logits, as the authors' code does (``output_polarity`` is then
            ``"reversed"``; wrap with :func:`pam_monai.networks.polarity.as_foreground` to infer).

    Example::

        >>> import torch
        >>> net = RFNAUNet(spatial_dims=2, in_channels=4, out_channels=1)
        >>> net(torch.randn(1, 4, 160, 160)).shape
        torch.Size([1, 1, 160, 160])
    """

    train_on_reversed_labels = True
    output_polarity = "foreground"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 4,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        ratio: int = 8,
        depthwise: bool = True,
        expansion: int = 4,
        norm: tuple | str | None = DEFAULT_NORM,
        act: tuple | str | None = DEFAULT_ACT,
        foreground_output: bool = True,
    ) -> None:
        options = {"ratio": ratio, "depthwise": depthwise, "expansion": expansion}
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            features,
            "rfna",
            options,
            norm=norm,
            act=act,
            output_sign=-1.0 if foreground_output else 1.0,
        )
        self.output_polarity = "foreground" if foreground_output else "reversed"
