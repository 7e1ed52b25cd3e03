"""EdgeHier-BT (ICPR 2024): a two-stage hierarchy of ResNet50s on Canny edge maps of brain MRI slices.

Stage 1 tells pituitary from the rest ("meta-tumour" = glioma + meningioma); stage 2 tells glioma from meningioma
and is trained only on glioma and meningioma samples. ``HierarchicalClassifier`` returns the composed 3-class
log-probabilities P(pit) = p1, P(gli) = (1 - p1) p2, P(men) = (1 - p1)(1 - p2) (p1 = stage 1's P(pituitary),
p2 = stage 2's P(glioma)), so ``ClassificationTask``'s evaluation (accuracy, per-class precision/recall/F1,
confusion matrix, one-vs-rest ROC) scores the composed output unchanged: the softmax of log-probabilities is the
probabilities. ``HierarchicalClassificationTask`` trains it with CE_stage1 (all samples) + CE_stage2 (the batch's
glioma and meningioma samples only). The argmax of the composed probabilities is the paper's cascade (stage 2
only when stage 1 says non-pituitary) except where p1 < 0.5 yet p1 > (1 - p1) max(p2, 1 - p2); the hard cascade
is also logged at test (``test/cascade_acc``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import ImageClassifier
from lightning_modules.tasks.classification import ClassificationTask

#: class order of the datamodules (alphabetical, as the PNG re-export's folders)
CLASSES = ("glioma", "meningioma", "pituitary")


def compose_log_probs(stage1_logits: torch.Tensor, stage2_logits: torch.Tensor, glioma: int = 0,
                      meningioma: int = 1, pituitary: int = 2) -> torch.Tensor:
    """(B, 3) log-probabilities from stage 1's logits [rest, pituitary] and stage 2's [glioma, meningioma]."""
    log1 = F.log_softmax(stage1_logits.float(), dim=1)
    log2 = F.log_softmax(stage2_logits.float(), dim=1)
    out = torch.empty(stage1_logits.shape[0], 3, dtype=log1.dtype, device=log1.device)
    out[:, pituitary] = log1[:, 1]
    out[:, glioma] = log1[:, 0] + log2[:, 0]
    out[:, meningioma] = log1[:, 0] + log2[:, 1]
    return out


class HierarchicalClassifier(nn.Module):
    """Two ``ImageClassifier`` s with 2-unit heads (GAP -> Linear(2), Keras ``include_top=False, pooling='avg'`` +
    Dense): ``stage1`` pituitary vs rest, ``stage2`` glioma vs meningioma. ``forward`` -> composed (B, 3)
    log-probabilities in ``CLASSES`` order (indices configurable); ``stage_logits`` -> both stages' logits.

    Args:
        backbone: ``ImageClassifier`` backbone (resnet50 in the paper, resnet18 in the demo).
        pretrained, pretrained_stage2: local checkpoint paths (ImageNet weights; stage 2 defaults to stage 1's).
    """

    def __init__(self, backbone: str = "resnet50", in_channels: int = 3, pretrained: Optional[str] = None,
                 pretrained_stage2: Optional[str] = None, dropout: float = 0.0, glioma: int = 0,
                 meningioma: int = 1, pituitary: int = 2):
        super().__init__()
        if sorted((glioma, meningioma, pituitary)) != [0, 1, 2]:
            raise ValueError(f"class indices must be a permutation of 0, 1, 2, got {(glioma, meningioma, pituitary)}")
        self.glioma, self.meningioma, self.pituitary = glioma, meningioma, pituitary
        self.stage1 = ImageClassifier(backbone, 2, in_channels, pretrained=pretrained, dropout=dropout)
        self.stage2 = ImageClassifier(backbone, 2, in_channels, pretrained=pretrained_stage2 or pretrained,
                                      dropout=dropout)

    def stage_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stage1(x), self.stage2(x)

    def compose(self, stage1_logits: torch.Tensor, stage2_logits: torch.Tensor) -> torch.Tensor:
        return compose_log_probs(stage1_logits, stage2_logits, self.glioma, self.meningioma, self.pituitary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compose(*self.stage_logits(x))

    def cascade(self, stage1_logits: torch.Tensor, stage2_logits: torch.Tensor) -> torch.Tensor:
        """The paper's hard cascade: pituitary if stage 1 says so, else stage 2's class. (B,) class indices."""
        non_pit = torch.where(stage2_logits.argmax(1) == 0, self.glioma, self.meningioma)
        return torch.where(stage1_logits.argmax(1) == 1, torch.full_like(non_pit, self.pituitary), non_pit)


class HierarchicalClassificationTask(ClassificationTask):
    """``ClassificationTask`` on a ``HierarchicalClassifier``: the loss is CE of stage 1 (pituitary vs rest) on
    every sample plus CE of stage 2 (glioma vs meningioma) averaged over the batch's non-pituitary samples (no
    stage-2 term for a batch without any), logged as ``train/loss_stage1`` and ``train/loss_stage2``. Validation
    and test score the composed 3-class probabilities (``val/loss`` is their NLL); ``test/cascade_acc`` is the
    hard cascade's accuracy. Mixup, label smoothing and class weights are not part of the paper (refused)."""

    def __init__(self, network: HierarchicalClassifier, num_classes: int = 3, **kwargs):
        if num_classes != 3:
            raise ValueError(f"the hierarchy has 3 classes, got num_classes={num_classes}")
        for key in ("mixup_alpha", "label_smoothing", "class_weights", "loss", "multilabel"):
            if kwargs.get(key):
                raise ValueError(f"{key} is not supported by the hierarchical task")
        super().__init__(network, num_classes, **kwargs)
        self._cascade_correct = 0
        self._cascade_total = 0

    def stage_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.network
        logits1, logits2 = net.stage_logits(x)
        loss1 = F.cross_entropy(logits1.float(), (y == net.pituitary).long())
        keep = y != net.pituitary
        if keep.any():
            loss2 = F.cross_entropy(logits2[keep].float(), (y[keep] == net.meningioma).long())
        else:
            loss2 = logits2.sum() * 0.0  # keeps the graph (DDP) without a gradient
        return loss1, loss2

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch[self.input_key], batch[self.target_key].long()
        loss1, loss2 = self.stage_losses(x, y)
        loss = loss1 + loss2
        n = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({"train/loss_stage1": loss1, "train/loss_stage2": loss2}, batch_size=n)
        return loss

    def on_test_start(self) -> None:
        super().on_test_start()
        self._cascade_correct = self._cascade_total = 0

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name, is_ood = self._test_loaders[dataloader_idx]
        if is_ood:
            return super().test_step(batch, batch_idx, dataloader_idx)
        logits1, logits2 = self.network.stage_logits(batch[self.input_key])
        logits = self.network.compose(logits1, logits2)
        self._update(self.test_evaluations[name], batch, logits)
        if dataloader_idx == 0:
            target = batch[self.target_key].long()
            self.update_extra_metrics("test", self._scores(logits), target)
            self._cascade_correct += int((self.network.cascade(logits1, logits2) == target).sum())
            self._cascade_total += int(target.numel())

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self._cascade_total:
            self.log("test/cascade_acc", self._cascade_correct / self._cascade_total, sync_dist=True)
