"""Segmentation baselines of SACA-UNet's Table IV: U-Net and Attention U-Net.

Both follow the widely used PyTorch implementations of LeeJunHyun/Image_Segmentation (``U_Net`` and
``AttU_Net``, the form in which most 2D medical segmentation comparisons run them): widths 64-1024,
two Conv3x3-BN-ReLU per level, 2x2 max pooling, nearest x2 upsampling + Conv3x3-BN-ReLU, concatenated
skips; Attention U-Net adds Oktay et al.'s additive attention gates on the skips. (MONAI's
``AttentionUnet`` downsamples by strided convolutions and MONAI's ``UNet`` uses residual units, so
neither is this network.) Module names match that code, so its state dicts load unchanged.
UNeXt is in ``lightning_modules/unext.py``, MTUNet in ``lightning_modules/mtunet.py``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

UNET_FEATURES = (64, 128, 256, 512, 1024)


class ConvBlock(nn.Module):
    """Two Conv3x3 -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=True), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=True), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpConv(nn.Module):
    """Nearest x2 upsampling -> Conv3x3 -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=True),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class AttentionGate(nn.Module):
    """Additive attention gate: ``x * sigmoid(BN(psi(relu(W_g g + W_x x))))`` (Oktay et al. 2018)."""

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1, bias=True), nn.BatchNorm2d(inter_channels))
        self.W_x = nn.Sequential(nn.Conv2d(skip_channels, inter_channels, 1, bias=True), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1, bias=True), nn.BatchNorm2d(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.relu(self.W_g(gate) + self.W_x(skip)))


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


class AttentionUNet(UNet):
    """Attention U-Net (Oktay et al. 2018): U-Net with attention gates on the skips."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, features: Sequence[int] = UNET_FEATURES) -> None:
        super().__init__(in_channels, num_classes, features, attention=True)
