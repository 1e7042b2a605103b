"""Networks of "Learning To Pay Attention To Mistakes" (Xu et al., BMVC 2020) for MONAI.

``get_network(name, spatial_dims, in_channels, out_channels, **options)`` builds any of
:data:`NETWORKS`; the classes in :mod:`pam_monai.networks.nets` can be named with ``_target_`` in
bundle configs. :class:`BatchDiceLoss` is the batch Dice pooled over every ``torchrun`` process.
"""

from .blocks import ATTENTIONS, CBAM, SCSE, AttentionGate, DoubleConv, FPABlock, GlobalContext, RFNABlock
from .losses import BatchDiceLoss
from .nets import AttentionUNet3, CBAMUNet3, DilatedUNet3, FPAUNet, GCUNet3, RFNAUNet, SCSEUNet3, UNet3
from .polarity import IgnoredVoxelsLoss, ReversedLabelLoss, as_foreground, loss_for, trains_on_reversed_labels
from .registry import NETWORKS, NetworkSpec, get_network

__all__ = [
    "ATTENTIONS",
    "BatchDiceLoss",
    "CBAM",
    "NETWORKS",
    "SCSE",
    "AttentionGate",
    "AttentionUNet3",
    "CBAMUNet3",
    "DilatedUNet3",
    "DoubleConv",
    "FPABlock",
    "FPAUNet",
    "GCUNet3",
    "GlobalContext",
    "NetworkSpec",
    "RFNABlock",
    "RFNAUNet",
    "IgnoredVoxelsLoss",
    "ReversedLabelLoss",
    "SCSEUNet3",
    "UNet3",
    "as_foreground",
    "get_network",
    "loss_for",
    "trains_on_reversed_labels",
]
