"""Convolutional Block Attention Module (Woo et al., ECCV 2018): channel attention, then spatial attention.

``M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))`` with one shared one-hidden-layer MLP (1x1 convs, ReLU),
``F' = M_c(F) * F``; ``M_s(F') = sigmoid(conv_kxk([AvgPool_c(F'); MaxPool_c(F')]))``, ``F'' = M_s(F') * F'``.
Parameter names follow timm's ``CbamModule`` (``channel.fc1``/``channel.fc2``, ``spatial.conv``), so its state
dicts load unchanged (timm's ``spatial.conv`` is a ConvNormAct: its ``conv.conv`` weight maps by a one-key rename;
timm's spatial conv has no norm and no bias by default, as here).

The hidden width is ``max(min_hidden, channels // reduction)``: the original CBAM code uses ``channels //
reduction``, which is 0 for 3 channels and ratio 8 (the face anti-spoofing paper's CBAM on an image), hence the
floor of 1; PA-HAR-style uses with wide features can keep the floor at 8 as timm's rounding would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelGate(nn.Module):
    """``sigmoid(MLP(avg) + MLP(max))`` over the channels of a (B, C, H, W) tensor; returns the gated tensor."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 1, bias: bool = False):
        super().__init__()
        if channels < 1 or reduction < 1 or min_hidden < 1:
            raise ValueError(f"channels, reduction and min_hidden must be >= 1, got {channels}, {reduction}, "
                             f"{min_hidden}")
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """M_c: (B, C, 1, 1) in (0, 1)."""
        mlp = lambda s: self.fc2(F.relu(self.fc1(s)))  # noqa: E731
        return torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True)) + mlp(x.amax(dim=(2, 3), keepdim=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class SpatialGate(nn.Module):
    """``sigmoid(conv_kxk([mean_c; max_c]))``: the (B, 1, H, W) map M_s; forward returns the gated tensor."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class CBAM(nn.Module):
    """F'' = M_s(F') * F', F' = M_c(F) * F (CBAM's sequential channel-then-spatial order).

    Args:
        channels: C of the input.
        reduction: the channel MLP's reduction ratio r (hidden = max(min_hidden, C // r)).
        kernel_size: the spatial attention's convolution (7 in CBAM).
        min_hidden: floor of the hidden width (1: the plain C // r wherever that is >= 1).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, min_hidden: int = 1):
        super().__init__()
        self.channel = ChannelGate(channels, reduction, min_hidden)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
