"""Undersampled MRI reconstruction: the task family of DiffCMR and its U-Net / cGAN baselines.

Batches are dicts (lightning_modules/batch.py) with ``image`` (B, 1, H, W): the zero-filled magnitude image
I^u, and ``target`` (B, 1, H, W): the fully sampled one I^f, both scaled to [0, 1] per slice (the keys are the
tasks' ``input_key``/``target_key``). Every task logs, per test slice, PSNR / SSIM / NMSE of its
reconstruction and of the zero-filled input ("RAW" in the paper's tables) as ``test/psnr``,
``test/psnr_zero_filled``, ... (mean and ``_std`` over slices).

- ``ReconstructionTask``: a network maps I^u to I^f (the U-Net baseline; L1 or MSE loss).
- ``AdversarialReconstructionTask``: the same plus a conditional PatchGAN discriminator (the cGAN baseline),
  trained by ``tasks.adversarial.AdversarialTraining``.
- ``DiffusionReconstructionTask``: conditional DDPM (DiffCMR, Algorithms 1 and 2) with R-round
  ensembling and a DDIM option for fast sampling.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn
from torchmetrics import Metric
from torchmetrics.aggregation import CatMetric, MeanMetric

from lightning_modules import batch as keys
from lightning_modules.losses.reconstruction import (discriminator_loss, epsilon_loss, generator_adversarial_loss,
                                                     pixel_loss)
from lightning_modules.metrics.reconstruction import psnr_per_slice, reconstruction_metrics
from lightning_modules.tasks.adversarial import FAKE, AdversarialTraining
from lightning_modules.tasks.base import BaseTask

METRICS = ("psnr", "ssim", "nmse")
MAX_BETA = 0.999
SAMPLING_OPTIONS = ("inference_steps", "rounds", "variance", "sampler", "ddim_steps", "ddim_eta", "clip_denoised",
                    "clip_range", "report_single_round", "sample_seed")


class ReconstructionTask(BaseTask):
    """Image-to-image reconstruction I^u -> I^f trained with a pixel loss.

    Args:
        network: ``forward(image) -> reconstruction``, both (B, 1, H, W).
        loss: ``"l1"`` (fastMRI U-Net) or ``"mse"``; or a module ``loss(reconstruction, target) -> scalar`` from
            the config (e.g. ``monai.losses.SSIMLoss``).
        figure_every_n_epochs: how often a validation figure goes to W&B and figures/ (0: never).
        scheduler_interval: ``epoch`` or ``step``: when an injected ``lr_scheduler`` steps.
        metrics: extra torchmetrics (e.g. ``torchmetrics.image.StructuralSimilarityIndexMeasure``), updated with
            the reconstruction and the target (B, 1, H, W), logged as ``val/<name>`` and ``test/<name>``.
        input_key, target_key: the batch keys of the degraded input I^u and the reference I^f.
    """

    monitor = "val/psnr"
    monitor_mode = "max"
    #: groups of test metrics: "" is the reconstruction, "_zero_filled" the input (RAW).
    test_suffixes: tuple[str, ...] = ("", "_zero_filled")

    def __init__(self, network: nn.Module, loss: Union[Literal["l1", "mse"], nn.Module] = "l1",
                 figure_every_n_epochs: int = 1,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch",
                 metrics: Optional[dict[str, Metric]] = None, input_key: str = keys.IMAGE,
                 target_key: str = keys.TARGET):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        self.save_config_hyperparameters()
        self.network = network
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss_fn = loss if isinstance(loss, nn.Module) else None
        self.input_key, self.target_key = input_key, target_key
        self.init_extra_metrics(metrics)
        self.val_psnr = CatMetric()
        self.val_loss = MeanMetric()  # reduced across processes at epoch end (eval loaders may be uneven under DDP)
        self.test_values = nn.ModuleDict({f"{name}{suffix}": CatMetric()
                                          for suffix in self.test_suffixes for name in METRICS})

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)

    def reconstruct(self, image: torch.Tensor, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        """Reconstructions keyed by test-metric suffix ("" = the method's output)."""
        return {"": self(image)}

    def pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(degraded input I^u, reference I^f) of a batch."""
        keys.require(batch, self.input_key, self.target_key, task=type(self).__name__)
        return batch[self.input_key], batch[self.target_key]

    def reconstruction_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The pixel loss: the named one (``loss="l1"``/``"mse"``) or the injected module."""
        if self.loss_fn is not None:
            return self.loss_fn(prediction, target)
        return pixel_loss(prediction, target, self.loss_name)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, target = self.pair(batch)
        loss = self.reconstruction_loss(self(image), target)
        self.log("train/loss", loss, prog_bar=True, batch_size=image.shape[0])
        return loss

    # -- evaluation -------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, target = self.pair(batch)
        prediction = self(image)
        self.val_loss.update(self.reconstruction_loss(prediction, target), image.shape[0])
        self.val_psnr.update(psnr_per_slice(prediction.float(), target))
        self.update_extra_metrics("val", prediction.float(), target)
        if batch_idx == 0 and self.figure_due():
            self.log_figure(f"val/reconstruction_epoch{self.current_epoch:03d}",
                            reconstruction_figure(image, target, {"": prediction}))

    def on_validation_epoch_end(self) -> None:
        values = self.val_psnr.compute()
        self.log("val/psnr", values.mean().float() if values.numel() else torch.tensor(0.0))
        self.log("val/loss", self.val_loss.compute())
        self.val_psnr.reset()
        self.val_loss.reset()
        self.log_extra_metrics("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        image, target = self.pair(batch)
        outputs = self.reconstruct(image, batch_idx)
        outputs["_zero_filled"] = image
        for suffix in self.test_suffixes:
            for name, values in reconstruction_metrics(outputs[suffix].float(), target).items():
                self.test_values[f"{name}{suffix}"].update(values)
        self.update_extra_metrics("test", outputs[""].float(), target)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self.log_figure("test/reconstruction", reconstruction_figure(image, target, outputs))

    def on_test_epoch_end(self) -> None:
        # CatMetric gathers every slice from every process: mean and std are over slices, as in the paper.
        values = {name: metric.compute().double() for name, metric in self.test_values.items()}
        self.log_mean_std("test", values)
        self.log("test/num_slices", float(next(iter(values.values())).numel()))
        for metric in self.test_values.values():
            metric.reset()
        self.log_extra_metrics("test")

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        keys.require(batch, self.input_key, task=type(self).__name__)
        return self.reconstruct(batch[self.input_key], batch_idx)[""]


class AdversarialReconstructionTask(AdversarialTraining, ReconstructionTask):
    """cGAN baseline: generator loss ``pixel + adversarial_weight * BCE(D(I^u, G(I^u)), real)``; the
    discriminator sees (I^u, image) pairs (pix2pix-style conditional PatchGAN) and is trained with
    ``(BCE(D(I^u, I^f), real) + BCE(D(I^u, G(I^u)), fake)) / 2``. Both use the same optimizer recipe
    unless ``discriminator_optimizer`` is given. The alternating updates are ``AdversarialTraining``'s.

    Args:
        network: the generator, ``forward(image) -> reconstruction``.
        discriminator: ``forward(cat(image, reconstruction)) -> logits`` (a tensor, or a list whose last item is).
        adversarial_weight: weight of the adversarial term in the generator loss.
        discriminator_optimizer: the discriminator's optimiser; None: ``optimizer``'s recipe.
        gradient_clip_val, gradient_clip_algorithm: clip each network's gradients before its step (None: no
            clipping; the trainer's own option does not apply to manual optimisation).
    """

    def __init__(self, network: nn.Module, discriminator: nn.Module, adversarial_weight: float = 0.01,
                 loss: Union[Literal["l1", "mse"], nn.Module] = "l1", figure_every_n_epochs: int = 1,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch",
                 metrics: Optional[dict[str, Metric]] = None, input_key: str = keys.IMAGE,
                 target_key: str = keys.TARGET, discriminator_optimizer: Optional[OptimizerCallable] = None,
                 gradient_clip_val: Optional[float] = None,
                 gradient_clip_algorithm: Literal["norm", "value"] = "norm"):
        super().__init__(network, loss=loss, figure_every_n_epochs=figure_every_n_epochs, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval, metrics=metrics,
                         input_key=input_key, target_key=target_key)
        self.save_config_hyperparameters()
        self.discriminator = discriminator
        self.adversarial_weight = adversarial_weight
        self.init_adversarial(discriminator_optimizer, gradient_clip_val, gradient_clip_algorithm)

    def generator_parameters(self):
        return self.network.parameters()

    def discriminator_parameters(self):
        return self.discriminator.parameters()

    def _logits(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = self.discriminator(torch.cat([condition, image], dim=1))
        return out[-1] if isinstance(out, (list, tuple)) else out

    def generator_losses(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Pixel loss + fool the discriminator."""
        condition, target = self.pair(batch)
        prediction = self(condition)
        pixel = self.reconstruction_loss(prediction, target)
        adversarial = generator_adversarial_loss(self._logits(condition, prediction))
        return {"loss": pixel + self.adversarial_weight * adversarial, "pixel": pixel, "adversarial": adversarial,
                FAKE: prediction}

    def discriminator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Real pairs vs the (detached) reconstructions."""
        condition, target = self.pair(batch)
        return {"loss": discriminator_loss(self._logits(condition, target), self._logits(condition, fake))}


def linear_beta_range(num_steps: int) -> tuple[float, float]:
    """improved-diffusion's "linear" betas for ``num_steps``: ``linspace(1e-4, 0.02)`` scaled by 1000/T.

    With T = 1000 this is the paper's formula (Algorithm 1); DiffCMR's code trains with T = 100
    (betas 1e-3 .. 0.2) and samples with T = 1000, so the noise levels of both chains match.
    """
    scale = 1000.0 / num_steps
    return 1e-4 * scale, 0.02 * scale


class DiffusionReconstructionTask(ReconstructionTask):
    """Conditional DDPM reconstruction (DiffCMR).

    Training (Algorithm 1): ``t ~ U{0..T_train-1}``, ``x_t = sqrt(abar_t) I^f + sqrt(1 - abar_t) eps``,
    loss ``MSE(eps, eps_theta(x_t, I^u, t))``. The network sees the timestep rescaled to [0, 1000)
    (``t * 1000 / T``) so that one network serves chains of any length.

    Inference (Algorithm 2): ancestral sampling over ``inference_steps`` steps of the linear schedule
    rebuilt for that length, x0-prediction clamped to [-1, 1], repeated ``rounds`` times (all rounds in
    one batch) and averaged. ``sampler="ddim"`` instead takes ``ddim_steps`` deterministic DDIM steps
    (eta = ``ddim_eta``) along the ``inference_steps`` schedule: fast sampling, not in the paper.
    Schedules and update rules are MONAI's DDPM/DDIM schedulers.

    Args:
        network: ``forward(x_t, condition, timesteps) -> eps``; if it has ``encode_condition`` and
            ``denoise(x_t, timesteps, features)``, the condition is encoded once per sample, not per step.
        train_steps: T of training (paper and code: 100).
        inference_steps: T of sampling (paper: 1000; Table 4a varies it).
        rounds: R, sampling runs averaged (paper: 4; Table 4b varies it).
        variance: ``"fixed_large"`` (sigma_t^2 = beta_t, the code) or ``"fixed_small"`` (beta-tilde_t, Algorithm 2).
        sampler: ``"ddpm"`` (the paper) or ``"ddim"``.
        ddim_steps, ddim_eta: DDIM's number of steps and stochasticity.
        clip_denoised: clamp the predicted x0 to ``clip_range`` at every step (the code).
        clip_range: (min, max) of that clamp. The code's is improved diffusion's [-1, 1], although its
            images are max-normalised magnitudes in [0, 1]; ``[0, 1]``, the data's own range, keeps an
            under-trained network's small noise-estimate bias (amplified by 1 / sqrt(abar_t) at high t)
            from darkening the whole chain (see docs/papers/diffcmr.md).
        report_single_round: also log ``test/{psnr,ssim,nmse}_r1``: the first round alone (R = 1).
        sample_seed: seed of the sampling noise in test/predict (per batch: seed + batch index), so a
            test is reproducible; ``None`` draws from the global generator.
        scheduler_interval, input_key, target_key: as ``ReconstructionTask``'s.
        metrics: extra torchmetrics on the ensembled reconstruction and the target, at test time only
            (validation does not sample).

    The sampling arguments (``SAMPLING_OPTIONS``) are not saved in checkpoints: a checkpoint tested
    with other T, R or sampler takes them from the config / command line (or load_from_checkpoint's kwargs).
    """

    monitor = "val/loss"
    monitor_mode = "min"
    test_suffixes = ("", "_r1", "_zero_filled")

    def __init__(self, network: nn.Module, train_steps: int = 100, inference_steps: int = 1000, rounds: int = 4,
                 variance: Literal["fixed_large", "fixed_small"] = "fixed_large",
                 sampler: Literal["ddpm", "ddim"] = "ddpm", ddim_steps: int = 50, ddim_eta: float = 0.0,
                 clip_denoised: bool = True, clip_range: Sequence[float] = (-1.0, 1.0),
                 report_single_round: bool = True, sample_seed: Optional[int] = 0,
                 figure_every_n_epochs: int = 1,
                 optimizer: OptimizerCallable = torch.optim.AdamW,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch",
                 metrics: Optional[dict[str, Metric]] = None, input_key: str = keys.IMAGE,
                 target_key: str = keys.TARGET):
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        self.test_suffixes = ("", "_r1", "_zero_filled") if report_single_round else ("", "_zero_filled")
        super().__init__(network, loss="mse", figure_every_n_epochs=figure_every_n_epochs, optimizer=optimizer,
                         lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval, metrics=metrics,
                         input_key=input_key, target_key=target_key)
        self.save_config_hyperparameters()
        # Sampling options are test-time choices, not properties of the trained network: kept out of the
        # checkpoint, so `run.py test --ckpt_path ...` (which restores a checkpoint's hparams over the
        # config) and load_from_checkpoint(..., rounds=8) use the values asked for (Table 4's ablations).
        for key in SAMPLING_OPTIONS:
            self.hparams.pop(key, None)
        self.train_steps = train_steps
        self.inference_steps = inference_steps
        self.rounds = rounds
        self.variance = variance
        self.sampler = sampler
        self.ddim_steps = ddim_steps
        self.ddim_eta = ddim_eta
        self.clip_denoised = clip_denoised
        if len(clip_range) != 2 or clip_range[0] >= clip_range[1]:
            raise ValueError(f"clip_range must be (min, max) with min < max, got {clip_range}")
        self.clip_range = (float(clip_range[0]), float(clip_range[1]))
        self.sample_seed = sample_seed
        self.train_scheduler = self.make_scheduler(train_steps)

    # -- schedules --------------------------------------------------------------------------------
    def make_scheduler(self, num_steps: int, sampler: str = "ddpm"):
        """MONAI's DDPM (or DDIM) scheduler on the linear schedule rebuilt for ``num_steps``.

        For T <= 20 the scaled schedule reaches beta = 1 (abar_T = 0: x0 cannot be predicted from x_T);
        betas are capped at 0.999 as improved diffusion caps its cosine schedule.
        """
        beta_start, beta_end = linear_beta_range(num_steps)
        if sampler == "ddim":
            scheduler = DDIMScheduler(num_train_timesteps=num_steps, schedule="linear_beta", beta_start=beta_start,
                                      beta_end=beta_end, clip_sample=self.clip_denoised,
                                      clip_sample_min=self.clip_range[0], clip_sample_max=self.clip_range[1])
        else:
            scheduler = DDPMScheduler(num_train_timesteps=num_steps, schedule="linear_beta", beta_start=beta_start,
                                      beta_end=beta_end, variance_type=self.variance, clip_sample=self.clip_denoised,
                                      clip_sample_min=self.clip_range[0], clip_sample_max=self.clip_range[1])
        if beta_end > MAX_BETA:
            scheduler.betas = scheduler.betas.clamp(max=MAX_BETA)
            scheduler.alphas = 1.0 - scheduler.betas
            scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
        return scheduler

    @staticmethod
    def network_timesteps(timesteps: torch.Tensor, num_steps: int) -> torch.Tensor:
        """The code's ``rescale_timesteps``: t * 1000 / T, so every chain spans [0, 1000)."""
        return timesteps.float() * (1000.0 / num_steps)

    def epsilon(self, x_t: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor, num_steps: int,
                features: Optional[torch.Tensor] = None) -> torch.Tensor:
        scaled = self.network_timesteps(timesteps, num_steps)
        if features is not None:
            return self.network.denoise(x_t, scaled, features)
        return self.network(x_t, condition, scaled)

    # -- training ---------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        condition, target = self.pair(batch)
        batch_size = target.shape[0]
        timesteps = torch.randint(0, self.train_steps, (batch_size,), device=target.device, generator=generator)
        noise = torch.randn(target.shape, device=target.device, dtype=target.dtype, generator=generator)
        x_t = self.train_scheduler.add_noise(target, noise, timesteps)
        return epsilon_loss(self.epsilon(x_t, condition, timesteps, self.train_steps), noise)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[self.input_key].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # The epsilon-MSE at fixed (t, eps) draws per batch: comparable across epochs, cheap (no sampling).
        condition, target = self.pair(batch)
        generator = torch.Generator(device=target.device).manual_seed(10_000 + batch_idx)
        self.val_loss.update(self.diffusion_loss(batch, generator), condition.shape[0])

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute())
        self.val_loss.reset()

    # -- sampling (Algorithm 2) -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, condition: torch.Tensor, rounds: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Samples (B, R, C, H, W) of I^f given I^u = ``condition`` (B, C, H, W); the R rounds run as one batch."""
        rounds = self.rounds if rounds is None else rounds
        batch_size = condition.shape[0]
        condition = condition.repeat_interleave(rounds, dim=0)
        features = self.network.encode_condition(condition) if hasattr(self.network, "encode_condition") else None
        num_steps = self.inference_steps
        scheduler = self.make_scheduler(num_steps, self.sampler)
        if self.sampler == "ddim":
            scheduler.set_timesteps(self.ddim_steps, device=condition.device)
            timesteps = scheduler.timesteps.tolist()
        else:
            timesteps = list(range(num_steps - 1, -1, -1))
        x = torch.randn(condition.shape, device=condition.device, dtype=condition.dtype, generator=generator)
        for t in timesteps:
            t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            eps = self.epsilon(x, condition, t_batch, num_steps, features).to(x.dtype)
            if self.sampler == "ddim":
                x, _ = scheduler.step(eps, t, x, eta=self.ddim_eta, generator=generator)
            else:
                x, _ = scheduler.step(eps, t, x, generator=generator)
        return x.reshape(batch_size, rounds, *x.shape[1:])

    def reconstruct(self, image: torch.Tensor, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        generator = None
        if self.sample_seed is not None:
            generator = torch.Generator(device=image.device).manual_seed(self.sample_seed + batch_idx)
        samples = self.sample(image, generator=generator)
        return {"": samples.mean(dim=1), "_r1": samples[:, 0]}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The ensembled reconstruction of ``image`` (what test and predict evaluate)."""
        return self.reconstruct(image)[""]


def reconstruction_figure(image: torch.Tensor, target: torch.Tensor, outputs: dict[str, torch.Tensor]):
    """Zero-filled input, reconstruction(s), ground truth and |error| for the first slice (paper Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("zero-filled", image)]
    panels += [(("reconstruction" if key == "" else key.strip("_")), value) for key, value in outputs.items()
               if key != "_zero_filled"]
    panels.append(("ground truth", target))
    target = target[0, 0].detach().float().cpu()
    prediction = outputs[""][0, 0].detach().float().cpu()
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.4))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image[0, 0].detach().float().cpu().numpy(), cmap="gray", vmin=0, vmax=float(target.max()))
        ax.set_title(title)
    axes[-1].imshow((prediction - target).abs().numpy(), cmap="magma")
    axes[-1].set_title("|reconstruction - truth|")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return figure
