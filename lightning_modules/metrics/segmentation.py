"""Segmentation metrics, 2D or 3D: Dice, IoU, sensitivity, precision, specificity, and the 95th-percentile
Hausdorff distance (MONAI).

Pixel (voxel) counts (TP, FP, TN, FN) are taken per image and per foreground class, and reduced with
torchmetrics states. Two aggregations:

- ``micro``: counts summed over the whole dataset, then one ratio per class (torchmetrics'
  ``BinaryF1Score``/``BinaryJaccardIndex`` with their default global averaging give the same).
- ``per_image``: a ratio per image, then the mean over images.

Empty masks, ``per_image``: a ratio whose denominator is 0 counts as 1 when the image's ground truth
and prediction are both empty for that class (nothing to find, nothing found) and as 0 otherwise
(e.g. precision of an empty prediction on a lesion). The same rule applies to a class absent from the
whole dataset under ``micro``. Multi-class: foreground classes 1..K-1, macro mean over classes.
Multi-label (``multilabel=True``, e.g. optic disc and cup, which overlap): K independent sigmoid channels,
prediction and target (B, K, *S) 0/1 (multi-hot), every channel a "class", macro mean over the K channels.

State is torchmetrics state (summed counts; concatenated per-image values), so values reduce
correctly across DDP processes.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

METRIC_NAMES = ("dice", "iou", "sensitivity", "precision", "specificity")
Aggregation = Literal["micro", "per_image"]


def hard_prediction(logits: torch.Tensor, num_classes: int = 1, threshold: float = 0.5,
                    multilabel: bool = False) -> torch.Tensor:
    """(B, 1, *S) long: sigmoid(logits) > threshold (binary) or the argmax class (multi-class);
    multi-label: (B, K, *S) long, sigmoid > threshold per channel."""
    if num_classes == 1 or multilabel:
        return (torch.sigmoid(logits.float()) > threshold).long()
    return logits.argmax(dim=1, keepdim=True)


def stat_scores_per_image(prediction: torch.Tensor, target: torch.Tensor, num_classes: int = 1,
                          multilabel: bool = False) -> torch.Tensor:
    """(B, K, 4) counts [TP, FP, TN, FN] per image and foreground class (K = 1 for binary).

    ``prediction`` and ``target`` are (B, 1, *S) hard labels (0/1 for binary), or (B, K, *S) 0/1 channels
    for ``multilabel``. (torchmetrics' ``binary_stat_scores(multidim_average="samplewise")`` gives the same but
    fails on a batch of one.)
    """
    batch = prediction.shape[0]
    if multilabel:
        if prediction.shape[1] != num_classes or target.shape[1] != num_classes:
            raise ValueError(f"multi-label prediction {tuple(prediction.shape)} and target {tuple(target.shape)} "
                             f"need {num_classes} channels")
        predicted = prediction.reshape(batch, num_classes, -1) > 0
        actual = target.reshape(batch, num_classes, -1) > 0.5
        return _counts(predicted, actual)
    prediction = prediction.reshape(batch, 1, -1).long()
    target = target.reshape(batch, 1, -1).long()
    classes = torch.arange(1, max(2, num_classes), device=prediction.device).view(1, -1, 1)  # foreground
    return _counts(prediction == classes, target == classes)  # (B, K, N)


def _counts(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    tp = (predicted & actual).sum(-1)
    fp = (predicted & ~actual).sum(-1)
    fn = (~predicted & actual).sum(-1)
    tn = predicted.shape[-1] - tp - fp - fn
    return torch.stack([tp, fp, tn, fn], dim=-1)


def ratios_from_counts(stats: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metric values from (..., 4) counts [TP, FP, TN, FN], with the empty-mask rule of this module."""
    tp, fp, tn, fn = stats.double().unbind(-1)
    both_empty = (tp + fp + fn) == 0

    def ratio(numerator, denominator):
        fallback = both_empty.to(numerator.dtype)
        return torch.where(denominator > 0, numerator / denominator.clamp_min(1), fallback)

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "specificity": ratio(tn, tn + fp),
    }


