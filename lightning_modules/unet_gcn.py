"""UNet + Global Convolutional Network for breast-lesion segmentation in ultrasound (ICPR 2024).

shared/papers/icpr24_breast_unet_gcn.md, card shared/specs/icpr24_breast_unet_gcn.md. A UNet of five
encoder and five decoder levels, each ``2 x [Conv3x3 -> InstanceNorm -> LeakyReLU]``, max-pooling
between encoder levels (256 input -> 8 x 8 bottleneck), 2 x 2 transposed-conv up-sampling, and a
GCN block (lightning_modules/blocks/gcn.py) placed according to ``gcn_position``:

- ``"skip"`` (the paper's Model A, proposed): GCN on every skip connection; the decoder concatenates
  the up-sampled features with GCN(skip).
- ``"encoder"`` (Model B, "between each encoder and decoder block"; the card's reading): GCN after
  each encoder level on the main path, so both the skip and the pooled path see it.
- ``"conv"`` (Model C): GCN replaces every 3 x 3 convolution of the encoder, bottleneck and decoder
  blocks (not the up-sampling convolutions).
- ``None`` / ``"none"``: the plain UNet baseline.

The paper gives no widths; the card's choice ``[32, 64, 128, 256, 512]`` + 1024 gives 31,105,953
(UNet) and 40,887,073 (UNet-GCN) parameters; the paper's Table 5 says 39M / 80M, which no width set
reproduces (see docs/papers/unet_gcn.md). The output is one logit map (sigmoid outside, in the loss).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from lightning_modules.blocks.gcn import GlobalConvBlock

GCNPosition = Optional[Literal["skip", "encoder", "conv", "none"]]


class ConvNormAct(nn.Sequential):
    """``Conv -> InstanceNorm(affine) -> LeakyReLU``; the conv is 3 x 3 or, in Model C, a GCN block."""

    def __init__(self, in_channels: int, out_channels: int, gcn_kernel: Optional[int] = None,
                 negative_slope: float = 0.01):
        conv = (nn.Conv2d(in_channels, out_channels, 3, padding=1) if gcn_kernel is None
                else GlobalConvBlock(in_channels, out_channels, gcn_kernel))
        super().__init__(conv, nn.InstanceNorm2d(out_channels, affine=True),
                         nn.LeakyReLU(negative_slope, inplace=True))


class DoubleConv(nn.Sequential):
    """One UNet level: two ``ConvNormAct``."""

    def __init__(self, in_channels: int, out_channels: int, gcn_kernel: Optional[int] = None,
                 negative_slope: float = 0.01):
        super().__init__(ConvNormAct(in_channels, out_channels, gcn_kernel, negative_slope),
                         ConvNormAct(out_channels, out_channels, gcn_kernel, negative_slope))


class UNetGCN(nn.Module):
    """UNet with GCN blocks (Model A by default); ``gcn_position=None`` is the plain UNet.

    Args:
        in_channels: image channels (1: grey-scale B-mode).
        out_channels: logit maps (1: binary lesion mask).
        channels: widths of the encoder levels; the bottleneck has twice the last one.
        gcn_position: ``"skip"`` (A), ``"encoder"`` (B), ``"conv"`` (C) or ``None``/``"none"``.
        gcn_kernel_size: k of the GCN's k x 1 / 1 x k kernels (7 in the paper; 3 and 5 in Table 3).
        negative_slope: LeakyReLU slope.

    Input height and width must be divisible by ``2 ** len(channels)`` (32 for five levels).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 128, 256, 512), gcn_position: GCNPosition = "skip",
                 gcn_kernel_size: int = 7, negative_slope: float = 0.01):
        super().__init__()
        position = None if gcn_position in (None, "none") else gcn_position
        if position not in (None, "skip", "encoder", "conv"):
            raise ValueError(f"gcn_position must be 'skip', 'encoder', 'conv' or None, got {gcn_position!r}")
        self.gcn_position = position
        self.channels = list(channels)
        conv_gcn = gcn_kernel_size if position == "conv" else None

        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in self.channels:
            self.encoders.append(DoubleConv(previous, width, conv_gcn, negative_slope))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(previous, 2 * previous, conv_gcn, negative_slope)
        # Model A's GCN sits on the skip only; Model B's on the encoder output (skip and pooled path).
        self.skip_gcns = nn.ModuleList(
            [GlobalConvBlock(width, width, gcn_kernel_size) for width in self.channels]
            if position in ("skip", "encoder") else [])

        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        previous = 2 * self.channels[-1]
        for width in reversed(self.channels):
            self.upsamplers.append(nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.decoders.append(DoubleConv(2 * width, width, conv_gcn, negative_slope))
            previous = width
        self.head = nn.Conv2d(previous, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2 ** len(self.channels)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {factor}")
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if self.gcn_position == "encoder":
                x = self.skip_gcns[level](x)
                skips.append(x)
            elif self.gcn_position == "skip":
                skips.append(self.skip_gcns[level](x))
            else:
                skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
