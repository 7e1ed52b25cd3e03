"""Adversarial (GAN-style) training with manual optimisation: what every generator/discriminator task shares.

``AdversarialTraining`` is a mixin for a ``BaseTask`` subclass. The task says what the two networks are and what
they minimise; the mixin owns the optimisation:

- two optimisers: the task's ``optimizer`` over ``generator_parameters()`` and ``discriminator_optimizer`` (None:
  the same recipe) over ``discriminator_parameters()``, each with the injected ``lr_scheduler`` if any;
- per batch, a generator step then a discriminator step, each ``zero_grad -> manual_backward -> clip -> step``
  with only its own network's parameters trainable (Lightning's ``toggled_optimizer``), the discriminator
  seeing the generator's output detached;
- gradient clipping (``gradient_clip_val``/``gradient_clip_algorithm``: Lightning's trainer option does not
  apply to manual optimisation);
- schedulers stepped every epoch or every batch (``scheduler_interval``; ``ReduceLROnPlateau`` on ``monitor``);
- logging: the generator's terms as ``train/<name>`` (its total as ``train/loss``), the discriminator's total
  as ``train/discriminator`` and its other terms as ``train/discriminator_<name>``.

A task implements::

    def generator_parameters(self): ...        # e.g. self.network.parameters()
    def discriminator_parameters(self): ...    # e.g. self.discriminator.parameters()
    def generator_losses(self, batch, batch_idx) -> dict   # {"loss", other terms..., "fake": generated batch}
    def discriminator_losses(self, batch, fake) -> dict    # {"loss", other terms...}; fake is detached

and calls ``self.init_adversarial(...)`` in its ``__init__`` (after ``BaseTask.__init__``).
"""
from __future__ import annotations

from typing import Iterable, Literal, Optional

import torch
from lightning.pytorch.cli import OptimizerCallable

#: the key of the generated batch in ``generator_losses``' output (not logged; passed on, detached)
FAKE = "fake"


class AdversarialTraining:
    """Mixin: alternating generator/discriminator updates for a ``BaseTask`` (see the module docstring)."""

    def init_adversarial(self, discriminator_optimizer: Optional[OptimizerCallable] = None,
                         gradient_clip_val: Optional[float] = None,
                         gradient_clip_algorithm: Literal["norm", "value"] = "norm") -> None:
        if gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {gradient_clip_algorithm!r}")
        self.automatic_optimization = False
        self.discriminator_optimizer_factory = discriminator_optimizer
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm

    # -- what the task provides ---------------------------------------------------------------------
    def generator_parameters(self) -> Iterable[torch.nn.Parameter]:
        raise NotImplementedError

    def discriminator_parameters(self) -> Iterable[torch.nn.Parameter]:
        raise NotImplementedError

    def generator_losses(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def discriminator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- the optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        discriminator_factory = self.discriminator_optimizer_factory or self.optimizer_factory
        optimizers = [self.optimizer_factory(self.generator_parameters()),
                      discriminator_factory(self.discriminator_parameters())]
        if self.lr_scheduler_factory is None:
            return optimizers
        # Plain lists: under manual optimisation Lightning ignores (and warns about) interval/monitor keys;
        # the schedulers are stepped below.
        return optimizers, [self.lr_scheduler_factory(optimizer) for optimizer in optimizers]

    def _update(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                gradient_clip_algorithm=self.gradient_clip_algorithm)
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        generator_optimizer, discriminator_optimizer = self.optimizers()
        # Each step with only its own network trainable: the generator's loss backpropagates through the
        # discriminator without filling the discriminator's gradients.
        with self.toggled_optimizer(generator_optimizer):
            generator = self.generator_losses(batch, batch_idx)
            fake = generator.pop(FAKE)
            self._update(generator_optimizer, generator["loss"])
        with self.toggled_optimizer(discriminator_optimizer):
            discriminator = self.discriminator_losses(batch, fake.detach())
            self._update(discriminator_optimizer, discriminator["loss"])

        batch_size = fake.shape[0]
        for name, value in generator.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        for name, value in discriminator.items():
            self.log("train/discriminator" if name == "loss" else f"train/discriminator_{name}", value,
                     batch_size=batch_size)
        if self.scheduler_interval == "step":
            self._step_schedulers()

    def on_train_epoch_end(self) -> None:
        if self.scheduler_interval == "epoch":
            self._step_schedulers()

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in (schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []):
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(self.trainer.callback_metrics[self.monitor])  # the checkpoint metric, as BaseTask's
            else:
                scheduler.step()
