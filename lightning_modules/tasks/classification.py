"""Classification (multi-class or multi-label) of any input: the task family of ASDA's fine-tuning and of
the image, signal and video classifiers.

Batches are dicts (lightning_modules/batch.py) with the network's input under ``input_key`` (``image``
(B, C, H, W), ``audio`` (B, samples), ``signal`` ...), the class target under ``target_key`` (``label``):
class indices (B,) for multi-class, multi-hot (B, C) for multi-label, and, for window-level data, the
subject or recording id under ``group_key`` (``group``).

Evaluation logs, per loader, the metrics of ``metrics.classification.classification_metrics`` (``val/acc``,
``val/macro_f1``, ...), the trivial baseline (``test/acc_prior`` or ``test/mAP_prior``), with
``group_pooling`` the same over groups (``test/group/acc`` ...) and at test a confusion-matrix figure.
A datamodule with several test loaders (``BaseDataModule.test_sets``/``ood_test_sets``) gets each further
in-distribution loader's metrics under ``test/<name>/``, and for each out-of-distribution loader the
detection of its inputs against the first test loader's by ``ood_score``: ``test/<name>/ood_auroc``,
``ood_aupr_in``, ``ood_aupr_out``, ``ood_fpr95``.
"""
from __future__ import annotations

import random
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric

from lightning_modules.batch import GROUP, IMAGE, LABEL, require
from lightning_modules.metrics.classification import (ClassificationEvaluation, GroupPooling, class_scores,
                                                      confusion_matrix_figure, roc_figure)
from lightning_modules.metrics.ood import (SourcedScores, energy_score, max_logit_score, msp_score,
                                           ood_detection_metrics)
from lightning_modules.tasks.base import BaseTask
from lightning_modules.tasks.optim import parameter_groups, scale_group_lrs

OODScore = Literal["msp", "energy", "max_logit"]


