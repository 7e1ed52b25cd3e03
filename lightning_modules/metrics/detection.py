"""Detection metrics: the lesion-level FROC curve (TPR against false positives per image).

A prediction hits a ground-truth box when their IoU reaches ``iou_threshold`` (and, with labels, the classes
agree). Sweeping the score threshold gives, at each threshold t:

* TPR(t): the fraction of ground-truth boxes hit by at least one prediction scoring >= t (a box hit several
  times counts once);
* FPpI(t): the predictions scoring >= t that hit no ground-truth box, divided by the number of images (every
  prediction on an image without boxes is a false positive, and such images count in the denominator).

The curve is built the way MONAI's ``monai.metrics.froc.compute_froc_curve_data`` builds it (one point per
distinct score, plus (0, 0)), and TPR at a given FPpI is read from it by linear interpolation as in
``compute_froc_score``, so the numbers agree with MONAI's given the same per-target and false-positive scores
(tests/test_detection_task.py checks it). AUFC[0, a] is the area under that interpolated curve over FPpI in
[0, a], divided by a (so it lies in [0, 1] and is below TPR@a).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from monai.data.box_utils import box_iou
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def match_scores(pred_boxes: torch.Tensor, pred_scores: torch.Tensor, gt_boxes: torch.Tensor,
                 iou_threshold: float = 0.1, pred_labels: Optional[torch.Tensor] = None,
                 gt_labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: (scores of the false-positive predictions (P_fp,), per ground-truth box the highest score of a
    prediction that hits it, -inf where none does (G,)). Boxes are (N, 4) corner boxes in one coordinate order."""
    pred_scores = pred_scores.detach().float().reshape(-1)
    gt_boxes = gt_boxes.detach().float().reshape(-1, 4)
    pred_boxes = pred_boxes.detach().float().reshape(-1, 4)
    if gt_boxes.shape[0] == 0 or pred_boxes.shape[0] == 0:
        return pred_scores.clone(), pred_scores.new_full((gt_boxes.shape[0],), float("-inf"))
    iou = torch.as_tensor(box_iou(pred_boxes.cpu(), gt_boxes.cpu()), dtype=torch.float32).to(pred_scores.device)
    hits = iou >= iou_threshold  # (P, G)
    if pred_labels is not None and gt_labels is not None:
        hits &= pred_labels.reshape(-1, 1).to(hits.device) == gt_labels.reshape(1, -1).to(hits.device)
    fp_scores = pred_scores[~hits.any(dim=1)]
    per_gt = torch.where(hits, pred_scores[:, None], torch.full_like(iou, float("-inf"))).amax(dim=0)
    return fp_scores, per_gt


def froc_curve(fp_scores: torch.Tensor, target_scores: torch.Tensor, num_images: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPpI, TPR, thresholds), one point per distinct score from the lowest up, then (0, 0) at +inf:
    MONAI's ``compute_froc_curve_data`` layout (FPpI decreasing)."""
    fp = np.sort(fp_scores.detach().double().cpu().numpy())
    tp = target_scores.detach().double().cpu().numpy()
    num_targets = tp.size
    tp = np.sort(tp[np.isfinite(tp)])
    thresholds = np.unique(np.concatenate([fp, tp]))
    fps = fp.size - np.searchsorted(fp, thresholds, side="left")
    tps = tp.size - np.searchsorted(tp, thresholds, side="left")
    fppi = np.append(fps, 0) / max(num_images, 1)
    tpr = np.append(tps, 0) / num_targets if num_targets else np.zeros(len(thresholds) + 1)
    return fppi, tpr, np.append(thresholds, np.inf)


def tpr_at_fppi(fppi: np.ndarray, tpr: np.ndarray, at: float) -> float:
    """TPR read off the curve at ``at`` false positives per image (linear interpolation, as MONAI's
    ``compute_froc_score``; beyond the curve's last FPpI its TPR holds)."""
    return float(np.interp(at, fppi[::-1], tpr[::-1]))


def aufc(fppi: np.ndarray, tpr: np.ndarray, upper: float, num: int = 2001) -> float:
    """Area under the interpolated FROC curve over FPpI in [0, upper], divided by ``upper``."""
    grid = np.linspace(0.0, upper, num)
    values = np.interp(grid, fppi[::-1], tpr[::-1])
    return float(np.trapezoid(values, grid) / upper)


class FROC(Metric):
    """Lesion-level FROC over a set of images, reduced correctly under DDP (concatenated scores, summed counts).

    ``update(preds, targets)`` takes per image ``{"boxes": (P, 4), "scores": (P,), "labels": (P,)}`` and
    ``{"boxes": (G, 4), "labels": (G,)}`` (torchmetrics' MeanAveragePrecision format; labels optional, and
    ignored unless ``class_aware``). ``compute()`` returns ``tpr@<x>`` for each ``fppi`` point, ``aufc@<x>``
    (AUFC[0, x], normalised) for each ``aufc_limits`` value, and ``num_targets``/``num_images``;
    ``curve()`` the full (FPpI, TPR, thresholds).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, iou_threshold: float = 0.1, fppi: Sequence[float] = (0.1, 1.0),
                 aufc_limits: Sequence[float] = (0.1, 1.0), class_aware: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.fppi_points = [float(x) for x in fppi]
        self.aufc_limits = [float(x) for x in aufc_limits]
        if any(x <= 0 for x in self.fppi_points + self.aufc_limits):
            raise ValueError("fppi points and aufc limits must be > 0")
        self.class_aware = class_aware
        self.add_state("fp_scores", default=[], dist_reduce_fx="cat")
        self.add_state("target_scores", default=[], dist_reduce_fx="cat")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[dict], targets: Sequence[dict]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets):
            labels = (pred.get("labels"), target.get("labels")) if self.class_aware else (None, None)
            fp, per_target = match_scores(pred["boxes"], pred["scores"], target["boxes"], self.iou_threshold,
                                          *labels)
            self.fp_scores.append(fp.to(self.device))
            self.target_scores.append(per_target.to(self.device))
        self.num_images += len(preds)

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        fp = dim_zero_cat(self.fp_scores) if len(self.fp_scores) else torch.zeros(0, device=self.device)
        tp = dim_zero_cat(self.target_scores) if len(self.target_scores) else torch.zeros(0, device=self.device)
        return fp, tp

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fp, tp = self._gathered()
        return froc_curve(fp, tp, int(self.num_images))

    def compute(self) -> dict[str, torch.Tensor]:
        fp, tp = self._gathered()
        fppi, tpr, _ = froc_curve(fp, tp, int(self.num_images))
        out = {f"tpr@{x:g}": torch.tensor(tpr_at_fppi(fppi, tpr, x)) for x in self.fppi_points}
        out.update({f"aufc@{x:g}": torch.tensor(aufc(fppi, tpr, x)) for x in self.aufc_limits})
        out["num_targets"] = torch.tensor(float(tp.numel()))
        out["num_images"] = self.num_images.float()
        return out


def froc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], max_fppi: float = 2.0, marks: Sequence[float] = ()):
    """FROC curves (label -> (FPpI, TPR)) on one axis, FPpI up to ``max_fppi``; dotted lines at ``marks``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(5, 4))
    for label, (fppi, tpr) in curves.items():  # MONAI's layout: FPpI falls along the curve; reversed, both rise
        ax.plot(fppi[::-1], tpr[::-1], label=label)
    for mark in marks:
        ax.axvline(mark, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlim(0, max_fppi)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("TPR (lesion sensitivity)")
    ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure
