"""Classification metrics: torchmetrics for the scores, the class prior for a trivial baseline, window predictions
pooled per group (subject, recording), and ``ClassificationEvaluation``, what one evaluation loader accumulates.

Every state is a torchmetrics state, so under DDP each sample counts once: sums are reduced, and the
per-sample states (AUROC/AP scores, the windows of the groups) are gathered before they are computed.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (BinaryAccuracy, BinaryAUROC, BinaryAveragePrecision, BinaryF1Score,
                                         BinaryPrecision, BinaryRecall, BinarySpecificity, MulticlassAccuracy, MulticlassAUROC,
                                         MulticlassCohenKappa, MulticlassConfusionMatrix, MulticlassF1Score,
                                         MulticlassPrecision, MulticlassRecall, MulticlassROC, MultilabelAUROC,
                                         MultilabelAveragePrecision, MultilabelF1Score)
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.metrics.regression import mean_per_group

GroupPooling = Literal["mean_prob", "mean_logit", "majority"]


def classification_metrics(num_classes: int, multilabel: bool, **kwargs) -> MetricCollection:
    """The built-in metrics, fed class scores (probabilities) and targets.

    Multi-class: ``acc`` = top-1 accuracy over samples (Speech Commands, ESC-50), ``balanced_acc`` = macro
    recall (scikit-learn's balanced accuracy), ``macro_f1``, ``kappa`` (Cohen's, unweighted) and ``auroc`` =
    macro one-vs-rest AUROC of the probabilities. Multi-label: ``mAP`` = macro mean of per-class average
    precision (AudioSet), ``auroc`` (macro) and ``macro_f1`` at threshold 0.5. ``kwargs`` reach every metric
    (``sync_on_compute=False`` for values that are already gathered).
    """
    if multilabel:
        return MetricCollection({
            "mAP": MultilabelAveragePrecision(num_labels=num_classes, average="macro", **kwargs),
            "auroc": MultilabelAUROC(num_labels=num_classes, average="macro", **kwargs),
            "macro_f1": MultilabelF1Score(num_labels=num_classes, average="macro", **kwargs)})
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes=num_classes, average="micro", **kwargs),
        "balanced_acc": MulticlassRecall(num_classes=num_classes, average="macro", **kwargs),
        "macro_f1": MulticlassF1Score(num_classes=num_classes, average="macro", **kwargs),
        "kappa": MulticlassCohenKappa(num_classes=num_classes, **kwargs),
        "auroc": MulticlassAUROC(num_classes=num_classes, average="macro", **kwargs)})


def class_scores(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Logits -> class probabilities: sigmoid per label (multi-label) or softmax over classes."""
    return torch.sigmoid(logits.float()) if multilabel else logits.float().softmax(dim=-1)


def per_class_metrics(num_classes: int, **kwargs) -> MetricCollection:
    """Precision, recall (= class-wise accuracy) and F1 of each class in turn as the positive class."""
    return MetricCollection({name: metric(num_classes=num_classes, average=None, **kwargs) for name, metric in
                             (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                              ("f1", MulticlassF1Score))})


def positive_class_metrics(threshold: float = 0.5, **kwargs) -> MetricCollection:
    """One class against the rest (melanoma vs rest, malignant vs benign + normal), fed P(positive): AUROC, the
    area under the precision-recall curve (``aupr``, average precision) and, at ``threshold``, precision, recall
    (sensitivity), specificity, F1 and accuracy."""
    return MetricCollection({"auroc": BinaryAUROC(**kwargs), "aupr": BinaryAveragePrecision(**kwargs),
                             **{name: metric(threshold=threshold, **kwargs) for name, metric in
                                (("precision", BinaryPrecision), ("recall", BinaryRecall),
                                 ("specificity", BinarySpecificity), ("f1", BinaryF1Score), ("acc", BinaryAccuracy))}})


