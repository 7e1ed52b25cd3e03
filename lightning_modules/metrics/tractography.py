"""Bundle metrics of tractography (Tract-RLFormer's code, after Track-to-Learn): streamlines -> a binary voxel mask
(``dipy.tracking.utils.density_map`` > 0), compared with the reference bundle's mask:

- Dice = 2 TP / (2 TP + FP + FN)
- overlap OvL = TP / (TP + FN)  (the reference voxels reached: recall)
- overreach OvR = FP / (TP + FN)  (voxels outside the bundle, relative to the bundle's size; can exceed 1)

and the streamlines' mean angular error for the offline policy (degrees)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def streamlines_to_mask(streamlines: Sequence[np.ndarray], shape: Sequence[int],
                        affine: np.ndarray | None = None) -> np.ndarray:
    """Voxels that any streamline point falls in (dipy's density map > 0). Streamlines in the space ``affine``
    maps voxels to (identity: voxel coordinates, voxel centres at integers)."""
    from dipy.tracking.utils import density_map

    affine = np.eye(4) if affine is None else affine
    if not len(streamlines):
        return np.zeros(tuple(shape), dtype=bool)
    inside = []
    inv = np.linalg.inv(affine)
    for line in streamlines:  # density_map rejects points outside the volume: drop them (cannot happen in a mask)
        vox = np.round(line @ inv[:3, :3].T + inv[:3, 3])
        ok = ((vox >= 0) & (vox < np.asarray(shape))).all(1)
        if ok.any():
            inside.append(np.asarray(line[ok], dtype=np.float64))
    if not inside:
        return np.zeros(tuple(shape), dtype=bool)
    return density_map(inside, affine, tuple(int(s) for s in shape)) > 0


def bundle_counts(prediction, reference) -> tuple[float, float, float]:
    """TP, FP, FN voxel counts of two binary masks (numpy or torch)."""
    prediction = torch.as_tensor(np.asarray(prediction)).bool()
    reference = torch.as_tensor(np.asarray(reference)).bool()
    tp = (prediction & reference).sum().item()
    fp = (prediction & ~reference).sum().item()
    fn = (~prediction & reference).sum().item()
    return float(tp), float(fp), float(fn)


def bundle_scores(prediction, reference) -> dict[str, float]:
    """Dice, overlap and overreach of a predicted bundle mask vs the reference mask (see the module docstring);
    NaN where the reference is empty."""
    tp, fp, fn = bundle_counts(prediction, reference)
    size = tp + fn
    return {"dice": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan"),
            "overlap": tp / size if size else float("nan"),
            "overreach": fp / size if size else float("nan")}


def angular_error_degrees(predicted: torch.Tensor, target: torch.Tensor,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean angle (degrees) between predicted and target direction vectors (..., 3), over ``mask``'s True entries."""
    cos = (torch.nn.functional.normalize(predicted, dim=-1) * torch.nn.functional.normalize(target, dim=-1)).sum(-1)
    angle = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    if mask is not None:
        angle = angle[mask.bool()]
    return angle.mean() if angle.numel() else angle.new_tensor(float("nan"))
