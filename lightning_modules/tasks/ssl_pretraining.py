"""Self-distillation pre-training with an EMA teacher (data2vec 2.0, EAT, ASDA): the task family.

The network owns the student, the teacher and the losses: ``forward(input) -> {"loss", ...}`` and
``update_teacher(decay)``. This module owns the optimisation, the teacher's EMA schedule and logging.
Batches are dicts (lightning_modules/batch.py) with the network's input under ``input_key`` (``audio``); labels,
if the data has them, are ignored.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules.batch import AUDIO, require
from lightning_modules.tasks.base import BaseTask
from lightning_modules.tasks.optim import parameter_groups


def annealed_decay(start: float, end: float, step: int, total_steps: int) -> float:
    """data2vec's ``get_annealed_rate``: linear from ``start`` to ``end`` over ``total_steps``, then ``end``."""
    if step >= total_steps or total_steps <= 0:
        return end
    return end - (end - start) * (1.0 - step / total_steps)


class SelfDistillationPretraining(BaseTask):
    """Args:
        network: e.g. ``lightning_modules.asda.ASDAPretrainingModel``.
        ema_decay, ema_end_decay, ema_anneal_end_step: teacher decay, linear from ``ema_decay`` to
            ``ema_end_decay`` over the first ``ema_anneal_end_step`` updates (ASDA: 0.9998 -> 0.99999 / 100k).
        scheduler_interval: "step" for update-counted warm-up/cosine schedules.
        input_key: the batch key of the (unlabelled) network input.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, network: nn.Module, ema_decay: float = 0.9998, ema_end_decay: float = 0.99999,
                 ema_anneal_end_step: int = 100_000, scheduler_interval: Literal["step", "epoch"] = "step",
                 input_key: str = AUDIO, optimizer: OptimizerCallable = torch.optim.AdamW,
                 lr_scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval)
        self.save_config_hyperparameters()
        self.network = network
        self.ema_decay, self.ema_end_decay, self.ema_anneal_end_step = ema_decay, ema_end_decay, ema_anneal_end_step
        self.input_key = input_key
        self._last_teacher_step = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.network(x)

    def optimizer_parameters(self):
        return parameter_groups(self)  # no weight decay on biases and norms

    def current_ema_decay(self) -> float:
        return annealed_decay(self.ema_decay, self.ema_end_decay, self.global_step, self.ema_anneal_end_step)

    def _log_losses(self, out: dict, stage: str, batch_size: int) -> None:
        for name, value in out.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=batch_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        require(batch, self.input_key, task=type(self).__name__)
        out = self(batch[self.input_key])
        self._log_losses(out, "train", batch[self.input_key].shape[0])
        if hasattr(self.network, "update_teacher"):
            self.log("train/ema_decay", self.current_ema_decay(), batch_size=batch[self.input_key].shape[0])
        return out["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Once per optimiser update (global_step counts updates, also with gradient accumulation).
        # A network without ``update_teacher`` (a plain self-supervised pretext loss) has no teacher to update.
        if self.global_step != self._last_teacher_step and hasattr(self.network, "update_teacher"):
            self._last_teacher_step = self.global_step
            self.network.update_teacher(self.current_ema_decay())

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._log_losses(self(batch[self.input_key]), "val", batch[self.input_key].shape[0])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._log_losses(self(batch[self.input_key]), "test", batch[self.input_key].shape[0])
        if batch_idx == 0 and self.trainer.is_global_zero and hasattr(self.network, "figure"):
            self.log_figure("test/pretraining_input", self.network.figure(batch[self.input_key]))
