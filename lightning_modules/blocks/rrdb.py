"""Residual-in-Residual Dense Blocks (ESRGAN, Wang et al. 2018) and the RRDB feature encoder that
SegDiff and DiffCMR use to encode the conditioning image (layer names as in ESRGAN's RRDBNet_arch.py,
so its state dicts load unchanged)."""
from __future__ import annotations

import torch
from torch import nn


class ResidualDenseBlock5C(nn.Module):
    """Five 3x3 convs with dense connections (growth ``growth_channels``); output ``0.2 * x5 + x``."""

    def __init__(self, channels: int = 64, growth_channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, growth_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + growth_channels, growth_channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels + 2 * growth_channels, growth_channels, 3, padding=1)
        self.conv4 = nn.Conv2d(channels + 3 * growth_channels, growth_channels, 3, padding=1)
        self.conv5 = nn.Conv2d(channels + 4 * growth_channels, channels, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Three dense blocks in a residual: ``0.2 * RDB3(RDB2(RDB1(x))) + x``."""

    def __init__(self, channels: int = 64, growth_channels: int = 32):
        super().__init__()
        self.RDB1 = ResidualDenseBlock5C(channels, growth_channels)
        self.RDB2 = ResidualDenseBlock5C(channels, growth_channels)
        self.RDB3 = ResidualDenseBlock5C(channels, growth_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBEncoder(nn.Module):
    """ESRGAN's RRDBNet without its upsampling: conv_first -> ``num_blocks`` RRDBs -> trunk_conv (+ skip)
    -> HRconv -> LeakyReLU -> conv_last, at the input resolution (SegDiff's conditioning encoder)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 128, channels: int = 64, num_blocks: int = 10,
                 growth_channels: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(channels, growth_channels) for _ in range(num_blocks)])
        self.trunk_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.HRconv = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv_first(x)
        features = features + self.trunk_conv(self.RRDB_trunk(features))
        return self.conv_last(self.lrelu(self.HRconv(features)))
