"""3D U-Net (Çiçek et al. 2016) in its plain form: per level two (Conv3x3x3 -> BatchNorm -> ReLU), 2x2x2 max
pooling down, 2x2x2 transposed convolutions up, skips concatenated, a 1x1x1 convolution to the class logits.

SMDGC's Stage A (widths 32-64-128-256 by default, the spec card's choice: the paper gives none). MONAI's
``BasicUNet`` has a fixed five levels and halving up-convolutions and MONAI's ``UNet`` strided residual units,
so neither is this network.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class DoubleConv3d(nn.Sequential):
    """Two Conv3x3x3 -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True))


class UNet3D(nn.Module):
    """3D U-Net with ``len(features)`` levels (``len(features) - 1`` poolings).

    Args:
        in_channels: image channels (SMDGC: 2, T1 and T2).
        num_classes: output logits (SMDGC: 4, background and three subfields).
        features: widths of the levels, the last one the bottleneck.
    Each spatial size must be divisible by ``2 ** (len(features) - 1)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, features: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        features = [int(f) for f in features]
        if len(features) < 2:
            raise ValueError(f"a U-Net needs at least two levels, got features={features}")
        self.factor = 2 ** (len(features) - 1)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(DoubleConv3d(channels, width))
            channels = width
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList(nn.ConvTranspose3d(features[k + 1], features[k], 2, stride=2)
                                 for k in reversed(range(len(features) - 1)))
        self.decoders = nn.ModuleList(DoubleConv3d(2 * features[k], features[k])
                                      for k in reversed(range(len(features) - 1)))
        self.head = nn.Conv3d(features[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % self.factor for s in x.shape[2:]):
            raise ValueError(f"spatial sizes must be divisible by {self.factor}, got {tuple(x.shape[2:])}")
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
