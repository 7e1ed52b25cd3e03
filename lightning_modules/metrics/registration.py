"""Evaluation of deformable registration: label overlap and deformation regularity."""
from __future__ import annotations

import torch

from lightning_modules.blocks.warp import normalised_to_voxels


def dice_per_pair(warped_seg: torch.Tensor, fixed_seg: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Mean Dice per pair over the foreground labels present in both label maps (FNOReg's rule).

    Inputs are (B, 1, *spatial) integer maps; label 0 is background and excluded. Computed with one
    batched bincount, so there is no Python loop over labels or pairs.
    """
    warped = warped_seg.long().flatten(1)
    fixed = fixed_seg.long().flatten(1)
    batch = fixed.shape[0]
    k = num_classes or int(torch.maximum(warped.max(), fixed.max()).item()) + 1
    offset = (torch.arange(batch, device=fixed.device) * k).unsqueeze(1)
    area_w = torch.bincount((warped + offset).flatten(), minlength=batch * k).view(batch, k)
    area_f = torch.bincount((fixed + offset).flatten(), minlength=batch * k).view(batch, k)
    same = warped == fixed
    inter = torch.bincount((fixed + offset)[same], minlength=batch * k).view(batch, k)
    present = (area_w > 0) & (area_f > 0)
    present[:, 0] = False
    dice = 2.0 * inter / (area_w + area_f).clamp_min(1)
    n_labels = present.sum(1)
    mean = (dice * present).sum(1) / n_labels.clamp_min(1)
    return torch.where(n_labels > 0, mean, torch.full_like(mean, float("nan")))


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """det(d(x + u)/dx) of a normalised displacement (B, D, *spatial) -> (B, *spatial).

    The field is converted to voxel units first and differentiated with central differences
    (torch.gradient, which matches np.gradient used by the reference evaluation code).
    """
    u = normalised_to_voxels(displacement.float())
    dims = u.shape[1]
    if dims not in (2, 3):
        raise ValueError(f"expected a 2D or 3D field, got {dims} channels")
    # grads[i][j] = d u_i / d x_j
    grads = [torch.gradient(u[:, i], dim=tuple(range(1, dims + 1))) for i in range(dims)]
    j = [[grads[i][k] + (1.0 if i == k else 0.0) for k in range(dims)] for i in range(dims)]
    if dims == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def folding_percent(displacement: torch.Tensor) -> torch.Tensor:
    """Per pair: 100 x fraction of voxels with a non-positive Jacobian determinant."""
    det = jacobian_determinant(displacement)
    return 100.0 * (det <= 0).flatten(1).float().mean(1)


def std_log_jacobian(displacement: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Per pair: standard deviation of log|J| (sdlogJ, the Learn2Reg regularity measure)."""
    det = jacobian_determinant(displacement).clamp_min(eps)
    return det.log().flatten(1).std(1)


# -- landmark errors: the ANHIR challenge's measures (Borovec et al. 2020, BIRL's evaluate.py) ----------------


def nan_median(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Median along ``dim`` ignoring NaN, averaging the two middle values of an even count (numpy's median,
    which BIRL uses; torch.nanmedian takes the lower one). All-NaN slices give NaN."""
    values = values.movedim(dim, -1)
    count = (~torch.isnan(values)).sum(-1)
    ordered = torch.sort(torch.nan_to_num(values, nan=float("inf")), dim=-1).values
    low = ((count - 1).clamp_min(0) // 2).unsqueeze(-1)
    high = (count // 2).clamp_max(values.shape[-1] - 1).unsqueeze(-1)
    median = 0.5 * (ordered.gather(-1, low) + ordered.gather(-1, high)).squeeze(-1)
    return torch.where(count > 0, median, torch.full_like(median, float("nan")))


def relative_tre(points: torch.Tensor, reference: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """rTRE per landmark: ||points - reference||_2 / diagonal, (B, K, 2) x 2 and (B,) -> (B, K); NaN where a
    landmark is missing (NaN padding) in either set."""
    return torch.linalg.vector_norm(points - reference, dim=-1) / diagonal.to(points.dtype).unsqueeze(-1)


def anhir_pair_statistics(rtre: torch.Tensor, rire: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per pair (rows of (B, K) rTRE after and before registration, NaN = no landmark): ``mrtre`` (median over
    landmarks), ``artre`` (mean), ``robustness`` (fraction of landmarks with rTRE < rIRE, BIRL's
    compute_tre_robustness), and the same medians/means of the initial error (``mrire``, ``arire``)."""
    valid = ~(torch.isnan(rtre) | torch.isnan(rire))
    count = valid.sum(-1)
    nan = torch.full(count.shape, float("nan"), dtype=rtre.dtype, device=rtre.device)
    after = torch.where(valid, rtre, nan.new_tensor(float("nan")))
    before = torch.where(valid, rire, nan.new_tensor(float("nan")))
    improved = ((after < before) & valid).sum(-1).to(rtre.dtype)
    return {
        "mrtre": nan_median(after),
        "artre": torch.where(count > 0, torch.nansum(after, -1) / count.clamp_min(1), nan),
        "robustness": torch.where(count > 0, improved / count.clamp_min(1), nan),
        "mrire": nan_median(before),
        "arire": torch.where(count > 0, torch.nansum(before, -1) / count.clamp_min(1), nan),
    }


def anhir_summary(pairs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The challenge's aggregates over pairs from :func:`anhir_pair_statistics`: MMrTRE / AMrTRE (median / mean of
    the pairs' median rTRE), MArTRE / AArTRE (median / mean of their mean rTRE), MR / AR (median / mean
    robustness), and the initial errors' ``*_before`` (the papers' "Initial" row). Pairs with NaN are skipped."""
    out = {}
    for name, key in (("mrtre", "mrtre"), ("artre", "artre"), ("r", "robustness")):
        out[f"m{name}"] = nan_median(pairs[key])
        out[f"a{name}"] = torch.nanmean(pairs[key])
    for name, key in (("mrtre", "mrire"), ("artre", "arire")):
        out[f"m{name}_before"] = nan_median(pairs[key])
        out[f"a{name}_before"] = torch.nanmean(pairs[key])
    return out
