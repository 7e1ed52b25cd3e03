"""VoxelMorph-family registration baselines of the FNOReg paper (plain ``nn.Module``s, 2D and 3D).

Contract shared by every registration network here: ``forward(moving, fixed) -> displacement``,
inputs (B, 1, *spatial), the network concatenates ``[moving, fixed]`` on channels, output
(B, spatial_dims, *spatial) in normalised grid units (align_corners=True), channel i along
spatial dim i. Networks never warp; the task module does.

- :class:`VoxelMorph`: ``VxmDense_1`` of the TransMorph repository as used by FNOReg
  (``baseline_models/transmorph``, model name ``vxm-1``): 91,578 params in 2D, 274,387 in 3D.
- :class:`VoxelMorphHuge`: ``VxmDense_huge`` of the same file: 21,086,408 in 2D, 63,252,939 in 3D.
- :class:`VoxelMorphLarge`: the FNOReg code's ``DeepUNet2d``/``DeepUNet3d`` (residual U-Net with
  batch norm): 5,820,482 params in 2D, 15,162,595 in 3D.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv
from torch import nn

from lightning_modules.blocks.init import init_small_output
from lightning_modules.blocks.padding import pad_to_multiple
from lightning_modules.blocks.warp import voxels_to_normalised

__all__ = [
    "VoxelMorph",
    "VoxelMorphHuge",
    "VoxelMorphLarge",
]

# VxmDense_1 in the TransMorph repo leaves nb_unet_features=None, so the Unet default applies.
VXM1_ENCODER = (8, 32, 32, 32)
VXM1_DECODER = (32, 32, 32, 32, 32, 8, 8)
# VxmDense_huge: the TransMorph paper's VoxelMorph-huge, sized to match TransMorph.
VXM_HUGE_ENCODER = (14, 28, 144, 320)
VXM_HUGE_DECODER = (1152, 1152, 320, 144, 28, 14, 14)




def _leaky_conv(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> Convolution:
    # VoxelMorph ConvBlock: conv 3 (padding 1, bias) -> LeakyReLU(0.2); no normalisation.
    return Convolution(spatial_dims, in_channels, out_channels, strides=stride, kernel_size=3,
                       act=("leakyrelu", {"negative_slope": 0.2}), norm=None, bias=True)


class VoxelMorph(nn.Module):
    """VxmDense U-Net (Balakrishnan et al. 2019) as in the TransMorph repository.

    Encoder: stride-2 conv blocks (no pooling). Decoder: the first ``len(enc_channels)`` decoder
    convs each run, then upsample (nearest) and concatenate the matching encoder activation (the
    last one is the 2-channel input itself); the remaining decoder convs run at full resolution.
    A 3x3 conv predicts the displacement in voxels (as the reference), converted to normalised units.
    No integration: ``VxmDense_1`` in the code used by FNOReg has no scaling-and-squaring.

    Defaults reproduce the paper's "VoxelMorph" (91,578 params in 2D, 274,387 in 3D).
    Sizes that are not multiples of ``2 ** len(enc_channels)`` are zero-padded internally.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        enc_channels: Sequence[int] = VXM1_ENCODER,
        dec_channels: Sequence[int] = VXM1_DECODER,
        in_channels: int = 2,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        enc_channels, dec_channels = tuple(enc_channels), tuple(dec_channels)
        if len(dec_channels) < len(enc_channels):
            raise ValueError("dec_channels needs at least one entry per encoder level")
        self.spatial_dims = spatial_dims
        self.size_multiple = 2 ** len(enc_channels)

        self.encoder = nn.ModuleList()
        prev = in_channels
        for nf in enc_channels:
            self.encoder.append(_leaky_conv(spatial_dims, prev, nf, stride=2))
            prev = nf

        skip_channels = list(reversed(enc_channels))
        self.decoder = nn.ModuleList()
        for level, nf in enumerate(dec_channels[: len(enc_channels)]):
            # The deepest encoder output feeds the first decoder conv directly (no concat yet).
            channels = prev + skip_channels[level] if level > 0 else prev
            self.decoder.append(_leaky_conv(spatial_dims, channels, nf))
            prev = nf

        prev += in_channels  # the last upsampled map is concatenated with the input pair
        self.full_resolution = nn.ModuleList()
        for nf in dec_channels[len(enc_channels):]:
            self.full_resolution.append(_leaky_conv(spatial_dims, prev, nf))
            prev = nf

        self.flow = Conv[Conv.CONV, spatial_dims](prev, spatial_dims, kernel_size=3, padding=1)
        init_small_output(self.flow)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, fixed], dim=1)
        spatial = x.shape[2:]
        x, crop = pad_to_multiple(x, self.size_multiple)

        skips = [x]
        for down in self.encoder:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for conv in self.decoder:
            x = F.interpolate(conv(x), scale_factor=2, mode="nearest")
            x = torch.cat([x, skips.pop()], dim=1)
        for conv in self.full_resolution:
            x = conv(x)

        flow_voxels = self.flow(x)[crop]
        return voxels_to_normalised(flow_voxels, spatial)


