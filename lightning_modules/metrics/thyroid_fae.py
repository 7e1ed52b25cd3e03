"""ThyroidFAE's AUROC (Tables 2-4): as the official code computes it, from the argmax labels, and from the
sigmoid output of the positive class. (Per-class precision, recall and F1 come from ClassificationTask's
``per_class_metrics``.)"""
from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC


class ThyroidAUROC(nn.Module):
    """``update(scores (B, K), target (B,))`` with the sigmoid outputs; ``compute()`` ->

    - ``auroc_labels``: ``roc_auc_score(target == positive, argmax == positive)``: one threshold on hard labels,
      i.e. (TPR + TNR) / 2 (the code; predicting one class for every sample scores exactly 0.5);
    - ``auroc_probs``: AUROC of ``scores[:, positive]``.

    torchmetrics states, so under DDP every sample counts once.
    """

    def __init__(self, positive_class: int = 1):
        super().__init__()
        self.positive_class = positive_class
        self.auroc_labels = BinaryAUROC()
        self.auroc_probs = BinaryAUROC()

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        scores, target = scores.detach().float(), target.long()
        positive = (target == self.positive_class).long()
        self.auroc_labels.update((scores.argmax(dim=1) == self.positive_class).float(), positive)
        self.auroc_probs.update(scores[:, self.positive_class], positive)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"auroc_labels": self.auroc_labels.compute(), "auroc_probs": self.auroc_probs.compute()}

    def reset(self) -> None:
        self.auroc_labels.reset()
        self.auroc_probs.reset()
