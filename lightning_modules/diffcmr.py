"""DiffCMR (Xiang et al., MICCAI STACOM 2023): conditional diffusion for undersampled cardiac MRI.

``eps_theta(x_t, I^u, t) = E(F(x_t) + G(I^u), H(t))`` (Eq. 3), as the official code builds it
(github xmed-lab/DiffCMR, the SegDiff / improved-diffusion lineage):

- G: the RRDB encoder (10 RRDBs, 64 features, growth 32) mapping I^u to C = 128 channels;
- F: the U-Net's first 3x3 convolution (1 -> C), whose output G(I^u) is added to;
- H: sinusoidal embedding of the (rescaled) timestep -> Linear(C, 4C) -> SiLU -> Linear(4C, 4C)
  (the paper calls it a learned look-up table; the code uses this MLP);
- E: improved diffusion's U-Net, widths C x (1, 1, 2, 2, 4, 4), 2 ResBlocks per level with
  scale-shift norm, 4-head attention at downsampling 8 and 16 (16x16 and 8x8 maps at 128x128).

The diffusion itself (schedules, Algorithms 1 and 2, ensembling, DDIM) lives in
``lightning_modules.tasks.reconstruction.DiffusionReconstructionTask``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.blocks.diffusion_unet import DiffusionUNet
from lightning_modules.blocks.rrdb import RRDBEncoder


class DiffCMR(nn.Module):
    """DiffCMR's noise estimator. Defaults are the official configuration.

    Args:
        image_channels: channels of x_t, of I^u and of the predicted noise (magnitude images: 1).
        model_channels: C, the U-Net's base width (and G's output width).
        channel_mult: U-Net level widths as multiples of C.
        num_res_blocks: ResBlocks per encoder level.
        attention_downsample: downsampling factors with self-attention.
        num_heads: attention heads.
        dropout: ResBlock dropout (0 in the code).
        rrdb_blocks, rrdb_channels, rrdb_growth: G's depth, width and dense growth.
    """

    def __init__(self, image_channels: int = 1, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_downsample: Sequence[int] = (8, 16), num_heads: int = 4, dropout: float = 0.0,
                 rrdb_blocks: int = 10, rrdb_channels: int = 64, rrdb_growth: int = 32):
        super().__init__()
        self.unet = DiffusionUNet(image_channels, image_channels, model_channels, channel_mult, num_res_blocks,
                                  attention_downsample, num_heads, dropout, use_scale_shift_norm=True)
        self.condition_encoder = RRDBEncoder(image_channels, model_channels, rrdb_channels, rrdb_blocks, rrdb_growth)

    def encode_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """G(I^u): the same at every denoising step, so the sampler computes it once per image."""
        return self.condition_encoder(condition)

    def denoise(self, x_t: torch.Tensor, timesteps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """E(F(x_t) + features, H(t))."""
        return self.unet(x_t, timesteps, features)

    def forward(self, x_t: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.denoise(x_t, timesteps, self.encode_condition(condition))
