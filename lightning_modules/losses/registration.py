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
