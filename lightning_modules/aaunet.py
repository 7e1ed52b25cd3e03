"""``AAUNet`` (Chen et al., IEEE TMI 2022): a U-Net whose every level is one hybrid adaptive attention
  module (HAAM) instead of the double conv, following ``HAAM.py`` of the official Keras code
  (github.com/CGPxy/AAU-net; the repository ships only the module). See ``HAAM`` and
  ``docs/papers/unet_gcn.md`` for the choices (widths 32-512, 5 x 5 fusion conv: 43.18M parameters,
  the 43M of UNet-GCN's Table 5).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.conv import check_divisible

AAUNET_FEATURES = (32, 64, 128, 256, 512)


class _KerasBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that, like Keras, accepts a training batch of one: its batch variance is 0, so the
    normalised value is 0 and the output is the shift ``beta`` (PyTorch raises instead)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return torch.zeros_like(x) + self.bias if self.affine else torch.zeros_like(x)
        return super().forward(x)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, relu: bool = True):
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                        dilation=dilation), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class HAAM(nn.Module):
    """Hybrid adaptive attention module (AAU-Net), as in the official ``HAAM.py`` (Keras).

    Channel block: a 3x3 conv with dilation 3 and a 5x5 conv (each Conv-BN-ReLU, ``in -> out``);
    global average pooling of both -> Dense(out) -> BN -> ReLU -> Dense(out) -> sigmoid gives ``a``;
    ``conv1x1-BN-ReLU(cat(dilated * a, wide * (1 - a)))`` selects between the two receptive fields.
    Spatial block: a 3x3 then a 1x1 Conv-BN-ReLU on the input; ``s = sigmoid(conv1x1(relu(channel +
    spatial)))`` (one map); ``BN(conv_kxk(cat(channel * s, spatial * (1 - s))))`` with
    ``k = fusion_kernel_size`` (the code's ``size`` argument), no activation after it (as in the code).
    The released file names the spatial branch ``spatil_data`` without defining it: it is the 1x1
    Conv-BN-ReLU output, the only tensor it can be.
    """

    def __init__(self, in_channels: int, out_channels: int, fusion_kernel_size: int = 5) -> None:
        super().__init__()
        self.dilated = _conv_bn(in_channels, out_channels, 3, dilation=3)
        self.wide = _conv_bn(in_channels, out_channels, 5)
        self.channel_gate = nn.Sequential(nn.Linear(2 * out_channels, out_channels), _KerasBatchNorm1d(out_channels),
                                          nn.ReLU(inplace=True), nn.Linear(out_channels, out_channels), nn.Sigmoid())
        self.channel_fuse = _conv_bn(2 * out_channels, out_channels, 1)
        self.spatial = nn.Sequential(_conv_bn(in_channels, out_channels, 3), _conv_bn(out_channels, out_channels, 1))
        self.spatial_gate = nn.Sequential(nn.Conv2d(out_channels, 1, 1), nn.Sigmoid())
        self.spatial_fuse = _conv_bn(2 * out_channels, out_channels, fusion_kernel_size, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dilated, wide = self.dilated(x), self.wide(x)
        a = self.channel_gate(torch.cat([dilated, wide], dim=1).mean(dim=(2, 3)))[:, :, None, None]
        channel = self.channel_fuse(torch.cat([dilated * a, wide * (1 - a)], dim=1))
        spatial = self.spatial(x)
        s = self.spatial_gate(F.relu(channel + spatial))
        return self.spatial_fuse(torch.cat([channel * s, spatial * (1 - s)], dim=1))


class AAUNet(nn.Module):
    """AAU-Net: a five-level U-Net with one HAAM per level in the encoder and the decoder.

    2x2 max pooling down; nearest x2 upsampling, concatenation with the skip, HAAM up (the authors'
    Keras U-Nets: ``UpSampling2D`` + ``Concatenate`` + block); a 1x1 conv gives the logits. Keras
    initialisation (Glorot-uniform kernels, zero biases). Input height and width must be divisible by 16.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, features: Sequence[int] = AAUNET_FEATURES,
                 fusion_kernel_size: int = 5) -> None:
        super().__init__()
        features = [int(f) for f in features]
        self.depth = len(features)
        self.encoder = nn.ModuleList(HAAM(c_in, c_out, fusion_kernel_size)
                                     for c_in, c_out in zip([in_channels, *features[:-1]], features))
        self.decoder = nn.ModuleList(HAAM(features[i + 1] + features[i], features[i], fusion_kernel_size)
                                     for i in reversed(range(self.depth - 1)))
        self.head = nn.Conv2d(features[0], num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, 2 ** (self.depth - 1))
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            x = block(torch.cat([skip, F.interpolate(x, scale_factor=2, mode="nearest")], dim=1))
        return self.head(x)
