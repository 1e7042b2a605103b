"""Building blocks: the paper's FPA and RFNA blocks and the baselines' attention modules.

``ATTENTIONS`` maps a name to an attention module with the contract
``Module(spatial_dims, channels, act=...) -> (x -> x-shaped tensor)`` (timm's ``create_attn`` style),
so a network takes ``attention="cbam"`` and ``tests/test_networks.py`` iterates over every entry.

Importing this package registers the MONAI norm ``"instance_fast"`` (:mod:`.norm`): the function of
``nn.InstanceNorm`` in a form that ``torch.compile`` fuses, e.g. ``norm=FAST_NORM``.
"""

from .attention_gate import AttentionGate
from .cbam import CBAM
from .convolutions import DEFAULT_ACT, DEFAULT_NORM, DoubleConv, conv_norm_act
from .fastconv import FastConv2d
from .fpa import FPABlock
from .global_context import GlobalContext
from .norm import FAST_NORM, FastInstanceNorm, FastInstanceNorm2d, FastInstanceNorm3d, fast_norm_of
from .resize import LinearResize
from .rfna import RFNABlock
from .scse import SCSE

ATTENTIONS = {"scse": SCSE, "cbam": CBAM, "gc": GlobalContext}

__all__ = [
    "ATTENTIONS",
    "CBAM",
    "DEFAULT_ACT",
    "DEFAULT_NORM",
    "FAST_NORM",
    "SCSE",
    "AttentionGate",
    "DoubleConv",
    "FPABlock",
    "FastConv2d",
    "FastInstanceNorm",
    "FastInstanceNorm2d",
    "FastInstanceNorm3d",
    "GlobalContext",
    "LinearResize",
    "RFNABlock",
    "conv_norm_act",
    "fast_norm_of",
]
