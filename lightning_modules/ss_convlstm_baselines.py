"""Table 4 baselines of SpecSlice-ConvLSTM buildable without timm / torchvision: FPN and DeepLabV3+ on a
ResNet-34 encoder taking all 60 bands, in segmentation_models_pytorch's layout (the paper used smp; its
totals are matched: FPN 23.33 M, DeepLabV3+ 22.62 M), and an nnU-Net-style 2D U-Net (MONAI ``DynUNet``).

- ``FPNSeg`` = ``smp.FPN("resnet34", in_channels=60, classes=1)``: lateral 1x1 convs to 256 pyramid channels
  (P5..P2, nearest x2 top-down addition), per level 3x3 conv-GroupNorm(32)-ReLU blocks to 128 channels with
  bilinear x2 upsampling down to H/4 (3, 2, 1, 0 upsamplings), summed, Dropout2d(0.2), 1x1 head, bilinear x4.
- ``DeepLabV3PlusSeg`` = ``smp.DeepLabV3Plus("resnet34", in_channels=60, classes=1)``: encoder at output stride
  16 (layer4's stride replaced by dilation 2), separable ASPP (rates 12, 24, 36; 256 channels) + separable 3x3
  conv-BN-ReLU, bilinear x4, concat with layer1 reduced to 48 channels, separable 3x3 conv-BN-ReLU, 1x1 head,
  bilinear x4.
- ``NNUNet2D``: nnU-Net's 2D configuration for 256 x 320 inputs (plain conv blocks, 2 x [3x3 conv-InstanceNorm-
  LeakyReLU] per stage, 32 features doubling to 512, downsampling until the map is 4 x 5: 7 stages) as a MONAI
  ``DynUNet``; deep supervision returns the full-size logits and the coarser heads' logits (train mode only).
  The paper's "nnUNet" row is the 3D nnU-Net (1253.82 GMACs), not this 2D one; its numbers are not comparable.

All return binary logits (B, 1, H, W) from (B, C, H, W) hypercubes (H, W multiples of 32; ``NNUNet2D``: of
its total downsampling, see ``NNUNet2D.plan``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import _resnet_trunk
from lightning_modules.blocks.aspp import ASPP, conv_bn_relu
from lightning_modules.ss_convlstm import resnet_features


def _bilinear(x: torch.Tensor, scale: int) -> torch.Tensor:
    """smp's ``UpsamplingBilinear2d`` (align_corners=True)."""
    return F.interpolate(x, scale_factor=float(scale), mode="bilinear", align_corners=True)


