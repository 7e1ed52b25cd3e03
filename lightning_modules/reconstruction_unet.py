"""The reconstruction U-Net of fastMRI (``Unet``), DiffCMR's U-Net baseline (Tables 2 and 3; the paper cites
Ronneberger et al. without settings) and the cGAN baseline's generator. Layer names follow fastMRI's
``Unet`` so its checkpoints load directly."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """Two (3x3 conv without bias -> instance norm -> LeakyReLU 0.2 -> dropout)."""

    def __init__(self, in_channels: int, out_channels: int, drop_prob: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.InstanceNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(drop_prob),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.InstanceNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(drop_prob))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransposeConvBlock(nn.Module):
    """2x2 stride-2 transposed conv without bias -> instance norm -> LeakyReLU 0.2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False),
                                    nn.InstanceNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ReconstructionUNet(nn.Module):
    """fastMRI's U-Net (Zbontar et al. 2018): ``num_pool_layers`` max-pool levels of ConvBlocks doubling
    from ``channels``, transposed-conv upsampling, skip concatenation, 1x1 output conv.

    Args:
        in_channels, out_channels: image channels.
        channels: width of the first level (fastMRI default 32).
        num_pool_layers: down/up-sampling levels (default 4).
        drop_prob: dropout probability.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, channels: int = 32, num_pool_layers: int = 4,
                 drop_prob: float = 0.0):
        super().__init__()
        self.down_sample_layers = nn.ModuleList([ConvBlock(in_channels, channels, drop_prob)])
        ch = channels
        for _ in range(num_pool_layers - 1):
            self.down_sample_layers.append(ConvBlock(ch, ch * 2, drop_prob))
            ch *= 2
        self.conv = ConvBlock(ch, ch * 2, drop_prob)
        self.up_conv = nn.ModuleList()
        self.up_transpose_conv = nn.ModuleList()
        for _ in range(num_pool_layers - 1):
            self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
            self.up_conv.append(ConvBlock(ch * 2, ch, drop_prob))
            ch //= 2
        self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
        self.up_conv.append(nn.Sequential(ConvBlock(ch * 2, ch, drop_prob), nn.Conv2d(ch, out_channels, 1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        stack = []
        output = image
        for layer in self.down_sample_layers:
            output = layer(output)
            stack.append(output)
            output = F.avg_pool2d(output, kernel_size=2, stride=2, padding=0)
        output = self.conv(output)
        for transpose_conv, conv in zip(self.up_transpose_conv, self.up_conv):
            skip = stack.pop()
            output = transpose_conv(output)
            # Odd sizes: reflect-pad the upsampled map to the skip's size (as fastMRI does).
            pad = [0, skip.shape[-1] - output.shape[-1], 0, skip.shape[-2] - output.shape[-2]]
            if any(pad):
                output = F.pad(output, pad, "reflect")
            output = conv(torch.cat([output, skip], dim=1))
        return output
