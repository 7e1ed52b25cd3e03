"""2D semantic segmentation (binary or multi-class): the task family of SACA-UNet, UNet-GCN, SFRSeg-Net, ...

Batches are dicts with ``image`` (B, C, H, W) float, ``mask`` (B, 1, H, W) (float 0/1 for binary,
long labels for multi-class) and optionally ``name`` (list of file stems, used by ``predict``).
A network maps ``image`` to logits (B, K, H, W), K = 1 for binary; it may return a list/tuple of
logits (main output first, then side outputs for deep supervision, possibly at lower resolution).
"""
from __future__ import annotations

import os
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from lightning_modules.losses.segmentation import SegmentationLoss
from lightning_modules.metrics.segmentation import METRIC_NAMES, SegmentationMetrics, hard_prediction
from lightning_modules.tasks.base import BaseTask


class SegmentationTask(BaseTask):
    """Loss ``bce_weight * CE + dice_weight * (1 - soft Dice)``; Dice/IoU/sensitivity/precision/specificity.

    Args:
        network: ``forward(image) -> logits`` or a list/tuple of logits (main first).
        num_classes: 1 = binary (sigmoid); K > 1 = K classes including background (softmax).
        bce_weight, dice_weight, dice_smooth: the loss (see ``losses.segmentation.SegmentationLoss``).
        output_weights: loss weight of each output when the network returns several (main first);
            ``None``: only one output expected, or equal weights averaging all outputs.
        metric_aggregation: ``micro`` (pixel counts summed over the set) or ``per_image`` (mean of
            per-image values); see ``metrics.segmentation``.
        threshold: binary decision threshold on the sigmoid.
        monitor_metric: the validation metric that selects ``best.ckpt`` (``val/dice`` or ``val/iou``,
            maximised; ``val/loss`` minimised).
        figure_every_n_epochs: validation overlay figures every n epochs (0: never; test always draws one).
        num_figure_samples: images per overlay figure.
        scheduler_interval: ``epoch`` or ``step``: when an injected ``lr_scheduler`` steps.
    """

    monitor = "val/dice"
    monitor_mode = "max"

    def __init__(self, network: nn.Module, num_classes: int = 1, bce_weight: float = 0.5,
                 dice_weight: float = 1.0, dice_smooth: float = 1e-5,
                 output_weights: Optional[Sequence[float]] = None,
                 metric_aggregation: Literal["micro", "per_image"] = "micro", threshold: float = 0.5,
                 monitor_metric: str = "val/dice", figure_every_n_epochs: int = 1, num_figure_samples: int = 4,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch"):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        if monitor_metric not in ("val/loss", *(f"val/{name}" for name in METRIC_NAMES)):
            raise ValueError(f"monitor_metric must be val/loss or val/<{'|'.join(METRIC_NAMES)}>, got {monitor_metric}")
        self.save_config_hyperparameters()
        self.network = network
        self.num_classes = num_classes
        self.threshold = threshold
        self.output_weights = None if output_weights is None else [float(w) for w in output_weights]
        self.monitor = monitor_metric
        self.monitor_mode = "min" if monitor_metric == "val/loss" else "max"
        self.figure_every_n_epochs = figure_every_n_epochs
        self.num_figure_samples = num_figure_samples
        self.scheduler_interval = scheduler_interval
        self.loss_fn = SegmentationLoss(bce_weight, dice_weight, num_classes=num_classes, smooth=dice_smooth)
        self.val_loss = MeanMetric()
        self.val_metrics = SegmentationMetrics(num_classes, metric_aggregation)
        self.test_metrics = SegmentationMetrics(num_classes, metric_aggregation)
        # The trivial baseline every demo must beat: predict background everywhere.
        self.test_metrics_all_background = SegmentationMetrics(num_classes, metric_aggregation)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Main logits (B, K, H, W)."""
        return _as_outputs(self.network(image))[0]

    def configure_optimizers(self):
        config = super().configure_optimizers()
        if isinstance(config, dict):
            config["lr_scheduler"]["interval"] = self.scheduler_interval
        return config

    # -- loss ---------------------------------------------------------------------------------------
    def losses(self, outputs: Sequence[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.output_weights or [1.0 / len(outputs)] * len(outputs)
        if len(weights) != len(outputs):
            raise ValueError(f"network returned {len(outputs)} outputs but output_weights has {len(weights)}")
        total, main_terms = 0.0, None
        for weight, logits in zip(weights, outputs):
            if logits.shape[-2:] != mask.shape[-2:]:  # side outputs at a coarser scale
                logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            terms = self.loss_fn.terms(logits, mask)
            main_terms = main_terms or terms
            total = total + weight * terms["loss"]
        return {"loss": total, "ce": main_terms["ce"], "dice_loss": main_terms["dice"]}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(_as_outputs(self.network(batch["image"])), batch["mask"])
        batch_size = batch["image"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch_size)
        self.log("train/ce", out["ce"], batch_size=batch_size)
        self.log("train/dice_loss", out["dice_loss"], batch_size=batch_size)
        return out["loss"]

    # -- evaluation ---------------------------------------------------------------------------------
    def _predict(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        outputs = _as_outputs(self.network(image))
        return outputs, hard_prediction(outputs[0], self.num_classes, self.threshold)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        outputs, prediction = self._predict(batch["image"])
        self.val_loss.update(self.losses(outputs, batch["mask"])["loss"], weight=batch["image"].shape[0])
        self.val_metrics.update(prediction, batch["mask"])
        if batch_idx == 0 and self._figure_due():
            self.log_figure(f"val/overlay_epoch{self.current_epoch:03d}",
                            overlay_figure(batch, prediction, self.num_figure_samples))

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute())
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "dice")
        self.val_loss.reset()
        self.val_metrics.reset()

    def _figure_due(self) -> bool:
        return (self.figure_every_n_epochs > 0 and not self.trainer.sanity_checking and self.trainer.is_global_zero
                and self.current_epoch % self.figure_every_n_epochs == 0)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, prediction = self._predict(batch["image"])
        self.test_metrics.update(prediction, batch["mask"])
        self.test_metrics_all_background.update(torch.zeros_like(prediction), batch["mask"])
        if batch_idx == 0 and self.trainer.is_global_zero:
            self.log_figure("test/overlay", overlay_figure(batch, prediction, self.num_figure_samples))

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_metrics.compute().items():
            self.log(f"test/{name}", value)
        per_image = self.test_metrics.per_image_values()
        for name in ("dice", "iou"):
            values = per_image[name]
            self.log(f"test/{name}_per_image_std", values.std() if values.numel() > 1 else values.new_zeros(()))
        baseline = self.test_metrics_all_background.compute()
        self.log("test/dice_all_background", baseline["dice"])
        self.log("test/iou_all_background", baseline["iou"])
        self.log("test/num_images", float(per_image["dice"].numel()))
        self.test_metrics.reset()
        self.test_metrics_all_background.reset()

    # -- prediction ---------------------------------------------------------------------------------
    @property
    def prediction_dir(self) -> str:
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return os.path.join(root, "predictions")

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Writes each predicted mask as ``predictions/<name>.png`` (binary: 0/255; multi-class: labels)."""
        from PIL import Image

        _, prediction = self._predict(batch["image"])
        masks = prediction[:, 0].to(torch.uint8).cpu().numpy()
        if self.num_classes == 1:
            masks = masks * 255
        names = batch.get("name") or [f"batch{batch_idx:05d}_{i:03d}" for i in range(len(masks))]
        os.makedirs(self.prediction_dir, exist_ok=True)
        paths = []
        for name, mask in zip(names, masks):
            path = os.path.join(self.prediction_dir, f"{name}.png")
            Image.fromarray(mask).save(path)
            paths.append(path)
        return paths


def _as_outputs(output) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _display_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) normalised tensor -> (H, W[, 3]) array in [0, 1] for display (min-max per image)."""
    array = image.detach().float().cpu().numpy()
    array = (array - array.min()) / max(float(array.max() - array.min()), 1e-8)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array[:3], 0, -1)


def overlay_figure(batch: dict, prediction: torch.Tensor, num_samples: int = 4):
    """Image with the ground-truth contour (green) and the predicted contour (red), one panel per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, min(num_samples, batch["image"].shape[0]))
    figure, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    names = batch.get("name")
    for i, ax in enumerate(axes[0]):
        ax.imshow(_display_image(batch["image"][i]), cmap="gray")
        for mask, colour in ((batch["mask"][i, 0], "lime"), (prediction[i, 0], "red")):
            mask = mask.detach().float().cpu().numpy()
            if mask.max() > mask.min():
                ax.contour(mask, levels=np.arange(0.5, mask.max() + 0.5), colors=colour, linewidths=1.0)
        ax.set_title(str(names[i]) if names else f"#{i}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("ground truth (green), prediction (red)", fontsize=9)
    figure.tight_layout()
    return figure
