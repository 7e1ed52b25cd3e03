"""pix2pix's conditional PatchGAN discriminator (MONAI's ``PatchDiscriminator``), the cGAN baseline of
DiffCMR's Tables 2 and 3."""
from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator


class ConditionalPatchDiscriminator(PatchDiscriminator):
    """pix2pix's 70x70 PatchGAN (64 -> 128 -> 256 -> 512 features, 4x4 convs, batch norm) on the pair
    (I^u, image) stacked as 2 channels; returns the logit map (MONAI's returns every layer's output)."""

    def __init__(self, image_channels: int = 1, channels: int = 64, num_layers_d: int = 3):
        super().__init__(spatial_dims=2, channels=channels, in_channels=2 * image_channels, out_channels=1,
                         num_layers_d=num_layers_d, kernel_size=4, norm="BATCH", bias=False, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[-1]
