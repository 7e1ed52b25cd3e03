"""CutiViral (Kanekar et al., ICPR 2024): cutaneous viral disease classification with geometric or generative
augmentation of a 35-image-per-class training set.

The classifiers are ``lightning_modules.backbones.ImageClassifier`` (VGG16, ResNet-18/50, MobileNet-V2,
EfficientNet-V2-S; 4-way head) trained by ``ClassificationTask`` with cross-entropy or, mirroring the paper's
"binary cross-entropy", ``BCEOneHotLoss``. This module holds what the paper adds around them:

- ``WGANGenerator`` / ``WGANCritic`` and ``WGANTask``: one unconditional WGAN per class (Arjovsky et al. 2017:
  critic loss E[D(fake)] - E[D(real)], generator loss -E[D(fake)], critic weights clipped to +-0.01 after every
  critic update, ``n_critic`` = 5 critic updates per generator update, RMSprop lr 5e-5), on the shared
  ``AdversarialTraining`` mixin's optimisers and update step (its training step alternates one generator and one
  discriminator update per batch; WGAN's ratio and weight clipping need their own step, here);
- ``ConvAutoencoder`` (paper Eq. 5-8: Conv 3->32->64->128, k3, s2, ReLU; mirrored transposed convolutions, ReLU,
  a final Sigmoid) trained with MSE by ``AutoencoderTask``, and ``CAEGenerationTask``, which generates by
  encoding a random training image, adding N(0, (0.5 std(latent))^2) to its latent and decoding;
- ``GeneratedImageWriter``: ``python run.py predict`` with either generator writes
  ``<root>/<method>/<N>/<class>/<name>.png``, which ``CutiViralDataModule(regime="generated")`` reads;
- FID (paper Eq. 9) with ``torchmetrics.image.fid.FrechetInceptionDistance`` on a local feature network
  (``FIDFeatures``: no download), ``frechet_distance`` (SciPy) as its reference, and a command line
  ``python -m lightning_modules.cutiviral fid ...`` for the paper's Table 2.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules.batch import IMAGE, LABEL, NAME, require
from lightning_modules.tasks.adversarial import AdversarialTraining
from lightning_modules.tasks.autoencoder import AutoencoderTask
from lightning_modules.tasks.base import BaseTask
from lightning_modules.tasks.classification import ClassificationTask

CLASSES = ("herpes_simplex", "herpes_zoster", "molluscum_contagiosum", "non_viral")


# ---- classifier loss ----------------------------------------------------------------------------------------
class BCEOneHotLoss(nn.Module):
    """The paper's "binary cross-entropy" for 4 classes: ``BCEWithLogitsLoss`` on one-hot targets, averaged over
    samples and classes (``ClassificationTask`` passes one-hot float targets to an injected ``loss``)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target.long(), logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


class CutiViralClassificationTask(ClassificationTask):
    """``ClassificationTask`` whose best checkpoint is chosen by ``monitor_metric`` (default ``val/loss``, min: the
    quantity the configs' early stopping watches, patience 20 on the 5 held-out images per class; the paper does not
    say what it monitored). ``**kwargs``: ``ClassificationTask``'s."""

    def __init__(self, network: nn.Module, num_classes: int = 4, monitor_metric: str = "val/loss",
                 monitor_mode: Literal["min", "max"] = "min", **kwargs):
        super().__init__(network, num_classes, **kwargs)
        self.save_config_hyperparameters()  # this class's arguments too (load_from_checkpoint)
        self.monitor, self.monitor_mode = monitor_metric, monitor_mode


