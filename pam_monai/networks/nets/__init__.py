from .baselines import AttentionUNet3, CBAMUNet3, DilatedUNet3, GCUNet3, SCSEUNet3
from .pam import FPAUNet, RFNAUNet
from .unet3 import UNet3

__all__ = [
    "AttentionUNet3",
    "CBAMUNet3",
    "DilatedUNet3",
    "FPAUNet",
    "GCUNet3",
    "RFNAUNet",
    "SCSEUNet3",
    "UNet3",
]