class _GNBlock(nn.Module):
    """smp ``Conv3x3GNReLU``: 3x3 conv (no bias), GroupNorm(32), ReLU, optional bilinear x2."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.block = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                                   nn.GroupNorm(min(32, out_channels), out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return _bilinear(x, 2) if self.upsample else x


class FPNSeg(nn.Module):
    """FPN with a ResNet encoder over all bands (smp ``FPN`` layout, merge policy ``add``)."""

    def __init__(self, in_channels: int = 60, backbone: str = "resnet34", pyramid_channels: int = 256,
                 segmentation_channels: int = 128, dropout: float = 0.2, num_classes: int = 1, width: float = 1.0):
        super().__init__()
        self.encoder, _ = _resnet_trunk(backbone, in_channels, width)
        levels = [getattr(self.encoder, f"layer{i}") for i in (1, 2, 3, 4)]
        channels = [self._out_channels(layer) for layer in levels]  # layer1..layer4
        self.p5 = nn.Conv2d(channels[3], pyramid_channels, 1)
        self.lateral = nn.ModuleList(nn.Conv2d(c, pyramid_channels, 1) for c in channels[2::-1])  # P4, P3, P2
        self.seg_blocks = nn.ModuleList(
            nn.Sequential(*[_GNBlock(pyramid_channels if i == 0 else segmentation_channels, segmentation_channels,
                                     upsample=n > 0) for i in range(max(n, 1))])
            for n in (3, 2, 1, 0))
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(segmentation_channels, num_classes, 1)

    @staticmethod
    def _out_channels(layer: nn.Sequential) -> int:
        last = layer[-1]
        return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        _, c2, c3, c4, c5 = resnet_features(self.encoder, cube)
        pyramid = [self.p5(c5)]
        for lateral, skip in zip(self.lateral, (c4, c3, c2)):
            pyramid.append(F.interpolate(pyramid[-1], scale_factor=2.0, mode="nearest") + lateral(skip))
        x = sum(block(p) for block, p in zip(self.seg_blocks, pyramid))
        return _bilinear(self.head(self.dropout(x)), 4)


class DeepLabV3PlusSeg(nn.Module):
    """DeepLabV3+ with a ResNet encoder over all bands at output stride 16 (smp ``DeepLabV3Plus`` layout)."""

    def __init__(self, in_channels: int = 60, backbone: str = "resnet34", decoder_channels: int = 256,
                 atrous_rates: Sequence[int] = (12, 24, 36), num_classes: int = 1, width: float = 1.0):
        super().__init__()
        self.encoder, _ = _resnet_trunk(backbone, in_channels, width)
        for module in self.encoder.layer4.modules():  # output stride 16: stride 2 -> dilation 2 (smp make_dilated)
            if isinstance(module, nn.Conv2d):
                module.stride, module.dilation = (1, 1), (2, 2)
                module.padding = tuple((k // 2) * 2 for k in module.kernel_size)
        high, low = FPNSeg._out_channels(self.encoder.layer4), FPNSeg._out_channels(self.encoder.layer1)
        self.aspp = nn.Sequential(ASPP(high, atrous_rates, decoder_channels, separable=True),
                                  conv_bn_relu(decoder_channels, decoder_channels, 3, separable=True))
        self.reduce = conv_bn_relu(low, 48, 1)
        self.fuse = conv_bn_relu(decoder_channels + 48, decoder_channels, 3, separable=True)
        self.head = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        _, low, _, _, high = resnet_features(self.encoder, cube)
        x = torch.cat([_bilinear(self.aspp(high), 4), self.reduce(low)], 1)
        return _bilinear(self.head(self.fuse(x)), 4)


class NNUNet2D(nn.Module):
    """nnU-Net's 2D U-Net (MONAI ``DynUNet``) planned for ``image_size`` as nnU-Net (v2) plans 2D networks.

    Args:
        in_channels: bands (60).
        image_size: the training patch (MDC: 256 x 320, the whole image).
        base_features, max_features: 32 and 512 (nnU-Net's 2D defaults).
        min_feature_map: downsample while every side stays >= this (4, nnU-Net).
        deep_supervision: in train mode return [main logits, the logits of ``deep_supervision_heads`` (at most
            stages - 2) coarser decoder levels], all at full size (nnU-Net supervises every decoder level but the
            lowest, weights 1, 1/2, 1/4, ... normalised; give them to the task as ``output_weights``).
    """

    def __init__(self, in_channels: int = 60, image_size: Sequence[int] = (256, 320), base_features: int = 32,
                 max_features: int = 512, min_feature_map: int = 4, num_classes: int = 1,
                 deep_supervision: bool = True, deep_supervision_heads: int = 4):
        super().__init__()
        from monai.networks.nets import DynUNet

        strides = self.plan(image_size, min_feature_map)
        filters = [min(base_features * 2 ** i, max_features) for i in range(len(strides))]
        self.deep_supervision = deep_supervision
        self.net = DynUNet(2, in_channels, num_classes, kernel_size=[3] * len(strides), strides=strides,
                           upsample_kernel_size=strides[1:], filters=filters, norm_name=("INSTANCE", {"affine": True}),
                           act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                           deep_supervision=deep_supervision,
                           deep_supr_num=min(deep_supervision_heads, len(strides) - 2), res_block=False)

    @staticmethod
    def plan(image_size: Sequence[int], min_feature_map: int = 4) -> list[int]:
        """Strides [1, 2, 2, ...]: halve (both sides) while both stay >= ``min_feature_map``."""
        size, strides = [int(s) for s in image_size], [1]
        while all(s % 2 == 0 and s // 2 >= min_feature_map for s in size):
            size = [s // 2 for s in size]
            strides.append(2)
        return strides

    def forward(self, cube: torch.Tensor):
        out = self.net(cube)
        if self.deep_supervision and self.training:
            return list(out.unbind(1))  # (B, heads, C, H, W): every head already upsampled to full size
        return out


class _Volume3DSeg(nn.Module):
    """Runs a 3D MONAI network on the hypercube as a 1-channel volume (B, 1, bands, H, W) and reduces the 3D
    logits to the 2D mask by the mean over the spectral axis (a choice: the Dual-Stream benchmark code could not
    be consulted here). The spectral axis is zero-padded up to a multiple of ``depth_multiple`` and cropped back."""

    depth_multiple = 1

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        bands = cube.shape[1]
        volume = cube.unsqueeze(1)
        pad = -bands % self.depth_multiple
        if pad:
            volume = F.pad(volume, (0, 0, 0, 0, 0, pad))
        return self.net(volume)[:, :, :bands].mean(2)  # (B, 1, bands, H, W) -> (B, 1, H, W)


class UNet3DSeg(_Volume3DSeg):
    """Table 4 "3D-UNet": MONAI ``BasicUNet`` (spatial_dims=3, MONAI's default features 32, 32, 64, 128, 256, 32;
    the paper gives no params for it) over the (bands, H, W) volume; H, W multiples of 16."""

    def __init__(self, features: Sequence[int] = (32, 32, 64, 128, 256, 32), num_classes: int = 1):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=num_classes, features=tuple(features))


class SwinUNETRSeg(_Volume3DSeg):
    """Table 4 "Swin-UNETR": MONAI ``SwinUNETR`` (spatial_dims=3, MONAI's default feature_size 48; the paper gives
    no params for it) over the (bands, H, W) volume; bands padded to a multiple of 32 (60 -> 64), H, W multiples
    of 32."""

    depth_multiple = 32

    def __init__(self, feature_size: int = 48, num_classes: int = 1, use_checkpoint: bool = False):
        super().__init__()
        from monai.networks.nets import SwinUNETR

        device = torch.get_default_device()
        with torch.device("cpu"):  # MONAI builds its drop-path rates with .item(), which a meta device refuses
            net = SwinUNETR(in_channels=1, out_channels=num_classes, feature_size=feature_size, spatial_dims=3,
                            use_checkpoint=use_checkpoint)
        self.net = net.to(device)
