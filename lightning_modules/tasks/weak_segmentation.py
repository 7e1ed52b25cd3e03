"""Weakly (point) supervised segmentation of volume slices, scored per restacked volume: the segmentation family
with sparse labels (PointBL, ICPR 2024, and any paper training on points, scribbles or partial masks).

Training batches carry ``points`` (B, 1, H, W) int64, the class on annotated pixels and -1 elsewhere, and
optionally ``distance_maps`` (B, K, H, W) (batch.py); the loss is ``PointBoundaryLoss`` (partial CE + alpha x
boundary loss) or, with ``supervision: full``, the dense cross-entropy on ``mask`` (the full-supervision upper
bound). Validation and test sets are fully annotated: everything ``SegmentationTask`` logs per slice stays, and when
the batches carry ``volume`` and ``slice_index`` (and optionally ``spacing``) the slice predictions are restacked
into volumes and scored in 3D with MONAI (``val/dice_3d``, ``test/dice_3d``, ``test/hd95_3d``, per class with
``class_names``), the paper's metrics; ``val/dice_3d`` selects the checkpoint by default.
3D scoring gathers on one process (single-device evaluation).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules import batch as keys
from lightning_modules.losses.point_supervision import DenseCrossEntropy, PointBoundaryLoss
from lightning_modules.tasks.segmentation import SegmentationTask, _as_outputs


def volume_scores(prediction: np.ndarray, target: np.ndarray, num_classes: int,
                  spacing: Optional[np.ndarray] = None, hd95: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per foreground class 3D Dice and HD95 (MONAI) of one (H, W, D) label volume: two (K - 1,) arrays, NaN where
    the class is absent from the ground truth (Dice) or from either map (HD95)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    one_hot = [F.one_hot(torch.as_tensor(x, dtype=torch.long), num_classes).movedim(-1, 0)[None]
               for x in (prediction, target)]
    dice = compute_dice(one_hot[0], one_hot[1], include_background=False, ignore_empty=True)[0].numpy()
    distances = np.full(num_classes - 1, np.nan)
    if hd95:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = compute_hausdorff_distance(one_hot[0], one_hot[1], include_background=False, percentile=95,
                                               spacing=None if spacing is None else [float(s) for s in spacing])
        distances = value[0].numpy().astype(np.float64)
        distances[~np.isfinite(distances)] = np.nan
    return dice.astype(np.float64), distances


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
        if monitor_metric == "val/dice_3d" and not volume_metrics:
            raise ValueError("monitor_metric val/dice_3d needs volume_metrics")
        kwargs.setdefault("loss", DenseCrossEntropy())  # validation loss on the dense masks
        super().__init__(network, num_classes=num_classes,
                         monitor_metric="val/dice" if monitor_metric == "val/dice_3d" else monitor_metric, **kwargs)
        self.save_config_hyperparameters()
        self.supervision = supervision
        self.alpha = float(alpha)
        self.point_loss = PointBoundaryLoss(alpha, crf=crf_loss)
        self.points_key, self.distance_key = points_key, distance_key
        self.volume_metrics, self.hd95_3d = volume_metrics, hd95_3d
        if monitor_metric == "val/dice_3d":
            self.monitor, self.monitor_mode = "val/dice_3d", "max"
        self._slices: dict[str, dict] = {}

    # -- training -----------------------------------------------------------------------------------
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

    # -- per-volume scoring -------------------------------------------------------------------------
    def _predict(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        outputs, prediction = super()._predict(image)
        self._last_prediction = prediction  # restacked per volume by _collect (no second forward pass)
        return outputs, prediction

    def _collect(self, stage: str, batch: dict) -> None:
        if not self.volume_metrics or keys.VOLUME not in batch or keys.SLICE_INDEX not in batch:
            return
        prediction = self._last_prediction
        mask = batch[self.target_key]
        store = self._slices.setdefault(stage, defaultdict(dict))
        spacing = batch.get(keys.SPACING)
        for i, volume in enumerate(batch[keys.VOLUME]):
            entry = store[volume]
            entry[int(batch[keys.SLICE_INDEX][i])] = (prediction[i, 0].to(torch.uint8).cpu().numpy(),
                                                      mask[i, 0].to(torch.uint8).cpu().numpy())
            if spacing is not None:
                entry["spacing"] = spacing[i].detach().cpu().numpy()

    def _score_volumes(self, stage: str, hd95: bool) -> Optional[tuple[np.ndarray, np.ndarray]]:
        store = self._slices.pop(stage, None)
        if not store:
            return None
        dices, distances = [], []
        for volume in sorted(store):
            entry = store[volume]
            spacing = entry.pop("spacing", None)
            order = sorted(entry)
            prediction = np.stack([entry[j][0] for j in order], axis=-1)
            target = np.stack([entry[j][1] for j in order], axis=-1)
            dice, distance = volume_scores(prediction, target, max(2, self.num_classes), spacing, hd95)
            dices.append(dice)
            distances.append(distance)
        return np.stack(dices), np.stack(distances)

    def _log_volume_scores(self, stage: str, hd95: bool) -> None:
        scores = self._score_volumes(stage, hd95)
        if scores is None:
            return
        dice, distance = scores
        classes = self.foreground_names() or [f"class{k}" for k in range(1, dice.shape[1] + 1)]
        import warnings

        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every volume: NaN
            self.log(f"{stage}/dice_3d", float(np.nanmean(np.nanmean(dice, 1))), prog_bar=stage == "val")
            if stage == "test":
                self.log("test/num_volumes", float(len(dice)))
                for k, name in enumerate(classes):
                    self.log(f"test/dice_3d/{name}", float(np.nanmean(dice[:, k])))
                if hd95:
                    self.log("test/hd95_3d", float(np.nanmean(np.nanmean(distance, 1))))
                    for k, name in enumerate(classes):
                        self.log(f"test/hd95_3d/{name}", float(np.nanmean(distance[:, k])))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._collect("val", batch)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_volume_scores("val", hd95=False)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        if dataloader_idx == 0:
            self._collect("test", batch)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_volume_scores("test", hd95=self.hd95_3d)
