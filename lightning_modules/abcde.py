"""ABCDE-rule analysis (Bolelli et al., "Investigating the ABCDE Rule in Convolutional Neural Networks", ICPR 2024).

One classifier per debased variant of the data (original, asymmetry, borders, grayscale, mask, diameter:
``datamodules.debasing``), scored as melanoma vs rest on P(MEL). The networks are
``lightning_modules.backbones.ImageClassifier`` (MONAI EfficientNet-B3 at 300 px and ResNet-152 at 256 px, 9 ISIC
2019 classes; local pretrained checkpoints through ``pretrained``). This module holds what the paper adds:

- ``ABCDETask``: ``ClassificationTask`` (cross-entropy, ``positive_class`` metrics at 0.5: Tables 2-3) whose best
  checkpoint is the best validation AUC of the positive class, plus
  * the threshold policy of Tables 4-6: the operating point of the validation ROC nearest to (0, 1)
    (``roc_threshold``), found on the tested checkpoint's predictions of the validation split (the datamodule's
    ``val`` test loader, ``DebasedDataModule(test_on_val=True)``) and applied to every other test loader:
    ``test/val_roc_threshold``, ``test/pos_valroc/{precision,recall,specificity,f1,acc}`` (and
    ``test/<set>/pos_valroc/...`` for further test sets such as the private one);
  * Grad-CAM (MONAI ``monai.visualize.GradCAM``) of P(positive class) on the network's last conv stage
    (``ImageClassifier.target_layer``) for the first ``gradcam_images`` test images: a figure
    ``figures/test_gradcam.png`` and the maps in ``figures/test_gradcam.npz`` (``gradcam_panel`` composes the
    variants of a study into the paper's Fig. 3);
- ``AreaScoreNetwork``: the no-DL baselines of Table 6, which score a lesion by its mask's foreground ratio
  ("Segm. Mask"), its bounding box's ("B. Box") or the box ratio where it is at least 0.7 ("B. Box 70%"), as logits
  whose softmax gives P(positive) = score (run with ``input_key: mask`` and ``python run.py test``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import (binary_accuracy, binary_f1_score, binary_precision,
                                                    binary_recall, binary_roc, binary_specificity)

from lightning_modules.gradcam import display_images as _display_images
from lightning_modules.gradcam import gradcam_figure, unit_normalizer  # noqa: F401 (re-exported)
from lightning_modules.metrics.ood import SourcedScores
from lightning_modules.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)

# ---- threshold policy ------------------------------------------------------------------------------------------
def roc_threshold(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The score threshold of the ROC point nearest to (FPR 0, TPR 1) (paper Sect. 6, Fig. 6): samples with
    score >= threshold are called positive. Ties in distance go to the higher threshold."""
    scores, targets = scores.double().flatten(), targets.long().flatten()
    if targets.min() == targets.max():
        raise ValueError("the ROC threshold needs positive and negative samples")
    fpr, tpr, thresholds = binary_roc(scores, targets)  # thresholds decreasing; scores >= t are positive
    distance = fpr.double() ** 2 + (1 - tpr.double()) ** 2
    return thresholds[int(torch.argmin(distance))].double()


