"""PointBL (ICPR 2024): leveraging point annotations in segmentation learning with an intensity-aware boundary loss.

No new architecture: E-Net (Paszke et al. 2016, written here after the description in the paper and the layout of
LIVIAETS/boundary-loss ``networks.py``, which the official code uses) or MONAI's ``DynUNet`` as the 2D nnU-Net,
trained by ``tasks.weak_segmentation.WeakSegmentationTask`` with ``losses.point_supervision.PointBoundaryLoss``
on point labels and distance maps from ``datamodules.point_labels``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_prelu(in_channels: int, out_channels: int, kernel, stride=1, padding=0, dilation=1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(out_channels), nn.PReLU(out_channels)]


class InitialBlock(nn.Module):
    """3x3 stride-2 convolution to ``out - in`` channels beside a 2x2 max-pool of the input, concatenated."""

    def __init__(self, in_channels: int, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(torch.cat([self.conv(x), F.max_pool2d(x, 2)], 1)))


class Bottleneck(nn.Module):
    """Regular / dilated / asymmetric (5x1 then 1x5) bottleneck: 1x1 projection by ``factor``, the convolution,
    1x1 expansion, spatial dropout, residual sum, PReLU."""

    def __init__(self, channels: int, factor: int = 4, kind: str = "regular", dilation: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        inner = channels // factor
        if kind == "asymmetric":
            middle = [nn.Conv2d(inner, inner, (5, 1), padding=(2, 0), bias=False),
                      *_conv_bn_prelu(inner, inner, (1, 5), padding=(0, 2))]
        else:
            middle = _conv_bn_prelu(inner, inner, 3, padding=dilation, dilation=dilation)
        self.branch = nn.Sequential(*_conv_bn_prelu(channels, inner, 1), *middle,
                                    nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                    nn.Dropout2d(dropout))
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


class DownsamplingBottleneck(nn.Module):
    """Max-pool (indices kept for the decoder) with zero-padded channels + a 2x2 stride-2 bottleneck branch."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        inner = in_channels // factor
        self.extra = out_channels - in_channels
        self.branch = nn.Sequential(*_conv_bn_prelu(in_channels, inner, 2, stride=2),
                                    *_conv_bn_prelu(inner, inner, 3, padding=1),
                                    nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                    nn.Dropout2d(dropout))
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, indices = F.max_pool2d(x, 2, return_indices=True)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra))
        return self.act(main + self.branch(x)), indices


class UpsamplingBottleneck(nn.Module):
    """1x1 convolution + max-unpooling with the encoder's indices beside a transposed-convolution bottleneck."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        inner = in_channels // factor
        self.main = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.branch = nn.Sequential(*_conv_bn_prelu(in_channels, inner, 1),
                                    nn.ConvTranspose2d(inner, inner, 3, stride=2, padding=1, output_padding=1,
                                                       bias=False), nn.BatchNorm2d(inner), nn.PReLU(inner),
                                    nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                    nn.Dropout2d(dropout))
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        main = F.max_unpool2d(self.main(x), indices, 2, output_size=[2 * s for s in indices.shape[2:]])
        return self.act(main + self.branch(x))


class ENet(nn.Module):
    """E-Net: initial block to ``K`` (16) channels at 1/2, stage 1 at 1/4 with 4K channels (dropout 0.01), stages 2-3
    at 1/8 with 8K (dilations 2, 4, 8, 16 and asymmetric 5x5 blocks, dropout 0.1), a max-unpooling decoder, and a
    2x2 transposed convolution to the class logits. Inputs' sides must be multiples of 8.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base_channels: int = 16, factor: int = 4,
                 dropout_first: float = 0.01, dropout: float = 0.1) -> None:
        super().__init__()
        k = base_channels
        self.initial = InitialBlock(in_channels, k)
        self.down1 = DownsamplingBottleneck(k, 4 * k, factor, dropout_first)
        self.stage1 = nn.Sequential(*[Bottleneck(4 * k, factor, dropout=dropout_first) for _ in range(4)])
        self.down2 = DownsamplingBottleneck(4 * k, 8 * k, factor, dropout)

        def stage() -> nn.Sequential:
            layout = [("regular", 1), ("dilated", 2), ("asymmetric", 1), ("dilated", 4),
                      ("regular", 1), ("dilated", 8), ("asymmetric", 1), ("dilated", 16)]
            return nn.Sequential(*[Bottleneck(8 * k, factor, kind, d, dropout) for kind, d in layout])

        self.stage2, self.stage3 = stage(), stage()
        self.up4 = UpsamplingBottleneck(8 * k, 4 * k, factor, dropout)
        self.stage4 = nn.Sequential(*[Bottleneck(4 * k, factor, dropout=dropout) for _ in range(2)])
        self.up5 = UpsamplingBottleneck(4 * k, k, factor, dropout)
        self.stage5 = Bottleneck(k, factor, dropout=dropout)
        self.head = nn.ConvTranspose2d(k, num_classes, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"E-Net needs sides that are multiples of 8, got {tuple(x.shape[2:])}")
        x = self.initial(x)
        x, indices1 = self.down1(x)
        x = self.stage1(x)
        x, indices2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, indices2))
        x = self.stage5(self.up5(x, indices1))
        return self.head(x)
