"""Magnitude-preserving layers, the EDM2 U-Net, the networks of the ablation configs A-F and the EDM
preconditioning (docs/method.md#mp-layers, #ablation-ladder, #preconditioning)."""

from edm2.nn.ablation import CONFIGS
from edm2.nn.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample
from edm2.nn.unet import Block, Precond, UNet

__all__ = [
    "normalize",
    "mp_silu",
    "mp_sum",
    "mp_cat",
    "resample",
    "MPFourier",
    "MPConv",
    "Block",
    "UNet",
    "Precond",
    "CONFIGS",
]
