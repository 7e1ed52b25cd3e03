"""``UNet3Plus`` (Huang et al., ICASSP 2020): the plain ``UNet_3Plus`` of ZJUGiveLab/UNet-Version: widths
  64-1024, full-scale skips (every decoder stage takes 5 x 64 channels: max-pooled shallower encoder
  maps, the same-level encoder map, bilinearly upsampled deeper decoder maps), no deep supervision and
  no classification-guided module. Branch keys keep the official names (``h1_PT_hd4`` ...).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.conv import ConvBlock, check_divisible, conv_bn_relu

UNET3PLUS_FEATURES = (64, 128, 256, 512, 1024)


class UNet3Plus(nn.Module):
    """UNet 3+ (``UNet_3Plus`` of the official repository, deep supervision and CGM off).

    Decoder stage ``hd_i`` (i = 4 ... 1) concatenates, each through Conv3x3-BN-ReLU to ``cat_channels``:
    encoder maps ``h_j`` (j < i) max-pooled by ``2^(i-j)`` (``h{j}_PT_hd{i}``), ``h_i`` itself
    (``h{i}_Cat_hd{i}``), and the deeper decoder maps (``hd5`` is the bottleneck ``h5``) bilinearly
    upsampled by ``2^(j-i)`` (``hd{j}_UT_hd{i}``); a Conv3x3-BN-ReLU fuses the 5 x ``cat_channels``.
    A 3x3 conv gives the logits. Input height and width must be divisible by 16.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, features: Sequence[int] = UNET3PLUS_FEATURES,
                 cat_channels: int | None = None) -> None:
        super().__init__()
        features = [int(f) for f in features]
        if len(features) != 5:
            raise ValueError(f"UNet 3+ has five levels, got features {features}")
        cat = int(cat_channels or features[0])
        up_channels = 5 * cat
        self.maxpool = nn.MaxPool2d(2)
        self.conv1, self.conv2, self.conv3 = (ConvBlock(in_channels, features[0]), ConvBlock(*features[0:2]),
                                              ConvBlock(*features[1:3]))
        self.conv4, self.conv5 = ConvBlock(*features[2:4]), ConvBlock(*features[3:5])
        self.branches = nn.ModuleDict()
        for i in (4, 3, 2, 1):
            for j in range(1, 6):
                source = features[j - 1] if j <= i or j == 5 else up_channels
                name = f"h{j}_PT_hd{i}" if j < i else f"h{j}_Cat_hd{i}" if j == i else f"hd{j}_UT_hd{i}"
                self.branches[name] = nn.Sequential(*conv_bn_relu(source, cat))
            setattr(self, f"fuse{i}d", nn.Sequential(*conv_bn_relu(up_channels, up_channels)))  # conv{i}d_1
        self.outconv1 = nn.Conv2d(up_channels, num_classes, 3, padding=1)
        for module in self.modules():  # the official init_weights(init_type="kaiming")
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, 16)
        h1 = self.conv1(x)
        h2 = self.conv2(self.maxpool(h1))
        h3 = self.conv3(self.maxpool(h2))
        h4 = self.conv4(self.maxpool(h3))
        decoded = {5: self.conv5(self.maxpool(h4))}  # hd5
        encoded = {1: h1, 2: h2, 3: h3, 4: h4}
        for i in (4, 3, 2, 1):
            parts = []
            for j in range(1, 6):
                if j < i:
                    name, source = f"h{j}_PT_hd{i}", F.max_pool2d(encoded[j], 2 ** (i - j), ceil_mode=True)
                elif j == i:
                    name, source = f"h{j}_Cat_hd{i}", encoded[j]
                else:
                    name, source = f"hd{j}_UT_hd{i}", F.interpolate(decoded[j], scale_factor=2 ** (j - i),
                                                                    mode="bilinear", align_corners=False)
                parts.append(self.branches[name](source))
            decoded[i] = getattr(self, f"fuse{i}d")(torch.cat(parts, dim=1))
        return self.outconv1(decoded[1])
