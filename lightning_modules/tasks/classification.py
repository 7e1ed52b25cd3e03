"""Classification (multi-class or multi-label) of any input: the task family of ASDA's fine-tuning and of
later image classifiers.

Batches are dicts (lightning_modules/batch.py) with the network's input under ``input_key`` (``image``
(B, C, H, W), ``audio`` (B, samples), ...) and the class target under ``target_key`` (``label``): class
indices (B,) for multi-class, multi-hot (B, C) for multi-label.
"""
from __future__ import annotations

import random
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules.batch import IMAGE, LABEL
from lightning_modules.metrics.classification import ClassPrior, classification_metrics
from lightning_modules.tasks.base import BaseTask
from lightning_modules.tasks.optim import parameter_groups, scale_group_lrs


class ClassificationTask(BaseTask):
    """Cross-entropy (with label smoothing) or binary cross-entropy on logits, optional mixup.

    Args:
        network: ``forward(input) -> logits (B, num_classes)``. If it has ``parameter_layer_id(name)`` and
            ``num_layers``, ``layer_decay`` applies layer-wise lr decay.
        num_classes: classes (labels for multi-label).
        multilabel: BCE with logits and macro mAP (True), or CE and top-1 accuracy (False).
        label_smoothing: CE label smoothing (multi-class only).
        mixup_alpha, mixup_prob: mix a batch with its permutation by lam ~ Beta(alpha, alpha) with
            probability ``mixup_prob`` (inputs and one-hot targets alike); 0 disables.
        layer_decay: layer-wise lr decay factor (ASDA fine-tuning 0.65); None: off.
        scheduler_interval: "step" (warm-up/cosine schedules counted in updates) or "epoch".
        input_key, target_key: the batch keys of the network input and the class target.
    """

    def __init__(self, network: nn.Module, num_classes: int, multilabel: bool = False, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, mixup_prob: float = 1.0, layer_decay: Optional[float] = None,
                 scheduler_interval: Literal["step", "epoch"] = "step",
                 input_key: str = IMAGE, target_key: str = LABEL,
                 optimizer: OptimizerCallable = torch.optim.AdamW, lr_scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler)
        if multilabel and label_smoothing:
            raise ValueError("label_smoothing applies to multi-class targets only")
        self.save_config_hyperparameters()
        self.network = network
        self.num_classes, self.multilabel = num_classes, multilabel
        self.label_smoothing = label_smoothing
        self.mixup_alpha, self.mixup_prob = mixup_alpha, mixup_prob
        self.layer_decay = layer_decay
        self.scheduler_interval = scheduler_interval
        self.input_key, self.target_key = input_key, target_key
        self.metric_name = "mAP" if multilabel else "acc"
        self.monitor, self.monitor_mode = f"val/{self.metric_name}", "max"
        self.val_metrics = classification_metrics(num_classes, multilabel).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes, multilabel).clone(prefix="test/")
        self.test_prior = ClassPrior(num_classes, multilabel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def configure_optimizers(self):
        groups = parameter_groups(self, self.layer_decay, self._layer_id, getattr(self.network, "num_layers", None))
        optimizer = self.optimizer_factory(groups)
        scale_group_lrs(optimizer)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def _layer_id(self, name: str) -> int:
        layer_id = getattr(self.network, "parameter_layer_id", None)
        if layer_id is None:
            return 0
        for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):  # FSDP, compile
            name = name.replace(wrapper, "")
        return layer_id(name.removeprefix("network."))

    # -- training -----------------------------------------------------------------------------------
    def soft_targets(self, target: torch.Tensor) -> torch.Tensor:
        return target.float() if self.multilabel else F.one_hot(target.long(), self.num_classes).float()

    def mixup(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Python's RNG for the coin and lam: no device round trip in the training step.
        if self.mixup_alpha <= 0 or random.random() >= self.mixup_prob:
            return x, y
        lam = random.betavariate(self.mixup_alpha, self.mixup_alpha)
        perm = torch.randperm(x.shape[0], device=x.device)
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]

    def loss(self, logits: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), soft_target)
        return F.cross_entropy(logits.float(), soft_target, label_smoothing=self.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = self.mixup(batch[self.input_key], self.soft_targets(batch[self.target_key]))
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    # -- evaluation ---------------------------------------------------------------------------------
    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float()) if self.multilabel else logits.float().softmax(dim=-1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch[self.input_key])
        self.val_metrics.update(self._scores(logits), batch[self.target_key].long())
        self.log("val/loss", self.loss(logits, self.soft_targets(batch[self.target_key])), batch_size=logits.shape[0])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch[self.input_key])
        self.test_metrics.update(self._scores(logits), batch[self.target_key].long())  # multi-hot floats -> ints
        self.test_prior.update(batch[self.target_key])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        # The trivial baseline on the same clips: majority class (accuracy) or class prior (mAP).
        self.log(f"test/{self.metric_name}_prior", self.test_prior.compute().float())
        self.test_metrics.reset()
        self.test_prior.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._scores(self(batch[self.input_key]))
