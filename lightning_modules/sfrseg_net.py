"""SFRSeg-Net: synovial-fluid segmentation in finger/wrist-joint ultrasound (ICPR 2024).

shared/papers/icpr24_sfrseg_net.md, card shared/specs/icpr24_sfrseg_net.md. A light UNet of 18
3 x 3 convolutions (each Conv -> BatchNorm -> ReLU; filters 16, 32, 64, 128, 256) whose four pooling
layers are the paper's IEWA-DWT (blocks/wavelet.py: Haar DWT, ``LL + LH + HL``, HH dropped):

    conv1-2 16 -> pool, conv3-4 32 -> pool, conv5-6 64 -> pool, conv7-8 128 -> pool, conv9-10 256,
    ConvT 2x2 -> cat conv8 -> conv11-12 128, ... -> conv17-18 16 -> Conv1x1 -> 1 logit map.

``pool`` swaps the down-sampling for the paper's Table 2/5 comparisons ("max" is the plain U-Net of
Table 3). The transposed-conv kernel is unstated; 2 x 2 stride 2 (the Keras UNet idiom) gives
1,944,049 parameters (3 x 3 gives 2,161,649). The paper applies a sigmoid after the last layer; here
the network returns logits and the loss/metrics apply the sigmoid (numerically safer BCE).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_modules.blocks.wavelet import make_pool


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class SFRSegNet(nn.Module):
    """SFRSeg-Net (``pool="iewa_dwt"``) and its pooling ablations.

    Args:
        in_channels: 3 (RGB-palette ultrasound).
        out_channels: 1 (binary synovial-fluid mask, logits).
        filters: widths of the four encoder levels and the bottleneck.
        pool: ``iewa_dwt`` (proposed), ``iewa_dwt_concat``, ``dwt_ll`` (Zhao et al.), ``dwt_all``,
            ``max`` (U-Net), ``avg``, ``mixed``, ``stochastic``, ``max_dwt`` (Souza et al.).
        up_kernel_size: kernel (and stride 2) of the transposed convolutions: 2 (choice) or 3.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1,
                 filters: Sequence[int] = (16, 32, 64, 128, 256), pool: str = "iewa_dwt",
                 up_kernel_size: int = 2):
        super().__init__()
        filters = list(filters)
        if len(filters) < 2:
            raise ValueError("filters needs at least one encoder level and the bottleneck")
        if up_kernel_size not in (2, 3):
            raise ValueError(f"up_kernel_size must be 2 or 3, got {up_kernel_size}")
        self.pool_kind = pool
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        previous = in_channels
        for width in filters[:-1]:
            self.encoders.append(nn.Sequential(ConvBNReLU(previous, width), ConvBNReLU(width, width)))
            pool_layer = make_pool(pool, width)
            self.pools.append(pool_layer)
            previous = width * getattr(pool_layer, "channel_multiplier", 1)
        self.bottleneck = nn.Sequential(ConvBNReLU(previous, filters[-1]), ConvBNReLU(filters[-1], filters[-1]))
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        previous = filters[-1]
        # kernel 3, stride 2 needs padding 1 and output_padding 1 to double the size exactly.
        pad, out_pad = (0, 0) if up_kernel_size == 2 else (1, 1)
        for width in reversed(filters[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(previous, width, up_kernel_size, stride=2,
                                                      padding=pad, output_padding=out_pad))
            self.decoders.append(nn.Sequential(ConvBNReLU(2 * width, width), ConvBNReLU(width, width)))
            previous = width
        self.head = nn.Conv2d(previous, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2 ** len(self.pools)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {factor}")
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)


class InverseTimeDecayLR(torch.optim.lr_scheduler.LambdaLR):
    """Keras' legacy optimizer ``decay``: ``lr_t = lr / (1 + decay * t)``, t counting optimiser steps.

    The paper's "decaying learning rate 0.005" (TF/Keras 2.10); step it per iteration
    (``SegmentationTask(scheduler_interval="step")``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decay: float = 0.005, last_epoch: int = -1):
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.decay = decay
        super().__init__(optimizer, lambda step: 1.0 / (1.0 + decay * step), last_epoch=last_epoch)