class SegmentationMetrics(Metric):
    """Dice, IoU, sensitivity, precision and specificity over a dataset (see the module docstring).

    ``update(prediction, target)`` takes hard (B, 1, *S) label maps (see ``hard_prediction``), or (B, K, *S)
    0/1 channels with ``multilabel`` (every channel a foreground class);
    ``compute()`` returns a dict of scalars, ``per_image_values()`` the (N,) values per image (mean over
    foreground classes) for standard deviations and box plots.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int = 1, aggregation: Aggregation = "micro", multilabel: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if aggregation not in ("micro", "per_image"):
            raise ValueError(f"aggregation must be 'micro' or 'per_image', got {aggregation!r}")
        self.num_classes = num_classes
        self.aggregation = aggregation
        self.multilabel = multilabel
        num_foreground = num_classes if multilabel else max(1, num_classes - 1)
        self.add_state("counts", default=torch.zeros(num_foreground, 4, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("image_counts", default=[], dist_reduce_fx="cat")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        stats = stat_scores_per_image(prediction, target, self.num_classes, self.multilabel)
        self.counts += stats.sum(0)
        self.image_counts.append(stats)

    def per_image_values(self) -> dict[str, torch.Tensor]:
        """(N,) values per image over every process (gathered like ``compute``, which alone syncs by itself)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync and not self._is_synced):
            return self._local_per_image_values()

    def _local_per_image_values(self) -> dict[str, torch.Tensor]:
        counts = self._local_image_counts()
        return {name: value.mean(-1).float() for name, value in ratios_from_counts(counts).items()}

    def per_image_class_values(self) -> dict[str, torch.Tensor]:
        """(N, K-1) values per image and foreground class (K-1 = 1 for binary), gathered over processes."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync and not self._is_synced):
            return {name: value.float() for name, value in ratios_from_counts(self._local_image_counts()).items()}

    def _local_image_counts(self) -> torch.Tensor:
        empty = isinstance(self.image_counts, list) and not self.image_counts
        return self.counts.new_zeros(0, *self.counts.shape) if empty else dim_zero_cat(self.image_counts)

    def compute_per_class(self) -> dict[str, torch.Tensor]:
        """(K-1,) values per foreground class under the module's aggregation (``compute`` is their mean)."""
        if self.aggregation == "micro":
            return {name: value.float() for name, value in ratios_from_counts(self.counts).items()}
        return {name: value.mean(0) for name, value in self.per_image_class_values().items()}

    def compute(self) -> dict[str, torch.Tensor]:
        if self.aggregation == "micro":
            return {name: value.mean().float() for name, value in ratios_from_counts(self.counts).items()}
        return {name: value.mean() for name, value in self._local_per_image_values().items()}


class HausdorffDistance95(Metric):
    """95th-percentile symmetric Hausdorff distance per image and foreground class (MONAI's
    ``compute_hausdorff_distance(percentile=95)`` on the one-hot label maps), in units of ``spacing``.

    ``update(prediction, target)`` takes hard (B, 1, *S) label maps (or (B, K, *S) 0/1 channels with
    ``multilabel``: (N, K) distances); ``per_image_class_values()`` gives (N, K-1) distances, NaN where the
    class is absent from the prediction or the ground truth (MONAI's rule);
    ``compute()`` the NaN-ignoring mean over images and classes.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, num_classes: int = 1, spacing: Optional[Sequence[float]] = None, multilabel: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        import warnings

        from monai.metrics import compute_hausdorff_distance

        if self.multilabel:  # the channels are the classes already
            one_hot, background = [(x > 0.5).long() for x in (prediction, target)], True
        else:
            classes = max(2, self.num_classes)
            one_hot = [F.one_hot(x[:, 0].long(), classes).movedim(-1, 1) for x in (prediction, target)]
            background = False
        with warnings.catch_warnings():  # MONAI warns on every empty class (the value is NaN) and on a deprecation
            warnings.simplefilter("ignore")
            distance = compute_hausdorff_distance(*one_hot, include_background=background, percentile=95,
                                                  spacing=self.spacing)
        distance = distance.float().to(prediction.device)
        self.values.append(torch.where(torch.isinf(distance), torch.full_like(distance, float("nan")), distance))

    def per_image_class_values(self) -> torch.Tensor:
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync and not self._is_synced):
            if isinstance(self.values, list) and not self.values:
                return torch.zeros(0, self.num_classes if self.multilabel else max(1, self.num_classes - 1))
            return dim_zero_cat(self.values)

    def compute(self) -> torch.Tensor:
        values = self.per_image_class_values()
        return values.nanmean() if values.numel() else torch.tensor(float("nan"))
