"""Out-of-distribution detection: scores from a classifier's logits (higher = more out-of-distribution) and
the ID-vs-OOD detection metrics (AUROC, AUPR-In/Out, FPR at 95 % TPR), as in Hendrycks & Gimpel 2017 and
Liu et al. 2020 (energy). torchmetrics' functional metrics compute them; ``SourcedScores`` gathers the
scores of every test loader across processes.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc
from torchmetrics.utilities import dim_zero_cat


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Negated maximum softmax probability (Hendrycks & Gimpel)."""
    return -logits.float().softmax(dim=-1).amax(dim=-1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy E(x) = -T logsumexp(f(x) / T) (Liu et al. 2020): low on in-distribution inputs."""
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Negated maximum logit (Hendrycks et al. 2022; the energy score's limit as T -> 0)."""
    return -logits.float().amax(dim=-1)


def _unit_interval(scores: torch.Tensor) -> torch.Tensor:
    # torchmetrics' binary metrics pass values outside [0, 1] through a sigmoid, which in float32 ties large
    # scores (sigmoid(20) == 1): an increasing affine map into [0, 1] in float64 keeps every ordering.
    scores = scores.double()
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low).clamp_min(torch.finfo(torch.float64).tiny)


def fpr_at_tpr(id_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float = 0.95) -> torch.Tensor:
    """The fraction of OOD samples accepted as in-distribution at the threshold that accepts ``tpr`` of the
    in-distribution samples (ID the positive class; read off the ROC curve of the negated OOD score)."""
    is_id = torch.cat([torch.ones_like(id_scores), torch.zeros_like(ood_scores)]).long()
    fpr, tpr_curve, _ = binary_roc(_unit_interval(-torch.cat([id_scores, ood_scores])), is_id)
    # Both rise along the curve, so the first point at the TPR is the lowest FPR (1e-6: float32 19/20 < 0.95).
    return fpr[tpr_curve >= tpr - 1e-6][0]


def ood_detection_metrics(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """ID-vs-OOD detection by an OOD score (higher = more OOD), given the scores of both sets.

    ``auroc``: OOD the positive class (equal to ID positive with the negated score); ``aupr_in``: average
    precision with ID positive (score negated); ``aupr_out``: with OOD positive; ``fpr95``: ``fpr_at_tpr`` at 95 %.
    """
    scores = torch.cat([id_scores, ood_scores]).float()
    is_ood = torch.cat([torch.zeros_like(id_scores), torch.ones_like(ood_scores)]).long()
    return {"auroc": binary_auroc(_unit_interval(scores), is_ood),
            "aupr_in": binary_average_precision(_unit_interval(-scores), 1 - is_ood),
            "aupr_out": binary_average_precision(_unit_interval(scores), is_ood),
            "fpr95": fpr_at_tpr(id_scores.float(), ood_scores.float(), 0.95)}


class SourcedScores(Metric):
    """Per-sample scores with the index of the loader (source) they came from, concatenated across processes.

    ``update(scores (B,), source: int)``; ``compute()`` returns ``(scores, sources)`` of every sample seen.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("sources", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, source: int) -> None:
        scores = scores.detach().float().flatten()
        self.scores.append(scores)
        self.sources.append(torch.full_like(scores, source, dtype=torch.long))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.scores), dim_zero_cat(self.sources)
