"""rPPG losses: the negative Pearson correlation of pulse waveforms (PhysNet's loss, HR-TRACK's rPPG-TCN loss)
and the Generalized Cross Entropy of Zhang & Sabuncu (2018), the loss HR-TRACK cites for MR-TCN."""
from __future__ import annotations

import torch


def neg_pearson_loss(predicted: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over clips of ``1 - r``, r the Pearson correlation of each clip's predicted and true pulse along the
    last axis ((..., f)). 0 for a perfect (affine) match, 1 for an uncorrelated, 2 for an inverted pulse."""
    predicted, target = predicted.float(), target.float()
    p = predicted - predicted.mean(-1, keepdim=True)
    t = target - target.mean(-1, keepdim=True)
    r = (p * t).sum(-1) / (p.norm(dim=-1) * t.norm(dim=-1) + eps)
    return (1.0 - r).mean()


def generalized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """GCE ``(1 - p_y^q) / q`` averaged over samples (q -> 0: cross entropy, q = 1: MAE on probabilities).
    ``logits`` (N, K), ``labels`` (N,) int64."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    p_y = torch.softmax(logits.float(), -1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return ((1.0 - p_y.clamp_min(1e-12) ** q) / q).mean()
