"""tasks/adversarial.py: the cGAN baseline trains exactly as the loop it replaced (a hand-written copy of that loop
is the reference), with per-epoch or per-step schedulers, gradient clipping and its own discriminator optimiser."""
import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_modules.losses.reconstruction import discriminator_loss, generator_adversarial_loss
from lightning_modules.patch_discriminator import ConditionalPatchDiscriminator
from lightning_modules.reconstruction_unet import ReconstructionUNet
from lightning_modules.tasks.reconstruction import AdversarialReconstructionTask

WEIGHT = 0.01


def _networks():
    torch.manual_seed(0)
    return ReconstructionUNet(channels=4, num_pool_layers=2), ConditionalPatchDiscriminator(channels=8, num_layers_d=2)


def _batches(count=3):
    generator = torch.Generator().manual_seed(1)
    return [{"image": torch.rand(2, 1, 32, 32, generator=generator),
             "target": torch.rand(2, 1, 32, 32, generator=generator)} for _ in range(count)]


def _adam(lr):
    return lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.5, 0.999), weight_decay=0.0)


def _halve(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def _reference(generator, discriminator, batches, epochs, g_lr=1e-3, d_lr=1e-3, clip=None, per_step=False):
    """The loop AdversarialReconstructionTask.training_step ran before tasks/adversarial.py."""
    generator.train(), discriminator.train()
    g_opt, d_opt = _adam(g_lr)(generator.parameters()), _adam(d_lr)(discriminator.parameters())
    schedulers = [_halve(g_opt), _halve(d_opt)]

    def logits(condition, image):
        return discriminator(torch.cat([condition, image], dim=1))

    for _ in range(epochs):
        for batch in batches:
            condition, target = batch["image"], batch["target"]
            prediction = generator(condition)
            g_loss = F.l1_loss(prediction, target) + WEIGHT * generator_adversarial_loss(logits(condition, prediction))
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(generator.parameters(), clip)
            g_opt.step()
            d_loss = discriminator_loss(logits(condition, target), logits(condition, prediction.detach()))
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(discriminator.parameters(), clip)
            d_opt.step()
            if per_step:
                for scheduler in schedulers:
                    scheduler.step()
        if not per_step:
            for scheduler in schedulers:
                scheduler.step()
    return generator, discriminator


def _fit(task, batches, epochs):
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, DataLoader(batches, batch_size=None))
    return trainer


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_cgan_trains_exactly_as_the_loop_it_replaced():
    generator, discriminator = _networks()
    batches = _batches()
    task = AdversarialReconstructionTask(copy.deepcopy(generator), copy.deepcopy(discriminator),
                                         adversarial_weight=WEIGHT, optimizer=_adam(1e-3), lr_scheduler=_halve)
    trainer = _fit(task, batches, epochs=2)
    assert trainer.global_step == 2 * 2 * len(batches)  # one generator and one discriminator step per batch
    reference_g, reference_d = _reference(generator, discriminator, batches, epochs=2)
    _assert_same_weights(task.network, reference_g)
    _assert_same_weights(task.discriminator, reference_d)
    assert [s.get_last_lr()[0] for s in task.lr_schedulers()] == [2.5e-4, 2.5e-4]  # stepped once per epoch
    assert set(trainer.callback_metrics) >= {"train/loss", "train/pixel", "train/adversarial", "train/discriminator"}


def test_step_schedulers_clipping_and_a_discriminator_optimiser_of_its_own():
    generator, discriminator = _networks()
    batches = _batches(2)
    task = AdversarialReconstructionTask(copy.deepcopy(generator), copy.deepcopy(discriminator),
                                         adversarial_weight=WEIGHT, optimizer=_adam(1e-3), lr_scheduler=_halve,
                                         scheduler_interval="step", discriminator_optimizer=_adam(4e-3),
                                         gradient_clip_val=0.05)
    _fit(task, batches, epochs=1)
    reference_g, reference_d = _reference(generator, discriminator, batches, epochs=1, d_lr=4e-3, clip=0.05,
                                          per_step=True)
    _assert_same_weights(task.network, reference_g)
    _assert_same_weights(task.discriminator, reference_d)
    assert [s.get_last_lr()[0] for s in task.lr_schedulers()] == [2.5e-4, 1e-3]  # halved after each of 2 steps
    # Without clipping the same run ends elsewhere (the clip is active at 0.05).
    unclipped = _reference(*_networks(), batches, epochs=1, d_lr=4e-3, per_step=True)[0]
    assert not torch.equal(next(unclipped.parameters()), next(task.network.parameters()))


def test_bad_clip_algorithm_is_refused():
    with pytest.raises(ValueError, match="gradient_clip_algorithm"):
        AdversarialReconstructionTask(*_networks(), gradient_clip_algorithm="max")


def test_plateau_scheduler_reads_the_monitored_metric():
    """ReduceLROnPlateau on val/psnr with an improvement threshold nothing meets: halved once after 2 epochs."""
    def plateau(optimizer):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0,
                                                          threshold=1e6, threshold_mode="abs")

    task = AdversarialReconstructionTask(*_networks(), optimizer=_adam(1e-3), lr_scheduler=plateau,
                                         figure_every_n_epochs=0)
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    batches = _batches(2)
    trainer.fit(task, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))
    assert "val/psnr" in trainer.callback_metrics
    assert [s.optimizer.param_groups[0]["lr"] for s in task.lr_schedulers()] == [5e-4, 5e-4]
