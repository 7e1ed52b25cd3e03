"""Atrous spatial pyramid pooling: DeepLabV3's ASPP and SACA-UNet's Cross-ASPP.

``ASPP`` follows ``torchvision.models.segmentation.deeplabv3.ASPP`` layer for layer (same module
names, so a torchvision state dict loads unchanged): a 1x1 branch, one 3x3 atrous branch per rate,
an image-pooling branch, concatenation, 1x1 projection and dropout 0.5. ``separable=True`` makes the
atrous branches depthwise-separable (DeepLabV3+, segmentation_models_pytorch's layout and names).

``CrossASPP`` (SACA-UNet, Fig. 3): two 1x1 heads and a middle head of atrous 3x3 convolutions whose
neighbouring scales are fused residually (``m_k = CBR_{d_k}(x) + m_{k-1}``) instead of concatenated;
the three heads are concatenated and fused by a 1x1 conv.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 separable: bool = False) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU; 3x3 convs pad by their dilation (same size).
    ``separable``: the conv is depthwise then pointwise (``separable_conv``)."""
    padding = dilation * (kernel_size // 2)
    conv = (separable_conv(in_channels, out_channels, kernel_size, padding, dilation) if separable else
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


def separable_conv(in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                   dilation: int = 1) -> nn.Sequential:
    """Depthwise k x k conv then pointwise 1x1 conv, both without bias (smp's ``SeparableConv2d``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation, groups=in_channels,
                  bias=False),
        nn.Conv2d(in_channels, out_channels, 1, bias=False))


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool, 1x1 conv-BN-ReLU, upsampled back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLabV3 ASPP (torchvision's): 1x1, atrous 3x3 per rate, image pooling; concat; 1x1; dropout."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256,
                 dropout: float = 0.5, separable: bool = False) -> None:
        super().__init__()
        branches = [conv_bn_relu(in_channels, out_channels, 1)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, int(rate), separable) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class CrossASPP(nn.Module):
    """SACA-UNet's Cross-ASPP: ``CBR1x1(cat[L(x), m_K, R(x)])`` with ``m_k = CBR_{d_k}(x) + m_{k-1}``.

    Args:
        in_channels, out_channels: C -> C' (SACA-UNet: 256 -> 256).
        atrous_rates: dilations of the middle head, smallest first (the paper gives none; (2, 4, 6)).
    """

    def __init__(self, in_channels: int, out_channels: int, atrous_rates: Sequence[int] = (2, 4, 6)) -> None:
        super().__init__()
        if not atrous_rates:
            raise ValueError("Cross-ASPP needs at least one atrous rate")
        self.left = conv_bn_relu(in_channels, out_channels, 1)
        self.right = conv_bn_relu(in_channels, out_channels, 1)
        self.atrous = nn.ModuleList(conv_bn_relu(in_channels, out_channels, 3, int(rate)) for rate in atrous_rates)
        self.fuse = conv_bn_relu(3 * out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        middle = None
        for branch in self.atrous:  # neighbouring scales fused residually, smallest rate first
            middle = branch(x) if middle is None else branch(x) + middle
        return self.fuse(torch.cat([self.left(x), middle, self.right(x)], dim=1))