class ClassPrior(Metric):
    """Class frequencies of the targets seen, and the score of a trivial predictor that knows only them.

    Multi-class: always predicting the most frequent class scores ``max(prior)`` accuracy. Multi-label: a
    constant score per class ranks all clips equally, so its AP is the class's positive rate; the macro
    mAP of that predictor is the mean positive rate over the classes that occur.
    """

    full_state_update = False

    def __init__(self, num_classes: int, multilabel: bool, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.multilabel = num_classes, multilabel
        self.add_state("counts", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target: torch.Tensor) -> None:
        hot = target.float() if self.multilabel else F.one_hot(target.long(), self.num_classes).float()
        self.counts += hot.sum(dim=0).double()
        self.total += hot.shape[0]

    def compute(self) -> torch.Tensor:
        prior = self.counts / self.total.clamp_min(1)
        return prior[prior > 0].mean() if self.multilabel else prior.max()


class GroupPooledScores(Metric):
    """Window predictions pooled per group (the subject or recording a window was cut from).

    ``update(logits, target, groups)`` takes per-window logits (B, C), targets (class indices (B,) or
    multi-hot (B, C)) and group ids (B,); ``compute()`` returns ``(scores (G, C), targets, ids (G,))`` per
    group, ordered by id. The states are concatenated across processes, so a group whose windows were
    split over ranks is pooled whole (the idea of regression's RecordingLevelErrors).

    Pooling: ``mean_prob`` averages the windows' probabilities; ``mean_logit`` averages their logits, then
    applies softmax/sigmoid; ``majority`` scores each class by the fraction of windows that predict it
    (the argmax is the majority vote; multi-label: the fraction of windows above 0.5). A group's target is
    the majority of its windows' targets (every window carries its group's label).
    """

    full_state_update = False

    def __init__(self, pooling: GroupPooling, multilabel: bool, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("mean_prob", "mean_logit", "majority"):
            raise ValueError(f"group pooling must be 'mean_prob', 'mean_logit' or 'majority', got {pooling!r}")
        self.pooling, self.multilabel = pooling, multilabel
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> None:
        self.logits.append(logits.detach().float())
        self.targets.append(target.detach().long())
        self.groups.append(groups.detach().long().flatten())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, targets, groups = dim_zero_cat(self.logits), dim_zero_cat(self.targets), dim_zero_cat(self.groups)
        num_classes = logits.shape[-1]
        if self.pooling == "mean_logit":
            window_values = logits
        elif self.pooling == "mean_prob":
            window_values = class_scores(logits, self.multilabel)
        elif self.multilabel:
            window_values = (logits > 0).float()  # sigmoid > 0.5
        else:
            window_values = F.one_hot(logits.argmax(dim=-1), num_classes).float()
        ids, pooled = mean_per_group(window_values, groups)
        scores = class_scores(pooled, self.multilabel) if self.pooling == "mean_logit" else pooled
        hot = targets.float() if self.multilabel else F.one_hot(targets, num_classes).float()
        _, target_share = mean_per_group(hot, groups)
        group_targets = (target_share >= 0.5).long() if self.multilabel else target_share.argmax(dim=-1)
        return scores, group_targets, ids


class ClassificationEvaluation(nn.Module):
    """What one evaluation loader (validation, or one in-distribution test loader) accumulates.

    ``update(logits, target, groups=None)``; ``compute()`` returns the metrics of
    ``classification_metrics``, ``<main>_prior`` (the trivial baseline: ``acc_prior``, ``mAP_prior``) and, with
    ``group_pooling``, the same over groups as ``group/<name>`` plus ``group/num_groups``; ``confusion_matrix()``
    the (true, predicted) counts (multi-class only). Multi-class options: ``per_class`` adds
    ``precision/<class>``, ``recall/<class>``, ``f1/<class>`` (``class_names``, default the indices);
    ``positive_class`` adds the one-vs-rest view ``pos/auroc``, ``pos/precision``, ... on P(positive class);
    ``roc`` keeps the scores for ``roc_curves()`` (one-vs-rest ROC per class, for the figure).
    """

    def __init__(self, num_classes: int, multilabel: bool, group_pooling: Optional[GroupPooling] = None,
                 per_class: bool = False, class_names: Optional[list[str]] = None,
                 positive_class: Optional[int] = None, roc: bool = False):
        super().__init__()
        if multilabel and (per_class or positive_class is not None or roc):
            raise ValueError("per_class, positive_class and roc apply to multi-class targets")
        if positive_class is not None and not 0 <= positive_class < num_classes:
            raise ValueError(f"positive_class must be in [0, {num_classes}), got {positive_class}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names needs {num_classes} names, got {len(class_names)}")
        self.num_classes, self.multilabel = num_classes, multilabel
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.per_class = per_class_metrics(num_classes) if per_class else None
        self.positive_class = positive_class
        self.positive = positive_class_metrics() if positive_class is not None else None
        self.roc = MulticlassROC(num_classes) if roc else None
        self.main_metric = "mAP" if multilabel else "acc"
        self.metrics = classification_metrics(num_classes, multilabel)
        self.prior = ClassPrior(num_classes, multilabel)
        self.confusion = None if multilabel else MulticlassConfusionMatrix(num_classes)
        self.groups = None if group_pooling is None else GroupPooledScores(group_pooling, multilabel)
        if self.groups is not None:
            # Fed values that GroupPooledScores has already gathered: every rank computes the same numbers.
            self.group_metrics = classification_metrics(num_classes, multilabel, sync_on_compute=False)
            self.group_prior = ClassPrior(num_classes, multilabel, sync_on_compute=False)

    def update(self, logits: torch.Tensor, target: torch.Tensor, groups: Optional[torch.Tensor] = None) -> None:
        scores, target = class_scores(logits, self.multilabel), target.long()  # multi-hot floats -> ints
        self.metrics.update(scores, target)
        self.prior.update(target)
        if self.confusion is not None:
            self.confusion.update(scores, target)
        if self.per_class is not None:
            self.per_class.update(scores, target)
        if self.positive is not None:
            self.positive.update(scores[:, self.positive_class], (target == self.positive_class).long())
        if self.roc is not None:
            self.roc.update(scores, target)
        if self.groups is not None:
            if groups is None:
                raise ValueError("group pooling is on, but no group ids were given")
            self.groups.update(logits, target, groups)

    def compute(self) -> dict[str, torch.Tensor]:
        out = dict(self.metrics.compute())
        out[f"{self.main_metric}_prior"] = self.prior.compute().float()
        if self.per_class is not None:
            for metric, values in self.per_class.compute().items():
                out.update({f"{metric}/{name}": value for name, value in zip(self.class_names, values)})
        if self.positive is not None:
            out.update({f"pos/{k}": v for k, v in self.positive.compute().items()})
        if self.groups is not None:
            scores, targets, ids = self.groups.compute()
            self.group_metrics.update(scores, targets)
            self.group_prior.update(targets)
            out.update({f"group/{k}": v for k, v in self.group_metrics.compute().items()})
            out[f"group/{self.main_metric}_prior"] = self.group_prior.compute().float()
            out["group/num_groups"] = torch.tensor(float(len(ids)), device=scores.device)
            self.group_metrics.reset()
            self.group_prior.reset()
        return out

    def confusion_matrix(self) -> Optional[torch.Tensor]:
        return None if self.confusion is None else self.confusion.compute()

    def roc_curves(self) -> Optional[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """(false positive rates, true positive rates) per class, one-vs-rest; None without ``roc``."""
        if self.roc is None:
            return None
        fpr, tpr, _ = self.roc.compute()
        return list(fpr), list(tpr)

    def reset(self) -> None:
        metrics = [self.metrics, self.prior, self.confusion, self.groups, self.per_class, self.positive, self.roc]
        if self.groups is not None:
            metrics += [self.group_metrics, self.group_prior]
        for metric in metrics:
            if metric is not None:
                metric.reset()


def confusion_matrix_figure(matrix: torch.Tensor, title: str, class_names: Optional[list[str]] = None):
    """A matplotlib figure of a (true, predicted) count matrix, rows normalised for the colours, counts
    written in the cells when there are at most 20 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.detach().cpu().double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    k = counts.shape[0]
    size = min(12.0, 2.0 + 0.45 * k)
    figure, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    names = class_names or [str(i) for i in range(k)]
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                        color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    figure.tight_layout()
    return figure


def roc_figure(fprs: list[torch.Tensor], tprs: list[torch.Tensor], aurocs: list[float], title: str,
               class_names: Optional[list[str]] = None):
    """One-vs-rest ROC curves, one per class, with each class's AUROC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = class_names or [str(i) for i in range(len(fprs))]
    figure, ax = plt.subplots(figsize=(5, 5))
    for fpr, tpr, auroc, name in zip(fprs, tprs, aurocs, names):
        ax.plot(fpr.detach().cpu().numpy(), tpr.detach().cpu().numpy(), label=f"{name} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    return figure
