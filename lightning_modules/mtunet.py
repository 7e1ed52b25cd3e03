"""MT-UNet (Wang et al., "Mixed Transformer U-Net for Medical Image Segmentation", ICASSP 2022), a
baseline of SACA-UNet's Table IV.

The module tree follows the official code (Dootmaan/MT-UNet, ``MTUNet.py``) with its default widths:

- convolutional stem: three residual double-conv stages 3 -> 64 -> 128 -> 256, each followed by 2x2
  max pooling (1/8 resolution), a 1x1 Conv-BN-ReLU, and a learned position embedding;
- transformer encoder: two stages of two Mixed Transformer Modules (MTM) at widths 256 and 512, each
  ending in a 2x2 stride-2 Conv-BN-ReLU that doubles the width (the stage input is the skip);
- bottleneck: two MTMs at width 1024 (1/32 resolution);
- transformer decoder: 2x2 transposed conv (1024 -> 512), concat skip, 1x1 projection to 512, two MTMs;
  then transposed conv (512 -> 256), concat skip, two MTMs at width 512;
- convolutional decoder: three stages of transposed conv, concat with the stem's features (stem
  feature first), residual double-conv (512 -> 256 -> 128 -> 64), and a 1x1 segmentation head.

The MTM blocks are in ``lightning_modules/blocks/mixed_transformer.py``. Differences from the official
code, none of which changes the function it computes at its supported sizes:
- the axial attention's output projection, built but never used by the official forward, is left out
  (``unused_official_parameters`` counts it; tests/test_mtunet.py adds it back to match the official count);
- the first convolution takes ``in_channels`` directly (the official model repeats a 1-channel image
  to 3 channels, which equals a 1-channel convolution with the three kernels summed);
- the position embedding is sized for ``img_size`` (the official one is fixed at 28 x 28 tokens,
  i.e. 224 px inputs); ``img_size`` must be a multiple of 32 and inputs must be ``img_size`` square.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lightning_modules.blocks.mixed_transformer import MixedTransformerModule


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BN -> optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 activation: bool = True) -> None:
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
                  nn.BatchNorm2d(out_channels)]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if activation else []))


class ResidualDoubleConv(nn.Module):
    """h = BN(Conv3x3(ReLU(BN(Conv3x3(x))))); out = ReLU(h + BN(Conv1x1(h))) (the official ``DoubleConv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvBNReLU(in_channels, out_channels, 3, padding=1),
                                   ConvBNReLU(out_channels, out_channels, 3, padding=1, activation=False))
        self.pointwise = nn.Sequential(nn.Conv2d(out_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x)
        return self.relu(h + self.pointwise(h))


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class MTUNet(nn.Module):
    """MT-UNet with a binary (or ``num_classes``-channel) logit output.

    Args:
        in_channels: image channels (3 RGB, 1 grayscale).
        num_classes: output channels (1 for binary segmentation).
        img_size: square input side; sets the position embedding ((img_size / 8)^2 tokens). Multiple of 32.
        stem_channels: widths of the three convolutional stages (64, 128, 256).
        embed_dim: width of the first transformer stage (256); the next ones double it (512, bottleneck 1024).
        num_heads: heads of the window self-attention (8); external attention uses 4x as many.
        window_size: LGG-SA window side (4).
        ea_expansion, ea_memory_size: external attention width expansion (4) and memory units (64).
        blocks_per_stage: MTMs per transformer stage (2).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, img_size: int = 256,
                 stem_channels: Sequence[int] = (64, 128, 256), embed_dim: int = 256, num_heads: int = 8,
                 window_size: int = 4, ea_expansion: int = 4, ea_memory_size: int = 64,
                 blocks_per_stage: int = 2) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32 (3 pooling + 2 strided stages), got {img_size}")
        self.img_size = img_size
        c1, c2, c3 = (int(c) for c in stem_channels)
        d = embed_dim

        def mtms(dim: int) -> nn.Sequential:
            return nn.Sequential(*(MixedTransformerModule(dim, num_heads, window_size, ea_expansion, ea_memory_size)
                                   for _ in range(blocks_per_stage)))

        # convolutional stem
        self.stem = nn.ModuleList([ResidualDoubleConv(in_channels, c1), ResidualDoubleConv(c1, c2),
                                   ResidualDoubleConv(c2, c3)])
        self.pool = nn.MaxPool2d(2)
        self.stem_projection = ConvBNReLU(c3, d, 1)
        self.position_embedding = nn.Parameter(torch.zeros(1, (img_size // 8) ** 2, d))
        # transformer encoder, bottleneck, decoder
        self.encoder = nn.ModuleList([mtms(d), mtms(2 * d)])
        self.downsample = nn.ModuleList([ConvBNReLU(d, 2 * d, 2, stride=2), ConvBNReLU(2 * d, 4 * d, 2, stride=2)])
        self.bottleneck = mtms(4 * d)
        self.upsample = nn.ModuleList([nn.ConvTranspose2d(4 * d, 2 * d, 2, stride=2),
                                       nn.ConvTranspose2d(2 * d, d, 2, stride=2)])
        self.skip_projection = nn.Linear(4 * d, 2 * d)  # 1x1 conv after the first concat
        self.decoder = nn.ModuleList([mtms(2 * d), mtms(2 * d)])
        # convolutional decoder
        self.conv_upsample = nn.ModuleList([nn.ConvTranspose2d(2 * d, c3, 2, stride=2),
                                            nn.ConvTranspose2d(c3, c2, 2, stride=2),
                                            nn.ConvTranspose2d(c2, c1, 2, stride=2)])
        self.conv_decoder = nn.ModuleList([ResidualDoubleConv(2 * c3, c3), ResidualDoubleConv(2 * c2, c2),
                                           ResidualDoubleConv(2 * c1, c1)])
        self.head = nn.Conv2d(c1, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"MTUNet(img_size={self.img_size}) takes {self.img_size}x{self.img_size} inputs "
                             f"(its position embedding is sized for them), got {tuple(x.shape[-2:])}")
        stem_features = []
        for stage in self.stem:
            x = stage(x)
            stem_features.append(x)
            x = self.pool(x)
        x = _to_channels_last(self.stem_projection(x))  # (B, H/8, W/8, d)
        x = x + self.position_embedding.view(1, x.shape[1], x.shape[2], -1)

        skips = []
        for blocks, down in zip(self.encoder, self.downsample):
            x = blocks(x)
            skips.append(x)
            x = _to_channels_last(down(_to_channels_first(x)))
        x = self.bottleneck(x)

        x = _to_channels_last(self.upsample[0](_to_channels_first(x)))
        x = self.decoder[0](self.skip_projection(torch.cat([x, skips[1]], dim=-1)))
        x = _to_channels_last(self.upsample[1](_to_channels_first(x)))
        x = _to_channels_first(self.decoder[1](torch.cat([x, skips[0]], dim=-1)))

        for up, stage, skip in zip(self.conv_upsample, self.conv_decoder, reversed(stem_features)):
            x = stage(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def unused_official_parameters(embed_dim: int = 256, blocks_per_stage: int = 2) -> int:
    """Parameters of the official code's unused axial output projections (a d x d linear with bias in
    every MTM: 2 stages at d, 2d, the bottleneck at 4d, 2 decoder stages at 2d)."""
    dims = [embed_dim, 2 * embed_dim, 4 * embed_dim, 2 * embed_dim, 2 * embed_dim]
    return blocks_per_stage * sum(dim * dim + dim for dim in dims)
