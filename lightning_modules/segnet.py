"""``SegNet`` (Badrinarayanan et al., TPAMI 2017): the VGG16-BN encoder (13 convs), 2x2 max pooling
  that keeps its indices, a mirrored decoder that max-unpools with those indices, and the Caffe
  model's 3x3 classifier (``conv1_1_D``). The encoder is laid out exactly like torchvision's
  ``vgg16_bn().features``, so ImageNet weights load under ``features.*`` (SegNet initialised its encoder
  that way); by default everything starts from He (MSRA) initialisation, the Caffe decoder's filler.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lightning_modules.blocks.conv import conv_bn_relu

SEGNET_FEATURES = (64, 128, 256, 512, 512)
SEGNET_CONVS_PER_STAGE = (2, 2, 3, 3, 3)  # VGG16: 13 convs


class SegNet(nn.Module):
    """SegNet: VGG16-BN encoder, pooling indices reused by the mirrored decoder's max-unpooling.

    Decoder stage ``s`` (deepest first) has ``n_s - 1`` Conv-BN-ReLU at width ``w_s`` and one more from
    ``w_s`` to ``w_{s-1}``; the first stage's last conv is the 3x3 classifier (no BN/ReLU), as in the
    Caffe ``segnet_train.prototxt`` (conv5_3_D ... conv1_1_D). Any input of at least 32 x 32 works:
    unpooling restores each stage's exact size, odd sizes included.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, features: Sequence[int] = SEGNET_FEATURES,
                 convs_per_stage: Sequence[int] = SEGNET_CONVS_PER_STAGE) -> None:
        super().__init__()
        features, convs_per_stage = [int(f) for f in features], [int(n) for n in convs_per_stage]
        if len(features) != len(convs_per_stage):
            raise ValueError(f"features {features} and convs_per_stage {convs_per_stage} differ in length")
        layers, channels = [], in_channels
        for width, n in zip(features, convs_per_stage):  # torchvision vgg16_bn().features indices
            for _ in range(n):
                layers += conv_bn_relu(channels, width)
                channels = width
            layers.append(nn.MaxPool2d(2, 2, return_indices=True))
        self.features = nn.Sequential(*layers)
        self.unpool = nn.MaxUnpool2d(2, 2)
        decoder = []
        for stage in reversed(range(len(features))):
            width, n = features[stage], convs_per_stage[stage]
            layers = [m for _ in range(n - 1) for m in conv_bn_relu(width, width)]
            if stage > 0:
                layers += conv_bn_relu(width, features[stage - 1])
            else:
                layers.append(nn.Conv2d(width, num_classes, 3, padding=1))  # conv1_1_D: logits
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")  # Caffe "msra"
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []  # (indices, size before pooling) per stage
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, indices = layer(x)
                pooled.append((indices, size))
            else:
                x = layer(x)
        for stage, (indices, size) in zip(self.decoder, reversed(pooled)):
            x = stage(self.unpool(x, indices, output_size=size))
        return x
