"""PAN, the Pyramid Attention Network (Li, Xiong, An & Wang, BMVC 2018): Table 2's strongest CNN baseline of
Guided-SET-DCL (97.1 / 95.5 DC / JD on CTC30), which the paper trains as segmentation_models_pytorch's ``PAN`` with a
``resnest269e`` encoder.

The decoder is smp's PAN layout (decoder channels 32): Feature Pyramid Attention (FPA) on the deepest encoder map (a
global-pooling branch, a 1x1 "middle" branch, and a 7x7 / 5x5 / 3x3 pyramid of one-channel maps on max-pooled inputs
whose upsampled sum multiplies the middle branch), then three Global Attention Upsample (GAU) blocks that weigh a 3x3
projection of each shallower encoder map by a sigmoid gate from the global pooling of the deeper decoder output and add
the deeper output upsampled; a 3x3 head and x4 bilinear upsampling to the slice.

**Differs from the paper's model:** resnest269e comes from timm, which does not load beside the CPU torch here; the
encoder is ``backbones``' ResNet (torchvision's layout, resnet101 by default) with layer4 dilated to output stride 16
as smp's PAN does (``setdcl_alpnet.dilate_resnet``). ResNeSt's split-attention blocks are not reproduced.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import RESNETS, build_trunk
from lightning_modules.setdcl_alpnet import dilate_resnet


def conv_bn(ch_in: int, ch_out: int, kernel_size: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(ch_in, ch_out, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(ch_out)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class FeaturePyramidAttention(nn.Module):
    """FPA: ``mid(x) * pyramid(x) + global(x)`` (see the module docstring); the input side must be divisible by 8."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn(in_channels, out_channels, 1))
        self.mid = conv_bn(in_channels, out_channels, 1)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), conv_bn(in_channels, 1, 7))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), conv_bn(1, 1, 5))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), conv_bn(1, 1, 3), conv_bn(1, 1, 3))
        self.conv2, self.conv1 = conv_bn(1, 1, 5), conv_bn(1, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(f"FPA needs a map divisible by 8, got {height} x {width} (slices: multiples of 128)")
        x1 = self.down1(x)
        x2 = self.down2(x1)
        x3 = upsample(self.down3(x2), x2.shape[-2:])
        pyramid = upsample(self.conv2(x2) + x3, x1.shape[-2:])
        pyramid = upsample(pyramid + self.conv1(x1), (height, width))
        return pyramid * self.mid(x) + upsample(self.branch1(x), (height, width))


class GlobalAttentionUpsample(nn.Module):
    """GAU: ``up(high) + conv3x3(low) * sigmoid(BN(conv1x1(GAP(high))))``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn(out_channels, out_channels, 1, relu=False),
                                   nn.Sigmoid())
        self.conv2 = conv_bn(in_channels, out_channels, 3)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return upsample(high, low.shape[-2:]) + self.conv2(low) * self.conv1(high)


class PAN(nn.Module):
    """Pyramid Attention Network on a dilated ResNet (output stride 16): (B, C, H, W) -> logits (B, K, H, W).

    Args:
        in_channels: image channels (1 for CT; the first convolution takes them directly).
        num_classes: output channels (1: binary logits for the segmentation task).
        backbone, width: the ResNet of ``lightning_modules.backbones`` and its width multiplier.
        decoder_channels: FPA / GAU width (smp's 32).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, backbone: str = "resnet101", width: float = 1.0,
                 decoder_channels: int = 32) -> None:
        super().__init__()
        if backbone not in RESNETS:
            raise ValueError(f"backbone must be one of {RESNETS}, got {backbone!r}")
        trunk, _ = build_trunk(backbone, in_channels, width)
        self.encoder = dilate_resnet(trunk, 16)
        channels = []  # each stage's output width: its last block's last convolution
        for name in ("layer1", "layer2", "layer3", "layer4"):
            last = getattr(self.encoder, name)[-1]
            channels.append((last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels)
        self.fpa = FeaturePyramidAttention(channels[3], decoder_channels)
        self.gau3 = GlobalAttentionUpsample(channels[2], decoder_channels)
        self.gau2 = GlobalAttentionUpsample(channels[1], decoder_channels)
        self.gau1 = GlobalAttentionUpsample(channels[0], decoder_channels)
        self.head = nn.Conv2d(decoder_channels, num_classes, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        x = e.maxpool(e.act(e.bn1(e.conv1(image))))
        c1 = e.layer1(x)
        c2 = e.layer2(c1)
        c3 = e.layer3(c2)
        out = self.fpa(e.layer4(c3))
        out = self.gau1(c1, self.gau2(c2, self.gau3(c3, out)))
        return F.interpolate(self.head(out), size=image.shape[-2:], mode="bilinear", align_corners=True)
