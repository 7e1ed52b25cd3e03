"""Object detection (boxes + scores per image): the task family.

Batches are dicts (lightning_modules/batch.py): the images, stacked, under ``input_key`` (``image``, (B, C, H, W));
per image a float (N_i, 4) tensor of pixel (x1, y1, x2, y2) boxes under ``boxes_key`` (``boxes``) and an int64
(N_i,) tensor of class indices under ``labels_key`` (``box_labels``), as lists (``datamodules.detection``'s
``detection_collate`` builds them; an image without objects has a (0, 4) tensor).

The network owns its head, anchors, matching, losses and box decoding (as torchvision's and MONAI's detectors do),
so any one-stage or two-stage detector slots in:

* in training mode ``network(images, targets) -> {loss name: scalar}`` with ``targets`` a list of
  ``{"boxes": (N_i, 4), "labels": (N_i,)}``; the task minimises the sum and logs each term;
* in eval mode ``network(images) -> [{"boxes": (P_i, 4), "scores": (P_i,), "labels": (P_i,)}]``, after NMS.

Validation and test score the predictions with the lesion-level FROC (``lightning_modules.metrics.detection``):
``val/tpr@<x>`` and ``val/aufc@<x>`` (TPR at x false positives per image; normalised area under the FROC over
[0, x]); the test also draws the FROC curves (``figures/test_froc.png``) and, at validation, a few images with
their true and predicted boxes. ``baselines`` (untrained detectors, e.g. brightest-spot boxes) are scored next to
the network at test (``test/baseline_<name>/...``), so a run reports its trivial baseline. Further test sets of
the DataModule (``test_sets``, e.g. an external site) log as ``test/<name>/...``. With ``bootstrap_resamples`` the
test also runs the paper's patient bootstrap: percentile intervals ``test/<metric>_ci_low``/``_ci_high`` and, per
baseline, the paired p-value that the network does not beat it (``test/baseline_<name>/p_<metric>``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules import batch as keys
from lightning_modules.metrics.detection import FROC, bootstrap_compare, bootstrap_froc, froc_figure
from lightning_modules.tasks.base import BaseTask
from lightning_modules.tasks.optim import scale_group_lrs


class DetectionTask(BaseTask):
    """Detector training with FROC evaluation.

    Args:
        network: a detector following the protocol above.
        iou_threshold: IoU at which a prediction hits a ground-truth box (the calcification papers' 0.1).
        fppi: FPpI points at which TPR is logged (``tpr@<x>``).
        aufc_limits: upper limits x of the normalised areas AUFC[0, x] (``aufc@<x>``).
        class_aware: a hit also needs the predicted class to equal the box's (multi-class detection).
        monitor_metric: the validation metric (without ``val/``) that picks the best checkpoint (higher is
            better); default the AUFC over the widest range, steadier on a small validation set than one TPR.
        baselines: ``{name: detector}`` of untrained detectors (eval-mode protocol) scored at test next to
            the network.
        max_figure_images: images drawn in the validation figure (0: none).
        warmup_steps, warmup_ratio: linear learning-rate warm-up over the first optimiser steps from
            ``warmup_ratio`` x lr to lr (MMDetection's, under any epoch-wise ``lr_scheduler``, e.g. MultiStepLR;
            the warm-up should end before its first milestone).
        bootstrap_resamples: patient-bootstrap resamples at test (the paper's 10,000; 0: none). Patients come from
            the batches' ``patient_key`` (an image without one is its own patient).
        bootstrap_confidence: the percentile intervals' level (the paper reports p-values only; 0.95 our choice).
        input_key, boxes_key, labels_key, name_key, patient_key: batch keys.
    """

    monitor_mode = "max"

    def __init__(self, network: nn.Module, iou_threshold: float = 0.1, fppi: Sequence[float] = (0.1, 1.0),
                 aufc_limits: Sequence[float] = (0.1, 1.0), class_aware: bool = False,
                 monitor_metric: Optional[str] = None, baselines: Optional[dict[str, nn.Module]] = None,
                 max_figure_images: int = 4, warmup_steps: int = 0, warmup_ratio: float = 0.001,
                 bootstrap_resamples: int = 0, bootstrap_confidence: float = 0.95,
                 optimizer: OptimizerCallable = torch.optim.AdamW,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", figure_every_n_epochs: int = 1,
                 input_key: str = keys.IMAGE, boxes_key: str = keys.BOXES, labels_key: str = keys.BOX_LABELS,
                 name_key: str = keys.NAME, patient_key: str = keys.PATIENT):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        self.save_config_hyperparameters()
        self.network = network
        self.input_key, self.boxes_key, self.labels_key, self.name_key = input_key, boxes_key, labels_key, name_key
        self.patient_key = patient_key
        if bootstrap_resamples < 0 or not 0.0 < bootstrap_confidence < 1.0:
            raise ValueError(f"bootstrap_resamples must be >= 0 and bootstrap_confidence in (0, 1), "
                             f"got {bootstrap_resamples}, {bootstrap_confidence}")
        self.bootstrap_resamples, self.bootstrap_confidence = bootstrap_resamples, bootstrap_confidence
        self._test_patients: list[list[str]] = []
        self.max_figure_images = max_figure_images
        if warmup_steps < 0 or not 0.0 < warmup_ratio <= 1.0:
            raise ValueError(f"warmup_steps must be >= 0 and warmup_ratio in (0, 1], "
                             f"got {warmup_steps}, {warmup_ratio}")
        self.warmup_steps, self.warmup_ratio = warmup_steps, warmup_ratio
        self._warmup_base: Optional[list[float]] = None
        metric_args = dict(iou_threshold=iou_threshold, fppi=tuple(fppi), aufc_limits=tuple(aufc_limits),
                           class_aware=class_aware)
        self.metric_args = metric_args
        self.val_froc = FROC(**metric_args)
        self.test_frocs = nn.ModuleList()  # one per test loader, made at test start
        self.baselines = nn.ModuleDict(dict(baselines or {}))
        self.baseline_frocs = nn.ModuleList()
        default = f"aufc@{max(aufc_limits):g}" if len(aufc_limits) else f"tpr@{max(fppi):g}"
        self.monitor = f"val/{monitor_metric or default}"
        self._figure_batch: Optional[dict] = None

    # -- helpers ------------------------------------------------------------------------------------------
    def targets(self, batch: dict) -> list[dict[str, torch.Tensor]]:
        keys.require(batch, self.input_key, self.boxes_key, task=type(self).__name__)
        boxes = batch[self.boxes_key]
        labels = batch.get(self.labels_key) or [torch.zeros(len(b), dtype=torch.long, device=b.device)
                                                 for b in boxes]
        return [{"boxes": b.float(), "labels": lab.long()} for b, lab in zip(boxes, labels)]

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.network(images)

    def optimizer_parameters(self):
        """The network's own optimiser groups when it has ``parameter_groups()`` (each may carry an ``lr_scale``,
        e.g. Deformable DETR's 0.1 x lr on the backbone and the sampling offsets), else every parameter."""
        groups = getattr(self.network, "parameter_groups", None)
        return groups() if callable(groups) else super().optimizer_parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.optimizer_parameters())
        scale_group_lrs(optimizer)  # lr x lr_scale per group (1 without one), before any schedule reads the lrs
        return self.with_scheduler(optimizer)

    def _num_test_loaders(self) -> tuple[int, list[str]]:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = list(getattr(datamodule, "test_loader_names", ["test"])) if datamodule is not None else ["test"]
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        return count, (names if len(names) == count else ["test"] + [f"test{i}" for i in range(1, count)])

    def _prefix(self, index: int) -> str:
        return "test" if index == 0 else f"test/{self._test_names[index]}"

    def warmup_factor(self, step: int) -> float:
        """The warm-up's lr multiplier at optimiser step ``step`` (1 once it is over)."""
        if step >= self.warmup_steps:
            return 1.0
        return self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if self.warmup_steps > 0 and self.global_step <= self.warmup_steps:
            if self._warmup_base is None:  # the lrs the schedule gives, taken before the first warm-up step
                self._warmup_base = [group["lr"] for group in optimizer.param_groups]
            factor = self.warmup_factor(self.global_step)
            for group, base in zip(optimizer.param_groups, self._warmup_base):
                group["lr"] = base * factor
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    # -- steps --------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        targets = self.targets(batch)
        losses = self.network(batch[self.input_key], targets)
        loss = sum(losses.values())
        size = len(targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        targets = self.targets(batch)
        preds = self(batch[self.input_key])
        self.val_froc.update(preds, targets)
        if batch_idx == 0 and self.max_figure_images > 0:
            self._figure_batch = {"image": batch[self.input_key][: self.max_figure_images].detach().cpu(),
                                  "targets": targets[: self.max_figure_images],
                                  "preds": preds[: self.max_figure_images]}

    def on_validation_epoch_end(self) -> None:
        values = self.val_froc.compute()
        self.log_dict({f"val/{k}": v for k, v in values.items() if k not in ("num_images", "num_targets")},
                      prog_bar=True)
        self.val_froc.reset()
        if self._figure_batch is not None and self.figure_due():
            self.log_figure(f"val/detections_epoch{self.current_epoch:03d}", detections_figure(**self._figure_batch))
        self._figure_batch = None

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        count, self._test_names = self._num_test_loaders()
        self.test_frocs = nn.ModuleList([FROC(**self.metric_args) for _ in range(count)]).to(self.device)
        self.baseline_frocs = nn.ModuleList([nn.ModuleList([FROC(**self.metric_args) for _ in self.baselines])
                                             for _ in range(count)]).to(self.device)
        self._test_patients = [[] for _ in range(count)]

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        targets = self.targets(batch)
        self.test_frocs[dataloader_idx].update(self(batch[self.input_key]), targets)
        start = len(self._test_patients[dataloader_idx])
        patients = batch.get(self.patient_key) or [f"rank{self.global_rank}_image{start + i}"
                                                   for i in range(len(targets))]
        self._test_patients[dataloader_idx].extend(str(p) for p in patients)
        for froc, baseline in zip(self.baseline_frocs[dataloader_idx], self.baselines.values()):
            froc.update(baseline(batch[self.input_key]), targets)

    def on_test_epoch_end(self) -> None:
        curves = {}
        for index, froc in enumerate(self.test_frocs):
            prefix = self._prefix(index)
            self.log_dict({f"{prefix}/{k}": v for k, v in froc.compute().items()}, add_dataloader_idx=False)
            curves[prefix] = froc.curve()[:2]
            for name, base in zip(self.baselines, self.baseline_frocs[index]):
                self.log_dict({f"{prefix}/baseline_{name}/{k}": v for k, v in base.compute().items()
                               if k not in ("num_images", "num_targets")}, add_dataloader_idx=False)
                curves[f"{prefix} baseline {name}"] = base.curve()[:2]
            if self.bootstrap_resamples:
                self.log_dict(self._bootstrap_logs(index, prefix), add_dataloader_idx=False)
        if self.trainer.is_global_zero and curves:
            marks = self.metric_args["fppi"]
            self.log_figure("test/froc", froc_figure(curves, max_fppi=max(2.0, *marks), marks=marks))

    def _bootstrap_logs(self, index: int, prefix: str) -> dict[str, float]:
        """The patient bootstrap of test set ``index``: the network's intervals and its paired p-values against
        each baseline (all on the same resamples)."""
        patients = self._test_patients[index]
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # the metric states' rank order
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, patients)
            patients = [p for part in gathered for p in part]
        args = dict(fppi=self.metric_args["fppi"], aufc_limits=self.metric_args["aufc_limits"],
                    n_resamples=self.bootstrap_resamples, confidence=self.bootstrap_confidence, seed=0)
        ours = self.test_frocs[index].per_image()
        result = bootstrap_froc(*ours, patients, **args)
        logs = {f"{prefix}/{k}_ci_low": v for k, v in result.low.items()}
        logs.update({f"{prefix}/{k}_ci_high": v for k, v in result.high.items()})
        for name, base in zip(self.baselines, self.baseline_frocs[index]):
            comparison = bootstrap_compare(ours, base.per_image(), patients, **args)
            logs.update({f"{prefix}/baseline_{name}/p_{k}": v for k, v in comparison.p_value.items()})
        return logs

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        preds = self(batch[self.input_key])
        if self.name_key in batch:
            for pred, name in zip(preds, batch[self.name_key]):
                pred["name"] = name
        return preds


def detections_figure(image: torch.Tensor, targets: list[dict], preds: list[dict], max_boxes: int = 10,
                      score_threshold: float = 0.0):
    """Images (first channel) with true boxes (green) and the top predictions (red, score labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = image.shape[0]
    figure, axes = plt.subplots(1, n, figsize=(3 * n, 4), squeeze=False)
    for ax, img, target, pred in zip(axes[0], image, targets, preds):
        ax.imshow(img[0].float().numpy(), cmap="gray")
        for box in target["boxes"].detach().cpu().numpy():
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="lime", lw=1))
        scores = pred["scores"].detach().cpu().numpy()
        order = np.argsort(-scores)[:max_boxes]
        for i in order:
            if scores[i] < score_threshold:
                continue
            box = pred["boxes"][i].detach().cpu().numpy()
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color="red", lw=0.8))
            ax.text(box[0], box[1], f"{scores[i]:.2f}", color="red", fontsize=6)
        ax.axis("off")
    figure.tight_layout()
    return figure
