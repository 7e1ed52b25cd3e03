"""Spatial transformer: warp an image (2D or 3D) with a dense displacement field.

Displacements are in normalised grid units ([-1, 1] spans the image, align_corners=True), channel i
along spatial dim i (H, W[, D]). Normalised units make one field valid at any resolution, which is
what lets a model trained at 0.5x be evaluated at 1x.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def identity_grid(spatial_shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, D, *spatial) identity coordinates in normalised units, channel i along spatial dim i."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in spatial_shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


def normalised_to_voxels(displacement: torch.Tensor) -> torch.Tensor:
    """Convert a normalised displacement (align_corners=True) to voxel units."""
    sizes = displacement.shape[2:]
    scale = torch.tensor([(n - 1) / 2.0 for n in sizes], device=displacement.device, dtype=displacement.dtype)
    return displacement * scale.view(1, -1, *([1] * len(sizes)))


def voxels_to_normalised(flow: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Voxel displacement -> normalised units for grid_sample(align_corners=True), in float32.

    float32 so that a bf16 autocast forward does not also round the scale 2/(n-1).
    """
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial_shape], device=flow.device, dtype=torch.float32)
    return flow.float() * scale.view(1, -1, *([1] * len(spatial_shape)))


def warp(image: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` at ``identity + displacement`` (grid_sample, align_corners=True).

    ``mode='bilinear'`` is trilinear for volumes (grid_sample's naming); ``'nearest'`` for label maps.
    Runs in float32 so that autocast never feeds half-precision coordinates to the sampler.
    """
    spatial = image.shape[2:]
    if displacement.shape[1] != len(spatial) or displacement.shape[2:] != spatial:
        raise ValueError(f"displacement {tuple(displacement.shape)} does not match image {tuple(image.shape)}")
    with torch.autocast(device_type=image.device.type, enabled=False):
        coords = identity_grid(spatial, image.device) + displacement.float()
        # grid_sample wants the last axis as (x, y[, z]) = reversed spatial order.
        grid = coords.permute(0, *range(2, coords.ndim), 1).flip(-1)
        source = image if image.is_floating_point() else image.float()
        return F.grid_sample(source.float(), grid, mode=mode, padding_mode=padding_mode, align_corners=True)


class SpatialTransformer(nn.Module):
    """Module form of :func:`warp` (Jaderberg et al. 2015; VoxelMorph's implementation)."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros"):
        super().__init__()
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        return warp(image, displacement, self.mode, self.padding_mode)
