"""Episodic (support/query) segmentation of volumes, slice by slice: the segmentation family's episodic training and
slice-to-slice inference (Guided-SET-DCL, AAS-DCL-style few-shot networks).

Training batches are episodes (``datamodules/episodic.py``): ``support_image``, ``support_mask``, the query ``image``
and ``mask``, the query's initial label ``prior`` and the negatives ``negative_image``/``negative_mask``. The network is
called as ``network(support_image, support_mask, query_image, query_prior, negative_image, negative_mask)`` and returns
``{"probabilities": (B, 2, H, W) softmax, "losses": {name: scalar}}`` (auxiliary losses, e.g. contrastive terms).
Loss = ``ce_weight`` * weighted NLL of the probabilities (class weights ``ce_class_weights``; ``ce_on_probs``: the
released code's cross-entropy applied to the softmax output) + ``aux_weight`` * sum of ``aux_term_weights[name] *
losses[name]``.

Validation/test batches are whole scans (``image``, ``mask``, ``prior`` (1, 1, H, W, D), ``start_slice``), segmented
slice by slice (``inference_support``):

- ``propagated`` (the paper's protocol): the start slice (the MRF's rectum; where the initial label is empty there, the
  slice with the largest initial label) is labelled by its initial label and is the first support; each prediction is the support of the next slice, upwards and downwards, until ``stop_after_empty``
  successive empty predictions (or the scan's end);
- ``gt_neighbour`` (the released validation script): every slice is predicted with the ground truth of its lower
  neighbour (upper for the first slice) as support; slices whose support is empty are predicted empty.

The scan's prediction (1, 1, H, W, D) is scored in 3D (Dice, IoU, ... per scan and over the set, as the segmentation
task), beside the all-background baseline and the initial label itself (``test/prior/dice``, ...).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules import batch as keys
from lightning_modules.metrics.segmentation import SegmentationMetrics
from lightning_modules.tasks.segmentation import SegmentationTask, overlay_figure

EPISODE_KEYS = (keys.SUPPORT_IMAGE, keys.SUPPORT_MASK, keys.IMAGE, keys.MASK)


class EpisodicSegmentationTask(SegmentationTask):
    """Episodes in training, slice-to-slice inference on scans (see the module docstring).

    Args:
        network: ``network(support_image, support_mask, query_image, query_prior, negative_image, negative_mask)``
            -> ``{"probabilities", "losses"}``.
        ce_weight, ce_class_weights, ce_on_probs: the cross-entropy term (weights: background, foreground).
        aux_weight, aux_term_weights: the auxiliary losses' weight and each term's weight inside it (a term the
            network returns but that is not named here is logged, not trained on).
        use_prior: pass the initial label to the network (guided models); else ``None``.
        inference_support: ``propagated`` or ``gt_neighbour``.
        stop_after_empty: ``propagated``: a direction stops after this many successive empty predictions.
        metric_aggregation: ``per_image`` = Dice per scan averaged (the paper) or ``micro``.
        (optimizer, lr_scheduler, scheduler_interval, threshold, monitor_metric, figure_every_n_epochs,
        num_figure_samples, metrics: as ``SegmentationTask``)
    """

    def __init__(self, network: nn.Module, ce_weight: float = 0.9, ce_class_weights: Sequence[float] = (0.05, 1.0),
                 ce_on_probs: bool = False, aux_weight: float = 0.1,
                 aux_term_weights: Optional[dict[str, float]] = None, use_prior: bool = True,
                 inference_support: Literal["propagated", "gt_neighbour"] = "propagated", stop_after_empty: int = 3,
                 metric_aggregation: Literal["micro", "per_image"] = "per_image", threshold: float = 0.5,
                 monitor_metric: str = "val/dice", figure_every_n_epochs: int = 1, num_figure_samples: int = 4,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", metrics=None):
        super().__init__(network, num_classes=1, metric_aggregation=metric_aggregation, threshold=threshold,
                         monitor_metric=monitor_metric, figure_every_n_epochs=figure_every_n_epochs,
                         num_figure_samples=num_figure_samples, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         scheduler_interval=scheduler_interval, metrics=metrics)
        self.save_config_hyperparameters()
        if inference_support not in ("propagated", "gt_neighbour"):
            raise ValueError(f"inference_support must be 'propagated' or 'gt_neighbour', got {inference_support!r}")
        if len(ce_class_weights) != 2:
            raise ValueError(f"ce_class_weights needs (background, foreground), got {list(ce_class_weights)}")
        self.ce_weight, self.ce_on_probs, self.aux_weight = float(ce_weight), ce_on_probs, float(aux_weight)
        self.register_buffer("ce_class_weights", torch.tensor([float(w) for w in ce_class_weights]), persistent=False)
        self.aux_term_weights = {str(k): float(v) for k, v in (aux_term_weights or {}).items()}
        self.use_prior, self.inference_support, self.stop_after_empty = use_prior, inference_support, stop_after_empty
        self.test_metrics_prior = SegmentationMetrics(1, metric_aggregation)

    # -- training ---------------------------------------------------------------------------------
    def episode_outputs(self, batch: dict) -> dict:
        keys.require(batch, *EPISODE_KEYS, task=type(self).__name__)
        prior = batch.get(keys.PRIOR) if self.use_prior else None
        return self.network(batch[keys.SUPPORT_IMAGE], batch[keys.SUPPORT_MASK], batch[keys.IMAGE], prior,
                            batch.get(keys.NEGATIVE_IMAGE), batch.get(keys.NEGATIVE_MASK))

    def cross_entropy(self, probabilities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class-weighted NLL of the softmax output against the 0/1 mask (weighted mean, as ``nn.CrossEntropyLoss``);
        ``ce_on_probs``: cross-entropy of the probabilities taken as logits (the released code's double softmax)."""
        target = mask[:, 0].round().long()
        weight = self.ce_class_weights.to(probabilities.dtype)
        if self.ce_on_probs:
            return F.cross_entropy(probabilities, target, weight=weight)
        return F.nll_loss(torch.log(probabilities.clamp_min(1e-8)), target, weight=weight)

    def episode_losses(self, outputs: dict, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        ce = self.cross_entropy(outputs["probabilities"], mask)
        terms = dict(outputs.get("losses") or {})
        aux = sum((self.aux_term_weights[name] * value for name, value in terms.items()
                   if name in self.aux_term_weights), ce.new_zeros(()))
        return {"loss": self.ce_weight * ce + self.aux_weight * aux, "ce": ce, "aux": aux, **terms}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.episode_losses(self.episode_outputs(batch), batch[keys.MASK])
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch[keys.IMAGE].shape[0])
        return out["loss"]

    # -- slice-to-slice inference -----------------------------------------------------------------
    def _slice_probability(self, image: torch.Tensor, prior: torch.Tensor, z: int, support_z: int,
                           support_mask: torch.Tensor) -> torch.Tensor:
        """Foreground probability (H, W) of slice ``z`` given slice ``support_z`` and its mask (H, W)."""
        out = self.network(image[..., support_z], support_mask[None, None].float(), image[..., z],
                           prior[..., z] if self.use_prior else None, None, None)
        return out["probabilities"][0, 1]

    @torch.no_grad()
    def segment_volume(self, image: torch.Tensor, prior: torch.Tensor, start_slice: int,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One scan, image/prior/mask (1, C|1, H, W, D) -> hard prediction (1, 1, H, W, D) int64."""
        depth = image.shape[-1]
        prediction = torch.zeros(image.shape[-3:], dtype=torch.long, device=image.device)
        if self.inference_support == "gt_neighbour":
            if mask is None:
                raise ValueError("inference_support gt_neighbour needs the ground-truth mask")
            for z in range(depth):
                support_z = z - 1 if z > 0 else min(1, depth - 1)
                support = mask[0, 0, ..., support_z] > 0
                if support_z == z or not support.any():
                    continue
                probability = self._slice_probability(image, prior, z, support_z, support)
                prediction[..., z] = (probability > self.threshold).long()
            return prediction[None, None]
        start = int(min(max(start_slice, 0), depth - 1))
        if not (prior[0, 0, ..., start] > 0).any():  # no initial label there (e.g. no rectum found): its largest slice
            area = (prior[0, 0] > 0).flatten(0, 1).sum(0)
            start = int(area.argmax()) if area.max() > 0 else start
        prediction[..., start] = (prior[0, 0, ..., start] > 0).long()
        for step in (1, -1):
            support_z, empty = start, 0
            for z in range(start + step, depth if step > 0 else -1, step):
                support = prediction[..., support_z] > 0
                if not support.any():
                    break
                probability = self._slice_probability(image, prior, z, support_z, support)
                prediction[..., z] = (probability > self.threshold).long()
                if prediction[..., z].any():
                    empty, support_z = 0, z
                else:
                    empty += 1
                    if empty >= self.stop_after_empty:
                        break
        return prediction[None, None]

    def _volume_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        keys.require(batch, keys.IMAGE, keys.MASK, keys.PRIOR, task=type(self).__name__)
        image, mask, prior = batch[keys.IMAGE], batch[keys.MASK], batch[keys.PRIOR]
        if image.dim() != 5 or image.shape[0] != 1:
            raise ValueError(f"{type(self).__name__} evaluates one scan (1, C, H, W, D) per batch, "
                             f"got {tuple(image.shape)}")
        start = batch.get(keys.START_SLICE, 0)
        start = int(start[0]) if torch.is_tensor(start) or isinstance(start, (list, tuple)) else int(start)
        return image, mask, prior, start

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, mask, prior, start = self._volume_inputs(batch)
        prediction = self.segment_volume(image, prior, start, mask)
        self.val_metrics.update(prediction, mask.long())
        self.update_extra_metrics("val", prediction, mask.long())
        if batch_idx == 0 and self.figure_due():
            self.log_figure(f"val/overlay_epoch{self.current_epoch:03d}",
                            overlay_figure(image, mask, prediction, batch.get(keys.NAME), 1))

    def on_validation_epoch_end(self) -> None:  # whole scans have no episode loss: metrics only
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "dice")
        self.val_metrics.reset()
        self.log_extra_metrics("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        image, mask, prior, start = self._volume_inputs(batch)
        prediction = self.segment_volume(image, prior, start, mask)
        target = mask.long()
        self.test_metrics.update(prediction, target)
        self.test_metrics_all_background.update(torch.zeros_like(prediction), target)
        self.test_metrics_prior.update((prior > 0).long(), target)
        self.update_extra_metrics("test", prediction, target)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self.log_figure("test/overlay", overlay_figure(image, mask, prediction, batch.get(keys.NAME), 1))

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_test_metrics("test/prior", self.test_metrics_prior, None)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        image, mask, prior, start = self._volume_inputs(batch)
        oracle = mask if self.inference_support == "gt_neighbour" else None
        prediction = self.segment_volume(image, prior, start, oracle)
        names = batch.get(keys.NAME) or [f"scan{batch_idx:05d}"]
        return {keys.MASK: prediction, keys.NAME: list(names)}
