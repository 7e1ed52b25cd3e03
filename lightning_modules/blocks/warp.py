"""Spatial transformer: warp an image (2D or 3D) with a dense displacement field.

Displacements are in normalised grid units ([-1, 1] spans the image, align_corners=True), channel i
along spatial dim i (H, W[, D]). Normalised units make one field valid at any resolution, which is
what lets a model trained at 0.5x be evaluated at 1x.
"""
from __future__ import annotations

from typing import Optional, Sequence

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


# -- affine transforms ---------------------------------------------------------------------------------------
# An affine network returns ``theta`` (B, D, D+1): F.affine_grid's matrix, which maps normalised fixed-image
# coordinates (x, y[, z]) (align_corners=True, the convention of :func:`warp`) to normalised moving-image
# coordinates. The task turns it into the displacement that :func:`warp` takes, so the warp, the losses and the
# figures are the deformable networks' ones.


def is_affine(transform: torch.Tensor, image: torch.Tensor) -> bool:
    """Whether a network's output is an affine ``theta`` (B, D, D+1) for images (B, C, *spatial) of D dims."""
    dims = image.ndim - 2
    return transform.ndim == 3 and tuple(transform.shape[1:]) == (dims, dims + 1)


def affine_to_displacement(theta: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """theta (B, D, D+1) -> the displacement (B, D, *spatial) in normalised units that :func:`warp` takes.

    ``warp(image, affine_to_displacement(theta, shape))`` equals ``grid_sample(image, affine_grid(theta),
    align_corners=True)``. Computed in float32 (see :func:`voxels_to_normalised`).
    """
    spatial = tuple(int(n) for n in spatial_shape)
    theta = theta.float()
    with torch.autocast(device_type=theta.device.type, enabled=False):
        grid = F.affine_grid(theta, (theta.shape[0], 1, *spatial), align_corners=True)  # (B, *spatial, D) as x, y[, z]
        coords = grid.flip(-1).movedim(-1, 1)  # channel i along spatial dim i
        return coords - identity_grid(spatial, theta.device)


def _pixel_to_normalised(spatial_shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(D+1, D+1) homogeneous map from pixel (x, y[, z]) coordinates (0 .. n-1, pixel centres on integers) to
    normalised ones (align_corners=True); coordinates are in grid_sample's order (x = last spatial axis)."""
    sizes = list(reversed([int(n) for n in spatial_shape]))
    dims = len(sizes)
    matrix = torch.eye(dims + 1, device=device, dtype=dtype)
    for i, n in enumerate(sizes):
        matrix[i, i] = 2.0 / max(n - 1, 1)
        matrix[i, dims] = -1.0
    return matrix


def theta_to_pixel_matrix(theta: torch.Tensor, fixed_shape: Sequence[int],
                          moving_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """theta (B, D, D+1) -> (B, D+1, D+1) homogeneous matrix from fixed-image pixel (x, y[, z]) coordinates to
    moving-image pixel coordinates (``moving_shape`` defaults to ``fixed_shape``)."""
    moving_shape = fixed_shape if moving_shape is None else moving_shape
    dims = theta.shape[1]
    to_norm_fixed = _pixel_to_normalised(fixed_shape, theta.device, theta.dtype)
    to_norm_moving = _pixel_to_normalised(moving_shape, theta.device, theta.dtype)
    bottom = torch.zeros(theta.shape[0], 1, dims + 1, device=theta.device, dtype=theta.dtype)
    bottom[:, 0, dims] = 1.0
    square = torch.cat([theta, bottom], dim=1)
    return torch.linalg.solve(to_norm_moving, square @ to_norm_fixed)


def pixel_matrix_to_theta(matrix: torch.Tensor, fixed_shape: Sequence[int],
                          moving_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Inverse of :func:`theta_to_pixel_matrix`: (B, D+1, D+1) or (B, D, D+1) pixel matrix -> theta (B, D, D+1)."""
    moving_shape = fixed_shape if moving_shape is None else moving_shape
    dims = matrix.shape[-1] - 1
    if matrix.shape[-2] == dims:
        bottom = torch.zeros(matrix.shape[0], 1, dims + 1, device=matrix.device, dtype=matrix.dtype)
        bottom[:, 0, dims] = 1.0
        matrix = torch.cat([matrix, bottom], dim=1)
    to_norm_fixed = _pixel_to_normalised(fixed_shape, matrix.device, matrix.dtype)
    to_norm_moving = _pixel_to_normalised(moving_shape, matrix.device, matrix.dtype)
    theta = to_norm_moving @ matrix @ torch.linalg.inv(to_norm_fixed)
    return theta[:, :dims]


def transform_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (B, D+1, D+1) or (B, D, D+1) homogeneous matrices to points (B, N, D)."""
    dims = points.shape[-1]
    return points @ matrix[:, :dims, :dims].transpose(1, 2) + matrix[:, None, :dims, dims]