def metrics_at_threshold(scores: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """Precision, recall (sensitivity), specificity, F1 and accuracy of ``scores >= threshold`` (torchmetrics)."""
    preds, targets = (scores.double() >= threshold).long(), targets.long()
    return {"precision": binary_precision(preds, targets), "recall": binary_recall(preds, targets),
            "specificity": binary_specificity(preds, targets), "f1": binary_f1_score(preds, targets),
            "acc": binary_accuracy(preds, targets)}


# ---- area baselines (Table 6) ----------------------------------------------------------------------------------
AreaRule = Literal["mask", "bbox", "bbox70"]


def area_scores(mask: torch.Tensor, rule: AreaRule = "mask", min_ratio: float = 0.7,
                indicator: bool = False) -> torch.Tensor:
    """(B,) lesion-size scores of binary masks (B, 1, H, W): foreground ratio (``mask``), bounding-box area ratio
    (``bbox``), or ``bbox70``: the box ratio where it is >= ``min_ratio``, else 0 (``indicator``: 1[ratio >= min])."""
    fg = mask.flatten(1).float() > 0.5
    if rule == "mask":
        return fg.float().mean(1)
    if rule not in ("bbox", "bbox70"):
        raise ValueError(f"rule must be mask, bbox or bbox70, got {rule!r}")
    binary = (mask[:, 0] > 0.5)
    h, w = binary.shape[-2:]
    rows, cols = binary.any(dim=2), binary.any(dim=1)  # (B, H), (B, W)

    def extent(any_: torch.Tensor, n: int) -> torch.Tensor:
        first = any_.float().argmax(dim=1)
        last = n - 1 - any_.flip(1).float().argmax(dim=1)
        return torch.where(any_.any(dim=1), (last - first + 1).float(), torch.zeros_like(first, dtype=torch.float))

    ratio = extent(rows, h) * extent(cols, w) / (h * w)
    if rule == "bbox":
        return ratio
    keep = ratio >= min_ratio
    return keep.float() if indicator else ratio * keep


class AreaScoreNetwork(nn.Module):
    """A parameter-free "classifier" whose softmax puts ``area_scores(mask)`` on ``positive_class`` and the rest
    evenly on the other classes: logits log(s) and log((1 - s) / (C - 1)), s clipped to [eps, 1 - eps]. Its input
    is the batch's ``mask`` (``ABCDETask(input_key="mask")``, ``DebasedDataModule(with_mask=True)``)."""

    def __init__(self, rule: AreaRule = "mask", num_classes: int = 9, positive_class: int = 0, min_ratio: float = 0.7,
                 indicator: bool = False, eps: float = 1e-6):
        super().__init__()
        if rule not in ("mask", "bbox", "bbox70"):
            raise ValueError(f"rule must be mask, bbox or bbox70, got {rule!r}")
        if num_classes < 2 or not 0 <= positive_class < num_classes:
            raise ValueError(f"need num_classes >= 2 and 0 <= positive_class < num_classes, got {num_classes}, "
                             f"{positive_class}")
        self.rule, self.num_classes, self.positive_class = rule, num_classes, positive_class
        self.min_ratio, self.indicator, self.eps = min_ratio, indicator, eps

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        score = area_scores(mask, self.rule, self.min_ratio, self.indicator).clamp(self.eps, 1 - self.eps).double()
        logits = torch.log((1 - score) / (self.num_classes - 1))[:, None].repeat(1, self.num_classes)
        logits[:, self.positive_class] = torch.log(score)
        return logits.float()


# ---- the task ------------------------------------------------------------------------------------------------
class ABCDETask(ClassificationTask):
    """``ClassificationTask`` with the paper's model selection, threshold policy and Grad-CAM (module docstring).

    Args:
        network: an ``ImageClassifier`` (or ``AreaScoreNetwork`` with ``input_key: mask``).
        num_classes: 9 (ISIC 2019's classes; the stand-in has 3).
        positive_class: the class scored against the rest (MEL = 0).
        threshold_loader: the test loader whose ROC picks the threshold (``val``); None: 0.5 only.
        gradcam_images: test images explained by Grad-CAM (0: none; skipped for networks without conv stage).
        gradcam_layer: the module name (``network.<...>``) whose activations Grad-CAM uses; None: the network's
            ``target_layer`` (ResNet ``layer4``, EfficientNet's head activation).
        **kwargs: ``ClassificationTask`` 's (optimizer, class_names, input_key, ...).
    """

    def __init__(self, network: nn.Module, num_classes: int = 9, positive_class: int = 0,
                 threshold_loader: Optional[str] = "val", gradcam_images: int = 8,
                 gradcam_layer: Optional[str] = None, **kwargs):
        super().__init__(network, num_classes, positive_class=positive_class, **kwargs)
        self.save_config_hyperparameters()
        if gradcam_images < 0:
            raise ValueError(f"gradcam_images must be >= 0, got {gradcam_images}")
        self.monitor, self.monitor_mode = "val/pos/auroc", "max"
        self.threshold_loader, self.gradcam_images, self.gradcam_layer = threshold_loader, gradcam_images, gradcam_layer
        self.positive_scores = SourcedScores()
        self.positive_targets = SourcedScores()
        self._loader_index = 0
        self._cam_batches: list[dict] = []

    # -- collecting the positive-class scores of every test loader --------------------------------------------
    def on_test_start(self) -> None:
        super().on_test_start()
        self.positive_scores.reset()
        self.positive_targets.reset()
        self._cam_batches = []

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._loader_index = dataloader_idx
        super().test_step(batch, batch_idx, dataloader_idx)
        if dataloader_idx == 0 and self.gradcam_images and self.trainer.is_global_zero:
            have = sum(len(b["label"]) for b in self._cam_batches)
            if have < self.gradcam_images:
                n = self.gradcam_images - have
                self._cam_batches.append({"image": batch[self.input_key][:n].detach().clone(),
                                          "label": batch[self.target_key][:n].detach().clone(),
                                          "name": list(batch.get("name", [""] * n))[:n]})

    def _update(self, evaluation, batch: dict, logits: torch.Tensor) -> None:
        super()._update(evaluation, batch, logits)
        if self._trainer is not None and self.trainer.testing:
            p = self._scores(logits)[:, self.positive_class]
            self.positive_scores.update(p, self._loader_index)
            self.positive_targets.update((batch[self.target_key] == self.positive_class).float(), self._loader_index)

    def on_test_epoch_end(self) -> None:
        self._log_threshold_metrics()
        self._log_gradcam()
        super().on_test_epoch_end()

    def _log_threshold_metrics(self) -> None:
        names = [name for name, _ in self._test_loaders]
        if self.threshold_loader is None:
            return
        if self.threshold_loader not in names:
            log.warning("no test loader named %r: the validation-ROC threshold metrics are skipped (set the "
                        "datamodule's test_on_val)", self.threshold_loader)
            return
        scores, sources = self.positive_scores.compute()
        targets, _ = self.positive_targets.compute()
        source = names.index(self.threshold_loader)
        chosen = sources == source
        if targets[chosen].min() == targets[chosen].max():
            log.warning("the %r loader has a single class: no ROC threshold", self.threshold_loader)
            return
        threshold = roc_threshold(scores[chosen], targets[chosen])
        self.log("test/val_roc_threshold", threshold.float(), add_dataloader_idx=False)
        for i, (name, is_ood) in enumerate(self._test_loaders):
            if is_ood or i == source or not (sources == i).any():
                continue
            prefix = "test/" if i == 0 else f"test/{name}/"
            values = metrics_at_threshold(scores[sources == i], targets[sources == i], float(threshold))
            self.log_dict({f"{prefix}pos_valroc/{k}": v.float() for k, v in values.items()}, add_dataloader_idx=False)
        self.positive_scores.reset()
        self.positive_targets.reset()

    # -- Grad-CAM -----------------------------------------------------------------------------------------------
    def gradcam_layer_name(self) -> Optional[str]:
        """The Grad-CAM layer as a module name of ``self.network`` (None: the network has no conv stage)."""
        if self.gradcam_layer:
            return self.gradcam_layer
        target = getattr(self.network, "target_layer", None)
        if target is None:
            return None
        return next((name for name, module in self.network.named_modules() if module is target), None)

    def gradcam(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) Grad-CAM maps in [0, 1] (1 = most important) of the positive class's logit, MONAI's
        ``GradCAM`` on ``gradcam_layer_name()`` (computed with gradients enabled, also inside the test loop)."""
        from monai.visualize import GradCAM

        layer = self.gradcam_layer_name()
        if layer is None:
            raise ValueError(f"{type(self.network).__name__} has no target_layer: set gradcam_layer")
        with torch.inference_mode(False), torch.enable_grad():
            cam = GradCAM(nn_module=self.network, target_layers=layer, postprocessing=unit_normalizer)
            maps = cam(images.detach().clone(), class_idx=self.positive_class)
        self.network.zero_grad(set_to_none=True)  # the backward pass left gradients on the weights
        return maps.detach()

    def _log_gradcam(self) -> None:
        if not self._cam_batches or not self.trainer.is_global_zero:
            return
        if self.gradcam_layer_name() is None:
            log.info("%s has no conv stage: no Grad-CAM", type(self.network).__name__)
            self._cam_batches = []
            return
        images = torch.cat([b["image"] for b in self._cam_batches])
        labels = torch.cat([b["label"] for b in self._cam_batches])
        names = [n for b in self._cam_batches for n in b["name"]]
        maps = self.gradcam(images)
        with torch.no_grad():
            probs = self._scores(self(images))[:, self.positive_class]
        class_names = self.class_names or [str(i) for i in range(self.num_classes)]
        titles = [f"{class_names[int(y)]} P={float(p):.2f}" for y, p in zip(labels, probs)]
        shown = _display_images(images)
        self.log_figure("test/gradcam", gradcam_figure(shown, maps[:, 0].cpu().numpy(), titles))
        np.savez_compressed(os.path.join(self.figure_dir, "test_gradcam.npz"), images=shown,
                            maps=maps[:, 0].cpu().numpy().astype(np.float32), labels=labels.cpu().numpy(),
                            probs=probs.float().cpu().numpy(), names=np.array(names))
        self._cam_batches = []


# ---- the study's extra output ----------------------------------------------------------------------------------
def gradcam_panel(study_dir, results: list[dict]) -> str:
    """Study analysis hook (``analysis: lightning_modules.abcde:gradcam_panel``): the paper's Fig. 3, one row per run
    that left ``figures/test_gradcam.npz`` (its debased inputs over their Grad-CAM maps, the same test images in
    every row), written to ``<study>/gradcam.png``; returns the line the summary gets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study_dir = Path(study_dir)
    rows = []
    for record in results:
        path = Path(record["run_dir"]) / "figures" / "test_gradcam.npz"
        if path.is_file():
            with np.load(path) as data:
                rows.append((record["run"], data["images"], data["maps"], data["labels"], data["probs"]))
    if not rows:
        return ""
    n = min(len(r[1]) for r in rows)
    figure, axes = plt.subplots(len(rows), n, figsize=(1.5 * n + 1.2, 1.5 * len(rows)), squeeze=False)
    for r, (name, images, maps, labels, probs) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(images[i])
            ax.imshow(maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"y={int(labels[i])} P={float(probs[i]):.2f}", fontsize=6)
            if i == 0:
                ax.set_ylabel(name, fontsize=7)
    figure.tight_layout()
    figure.savefig(study_dir / "gradcam.png", dpi=100)
    plt.close(figure)
    return (f"Grad-CAM of P(positive class) per run, the same test images in every row (paper Fig. 3): "
            f"{study_dir / 'gradcam.png'}")
