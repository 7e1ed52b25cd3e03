"""Losses of the reconstruction family: pixel losses, DiffCMR's epsilon-MSE and the cGAN's BCE terms."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``"l1"``) or squared (``"mse"``) error over all pixels."""
    if kind == "l1":
        return F.l1_loss(prediction, target)
    if kind == "mse":
        return F.mse_loss(prediction, target)
    raise ValueError(f"unknown pixel loss {kind!r}: use 'l1' or 'mse'")


def epsilon_loss(predicted_noise: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """DiffCMR Eq. 5 as its code computes it: the mean squared error between true and predicted noise
    (the paper writes a norm; a constant predictor of zero scores 1.0)."""
    return F.mse_loss(predicted_noise.float(), noise.float())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the generator: BCE of D(fake) against "real"."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``(BCE(D(real), 1) + BCE(D(fake), 0)) / 2`` (pix2pix halves the discriminator's objective)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)
