"""Classification metrics: torchmetrics for the scores, plus the class prior for a trivial baseline."""
from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision


def classification_metrics(num_classes: int, multilabel: bool) -> MetricCollection:
    """Multi-label: ``mAP`` = macro mean of per-class average precision (AudioSet); multi-class: ``acc``
    = top-1 accuracy over samples (Speech Commands, ESC-50). Both gather every sample across processes."""
    if multilabel:
        return MetricCollection({"mAP": MultilabelAveragePrecision(num_labels=num_classes, average="macro")})
    return MetricCollection({"acc": MulticlassAccuracy(num_classes=num_classes, average="micro")})


class ClassPrior(Metric):
    """Class frequencies of the targets seen, and the score of a trivial predictor that knows only them.

    Multi-class: always predicting the most frequent class scores ``max(prior)`` accuracy. Multi-label: a
    constant score per class ranks all clips equally, so its AP is the class's positive rate; the macro
    mAP of that predictor is the mean positive rate over the classes that occur.
    """

    full_state_update = False

    def __init__(self, num_classes: int, multilabel: bool):
        super().__init__()
        self.num_classes, self.multilabel = num_classes, multilabel
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target: torch.Tensor) -> None:
        hot = target.float() if self.multilabel else torch.nn.functional.one_hot(target.long(), self.num_classes).float()
        self.counts += hot.sum(dim=0).double()
        self.total += hot.shape[0]

    def compute(self) -> torch.Tensor:
        prior = self.counts / self.total.clamp_min(1)
        return prior[prior > 0].mean() if self.multilabel else prior.max()
