"""Attention U-Net (Oktay et al. 2018): U-Net with additive attention gates on the skips, as ``AttU_Net``
of LeeJunHyun/Image_Segmentation (module names match, so its state dicts load unchanged). A baseline
of SACA-UNet's Table IV and UNet-GCN's Table 5."""
from __future__ import annotations

from typing import Sequence

from lightning_modules.unet import UNET_FEATURES, UNet


class AttentionUNet(UNet):
    """Attention U-Net (Oktay et al. 2018): U-Net with attention gates on the skips."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, features: Sequence[int] = UNET_FEATURES) -> None:
        super().__init__(in_channels, num_classes, features, attention=True)
