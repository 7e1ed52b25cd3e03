"""Weakly (point) supervised segmentation of volume slices, scored per restacked volume: the segmentation family
with sparse labels (PointBL, ICPR 2024, and any paper training on points, scribbles or partial masks).

Training batches carry ``points`` (B, 1, H, W) int64, the class on annotated pixels and -1 elsewhere, and
optionally ``distance_maps`` (B, K, H, W) (batch.py); the loss is ``PointBoundaryLoss`` (partial CE + alpha x
boundary loss) or, with ``supervision: full``, the dense cross-entropy on ``mask`` (the full-supervision upper
bound). Validation and test sets are fully annotated: everything ``SegmentationTask`` logs per slice stays, and when
the batches carry ``volume`` and ``slice_index`` (and optionally ``spacing``) the family restacks the slice
predictions into volumes and scores them in 3D with MONAI (``SegmentationTask``'s ``volume_metrics``:
``val/dice_3d``, ``test/dice_3d``, ``test/hd95_3d``, per class with ``class_names``), the paper's metrics;
``val/dice_3d`` selects the checkpoint by default. 3D scoring gathers on one process (single-device evaluation).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from lightning_modules import batch as keys
from lightning_modules.losses.point_supervision import DenseCrossEntropy, PointBoundaryLoss
from lightning_modules.tasks.segmentation import SegmentationTask, _as_outputs


class WeakSegmentationTask(SegmentationTask):
    """``SegmentationTask`` trained on point labels (or densely, ``supervision: full``), scored per volume.

    Args (beyond ``SegmentationTask``'s, which are passed through):
        supervision: ``points`` (partial CE + ``alpha`` x boundary loss) or ``full`` (dense CE on ``mask``).
        alpha: boundary-loss weight (0: partial CE alone).
        crf_loss: a ``losses.point_supervision.DenseCRFLoss`` added to the point loss (the CRF-loss baseline).
        points_key, distance_key: batch keys of the point labels and the distance maps.
        volume_metrics: restack slices per ``volume`` and log 3D Dice (and HD95 at test, ``hd95_3d``).
        monitor_metric: ``val/dice_3d`` (default), or any ``SegmentationTask`` monitor.
    """

    def __init__(self, network: nn.Module, num_classes: int = 4, supervision: Literal["points", "full"] = "points",
                 alpha: float = 1.0, points_key: str = keys.POINTS, distance_key: str = keys.DISTANCE_MAPS,
                 volume_metrics: bool = True, hd95_3d: bool = True, monitor_metric: str = "val/dice_3d",
                 crf_loss: Optional[nn.Module] = None, **kwargs) -> None:
        if supervision not in ("points", "full"):
            raise ValueError(f"supervision must be points or full, got {supervision!r}")
        kwargs.setdefault("loss", DenseCrossEntropy())  # validation loss on the dense masks
        super().__init__(network, num_classes=num_classes, monitor_metric=monitor_metric,
                         volume_metrics=volume_metrics, hd95_3d=hd95_3d, **kwargs)
        self.save_config_hyperparameters()
        self.supervision = supervision
        self.alpha = float(alpha)
        self.point_loss = PointBoundaryLoss(alpha, crf=crf_loss)
        self.points_key, self.distance_key = points_key, distance_key

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.supervision == "full":
            return super().training_step(batch, batch_idx)
        keys.require(batch, self.input_key, self.points_key, task=type(self).__name__)
        image, points = batch[self.input_key], batch[self.points_key]
        logits = _as_outputs(self.network(image))[0]
        terms = self.point_loss.terms(logits, points, batch.get(self.distance_key) if self.alpha else None, image)
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=image.shape[0])
        return terms["loss"]
