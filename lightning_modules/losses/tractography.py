"""Losses of tractography policies.

``multi_step_angular_loss``: Tract-RLFormer's Eq. 2, L = sum_t sum_{i=-2..2} arccos(a_{t+i} . a^_{t+i}), the angle
between the target and predicted unit actions summed over a 5-step neighbourhood of every centre step t of the
K-step window (0-indexed centres 2 .. K-3, so every t + i falls in the window); padded steps count 0. The official
code normalises both vectors, clamps the dot product to [-1 + 1e-4, 1 - 1e-4] (arccos' gradient is infinite at
+-1) and sums (``reduction="sum"``); ``"mean"`` divides by the number of summed terms."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def step_angles(predicted: torch.Tensor, target: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Angle in radians between predicted and target actions (..., 3) -> (...)."""
    cos = (F.normalize(predicted, dim=-1) * F.normalize(target, dim=-1)).sum(-1)
    return torch.arccos(cos.clamp(-1 + eps, 1 - eps))


def neighbourhood_weights(length: int, radius: int = 2, device=None) -> torch.Tensor:
    """How often each step of a ``length``-step window enters Eq. 2's double sum (centres radius .. length-1-radius,
    each covering +-radius steps): (length,) float."""
    weights = torch.zeros(length, device=device)
    for centre in range(radius, length - radius):
        weights[centre - radius:centre + radius + 1] += 1
    return weights


def multi_step_angular_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                            radius: int = 2, reduction: Literal["sum", "mean"] = "sum",
                            eps: float = 1e-4) -> torch.Tensor:
    """Eq. 2 over windows: predicted, target (B, K, 3), mask (B, K) True on real (non-padded) steps."""
    angles = step_angles(predicted, target, eps)
    weights = neighbourhood_weights(angles.shape[-1], radius, angles.device).expand_as(angles)
    if mask is not None:
        weights = weights * mask.to(angles.dtype)
    total = (angles * weights).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / weights.sum().clamp_min(1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
