"""Warp, regulariser, Jacobian and Dice against analytic values and reference libraries."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice

from lightning_modules.blocks.warp import identity_grid, normalised_to_voxels, warp
from lightning_modules.losses.registration import diffusion_regulariser, one_hot_labels, segmentation_dice_loss
from lightning_modules.metrics.registration import (dice_per_pair, folding_percent, jacobian_determinant,
                                                    std_log_jacobian)


def _shift_field(spatial, voxels, dim):
    """Constant displacement of ``voxels`` along spatial ``dim``, in normalised units."""
    field = torch.zeros(1, len(spatial), *spatial)
    field[:, dim] = voxels * 2.0 / (spatial[dim] - 1)
    return field


@pytest.mark.parametrize("spatial", [(20, 24), (10, 12, 14)])
def test_warp_identity_is_exact(spatial):
    image = torch.rand(2, 1, *spatial)
    assert torch.allclose(warp(image, torch.zeros(2, len(spatial), *spatial)), image, atol=1e-5)


@pytest.mark.parametrize("spatial", [(20, 24), (10, 12, 14)])
def test_warp_known_integer_shift(spatial):
    image = torch.rand(1, 1, *spatial)
    for dim in range(len(spatial)):
        warped = warp(image, _shift_field(spatial, 3, dim))
        # output at x samples the input at x + 3 along dim; the last 3 voxels fall outside (zeros)
        n = spatial[dim]
        expected = image.narrow(2 + dim, 3, n - 3)
        assert torch.allclose(warped.narrow(2 + dim, 0, n - 3), expected, atol=1e-5)
        assert warped.narrow(2 + dim, n - 3, 3).abs().max() < 1e-6


def test_warp_half_voxel_shift_interpolates_linearly():
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 1, 8, 16).contiguous()
    warped = warp(ramp, _shift_field((8, 16), 0.5, 1))
    assert torch.allclose(warped[..., :-1], ramp[..., :-1] + 0.5, atol=1e-5)


def test_warp_nearest_keeps_labels():
    labels = torch.randint(0, 5, (1, 1, 12, 12)).float()
    warped = warp(labels, _shift_field((12, 12), 0.3, 0) + _shift_field((12, 12), -0.7, 1), mode="nearest")
    assert set(warped.unique().tolist()) <= set(range(5))


def test_identity_grid_matches_grid_sample_convention():
    grid = identity_grid((5, 7))
    assert grid.shape == (1, 2, 5, 7)
    assert grid[0, 0, 0, 0] == -1 and grid[0, 0, -1, 0] == 1 and grid[0, 1, 0, -1] == 1
    assert torch.allclose(normalised_to_voxels(grid)[0, 1, 0], torch.linspace(-3, 3, 7), atol=1e-6)


def test_diffusion_regulariser_on_linear_field():
    h, w, a = 16, 20, 0.3
    field = torch.zeros(1, 2, h, w)
    field[:, 0] = a * torch.linspace(-1, 1, h).view(h, 1)  # u_H = a * y
    # the only non-zero difference is along H: a * 2/(h-1) per step, times h/2, in one of 2 channels
    expected = ((a * h / (h - 1)) ** 2 / 2 + 0.0) / 2
    assert diffusion_regulariser(field).item() == pytest.approx(expected, rel=1e-5)
    assert diffusion_regulariser(torch.ones(1, 3, 6, 7, 8)).item() == 0.0


def _linear_field(matrix, spatial):
    """u(x) = A x in voxel units, returned in normalised units."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial], indexing="ij"))
    voxels = torch.einsum("ij,j...->i...", torch.as_tensor(matrix, dtype=torch.float64), coords)
    scale = torch.tensor([(n - 1) / 2 for n in spatial], dtype=torch.float64).view(-1, *[1] * len(spatial))
    return (voxels / scale).unsqueeze(0).float()


@pytest.mark.parametrize("matrix", [[[0.2, 0.1], [-0.3, 0.05]], [[0.1, 0.0, 0.2], [0.0, -0.2, 0.1], [0.05, 0.1, 0.3]]])
def test_jacobian_of_linear_field_is_det_identity_plus_matrix(matrix):
    spatial = (12, 14) if len(matrix) == 2 else (8, 9, 10)
    det = jacobian_determinant(_linear_field(matrix, spatial))
    expected = np.linalg.det(np.eye(len(matrix)) + np.array(matrix))
    assert torch.allclose(det, torch.full_like(det, expected), atol=1e-4)
    assert folding_percent(_linear_field(matrix, spatial)).item() == 0.0
    assert std_log_jacobian(_linear_field(matrix, spatial)).item() < 1e-4


def test_jacobian_matches_numpy_gradient_on_random_field():
    field = torch.randn(1, 2, 10, 11) * 0.05
    u = normalised_to_voxels(field)[0].numpy()
    gy = np.gradient(u[0]); gx = np.gradient(u[1])
    expected = (1 + gy[0]) * (1 + gx[1]) - gy[1] * gx[0]
    assert np.allclose(jacobian_determinant(field)[0].numpy(), expected, atol=1e-5)


def test_folding_percent_counts_folded_voxels():
    folded = _linear_field([[-1.5, 0.0], [0.0, 0.0]], (10, 10))  # det(I + A) = -0.5 everywhere
    assert folding_percent(folded).item() == 100.0
    half = torch.cat([_linear_field([[-1.5, 0], [0, 0]], (10, 10))[..., :5],
                      torch.zeros(1, 2, 10, 5)], dim=-1)
    assert 30.0 < folding_percent(half).item() < 70.0


def test_dice_matches_monai_when_all_labels_present():
    torch.manual_seed(0)
    fixed = torch.randint(0, 4, (3, 1, 16, 16))
    warped = torch.where(torch.rand(3, 1, 16, 16) < 0.7, fixed, torch.randint(0, 4, (3, 1, 16, 16)))
    reference = compute_dice(one_hot_labels(warped, 4), one_hot_labels(fixed, 4), include_background=False)
    assert torch.allclose(dice_per_pair(warped, fixed), reference.mean(1), atol=1e-6)


def test_dice_uses_labels_present_in_both_only():
    fixed = torch.tensor([[[[1, 1, 2, 2], [0, 0, 3, 3]]]])
    warped = torch.tensor([[[[1, 1, 1, 2], [0, 0, 0, 0]]]])  # label 3 missing from warped: skipped
    # label 1: 2*2/(3+2) = 0.8 ; label 2: 2*1/(1+2) = 2/3
    assert dice_per_pair(warped, fixed).item() == pytest.approx((0.8 + 2 / 3) / 2)
    assert dice_per_pair(fixed, fixed).item() == 1.0
    assert torch.isnan(dice_per_pair(torch.zeros_like(fixed), fixed)).all()


def test_segmentation_dice_loss_formula():
    torch.manual_seed(1)
    prediction = torch.softmax(torch.randn(1, 3, 6, 6), 1)
    target = one_hot_labels(torch.randint(0, 3, (1, 1, 6, 6)), 3)
    per_class = 2 * (prediction * target).sum((0, 2, 3)) / (prediction.pow(2).sum((0, 2, 3))
                                                            + target.pow(2).sum((0, 2, 3)) + 1e-5)
    assert segmentation_dice_loss(prediction, target).item() == pytest.approx(1 - per_class.mean().item(), rel=1e-5)