class ClassificationTask(BaseTask):
    """Cross-entropy (with label smoothing) or binary cross-entropy on logits, optional mixup.

    Args:
        network: ``forward(input) -> logits (B, num_classes)``. If it has ``parameter_layer_id(name)`` and
            ``num_layers``, ``layer_decay`` applies layer-wise lr decay.
        num_classes: classes (labels for multi-label).
        multilabel: BCE with logits and mAP (True), or CE and top-1 accuracy (False).
        label_smoothing: CE label smoothing (multi-class only).
        mixup_alpha, mixup_prob: mix a batch with its permutation by lam ~ Beta(alpha, alpha) with
            probability ``mixup_prob`` (inputs and one-hot targets alike); 0 disables.
        layer_decay: layer-wise lr decay factor (ASDA fine-tuning 0.65); None: off.
        class_weights: per-class loss weights: the CE weight of the target classes (multi-class; each sample's
            loss times its weight, averaged over the batch, as Keras' ``class_weight``) or BCE's ``pos_weight``
            per label (multi-label). ``"balanced"``: N / (K N_c) from the datamodule's ``class_counts`` (its
            training split), computed when fitting starts.
        loss: a loss module called as ``loss(logits, soft_targets)`` with float (B, C) targets (one-hot or
            multi-hot, mixed by mixup), replacing the built-in CE/BCE (None); give its weights to it.
        metrics: extra torchmetrics, fed (class probabilities, targets), logged as ``val/<name>`` and
            ``test/<name>`` on the first test loader.
        group_key, group_pooling: with ``group_pooling`` ("mean_prob", "mean_logit" or "majority"), the
            windows' predictions are also pooled per ``batch[group_key]`` (subject, recording) and scored
            per group (``val/group/acc``, ``test/group/acc``, ...); None: off.
        ood_score: how out-of-distribution an input is, from its logits (higher = more OOD): negated
            maximum softmax probability ("msp"), free energy at ``ood_temperature`` ("energy") or negated
            maximum logit; a subclass may override ``ood_score`` (Mahalanobis, ensembles) and
            ``logits_and_features`` to hand it features.
        scheduler_interval: "step" (warm-up/cosine schedules counted in updates) or "epoch".
        figure_every_n_epochs: cadence of the validation confusion-matrix figure (0: none; the test
            figure is always drawn, multi-class only).
        input_key, target_key: the batch keys of the network input and the class target.
        class_names: names of the classes (figures, per-class metric names); None: the indices.
        per_class_metrics: also log each class's precision, recall and F1 at test (``test/recall/<class>``).
        positive_class: also score this class against the rest on its probability (``test/pos/auroc``,
            ``pos/precision``, ``pos/recall``, ``pos/specificity``, ``pos/f1``, ``pos/acc`` at 0.5): melanoma vs
            rest, malignant vs benign + normal. Multi-class only; the test of every multi-class run also draws
            one-vs-rest ROC curves.
    """

    def __init__(self, network: nn.Module, num_classes: int, multilabel: bool = False, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, mixup_prob: float = 1.0, layer_decay: Optional[float] = None,
                 class_weights: Optional[Union[list[float], Literal["balanced"]]] = None,
                 loss: Optional[nn.Module] = None,
                 metrics: Optional[dict[str, Metric]] = None, group_key: str = GROUP,
                 group_pooling: Optional[GroupPooling] = None, ood_score: OODScore = "msp",
                 ood_temperature: float = 1.0,
                 scheduler_interval: Literal["step", "epoch"] = "step", figure_every_n_epochs: int = 0,
                 input_key: str = IMAGE, target_key: str = LABEL, class_names: Optional[list[str]] = None,
                 per_class_metrics: bool = False, positive_class: Optional[int] = None,
                 optimizer: OptimizerCallable = torch.optim.AdamW, lr_scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        if multilabel and label_smoothing:
            raise ValueError("label_smoothing applies to multi-class targets only")
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"class_weights must be a list of weights or 'balanced', got {class_weights!r}")
        if not isinstance(class_weights, str) and class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights needs one weight per class ({num_classes}), got {len(class_weights)}")
        if class_weights is not None and loss is not None:
            raise ValueError("class_weights weight the built-in loss: give the injected loss its own weights")
        if ood_score not in ("msp", "energy", "max_logit"):
            raise ValueError(f"ood_score must be 'msp', 'energy' or 'max_logit', got {ood_score!r}")
        if ood_temperature <= 0:
            raise ValueError(f"ood_temperature must be > 0, got {ood_temperature}")
        self.save_config_hyperparameters()
        self.network = network
        self.num_classes, self.multilabel = num_classes, multilabel
        self.label_smoothing = label_smoothing
        self.mixup_alpha, self.mixup_prob = mixup_alpha, mixup_prob
        self.layer_decay = layer_decay
        self.criterion = loss
        # Not persistent: checkpoints stay loadable whatever the weights (they are hparams).
        self.balanced_class_weights = class_weights == "balanced"
        fixed = None if class_weights is None or self.balanced_class_weights else torch.tensor(class_weights).float()
        self.register_buffer("class_weights", fixed, persistent=False)
        if multilabel and (per_class_metrics or positive_class is not None):
            raise ValueError("per_class_metrics and positive_class apply to multi-class targets")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names needs {num_classes} names, got {len(class_names)}")
        self.class_names = list(class_names) if class_names else None
        self.per_class_metrics, self.positive_class = per_class_metrics, positive_class
        self.group_key, self.group_pooling = group_key, group_pooling
        self.ood_score_name, self.ood_temperature = ood_score, ood_temperature
        self.input_key, self.target_key = input_key, target_key
        self.metric_name = "mAP" if multilabel else "acc"
        self.monitor, self.monitor_mode = f"val/{self.metric_name}", "max"
        self.val_evaluation = self._evaluation()
        self.test_evaluations = nn.ModuleDict({"test": self._evaluation(test=True)})
        self.test_ood_scores = SourcedScores()
        self.init_extra_metrics(metrics)
        self._test_loaders: list[tuple[str, bool]] = [("test", False)]  # (name, out-of-distribution)

    def _evaluation(self, test: bool = False) -> ClassificationEvaluation:
        return ClassificationEvaluation(self.num_classes, self.multilabel, self.group_pooling,
                                        per_class=test and self.per_class_metrics, class_names=self.class_names,
                                        positive_class=self.positive_class, roc=test and not self.multilabel)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.balanced_class_weights:
            counts = getattr(self.trainer.datamodule, "class_counts", None)
            if counts is None:
                raise ValueError("class_weights: balanced needs a datamodule with class_counts (its training "
                                 "split's items per class)")
            counts = torch.tensor(counts, dtype=torch.float32)
            if len(counts) != self.num_classes:
                raise ValueError(f"the datamodule counts {len(counts)} classes, the task has {self.num_classes}")
            # N / (K N_c); a class absent from the training split gets no weight (it has no loss terms).
            self.class_weights = torch.where(counts > 0, counts.sum() / (self.num_classes * counts.clamp_min(1)),
                                             torch.zeros_like(counts)).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The logits and what ``ood_score`` may use besides them (None here; e.g. penultimate features)."""
        return self(x), None

    # -- optimiser ----------------------------------------------------------------------------------
    def optimizer_parameters(self) -> list[dict]:
        """No weight decay on biases and norms; layer-wise lr decay when the network names its layers."""
        return parameter_groups(self, self.layer_decay, self._layer_id, getattr(self.network, "num_layers", None))

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.optimizer_parameters())
        scale_group_lrs(optimizer)  # the groups' lr_scale, before a scheduler records the base lrs
        return self.with_scheduler(optimizer)

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
        if self.criterion is not None:
            return self.criterion(logits.float(), soft_target)
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), soft_target, pos_weight=self.class_weights)
        # Probability targets: weighted per-sample CE averaged over the batch (not over the summed weights).
        return F.cross_entropy(logits.float(), soft_target, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = self.mixup(batch[self.input_key], self.soft_targets(batch[self.target_key]))
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    # -- evaluation ---------------------------------------------------------------------------------
    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        return class_scores(logits, self.multilabel)

    def ood_score(self, logits: torch.Tensor, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) how out-of-distribution each input is, higher = more OOD (``ood_score`` picks the rule)."""
        if self.ood_score_name == "energy":
            return energy_score(logits, self.ood_temperature)
        if self.ood_score_name == "max_logit":
            return max_logit_score(logits)
        return msp_score(logits)

    def _update(self, evaluation: ClassificationEvaluation, batch: dict, logits: torch.Tensor) -> None:
        groups = None
        if self.group_pooling is not None:
            require(batch, self.group_key, task=f"group pooling ({self.group_pooling})")
            groups = batch[self.group_key]
        evaluation.update(logits, batch[self.target_key], groups)

    def _log_evaluation(self, evaluation: ClassificationEvaluation, prefix: str) -> None:
        self.log_dict({f"{prefix}{k}": v for k, v in evaluation.compute().items()}, add_dataloader_idx=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch[self.input_key])
        self._update(self.val_evaluation, batch, logits)
        self.update_extra_metrics("val", self._scores(logits), batch[self.target_key].long())
        self.log("val/loss", self.loss(logits, self.soft_targets(batch[self.target_key])), batch_size=logits.shape[0])

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation(self.val_evaluation, "val/")
        self.log_extra_metrics("val")
        matrix = self.val_evaluation.confusion_matrix()  # computed on every rank (it syncs), drawn on rank 0
        if matrix is not None and self.figure_due():
            self.log_figure(f"val/confusion_matrix_epoch{self.current_epoch:04d}",
                            confusion_matrix_figure(matrix, f"validation, epoch {self.current_epoch}",
                                                    self.class_names))
        self.val_evaluation.reset()

    def on_test_start(self) -> None:
        """Name the test loaders (the datamodule's ``test_loader_names``, else test, test_1, ...) and
        build each further in-distribution loader's metrics."""
        count = len(self.trainer.num_test_batches)
        datamodule = self.trainer.datamodule
        names = list(getattr(datamodule, "test_loader_names", []))
        if len(names) != count:
            names = ["test", *(f"test_{i}" for i in range(1, count))]
        ood = set(getattr(datamodule, "ood_test_sets", {}))
        self._test_loaders = [(name, i > 0 and name in ood) for i, name in enumerate(names)]
        self.test_evaluations = nn.ModuleDict({name: self._evaluation(test=True) for name, is_ood in self._test_loaders
                                               if not is_ood}).to(self.device)
        self.test_ood_scores.reset()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name, is_ood = self._test_loaders[dataloader_idx]
        logits, features = self.logits_and_features(batch[self.input_key])
        if is_ood or (dataloader_idx == 0 and self._has_ood_loaders):
            self.test_ood_scores.update(self.ood_score(logits, features), dataloader_idx)
        if is_ood:
            return  # an OOD set is only scored for OOD-ness: it may have no targets
        self._update(self.test_evaluations[name], batch, logits)
        if dataloader_idx == 0:
            self.update_extra_metrics("test", self._scores(logits), batch[self.target_key].long())

    @property
    def _has_ood_loaders(self) -> bool:
        return any(is_ood for _, is_ood in self._test_loaders)

    def on_test_epoch_end(self) -> None:
        for i, (name, is_ood) in enumerate(self._test_loaders):
            if is_ood:
                continue
            prefix = "test/" if i == 0 else f"test/{name}/"
            evaluation = self.test_evaluations[name]
            # The trivial baseline on the same clips: majority class (accuracy) or class prior (mAP).
            self._log_evaluation(evaluation, prefix)
            matrix = evaluation.confusion_matrix()
            if matrix is not None:
                self.log_figure(f"{prefix}confusion_matrix", confusion_matrix_figure(
                    matrix, f"{prefix.rstrip('/')} ({int(matrix.sum())} samples)", self.class_names))
            curves = evaluation.roc_curves()
            if curves is not None and self.trainer.is_global_zero:
                aurocs = [float(torch.trapezoid(tpr, fpr)) for fpr, tpr in zip(*curves)]
                self.log_figure(f"{prefix}roc", roc_figure(*curves, aurocs, f"{prefix.rstrip('/')} one-vs-rest ROC",
                                                           self.class_names))
            evaluation.reset()
        self.log_extra_metrics("test")
        if self._has_ood_loaders:
            # ID scores from the first loader against each OOD loader's (every rank's samples gathered).
            scores, sources = self.test_ood_scores.compute()
            for i, (name, is_ood) in enumerate(self._test_loaders):
                if is_ood:
                    metrics = ood_detection_metrics(scores[sources == 0], scores[sources == i])
                    self.log_dict({f"test/{name}/ood_{k}": v for k, v in metrics.items()}, add_dataloader_idx=False)
            self.test_ood_scores.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._scores(self(batch[self.input_key]))
