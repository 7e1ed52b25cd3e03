"""Convolution blocks that several 2D segmentation networks share (U-Net, Attention U-Net, UNet 3+, SegNet),
and Oktay et al.'s additive attention gate on U-Net skips."""
from __future__ import annotations

import torch
from torch import nn


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


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """Conv3x3 -> BN -> ReLU as a list of layers (to splice into an nn.Sequential)."""
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def check_divisible(x: torch.Tensor, factor: int) -> None:
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"input height and width must be divisible by {factor}, got {tuple(x.shape[-2:])}")