class VoxelMorphHuge(VoxelMorph):
    """``VxmDense_huge`` of the TransMorph repository (a VoxelMorph sized like TransMorph).

    Same network as :class:`VoxelMorph` with encoder (14, 28, 144, 320) and decoder
    (1152, 1152, 320, 144, 28, 14, 14): 21,086,408 params in 2D, 63,252,939 in 3D (paper 21.1M / 63.3M).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        enc_channels: Sequence[int] = VXM_HUGE_ENCODER,
        dec_channels: Sequence[int] = VXM_HUGE_DECODER,
        in_channels: int = 2,
    ):
        super().__init__(spatial_dims, enc_channels, dec_channels, in_channels)


def _conv_bn_relu(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                  stride: int = 1, transposed: bool = False) -> Convolution:
    extra = {"padding": 0, "output_padding": 0} if transposed else {}
    return Convolution(spatial_dims, in_channels, out_channels, strides=stride, kernel_size=kernel_size,
                       is_transposed=transposed, norm="batch", act="relu", adn_ordering="NA", bias=True,
                       **extra)


class BottleneckResBlock(nn.Module):
    """FNOReg ``ConvResBlock``: 1x1 halve -> 2x (3x3 conv, BN, ReLU) -> 1x1 restore, plus identity."""

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        half = channels // 2
        self.reduce = conv(channels, half, kernel_size=1)
        self.conv1 = _conv_bn_relu(spatial_dims, half, half)
        self.conv2 = _conv_bn_relu(spatial_dims, half, half)
        self.expand = conv(half, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.conv2(self.conv1(self.reduce(x))))


class VoxelMorphLarge(nn.Module):
    """VoxelMorph-Large = FNOReg code ``DeepUNet2d`` / ``DeepUNet3d`` (config of experiments 139/140).

    start conv 3 (no activation) -> ``num_levels`` encoder blocks [res blocks, stride-2 conv 3 doubling
    channels, BN, ReLU] -> ``latent_res_blocks`` res blocks -> decoder blocks [transposed conv 2/2
    halving channels, BN, ReLU, res blocks, concat skip, 1x1 conv, BN, ReLU] -> conv 3, BN, ReLU ->
    1x1 conv to the displacement, which the reference predicts directly in normalised units.
    The reference's 1x1 output conv uses PyTorch's default init; here it gets the small init of the
    project contract (same parameter count). 5,820,482 params in 2D, 15,162,595 in 3D.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        start_channels: int = 32,
        num_levels: int = 4,
        res_blocks_per_level: int = 2,
        latent_res_blocks: int = 1,
        skip_connections: bool = True,
        in_channels: int = 2,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.size_multiple = 2 ** num_levels
        self.skip_connections = skip_connections

        def res_blocks(channels: int, n: int) -> list[nn.Module]:
            return [BottleneckResBlock(spatial_dims, channels) for _ in range(n)]

        self.stem = conv(in_channels, start_channels, kernel_size=3, padding=1)
        self.encoder = nn.ModuleList()
        for level in range(num_levels):
            ch = start_channels * 2 ** level
            self.encoder.append(nn.Sequential(
                *res_blocks(ch, res_blocks_per_level),
                _conv_bn_relu(spatial_dims, ch, 2 * ch, stride=2),
            ))
        self.latent = nn.Sequential(*res_blocks(start_channels * 2 ** num_levels, latent_res_blocks))

        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for level in range(num_levels, 0, -1):
            out = start_channels * 2 ** (level - 1)
            self.up.append(nn.Sequential(
                _conv_bn_relu(spatial_dims, 2 * out, out, kernel_size=2, stride=2, transposed=True),
                *res_blocks(out, res_blocks_per_level),
            ))
            # The skip at this level has the same width as the upsampled map.
            self.merge.append(_conv_bn_relu(spatial_dims, 2 * out, out, kernel_size=1)
                              if skip_connections else nn.Identity())

        self.head = _conv_bn_relu(spatial_dims, start_channels, start_channels)
        self.flow = conv(start_channels, spatial_dims, kernel_size=1)
        init_small_output(self.flow)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, fixed], dim=1)
        x, crop = pad_to_multiple(x, self.size_multiple)

        x = self.stem(x)
        skips = [x]
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()  # the deepest output is the latent input, not a skip
        x = self.latent(x)
        for up, merge in zip(self.up, self.merge):
            x = up(x)
            skip = skips.pop()
            if self.skip_connections:
                x = merge(torch.cat([x, skip], dim=1))
        # float32 like the other baselines, also under autocast.
        return self.flow(self.head(x))[crop].float()
