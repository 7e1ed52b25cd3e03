"""U-Net (Ronneberger et al. 2015), a baseline of SACA-UNet's Table IV and SFRSeg-Net's Table 6.

It follows the widely used PyTorch implementations of LeeJunHyun/Image_Segmentation (``U_Net`` and
``AttU_Net``, the form in which most 2D medical segmentation comparisons run them): widths 64-1024,
two Conv3x3-BN-ReLU per level, 2x2 max pooling, nearest x2 upsampling + Conv3x3-BN-ReLU, concatenated
skips (Attention U-Net, with Oktay et al.'s attention gates on the skips, is in ``attention_unet.py``). (MONAI's
``AttentionUnet`` downsamples by strided convolutions and MONAI's ``UNet`` uses residual units, so
neither is this network.) Module names match that code, so its state dicts load unchanged.
UNeXt is in ``lightning_modules/unext.py``, MTUNet in ``lightning_modules/mtunet.py``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lightning_modules.blocks.conv import AttentionGate, ConvBlock, UpConv

UNET_FEATURES = (64, 128, 256, 512, 1024)


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with batch norm; ``attention=True`` gives Attention U-Net.

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary).
        features: widths of the five levels (64, 128, 256, 512, 1024).
        attention: attention gates on the four skips (Attention U-Net).
    Input height and width must be divisible by 16.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, features: Sequence[int] = UNET_FEATURES,
                 attention: bool = False) -> None:
        super().__init__()
        f1, f2, f3, f4, f5 = (int(f) for f in features)
        self.attention = attention
        self.Maxpool = nn.MaxPool2d(2, 2)
        self.Conv1, self.Conv2, self.Conv3 = ConvBlock(in_channels, f1), ConvBlock(f1, f2), ConvBlock(f2, f3)
        self.Conv4, self.Conv5 = ConvBlock(f3, f4), ConvBlock(f4, f5)
        self.Up5, self.Up_conv5 = UpConv(f5, f4), ConvBlock(2 * f4, f4)
        self.Up4, self.Up_conv4 = UpConv(f4, f3), ConvBlock(2 * f3, f3)
        self.Up3, self.Up_conv3 = UpConv(f3, f2), ConvBlock(2 * f2, f2)
        self.Up2, self.Up_conv2 = UpConv(f2, f1), ConvBlock(2 * f1, f1)
        if attention:
            self.Att5 = AttentionGate(f4, f4, f4 // 2)
            self.Att4 = AttentionGate(f3, f3, f3 // 2)
            self.Att3 = AttentionGate(f2, f2, f2 // 2)
            self.Att2 = AttentionGate(f1, f1, f1 // 2)
        self.Conv_1x1 = nn.Conv2d(f1, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"input height and width must be divisible by 16, got {tuple(x.shape[-2:])}")
        x1 = self.Conv1(x)
        x2 = self.Conv2(self.Maxpool(x1))
        x3 = self.Conv3(self.Maxpool(x2))
        x4 = self.Conv4(self.Maxpool(x3))
        out = self.Conv5(self.Maxpool(x4))
        for level, skip in ((5, x4), (4, x3), (3, x2), (2, x1)):
            out = getattr(self, f"Up{level}")(out)
            if self.attention:
                skip = getattr(self, f"Att{level}")(gate=out, skip=skip)
            out = getattr(self, f"Up_conv{level}")(torch.cat([skip, out], dim=1))
        return self.Conv_1x1(out)
