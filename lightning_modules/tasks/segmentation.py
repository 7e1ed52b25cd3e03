"""2D semantic segmentation (binary or multi-class): the task family of SACA-UNet, UNet-GCN, SFRSeg-Net, ...

Batches are dicts (lightning_modules/batch.py) with the image (B, C, H, W) float under ``input_key``
(``image``), the mask (B, 1, H, W) (float 0/1 for binary, long labels for multi-class) under ``target_key``
(``mask``) and optionally ``name`` (list of file stems, used by ``predict``).
A network maps the image to logits (B, K, H, W), K = 1 for binary; it may return a list/tuple of
logits (main output first, then side outputs for deep supervision, possibly at lower resolution).

``python run.py predict`` writes each predicted mask as ``<run folder>/predictions/<name>.png`` (binary:
0/255; multi-class: the labels) through ``callbacks.MaskPNGWriter``.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, Metric

from lightning_modules import batch as keys
from lightning_modules.callbacks import MaskPNGWriter, default_writer
from lightning_modules.losses.segmentation import SegmentationLoss
from lightning_modules.metrics.segmentation import METRIC_NAMES, SegmentationMetrics, hard_prediction
from lightning_modules.tasks.base import BaseTask


class SegmentationTask(BaseTask):
    """Loss ``bce_weight * CE + dice_weight * (1 - soft Dice)`` (or an injected ``loss``);
    Dice/IoU/sensitivity/precision/specificity (plus any injected ``metrics``).

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
        loss: ``loss(logits (B, K, H, W), mask (B, 1, H, W)) -> scalar`` in place of the built-in loss, e.g.
            ``monai.losses.DiceCELoss(sigmoid=True)``; None: the built-in from ``bce_weight``/``dice_weight``/
            ``dice_smooth``. ``output_weights`` apply to it alike.
        metrics: extra torchmetrics, updated with the hard prediction and the mask, both int64 (B, 1, H, W),
            logged as ``val/<name>`` and ``test/<name>``.
        input_key, target_key: the batch keys of the image and the mask.
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
                 scheduler_interval: Literal["epoch", "step"] = "epoch", loss: Optional[nn.Module] = None,
                 metrics: Optional[dict[str, Metric]] = None, input_key: str = keys.IMAGE,
                 target_key: str = keys.MASK):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        if monitor_metric not in ("val/loss", *(f"val/{name}" for name in METRIC_NAMES)):
            raise ValueError(f"monitor_metric must be val/loss or val/<{'|'.join(METRIC_NAMES)}>, got {monitor_metric}")
        self.save_config_hyperparameters()
        self.network = network
        self.num_classes = num_classes
        self.threshold = threshold
        self.output_weights = None if output_weights is None else [float(w) for w in output_weights]
        self.monitor = monitor_metric
        self.monitor_mode = "min" if monitor_metric == "val/loss" else "max"
        self.num_figure_samples = num_figure_samples
        self.input_key, self.target_key = input_key, target_key
        self.loss_fn = loss if loss is not None else SegmentationLoss(bce_weight, dice_weight, num_classes=num_classes,
                                                                      smooth=dice_smooth)
        self.init_extra_metrics(metrics)
        self.val_loss = MeanMetric()
        self.val_metrics = SegmentationMetrics(num_classes, metric_aggregation)
        self.test_metrics = SegmentationMetrics(num_classes, metric_aggregation)
        # The trivial baseline every demo must beat: predict background everywhere.
        self.test_metrics_all_background = SegmentationMetrics(num_classes, metric_aggregation)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Main logits (B, K, H, W)."""
        return _as_outputs(self.network(image))[0]

    # -- loss ---------------------------------------------------------------------------------------
    def losses(self, outputs: Sequence[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.output_weights or [1.0 / len(outputs)] * len(outputs)
        if len(weights) != len(outputs):
            raise ValueError(f"network returned {len(outputs)} outputs but output_weights has {len(weights)}")
        total, main_terms = 0.0, None
        for weight, logits in zip(weights, outputs):
            if logits.shape[-2:] != mask.shape[-2:]:  # side outputs at a coarser scale
                logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            terms = self._loss_terms(logits, mask)
            main_terms = main_terms or terms
            total = total + weight * terms["loss"]
        out = {"loss": total}
        if "ce" in main_terms:  # the built-in loss's parts (of the main output)
            out.update(ce=main_terms["ce"], dice_loss=main_terms["dice"])
        return out

    def _loss_terms(self, logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(self.loss_fn, SegmentationLoss):
            return self.loss_fn.terms(logits, mask)
        return {"loss": self.loss_fn(logits, mask)}

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        keys.require(batch, self.input_key, self.target_key, task=type(self).__name__)
        return batch[self.input_key], batch[self.target_key]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, mask = self._inputs(batch)
        out = self.losses(_as_outputs(self.network(image)), mask)
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=image.shape[0])
        return out["loss"]

    # -- evaluation ---------------------------------------------------------------------------------
    def _predict(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        outputs = _as_outputs(self.network(image))
        return outputs, hard_prediction(outputs[0], self.num_classes, self.threshold)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, mask = self._inputs(batch)
        outputs, prediction = self._predict(image)
        self.val_loss.update(self.losses(outputs, mask)["loss"], weight=image.shape[0])
        self.val_metrics.update(prediction, mask)
        self.update_extra_metrics("val", prediction, mask.long())
        if batch_idx == 0 and self.figure_due():
            self.log_figure(f"val/overlay_epoch{self.current_epoch:03d}", overlay_figure(
                image, mask, prediction, batch.get(keys.NAME), self.num_figure_samples))

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute())
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "dice")
        self.val_loss.reset()
        self.val_metrics.reset()
        self.log_extra_metrics("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        image, mask = self._inputs(batch)
        _, prediction = self._predict(image)
        self.test_metrics.update(prediction, mask)
        self.test_metrics_all_background.update(torch.zeros_like(prediction), mask)
        self.update_extra_metrics("test", prediction, mask.long())
        if batch_idx == 0 and self.trainer.is_global_zero:
            self.log_figure("test/overlay", overlay_figure(image, mask, prediction, batch.get(keys.NAME),
                                                           self.num_figure_samples))

    def on_test_epoch_end(self) -> None:
        for name, value in self.test_metrics.compute().items():
            self.log(f"test/{name}", value)
        per_image = self.test_metrics.per_image_values()
        # test/{dice,iou}_per_image (mean over images) and test/{dice,iou}_per_image_std
        self.log_mean_std("test", {f"{name}_per_image": per_image[name] for name in ("dice", "iou")})
        baseline = self.test_metrics_all_background.compute()
        self.log("test/dice_all_background", baseline["dice"])
        self.log("test/iou_all_background", baseline["iou"])
        self.log("test/num_images", float(per_image["dice"].numel()))
        self.test_metrics.reset()
        self.test_metrics_all_background.reset()
        self.log_extra_metrics("test")

    # -- prediction ---------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """``{"mask": hard prediction (B, 1, H, W) int64, "name": file stems}`` (the writer saves the PNGs)."""
        keys.require(batch, self.input_key, task=type(self).__name__)
        _, prediction = self._predict(batch[self.input_key])
        names = batch.get(keys.NAME) or [f"batch{batch_idx:05d}_{i:03d}" for i in range(len(prediction))]
        return {keys.MASK: prediction, keys.NAME: list(names)}

    def configure_callbacks(self):
        return default_writer(self._trainer, MaskPNGWriter("predictions", scale=255 if self.num_classes == 1 else 1))


def _as_outputs(output) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _display_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) normalised tensor -> (H, W[, 3]) array in [0, 1] for display (min-max per image)."""
    array = image.detach().float().cpu().numpy()
    array = (array - array.min()) / max(float(array.max() - array.min()), 1e-8)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array[:3], 0, -1)


def overlay_figure(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor,
                   names: Optional[Sequence[str]] = None, num_samples: int = 4):
    """Image with the ground-truth contour (green) and the predicted contour (red), one panel per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, min(num_samples, image.shape[0]))
    figure, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(_display_image(image[i]), cmap="gray")
        for mask_i, colour in ((mask[i, 0], "lime"), (prediction[i, 0], "red")):
            mask_i = mask_i.detach().float().cpu().numpy()
            if mask_i.max() > mask_i.min():
                ax.contour(mask_i, levels=np.arange(0.5, mask_i.max() + 0.5), colors=colour, linewidths=1.0)
        ax.set_title(str(names[i]) if names else f"#{i}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("ground truth (green), prediction (red)", fontsize=9)
    figure.tight_layout()
    return figure
