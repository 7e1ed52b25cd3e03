"""Losses of unsupervised deformable registration (VoxelMorph family; FNOReg Sec. 2.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss


def diffusion_regulariser(displacement: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser ||grad phi||^2 by forward differences, as the FNOReg code computes it.

    The field is in normalised units; each difference along spatial dim d is scaled by size_d / 2 to
    bring it to voxel units, so the penalty means the same at any training resolution. The result is
    the mean over dims of the mean squared difference.
    """
    spatial = displacement.shape[2:]
    terms = []
    for d, size in enumerate(spatial):
        diff = torch.diff(displacement, dim=2 + d) * (size / 2.0)
        terms.append(diff.pow(2).mean())
    return torch.stack(terms).mean()


def one_hot_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) integer labels -> (B, K, *spatial) float one-hot."""
    if labels.shape[1] != 1:
        raise ValueError(f"expected label maps of shape (B, 1, ...), got {tuple(labels.shape)}")
    hot = F.one_hot(labels[:, 0].long(), num_classes)
    return hot.movedim(-1, 1).float()


# 1 - mean_k 2 sum(p t) / (sum p^2 + sum t^2 + 1e-5) over the batch: VoxelMorph's soft Dice as the
# FNOReg 3D code uses it; MONAI's DiceLoss with squared denominators is exactly that.
segmentation_dice_loss = DiceLoss(include_background=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-5,
                                  batch=True)


# -- normalised cross-correlation similarity terms (UnFeMa, ICPR 2024) ---------------------------------------


class PatchNCCLoss(torch.nn.Module):
    """``-mean_p NCC(a_p, b_p)`` over non-overlapping ``patch_size`` x ``patch_size`` patches (UnFeMa Eq. 14),
    per image and channel, averaged over the batch. NCC = cov / sqrt(var_a var_b + eps) (a flat patch scores 0);
    rows and columns beyond the last whole patch are left out."""

    def __init__(self, patch_size: int = 32, eps: float = 1e-5):
        super().__init__()
        self.patch_size = patch_size
        self.eps = eps

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        pool = lambda x: F.avg_pool2d(x, self.patch_size)  # noqa: E731  (mean per patch)
        a, b = warped.float(), fixed.float()
        mean_a, mean_b = pool(a), pool(b)
        cov = pool(a * b) - mean_a * mean_b
        var_a = (pool(a * a) - mean_a ** 2).clamp_min(0)
        var_b = (pool(b * b) - mean_b ** 2).clamp_min(0)
        return -(cov / torch.sqrt(var_a * var_b + self.eps)).mean()


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a ``window`` x ``window`` box at every position with zero padding ``window // 2`` (the output of
    conv2d(x, ones(window, window), padding=window // 2)), by an integral image in float64."""
    pad = window // 2
    padded = F.pad(x.double(), (pad, pad, pad, pad))
    integral = F.pad(padded.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    return (integral[..., window:, window:] - integral[..., :-window, window:]
            - integral[..., window:, :-window] + integral[..., :-window, :-window])


class LocalNCCLoss(torch.nn.Module):
    """``-mean cross^2 / (var_a var_b + eps)`` over ``window`` x ``window`` boxes at every pixel: VoxelMorph's
    squared local NCC as the UnFeMa code computes it (zero padding ``window // 2``; sums by integral images)."""

    def __init__(self, window: int = 9, eps: float = 1e-5):
        super().__init__()
        self.window = window
        self.eps = eps

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        a, b = warped, fixed
        size = float(self.window ** 2)
        sum_a, sum_b = _box_sum(a, self.window), _box_sum(b, self.window)
        sum_aa, sum_bb, sum_ab = _box_sum(a * a, self.window), _box_sum(b * b, self.window), _box_sum(a * b, self.window)
        mean_a, mean_b = sum_a / size, sum_b / size
        cross = sum_ab - mean_b * sum_a - mean_a * sum_b + mean_a * mean_b * size
        var_a = sum_aa - 2 * mean_a * sum_a + mean_a * mean_a * size
        var_b = sum_bb - 2 * mean_b * sum_b + mean_b * mean_b * size
        return -(cross * cross / (var_a * var_b + self.eps)).mean().to(warped.dtype)


class MultiScaleLocalNCCLoss(torch.nn.Module):
    """The UnFeMa code's ``ncc_local_multi``: :class:`LocalNCCLoss` at ``scales`` resolutions, weighted 1, 1/2,
    1/4, ...; between scales both images are average-pooled (``kernel``, stride 2, padding kernel // 2, padded
    cells not counted)."""

    def __init__(self, window: int = 128, scales: int = 3, kernel: int = 3, eps: float = 1e-5):
        super().__init__()
        self.ncc = LocalNCCLoss(window, eps)
        self.scales = scales
        self.kernel = kernel

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for scale in range(self.scales):
            total = total + self.ncc(warped, fixed) / (2 ** scale)
            if scale + 1 < self.scales:
                warped, fixed = (F.avg_pool2d(x, self.kernel, stride=2, padding=self.kernel // 2,
                                              count_include_pad=False) for x in (warped, fixed))
        return total


def global_ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """NCC of whole images per sample (B, C, *S) x 2 -> (B,): the score that picks the rotation at inference."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1) + eps)


class GlobalNCCLoss(torch.nn.Module):
    """-mean over the batch of the whole-image NCC (:func:`global_ncc`): DeepHistReg's and LARHI's affine loss
    (their code's ``ncc_loss_global``)."""

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return -global_ncc(warped, fixed).mean()
