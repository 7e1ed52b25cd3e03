"""Regression losses with optional per-target-range weights (DCCANet "tuned up the weights" of healthy
and mildly depressed subjects' losses; the paper gives no values, so the weights default to 1)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import torch
import torch.nn.functional as F

LossName = Literal["rmse", "mse", "l1", "huber"]


def range_weights(targets: torch.Tensor, bin_edges: Sequence[float], weights: Sequence[float]) -> torch.Tensor:
    """Weight of each target by the range it falls in: ``weights[i]`` for ``edges[i-1] <= y < edges[i]``.

    ``len(weights) == len(bin_edges) + 1``; e.g. BDI-II ``edges [14, 20]``, ``weights [w_none, w_mild, 1]``.
    """
    if len(weights) != len(bin_edges) + 1:
        raise ValueError(f"{len(bin_edges)} bin edges need {len(bin_edges) + 1} weights, got {len(weights)}")
    edges = torch.as_tensor(list(bin_edges), dtype=targets.dtype, device=targets.device)
    table = torch.as_tensor(list(weights), dtype=targets.dtype, device=targets.device)
    return table[torch.bucketize(targets, edges, right=True)]


def regression_loss(predictions: torch.Tensor, targets: torch.Tensor, loss: LossName = "rmse",
                    weights: Optional[torch.Tensor] = None, huber_delta: float = 1.0) -> torch.Tensor:
    """Batch loss; with ``weights`` the per-sample terms are averaged with those weights (sum w = 1 scale).

    "rmse" is sqrt(weighted mean of squared errors), DCCANet's and CSENet's training loss.
    """
    predictions, targets = predictions.float(), targets.float()
    if loss in ("rmse", "mse"):
        per_sample = (predictions - targets) ** 2
    elif loss == "l1":
        per_sample = (predictions - targets).abs()
    elif loss == "huber":
        per_sample = F.huber_loss(predictions, targets, reduction="none", delta=huber_delta)
    else:
        raise ValueError(f"loss must be 'rmse', 'mse', 'l1' or 'huber', got {loss!r}")
    mean = per_sample.mean() if weights is None else (weights * per_sample).sum() / weights.sum()
    return torch.sqrt(mean + 1e-12) if loss == "rmse" else mean  # eps: finite gradient at a perfect fit