# ---- WGAN ---------------------------------------------------------------------------------------------------
class WGANGenerator(nn.Module):
    """DCGAN generator: z (B, latent_dim[, 1, 1]) -> ConvT(k4, s1) to 4x4x``channels[0]`` -> ConvT(k4, s2, p1)
    blocks through ``channels[1:]`` (BatchNorm + ReLU) -> ConvT(k4, s2, p1) to ``out_channels`` with Tanh.
    Output size 4 * 2**len(channels): (512, 256, 128, 64, 32) gives the card's 3x128x128."""

    def __init__(self, latent_dim: int = 100, channels: Sequence[int] = (512, 256, 128, 64, 32), out_channels: int = 3):
        super().__init__()
        channels = list(channels)
        self.latent_dim, self.out_channels = latent_dim, out_channels
        self.image_size = 4 * 2 ** len(channels)
        layers = [nn.ConvTranspose2d(latent_dim, channels[0], 4, 1, 0, bias=False), nn.BatchNorm2d(channels[0]),
                  nn.ReLU(True)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(channels[-1], out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class WGANCritic(nn.Module):
    """The generator mirrored: Conv(k4, s2, p1) through ``channels`` with LeakyReLU(0.2), no BatchNorm (the card),
    then Conv(k4, s1) on the 4x4 map to one linear score. Input size 4 * 2**len(channels)."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256, 512), in_channels: int = 3):
        super().__init__()
        channels = list(channels)
        self.image_size = 4 * 2 ** len(channels)
        layers, c_in = [], in_channels
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1).mean(1)


def generated_prediction(images: torch.Tensor, batch: dict) -> dict:
    """What the generators' ``predict_step`` returns: images in [0, 1], each item's class and name."""
    return {IMAGE: images.clamp(0, 1), LABEL: batch[LABEL], NAME: list(batch[NAME])}


def wgan_rmsprop(parameters) -> torch.optim.Optimizer:
    """The original WGAN's optimiser: RMSprop, lr 5e-5."""
    return torch.optim.RMSprop(parameters, lr=5e-5)


class WGANTask(AdversarialTraining, BaseTask):
    """An unconditional WGAN (weight clipping) on one class's images (``CutiViralDataModule(class_index=c,
    normalization="unit")``: images in [0, 1], mapped to the generator's [-1, 1]).

    Each training batch is one critic update (fresh real batch, fresh noise; then every critic weight clamped to
    [-clip_value, clip_value]); every ``n_critic``-th batch is followed by one generator update. Logs
    ``train/critic`` (E[D(fake)] - E[D(real)]), ``train/wasserstein`` (its negation, the critic's estimate of
    the distance) and ``train/loss`` (the generator's -E[D(fake)]).

    Prediction (``python run.py predict``) draws one z per item of the predict set (noise from ``sample_seed``
    and the batch index: reproducible) and returns ``generated_prediction``, resized to ``output_size``.

    Args:
        generator, critic: the networks (their image sizes must agree).
        n_critic: critic updates per generator update (5).
        clip_value: critic weight clipping bound (0.01).
        optimizer: the generator's (RMSprop, lr 5e-5); ``discriminator_optimizer``: the critic's (None: same).
        output_size: side of the written images (None: the generator's).
    """

    monitor = None  # no meaningful "best" generator: the checkpoint callback keeps the latest

    def __init__(self, generator: nn.Module, critic: nn.Module, n_critic: int = 5, clip_value: float = 0.01,
                 output_size: Optional[int] = None, sample_seed: int = 0, input_key: str = IMAGE,
                 optimizer: OptimizerCallable = wgan_rmsprop,
                 discriminator_optimizer: Optional[OptimizerCallable] = None,
                 lr_scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, figure_every_n_epochs=0)
        self.init_adversarial(discriminator_optimizer)
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if clip_value <= 0:
            raise ValueError(f"clip_value must be > 0, got {clip_value}")
        g_size, c_size = getattr(generator, "image_size", None), getattr(critic, "image_size", None)
        if g_size is not None and c_size is not None and g_size != c_size:
            raise ValueError(f"the generator makes {g_size} px images, the critic takes {c_size} px")
        self.save_config_hyperparameters()
        self.generator, self.critic = generator, critic
        self.n_critic, self.clip_value = n_critic, clip_value
        self.output_size, self.sample_seed, self.input_key = output_size, sample_seed, input_key
        self.register_buffer("critic_updates", torch.zeros((), dtype=torch.long))

    def generator_parameters(self):
        return self.generator.parameters()

    def discriminator_parameters(self):
        return self.critic.parameters()

    def noise(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(n, self.generator.latent_dim, generator=generator).to(self.device)

    @torch.no_grad()
    def clip_critic(self) -> None:
        for parameter in self.critic.parameters():
            parameter.clamp_(-self.clip_value, self.clip_value)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        generator_optimizer, critic_optimizer = self.optimizers()
        require(batch, self.input_key, task="WGAN training")
        real = batch[self.input_key] * 2 - 1
        batch_size = real.shape[0]
        with self.toggled_optimizer(critic_optimizer):
            with torch.no_grad():
                fake = self.generator(self.noise(batch_size))
            critic_real, critic_fake = self.critic(real).mean(), self.critic(fake).mean()
            critic_loss = critic_fake - critic_real
            self._update(critic_optimizer, critic_loss)
            self.clip_critic()
        self.critic_updates += 1
        self.log("train/critic", critic_loss, batch_size=batch_size)
        self.log("train/wasserstein", -critic_loss, prog_bar=True, batch_size=batch_size)
        if int(self.critic_updates) % self.n_critic == 0:
            with self.toggled_optimizer(generator_optimizer):
                generator_loss = -self.critic(self.generator(self.noise(batch_size))).mean()
                self._update(generator_optimizer, generator_loss)
            self.log("train/loss", generator_loss, prog_bar=True, batch_size=batch_size)
        if self.scheduler_interval == "step":
            self._step_schedulers()

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n images in [0, 1] at ``output_size``."""
        images = (self.generator(self.noise(n, generator)) + 1) / 2
        if self.output_size and self.output_size != images.shape[-1]:
            images = F.interpolate(images, size=(self.output_size, self.output_size), mode="bilinear",
                                   align_corners=False)
        return images.clamp(0, 1)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        generator = torch.Generator().manual_seed(self.sample_seed * 1_000_003 + batch_idx)
        return generated_prediction(self.sample(len(batch[NAME]), generator), batch)


# ---- convolutional autoencoder ------------------------------------------------------------------------------
class ConvAutoencoder(nn.Module):
    """Paper Eq. 7-8: encoder Conv(k3, s2, p1) + ReLU through ``channels`` (3->32->64->128: 1/8 resolution),
    decoder the mirror with ConvTranspose(k3, s2, p1, output_padding 1) + ReLU, the last layer's ReLU replaced by
    a Sigmoid (the card's choice: images in [0, 1])."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128), kernel_size: int = 3):
        super().__init__()
        channels = list(channels)
        pad = kernel_size // 2
        encoder, c_in = [], in_channels
        for c_out in channels:
            encoder += [nn.Conv2d(c_in, c_out, kernel_size, 2, pad), nn.ReLU(inplace=True)]
            c_in = c_out
        decoder = []
        for c_out in [*channels[-2::-1], in_channels]:
            decoder += [nn.ConvTranspose2d(c_in, c_out, kernel_size, 2, pad, output_padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        decoder[-1] = nn.Sigmoid()
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def generate(self, x: torch.Tensor, noise_scale: float = 0.5,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decode each image's latent plus N(0, (noise_scale * std(latent of that image))^2) noise."""
        z = self.encode(x)
        sigma = noise_scale * z.flatten(1).std(1).view(-1, *([1] * (z.dim() - 1)))
        noise = torch.randn(z.shape, generator=generator).to(z)
        return self.decode(z + sigma * noise)


class CAEGenerationTask(AutoencoderTask):
    """``AutoencoderTask`` (MSE reconstruction, paper Eq. 5-6) whose prediction generates: each predict item is a
    training image (``CutiViralDataModule(generate=N)``), encoded, perturbed by N(0, (noise_scale std(latent))^2)
    and decoded (the network's ``generate``); returns ``generated_prediction``.

    Args:
        network: ``ConvAutoencoder`` (or any network with ``generate(x, noise_scale, generator)``).
        noise_scale: the latent noise's std relative to the latent's (0.5, the card's choice).
        sample_seed: seed of the latent noise (with the batch index).
        output_size: side of the written images (None: the input's).
        the rest: ``AutoencoderTask``'s.
    """

    def __init__(self, network: nn.Module, noise_scale: float = 0.5, sample_seed: int = 0,
                 output_size: Optional[int] = None, input_key: str = IMAGE, psnr_data_range: float = 1.0,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", figure_every_n_epochs: int = 1,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__(network, input_key=input_key, psnr_data_range=psnr_data_range,
                         scheduler_interval=scheduler_interval, figure_every_n_epochs=figure_every_n_epochs,
                         optimizer=optimizer, lr_scheduler=lr_scheduler)
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.save_config_hyperparameters()
        self.noise_scale, self.sample_seed, self.output_size = noise_scale, sample_seed, output_size

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        generator = torch.Generator().manual_seed(self.sample_seed * 1_000_003 + batch_idx)
        require(batch, self.input_key, task="CAE generation")
        images = self.network.generate(batch[self.input_key], self.noise_scale, generator)
        if self.output_size and self.output_size != images.shape[-1]:
            images = F.interpolate(images, size=(self.output_size, self.output_size), mode="bilinear",
                                   align_corners=False)
        return generated_prediction(images, batch)


# ---- writing the generated images ---------------------------------------------------------------------------
class GeneratedImageWriter(BasePredictionWriter):
    """``<root>/<method>/<n>/<class>/<name>.png``: the generators' predictions (``generated_prediction``) as 8-bit
    RGB PNGs, where ``CutiViralDataModule(regime="generated", generated_dir=root)`` reads them.

    Args:
        root: the generated-images root; None: the datamodule's ``generated_dir``.
        method: the ``<method>`` folder (``wgan``, ``cae``); None: the datamodule's ``generation_method``.
        n: the ``<N>`` folder; None: the datamodule's ``generate``.
        class_names: class index -> folder.
    """

    def __init__(self, root: Optional[str] = None, method: Optional[str] = None, n: Optional[int] = None,
                 class_names: Sequence[str] = CLASSES):
        super().__init__(write_interval="batch")
        self.root, self.method, self.n, self.class_names = root, method, n, list(class_names)

    def folder(self, trainer) -> Path:
        datamodule = trainer.datamodule
        values = {"root": self.root if self.root is not None else getattr(datamodule, "generated_dir", None),
                  "method": self.method or getattr(datamodule, "generation_method", None),
                  "n": self.n if self.n is not None else getattr(datamodule, "generate", None)}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise ValueError(f"GeneratedImageWriter needs {missing}: give them, or a CutiViralDataModule with "
                             "generated_dir, generation_method and generate")
        return Path(values["root"]) / values["method"] / str(values["n"])

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        from PIL import Image

        images = (prediction[IMAGE].float().clamp(0, 1) * 255).round().to(torch.uint8)
        images = images.permute(0, 2, 3, 1).cpu().numpy()
        for image, label, name in zip(images, prediction[LABEL].tolist(), prediction[NAME]):
            folder = self.folder(trainer) / self.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image if image.shape[-1] == 3 else image[..., 0]).save(folder / f"{name}.png")


# ---- FID ----------------------------------------------------------------------------------------------------
class FIDFeatures(nn.Module):
    """uint8 images (B, 3, H, W) -> (B, D) features for FID: resized to ``size``, ImageNet-normalised, through
    ``network`` (any image -> (B, D) or (B, D, h, w) module; maps are averaged) or, when None, the pooled
    features of ``ImageClassifier(backbone, pretrained=<local checkpoint>)``. Not InceptionV3's pool3 features
    unless the checkpoint is one: FIDs on other features are not comparable with the literature's (or the
    paper's)."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, network: Optional[nn.Module] = None, backbone: str = "resnet50",
                 pretrained: Optional[str] = None, size: int = 224):
        super().__init__()
        if network is None:
            from lightning_modules.backbones import ImageClassifier

            classifier = ImageClassifier(backbone=backbone, num_classes=1000, pretrained=pretrained)
            network = _Pooled(classifier)
        self.network, self.size = network.eval(), size
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True):  # always in eval mode (BatchNorm statistics fixed)
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        features = self.network((x - self.mean) / self.std)
        return features.flatten(2).mean(2) if features.dim() > 2 else features


class _Pooled(nn.Module):
    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier.pooled(x)


def fid(real: torch.Tensor, fake: torch.Tensor, feature: nn.Module, batch_size: int = 64) -> float:
    """FID (paper Eq. 9) between two uint8 image sets (N, 3, H, W) with torchmetrics on ``feature``."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=feature, reset_real_features=True, input_img_size=tuple(real.shape[1:]))
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch_size):
            metric.update(images[start:start + batch_size], real=is_real)
    return float(metric.compute())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) with SciPy's ``sqrtm`` (the reference for ``fid``)."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _as_uint8_tensor(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    import albumentations as A

    resize = A.Resize(size, size)
    return torch.from_numpy(np.stack([resize(image=image)["image"] for image in images])).permute(0, 3, 1, 2)


def table2_fids(datamodule, methods: Sequence[str], counts: Sequence[int], feature: nn.Module,
                size: int = 128) -> dict[str, float]:
    """Table 2: FID between the training split's real images (all classes) and (a) their six geometric copies,
    (b) each ``<method>/<N>`` generated set under the datamodule's ``generated_dir`` (skipped when absent)."""
    from datamodules.cutiviral import GEOMETRIC

    datamodule.setup("fit")
    train = [datamodule.items[i] for i in datamodule.split_indices["train"]]
    real_images = [datamodule.read_image(item) for item in train]
    real = _as_uint8_tensor(real_images, size)
    results = {"fid/geometric": fid(real, _as_uint8_tensor(
        [op(image) for image in real_images for op in GEOMETRIC.values()], size), feature)}
    for method in methods:
        for n in counts:
            root = Path(datamodule.generated_dir or "") / method / str(n)
            if not root.is_dir():
                continue
            files = sorted(p for p in root.rglob("*.png"))
            from datamodules.segmentation import read_image as read_file

            fake = [read_file(p, 3, lambda problem, path: RuntimeError(f"{problem}: {path}")) for p in files]
            results[f"fid/{method}/{n}"] = fid(real, _as_uint8_tensor(fake, size), feature)
    return results


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m lightning_modules.cutiviral",
                                     description="CutiViral Table 2: FID of geometric and generated sets")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fid")
    p.add_argument("--data_dir", default="", help="the dataset root; empty: the synthetic stand-in")
    p.add_argument("--generated_dir", required=True)
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["wgan", "cae"])
    p.add_argument("--counts", nargs="+", type=int, default=[100, 200, 300, 400, 500])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--pretrained", default=None, help="local checkpoint of the feature network (else random init)")
    p.add_argument("--feature_size", type=int, default=224)
    p.add_argument("--image_size", type=int, default=128, help="images are resized to this before the features")
    p.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.data_dir:
        from datamodules.cutiviral import CutiViralDataModule as Module

        datamodule = Module(args.data_dir, generated_dir=args.generated_dir, split_seed=args.split_seed)
    else:
        from datamodules.standins.synthetic_skin import SyntheticSkinDataModule as Module

        datamodule = Module(generated_dir=args.generated_dir, split_seed=args.split_seed)
    feature = FIDFeatures(backbone=args.backbone, pretrained=args.pretrained, size=args.feature_size)
    results = table2_fids(datamodule, args.methods, args.counts, feature, args.image_size)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        Path(args.output).write_text(text)
    return results


if __name__ == "__main__":
    main()
