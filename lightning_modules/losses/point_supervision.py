"""Losses for weak (point) supervision of segmentation: partial cross-entropy over annotated pixels and the boundary
loss on signed distance maps (Kervadec et al. 2019; intensity-aware maps: PointBL, ICPR 2024).

Point labels are (B, 1, *S) int64 with the class on annotated pixels and ``ignore_index`` (-1) elsewhere
(``datamodules/point_labels.py``); distance maps (B, K, *S) float, negative inside the annotation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PartialCrossEntropy(nn.Module):
    """-sum over annotated pixels of log softmax[class] / number of annotated pixels, counting only the pixels of
    ``classes`` (default: every class but 0, as the paper's ``CrossEntropy(idc=[1, 2, 3])``); 0 without any."""

    def __init__(self, classes: Optional[Sequence[int]] = None, ignore_index: int = -1) -> None:
        super().__init__()
        self.classes = None if classes is None else [int(k) for k in classes]
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        labels = points[:, 0].long()
        annotated = labels != self.ignore_index
        if self.classes is None:
            annotated &= labels != 0
        else:
            annotated &= torch.isin(labels, torch.tensor(self.classes, device=labels.device))
        log_probabilities = F.log_softmax(logits.float(), dim=1)
        picked = log_probabilities.gather(1, labels.clamp(min=0)[:, None])[:, 0]
        count = annotated.sum()
        return -(picked * annotated).sum() / count.clamp(min=1)


class BoundaryLoss(nn.Module):
    """Mean over (batch, ``classes``, pixels) of softmax probability x signed distance (the official
    ``SurfaceLoss``: a mean, maps not normalised); default classes: all but the background."""

    def __init__(self, classes: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.classes = None if classes is None else [int(k) for k in classes]

    def forward(self, logits: torch.Tensor, distance_maps: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits.float(), dim=1)
        classes = self.classes if self.classes is not None else list(range(1, logits.shape[1]))
        return (probabilities[:, classes] * distance_maps[:, classes].float()).mean()


class PointBoundaryLoss(nn.Module):
    """``partial CE + alpha * boundary loss`` (PointBL Eq. 5); ``alpha = 0``: the partial CE alone (lower bound).

    ``terms(logits, points, distance_maps)`` returns ``{"loss", "pce", "boundary"}``.
    """

    def __init__(self, alpha: float = 1.0, classes: Optional[Sequence[int]] = None, ignore_index: int = -1) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.partial_ce = PartialCrossEntropy(classes, ignore_index)
        self.boundary = BoundaryLoss(classes)

    def terms(self, logits: torch.Tensor, points: torch.Tensor,
              distance_maps: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        pce = self.partial_ce(logits, points)
        if self.alpha == 0.0:
            return {"loss": pce, "pce": pce}
        if distance_maps is None:
            raise ValueError("the boundary loss (alpha > 0) needs the batch's distance maps")
        boundary = self.boundary(logits, distance_maps)
        return {"loss": pce + self.alpha * boundary, "pce": pce, "boundary": boundary}

    def forward(self, logits: torch.Tensor, points: torch.Tensor,
                distance_maps: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.terms(logits, points, distance_maps)["loss"]


class DenseCrossEntropy(nn.Module):
    """Plain cross-entropy on a dense (B, 1, *S) label map: the full-supervision upper bound, and the validation
    loss of weakly supervised runs (validation sets are fully annotated)."""

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), mask[:, 0].long())
