"""Breast-ultrasound segmentation baselines of UNet-GCN's Table 5/6: SegNet, UNet 3+ and AAU-Net.

Each network is a plain ``nn.Module`` ``(in_channels, num_classes, features, ...)`` that returns logits
``(B, num_classes, H, W)`` (the sigmoid/softmax of the original code is left to the loss). Every class
takes its widths as ``features`` so tests and demos can build tiny copies; the defaults are the
published sizes.

- ``SegNet`` (Badrinarayanan et al., TPAMI 2017): the VGG16-BN encoder (13 convs), 2x2 max pooling
  that keeps its indices, a mirrored decoder that max-unpools with those indices, and the Caffe
  model's 3x3 classifier (``conv1_1_D``). The encoder is laid out exactly like torchvision's
  ``vgg16_bn().features``, so ImageNet weights load under ``features.*`` (SegNet initialised its encoder
  that way); by default everything starts from He (MSRA) initialisation, the Caffe decoder's filler.
- ``UNet3Plus`` (Huang et al., ICASSP 2020): the plain ``UNet_3Plus`` of ZJUGiveLab/UNet-Version: widths
  64-1024, full-scale skips (every decoder stage takes 5 x 64 channels: max-pooled shallower encoder
  maps, the same-level encoder map, bilinearly upsampled deeper decoder maps), no deep supervision and
  no classification-guided module. Branch keys keep the official names (``h1_PT_hd4`` ...).
- ``AAUNet`` (Chen et al., IEEE TMI 2022): a U-Net whose every level is one hybrid adaptive attention
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

from lightning_modules.seg_baselines import ConvBlock

SEGNET_FEATURES = (64, 128, 256, 512, 512)
SEGNET_CONVS_PER_STAGE = (2, 2, 3, 3, 3)  # VGG16: 13 convs
UNET3PLUS_FEATURES = (64, 128, 256, 512, 1024)
AAUNET_FEATURES = (32, 64, 128, 256, 512)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _check_divisible(x: torch.Tensor, factor: int) -> None:
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"input height and width must be divisible by {factor}, got {tuple(x.shape[-2:])}")


# -- SegNet ----------------------------------------------------------------------------------------------
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
                layers += _conv_bn_relu(channels, width)
                channels = width
            layers.append(nn.MaxPool2d(2, 2, return_indices=True))
        self.features = nn.Sequential(*layers)
        self.unpool = nn.MaxUnpool2d(2, 2)
        decoder = []
        for stage in reversed(range(len(features))):
            width, n = features[stage], convs_per_stage[stage]
            layers = [m for _ in range(n - 1) for m in _conv_bn_relu(width, width)]
            if stage > 0:
                layers += _conv_bn_relu(width, features[stage - 1])
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


# -- UNet 3+ ---------------------------------------------------------------------------------------------
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
                self.branches[name] = nn.Sequential(*_conv_bn_relu(source, cat))
            setattr(self, f"fuse{i}d", nn.Sequential(*_conv_bn_relu(up_channels, up_channels)))  # conv{i}d_1
        self.outconv1 = nn.Conv2d(up_channels, num_classes, 3, padding=1)
        for module in self.modules():  # the official init_weights(init_type="kaiming")
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, 16)
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


# -- AAU-Net ---------------------------------------------------------------------------------------------
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
        _check_divisible(x, 2 ** (self.depth - 1))
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            x = block(torch.cat([skip, F.interpolate(x, scale_factor=2, mode="nearest")], dim=1))
        return self.head(x)
