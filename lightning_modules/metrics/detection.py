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

The patient bootstrap (the paper's section 3.5; Samuelson & Petrick 2006): patients are drawn with replacement,
as many as the set has, 10,000 times; the FROC is recomputed on each resample (an image drawn k times counts k
times) and its metrics are collected. ``bootstrap_froc`` gives their percentile confidence intervals and the
average FROC curve (the paper's Fig. 4-5); ``bootstrap_compare`` the paired differences between two detectors on
the same resamples and the paper's p-value, the fraction of differences <= 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
        # per image how many of the concatenated scores are its own: the image boundaries the bootstrap resamples
        self.add_state("fp_counts", default=[], dist_reduce_fx="cat")
        self.add_state("target_counts", default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[dict], targets: Sequence[dict]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, target in zip(preds, targets):
            labels = (pred.get("labels"), target.get("labels")) if self.class_aware else (None, None)
            fp, per_target = match_scores(pred["boxes"], pred["scores"], target["boxes"], self.iou_threshold,
                                          *labels)
            self.fp_scores.append(fp.to(self.device))
            self.target_scores.append(per_target.to(self.device))
            self.fp_counts.append(torch.tensor([fp.numel()], device=self.device))
            self.target_counts.append(torch.tensor([per_target.numel()], device=self.device))
        self.num_images += len(preds)

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        fp = dim_zero_cat(self.fp_scores) if len(self.fp_scores) else torch.zeros(0, device=self.device)
        tp = dim_zero_cat(self.target_scores) if len(self.target_scores) else torch.zeros(0, device=self.device)
        return fp, tp

    def per_image(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per image (in update order; under DDP rank by rank) its false-positive scores and its targets' best
        scores (-inf where missed): the input of ``bootstrap_froc``."""
        with self.sync_context():  # under DDP every rank's images, in rank order (a no-op otherwise)
            fp, tp = (t.detach().double().cpu().numpy() for t in self._gathered())
            counts = [dim_zero_cat(c).cpu().numpy() if len(c) else np.zeros(0, dtype=np.int64)
                      for c in (self.fp_counts, self.target_counts)]
        return (np.split(fp, np.cumsum(counts[0])[:-1]) if len(counts[0]) else [],
                np.split(tp, np.cumsum(counts[1])[:-1]) if len(counts[1]) else [])

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


@dataclass
class BootstrapResult:
    """``estimate``: the metrics on the original set; ``low``/``high``: their percentile interval; ``replicates``:
    (n_resamples,) per metric; ``fppi_grid``/``mean_tpr``: the average of the resamples' FROC curves."""

    estimate: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    replicates: dict[str, np.ndarray]
    fppi_grid: np.ndarray
    mean_tpr: np.ndarray
    confidence: float


@dataclass
class BootstrapComparison:
    """Detector A minus detector B: ``delta`` on the original set, ``low``/``high`` its percentile interval, ``p_value``
    the fraction of resamples where A does not beat B (difference <= 0), and both detectors' ``BootstrapResult``."""

    delta: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    p_value: dict[str, float]
    a: BootstrapResult
    b: BootstrapResult
    replicates: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


def _metric_names(fppi: Sequence[float], aufc_limits: Sequence[float]) -> list[str]:
    return [f"tpr@{x:g}" for x in fppi] + [f"aufc@{x:g}" for x in aufc_limits]


def _curve_metrics(fppi_curve: np.ndarray, tpr_curve: np.ndarray, fppi: Sequence[float],
                   aufc_limits: Sequence[float]) -> list[float]:
    return [tpr_at_fppi(fppi_curve, tpr_curve, x) for x in fppi] + [aufc(fppi_curve, tpr_curve, x)
                                                                    for x in aufc_limits]


def resample_counts(num_groups: int, n_resamples: int, seed: int = 0, chunk: int = 2 ** 22) -> np.ndarray:
    """(n_resamples, num_groups) int: how often each group (patient) is drawn in each resample of ``num_groups``
    draws with replacement. The draws are ``np.random.default_rng(seed).integers(0, G, (R, G))``
    (scipy.stats.bootstrap's way), made in chunks of about ``chunk`` numbers for large sets."""
    rng = np.random.default_rng(seed)
    rows = max(1, chunk // max(num_groups, 1))
    counts = np.empty((n_resamples, num_groups), dtype=np.int64)
    for start in range(0, n_resamples, rows):
        draws = rng.integers(0, num_groups, (min(rows, n_resamples - start), num_groups))
        offsets = (np.arange(draws.shape[0]) * num_groups)[:, None]
        counts[start:start + draws.shape[0]] = np.bincount((draws + offsets).ravel(),
                                                           minlength=draws.size).reshape(draws.shape)
    return counts


def _group_index(groups: Sequence, num_images: int) -> tuple[np.ndarray, int]:
    if len(groups) != num_images:
        raise ValueError(f"{len(groups)} group (patient) ids for {num_images} images")
    first_seen: dict = {}  # groups numbered in order of appearance (the resample counts' columns)
    index = np.asarray([first_seen.setdefault(str(g), len(first_seen)) for g in groups], dtype=np.int64)
    return index, len(first_seen)


def _replicate_metrics(fp_scores: Sequence[np.ndarray], target_scores: Sequence[np.ndarray], image_group: np.ndarray,
                       counts: np.ndarray, fppi: Sequence[float], aufc_limits: Sequence[float],
                       fppi_grid: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(R, metrics) and (R, grid) mean-curve TPRs. An image weighs as often as its patient is drawn, so each row
    is ``froc_curve`` of the resampled set with images repeated (the weighted counts are the repeated counts;
    thresholds of images not drawn only add repeated points, which change neither the interpolation nor the area)."""
    fp_all = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1) for f in fp_scores] + [np.zeros(0)])
    tp_all = np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1) for t in target_scores] + [np.zeros(0)])
    fp_group = np.repeat(image_group, [np.asarray(f).size for f in fp_scores]).astype(np.int64)
    tp_group = np.repeat(image_group, [np.asarray(t).size for t in target_scores]).astype(np.int64)
    found = np.isfinite(tp_all)
    thresholds = np.unique(np.concatenate([fp_all, tp_all[found]]))
    num_groups = counts.shape[1]
    # per group, per threshold: the scores at that threshold (a sparse (G, T) table as flat bincounts)
    size = num_groups * len(thresholds)
    fp_table = np.bincount(fp_group * len(thresholds) + np.searchsorted(thresholds, fp_all), minlength=size)
    tp_table = np.bincount(tp_group[found] * len(thresholds) + np.searchsorted(thresholds, tp_all[found]),
                           minlength=size)
    fp_table, tp_table = (t.reshape(num_groups, len(thresholds)).astype(np.float64) for t in (fp_table, tp_table))
    images_per_group = np.bincount(image_group, minlength=num_groups).astype(np.float64)
    targets_per_group = np.bincount(tp_group, minlength=num_groups).astype(np.float64)
    metrics = np.empty((counts.shape[0], len(fppi) + len(aufc_limits)))
    curves = np.empty((counts.shape[0], len(fppi_grid)))
    for start in range(0, counts.shape[0], batch):
        weights = counts[start:start + batch].astype(np.float64)
        # scores >= threshold j: suffix sums over the thresholds
        fps = np.cumsum((weights @ fp_table)[:, ::-1], axis=1)[:, ::-1]
        tps = np.cumsum((weights @ tp_table)[:, ::-1], axis=1)[:, ::-1]
        num_images, num_targets = weights @ images_per_group, weights @ targets_per_group
        for row in range(weights.shape[0]):
            fppi_curve = np.append(fps[row], 0.0) / max(num_images[row], 1.0)
            tpr_curve = (np.append(tps[row], 0.0) / num_targets[row] if num_targets[row]
                         else np.zeros(len(thresholds) + 1))
            metrics[start + row] = _curve_metrics(fppi_curve, tpr_curve, fppi, aufc_limits)
            curves[start + row] = np.interp(fppi_grid, fppi_curve[::-1], tpr_curve[::-1])
    return metrics, curves


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - confidence) / 2.0
    return (np.percentile(replicates, 100 * alpha, axis=0), np.percentile(replicates, 100 * (1 - alpha), axis=0))


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"n_resamples must be >= 1 and confidence in (0, 1), got {n_resamples}, {confidence}")


def bootstrap_froc(fp_scores: Sequence[np.ndarray], target_scores: Sequence[np.ndarray], groups: Sequence,
                   fppi: Sequence[float] = (0.1,), aufc_limits: Sequence[float] = (0.1, 1.0),
                   n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0, max_fppi: float = 2.0,
                   grid_points: int = 201) -> BootstrapResult:
    """Patient-level bootstrap of the FROC metrics (the paper's: patients with replacement, as many as the set has,
    10,000 resamples).

    Args:
        fp_scores, target_scores: per image its false-positive scores and its targets' best scores (-inf: missed),
            as ``FROC.per_image()`` returns them.
        groups: per image its patient (the resampling unit; one image per patient resamples images).
        fppi, aufc_limits: the metrics, ``tpr@<x>`` and ``aufc@<x>``.
        n_resamples, seed: the resamples (``resample_counts``).
        confidence: of the percentile interval (the paper reports p-values, not intervals: 0.95 is our choice).
        max_fppi, grid_points: the FPpI grid of the average curve.
    """
    _check_bootstrap_args(n_resamples, confidence)
    if len(fp_scores) != len(target_scores):
        raise ValueError(f"{len(fp_scores)} images of false-positive scores, {len(target_scores)} of target scores")
    image_group, num_groups = _group_index(groups, len(fp_scores))
    counts = resample_counts(num_groups, n_resamples, seed)
    return _bootstrap_with_counts(fp_scores, target_scores, image_group, counts, fppi, aufc_limits, confidence,
                                  np.linspace(0.0, max_fppi, grid_points))


def _bootstrap_with_counts(fp_scores, target_scores, image_group, counts, fppi, aufc_limits, confidence, grid
                           ) -> BootstrapResult:
    names = _metric_names(fppi, aufc_limits)
    fp_all = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1) for f in fp_scores] + [np.zeros(0)])
    tp_all = np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1) for t in target_scores] + [np.zeros(0)])
    fppi_curve, tpr_curve, _ = froc_curve(torch.from_numpy(fp_all), torch.from_numpy(tp_all), len(fp_scores))
    estimate = _curve_metrics(fppi_curve, tpr_curve, fppi, aufc_limits)
    replicates, curves = _replicate_metrics(fp_scores, target_scores, image_group, counts, fppi, aufc_limits, grid)
    low, high = _percentile_interval(replicates, confidence)
    return BootstrapResult(dict(zip(names, estimate)), dict(zip(names, low.tolist())), dict(zip(names, high.tolist())),
                           {n: replicates[:, i] for i, n in enumerate(names)}, grid, curves.mean(axis=0), confidence)


def bootstrap_compare(a: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
                      b: tuple[Sequence[np.ndarray], Sequence[np.ndarray]], groups: Sequence,
                      fppi: Sequence[float] = (0.1,), aufc_limits: Sequence[float] = (0.1, 1.0),
                      n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0, max_fppi: float = 2.0,
                      grid_points: int = 201) -> BootstrapComparison:
    """Paired patient bootstrap of detector A against detector B on the same images (the paper's Tables 7-8): both
    are scored on the same resamples; ``p_value`` is the fraction of resamples with A - B <= 0 (A significantly
    better when < 0.05). ``a`` and ``b``: (fp_scores, target_scores) per image, as ``FROC.per_image()``."""
    _check_bootstrap_args(n_resamples, confidence)
    if not len(a[0]) == len(b[0]) == len(a[1]) == len(b[1]):
        raise ValueError("both detectors must be scored on the same images")
    image_group, num_groups = _group_index(groups, len(a[0]))
    counts = resample_counts(num_groups, n_resamples, seed)
    grid = np.linspace(0.0, max_fppi, grid_points)
    res_a = _bootstrap_with_counts(*a, image_group, counts, fppi, aufc_limits, confidence, grid)
    res_b = _bootstrap_with_counts(*b, image_group, counts, fppi, aufc_limits, confidence, grid)
    names = list(res_a.estimate)
    diffs = {n: res_a.replicates[n] - res_b.replicates[n] for n in names}
    low, high = _percentile_interval(np.stack([diffs[n] for n in names], axis=1), confidence)
    return BootstrapComparison({n: res_a.estimate[n] - res_b.estimate[n] for n in names},
                               dict(zip(names, low.tolist())), dict(zip(names, high.tolist())),
                               {n: float(np.mean(diffs[n] <= 0)) for n in names}, res_a, res_b, diffs)


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
