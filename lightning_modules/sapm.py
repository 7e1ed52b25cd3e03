"""SAPM (ICPR 2024): single-source domain generalisation for colour fundus optic disc (OD) / optic cup (OC)
segmentation by Spatial Amplitude Perturbation and Sensitivity guidance.

Pieces (paper section 3, spec card ``icpr24_sapm_single_source_dg_fundus``):

- :func:`spatial_amplitude_perturbation` (SAPM, Eq. 1-5): per image and colour channel, the Fourier amplitude is
  multiplied by Gaussian noise ``mu(i, j) ~ N(1, alpha * D(i, j) + beta)`` whose variance grows with the normalised
  squared distance ``D`` from the spectrum centre; the phase is kept; the real part of the inverse FFT is the
  augmented image. No other domain is needed.
- :class:`SensitivityGuidedUNet`: the U-Net of CCSDG (the paper's strongest baseline, whose U-Net the card adopts):
  ResNet-34 encoder, ``UnetBlock`` decoder (transposed conv of the deeper map || 1x1 conv of the skip, ReLU, BN),
  2 sigmoid outputs (OD, OC); plus the SE channel attention on the low-level feature (the encoder's ``conv1``
  output, Eq. 8-9: ``CA = sigmoid(Conv1x1(GAP(f)))``, ``f_out = CA * f``).
- :func:`sensitivity_vector` (Eq. 6-7), :func:`guidance_loss` (Eq. 10), the consistency loss (Eq. 11: MSE of the two
  streams' sigmoid outputs), and :class:`SAPMSegmentationTask`, the segmentation family's multi-label task with the
  two-stream training step ``L = 1 * L_seg + 0.5 * L_con + 0.5 * L_g`` (Eq. 12).

The ablation rows of Table 3 are options of the task: ``augmentation`` ``sapm`` / ``normaug`` (colour jitter +
Gaussian blur, kornia) / ``none`` and ``sensitivity`` (the SE module and ``L_g``) on or off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric

from lightning_modules import batch as keys
from lightning_modules.backbones import _read_state_dict, build_trunk
from lightning_modules.tasks.segmentation import SegmentationTask

OutputRange = Literal["minmax", "clip", "none"]


# ----------------------------------------------------------------------------------------------------- SAPM
def amplitude_noise_variance(height: int, width: int, alpha: float = 6.0, beta: float = 0.5,
                             device=None) -> torch.Tensor:
    """sigma^2(i, j) = alpha * D(i, j) + beta (Eq. 2-3) in the *unshifted* FFT order (H, W): D is the squared
    distance from the spectrum centre (0, 0) over its maximum, with centred coordinates i in [-H/2, H/2)."""
    i = torch.arange(height, device=device, dtype=torch.float32) - height // 2
    j = torch.arange(width, device=device, dtype=torch.float32) - width // 2
    distance = i[:, None] ** 2 + j[None, :] ** 2
    variance = alpha * distance / distance.max().clamp_min(1.0) + beta  # centred (fftshifted) layout
    return torch.fft.ifftshift(variance, dim=(-2, -1))  # back to fft2's order (DC at [0, 0])


def spatial_amplitude_perturbation(image: torch.Tensor, alpha: float = 6.0, beta: float = 0.5,
                                   per_channel: bool = True, abs_mu: bool = False, output_range: OutputRange = "clip",
                                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """SAPM (Eq. 1-5) on a batch (B, C, H, W) in [0, 1]: one augmented image per input.

    ``per_channel``: independent noise per colour channel (card's choice; else one draw shared by the channels).
    ``abs_mu``: use |mu| (the paper keeps the sign: a negative draw flips that frequency's phase by pi).
    ``output_range``: ``clip`` clamps to [0, 1] (default: keeps the brightness/colour change of the perturbed DC
    term, which Eq. 1 treats explicitly), ``minmax`` rescales each image and channel to [0, 1] (the card's choice,
    which cancels the DC term's perturbation), ``none`` returns the raw real part. Computed in float32 (FFTs
    under autocast).
    """
    dtype = image.dtype
    x = image.float()
    b, c, h, w = x.shape
    spectrum = torch.fft.fft2(x)
    amplitude, phase = spectrum.abs(), spectrum.angle()
    std = amplitude_noise_variance(h, w, alpha, beta, device=x.device).sqrt()
    noise_shape = (b, c if per_channel else 1, h, w)
    noise = torch.randn(noise_shape, generator=generator, device=x.device)
    mu = 1.0 + std * noise
    if abs_mu:
        mu = mu.abs()
    out = torch.fft.ifft2(torch.polar(amplitude * mu, phase)).real
    if output_range == "minmax":
        low = out.amin(dim=(-2, -1), keepdim=True)
        high = out.amax(dim=(-2, -1), keepdim=True)
        out = (out - low) / (high - low).clamp_min(1e-6)
    elif output_range == "clip":
        out = out.clamp(0.0, 1.0)
    elif output_range != "none":
        raise ValueError(f"output_range must be minmax, clip or none, got {output_range!r}")
    return out.to(dtype)


class SpatialAmplitudePerturbation(nn.Module):
    """SAPM as a module (no parameters): ``forward(image) -> augmented image``; see
    :func:`spatial_amplitude_perturbation`."""

    def __init__(self, alpha: float = 6.0, beta: float = 0.5, per_channel: bool = True, abs_mu: bool = False,
                 output_range: OutputRange = "clip"):
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta are variances (>= 0), got {alpha}, {beta}")
        self.alpha, self.beta, self.per_channel, self.abs_mu = alpha, beta, per_channel, abs_mu
        self.output_range = output_range

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return spatial_amplitude_perturbation(image, self.alpha, self.beta, self.per_channel, self.abs_mu,
                                              self.output_range)


class NormalAugmentation(nn.Module):
    """Table 3's "NormAug": colour jitter + Gaussian blur (kornia, per batch, on [0, 1] images)."""

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3, hue: float = 0.05,
                 blur_sigma: Sequence[float] = (0.1, 2.0), blur_kernel: int = 5, blur_p: float = 0.5):
        super().__init__()
        import kornia.augmentation as K

        self.augment = nn.Sequential(
            K.ColorJitter(brightness, contrast, saturation, hue, p=1.0),
            K.RandomGaussianBlur((blur_kernel, blur_kernel), tuple(blur_sigma), p=blur_p))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.augment(image.float()).clamp(0, 1).to(image.dtype)


# ----------------------------------------------------------------------------------------------------- network
class ChannelAttention(nn.Module):
    """SE without reduction (Eq. 8): ``CA = sigmoid(Conv1x1(GAP(f)))``, (B, C, 1, 1)."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(F.adaptive_avg_pool2d(features, 1)))


class UnetBlock(nn.Module):
    """CCSDG's decoder block: ConvTranspose2d(up_in, n_out/2, 2, 2)(deeper) || Conv2d(x_in, n_out/2, 1)(skip),
    then ReLU, then BatchNorm(n_out)."""

    def __init__(self, up_in: int, x_in: int, n_out: int):
        super().__init__()
        half = n_out // 2
        self.x_conv = nn.Conv2d(x_in, half, 1)
        self.tr_conv = nn.ConvTranspose2d(up_in, half, 2, stride=2)
        self.bn = nn.BatchNorm2d(n_out)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(torch.cat([self.tr_conv(up), self.x_conv(skip)], dim=1)))


class SensitivityGuidedUNet(nn.Module):
    """ResNet U-Net (CCSDG's) with the SE channel attention on the encoder's ``conv1`` output.

    ``forward(x)`` -> logits (B, num_classes, H, W); ``forward(x, return_features=True)`` -> ``(logits, f, ca)``
    with ``f`` the low-level feature (conv1 output, before the attention: the sensitivity's input) and ``ca``
    (B, 64, 1, 1) the channel attention (``None`` without ``sensitivity``).

    Args:
        backbone: ``resnet34`` (the paper) or ``resnet18`` (the CPU stand-in), torchvision's layout (MONAI ResNet).
        num_classes: output channels (OD, OC).
        in_channels: image channels.
        sensitivity: the SE module on the low-level feature (Table 3's "Sensitivity").
        decoder_channels: the UnetBlocks' width (CCSDG: 256).
        pretrained: a local torchvision ``resnet*.pth`` (state dict) for the encoder; its ``fc`` is ignored.
        width: encoder channel multiplier (1 = the paper's ResNet; < 1 only for fast CPU tests and demos).
    """

    def __init__(self, backbone: Literal["resnet18", "resnet34"] = "resnet34", num_classes: int = 2,
                 in_channels: int = 3, sensitivity: bool = True, decoder_channels: int = 256,
                 pretrained: Optional[str] = None, width: float = 1.0):
        super().__init__()
        if backbone not in ("resnet18", "resnet34"):
            raise ValueError(f"backbone must be resnet18 or resnet34 (basic-block ResNets), got {backbone!r}")
        self.encoder, _ = build_trunk(backbone, in_channels, width)
        if pretrained:
            self.load_encoder(pretrained)
        c1, c2, c3, c4 = (max(1, int(round(c * width))) for c in (64, 128, 256, 512))
        self.attention = ChannelAttention(c1) if sensitivity else None
        d = decoder_channels
        self.up1 = UnetBlock(c4, c3, d)
        self.up2 = UnetBlock(d, c2, d)
        self.up3 = UnetBlock(d, c1, d)
        self.up4 = UnetBlock(d, c1, d)
        self.up5 = nn.ConvTranspose2d(d, num_classes, 2, stride=2)

    def load_encoder(self, path: str) -> None:
        state = {k: v for k, v in _read_state_dict(Path(path)).items() if not k.startswith("fc.")}
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RuntimeError(f"{path}: not a torchvision ResNet state dict (missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]})")

    def forward(self, x: torch.Tensor, return_features: bool = False):
        enc = self.encoder
        f = enc.conv1(x)  # the low-level feature
        ca = self.attention(f) if self.attention is not None else None
        stem = enc.act(enc.bn1(f * ca if ca is not None else f))  # H/2, 64
        s1 = enc.layer1(enc.maxpool(stem))  # H/4, 64
        s2 = enc.layer2(s1)  # H/8, 128
        s3 = enc.layer3(s2)  # H/16, 256
        s4 = F.relu(enc.layer4(s3))  # H/32, 512
        y = self.up4(self.up3(self.up2(self.up1(s4, s3), s2), s1), stem)
        logits = self.up5(y)
        return (logits, f, ca) if return_features else logits


# ----------------------------------------------------------------------------------------------------- losses
def sensitivity_vector(f_ori: torch.Tensor, f_aug: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """S (Eq. 6-7): FD = GAP(|f_ori - f_aug|) (B, C), min-max normalised over the channels of each sample."""
    fd = (f_ori - f_aug).abs().mean(dim=(-2, -1))
    low, high = fd.amin(dim=1, keepdim=True), fd.amax(dim=1, keepdim=True)
    return (fd - low) / (high - low).clamp_min(eps)


def guidance_loss(attention: torch.Tensor, sensitivity: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L_g (Eq. 10) = mean over (B, C) of (log CA * log S - 1)^2, CA and S clamped to [eps, 1 - eps]: minimal at
    CA = exp(1 / log S), so a sensitive channel (S -> 1) is pushed to CA -> 0 and an insensitive one (S -> 0)
    to CA -> 1."""
    ca = attention.flatten(1).float().clamp(eps, 1 - eps)
    s = sensitivity.flatten(1).float().clamp(eps, 1 - eps)
    return ((torch.log(ca) * torch.log(s) - 1.0) ** 2).mean()


def consistency_loss(logits_ori: torch.Tensor, logits_aug: torch.Tensor) -> torch.Tensor:
    """L_con (Eq. 11): MSE between the two streams' sigmoid outputs."""
    return F.mse_loss(torch.sigmoid(logits_ori.float()), torch.sigmoid(logits_aug.float()))


# ----------------------------------------------------------------------------------------------------- task
class SAPMSegmentationTask(SegmentationTask):
    """The segmentation family's multi-label task (OD, OC sigmoid channels) with SAPM's two-stream training step.

    Every training batch: ``x_aug = augment(x_ori)``; both go through the network in one batch (BatchNorm sees
    both streams); ``L_seg`` = the family's BCE + Dice on each stream's logits, averaged; ``L_con`` = MSE of the
    sigmoid outputs; ``L_g`` = the guidance loss of each stream's channel attention against the (detached)
    sensitivity of the low-level features, averaged over the streams; ``loss = seg_weight * L_seg + con_weight *
    L_con + guidance_weight * L_g``. ``augmentation: none`` trains the plain U-Net on ``x_ori`` alone (Table 3's
    first row). Evaluation is the family's (per target domain with the datamodule's ``test_sets``).

    Args:
        network: :class:`SensitivityGuidedUNet` (``return_features=True`` gives the low-level feature and CA).
        augmentation: ``sapm``, ``normaug`` (colour jitter + Gaussian blur) or ``none``.
        alpha, beta, per_channel, abs_mu, output_range: SAPM's (see :func:`spatial_amplitude_perturbation`).
        sensitivity: train with ``L_g`` (needs the network's SE module, ``sensitivity=True``).
        seg_weight, con_weight, guidance_weight: lambda_1..3 of Eq. 12 (1, 0.5, 0.5).
        guidance_streams: ``both`` (CA of x_ori and x_aug, the card's choice) or ``original``.
        detach_sensitivity: no gradient through S (card's choice).
        select_last: test the last epoch's weights (the paper reports its final epochs; no model selection on the
            source) instead of the best validation checkpoint.
        (the rest: as ``SegmentationTask``; ``num_classes`` 2 and ``multilabel`` true for OD/OC)
    """

    def __init__(self, network: nn.Module, augmentation: Literal["sapm", "normaug", "none"] = "sapm",
                 alpha: float = 6.0, beta: float = 0.5, per_channel: bool = True, abs_mu: bool = False,
                 output_range: OutputRange = "clip", sensitivity: bool = True, seg_weight: float = 1.0,
                 con_weight: float = 0.5, guidance_weight: float = 0.5,
                 guidance_streams: Literal["both", "original"] = "both", detach_sensitivity: bool = True,
                 select_last: bool = True, num_classes: int = 2, multilabel: bool = True, bce_weight: float = 1.0,
                 dice_weight: float = 1.0, dice_smooth: float = 1e-5,
                 metric_aggregation: Literal["micro", "per_image"] = "per_image", threshold: float = 0.5,
                 monitor_metric: str = "val/dice", figure_every_n_epochs: int = 1, num_figure_samples: int = 4,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch",
                 metrics: Optional[dict[str, Metric]] = None, input_key: str = keys.IMAGE,
                 target_key: str = keys.MASK, class_names: Optional[Sequence[str]] = ("OD", "OC"),
                 hd95: bool = False):
        super().__init__(network, num_classes=num_classes, bce_weight=bce_weight, dice_weight=dice_weight,
                         dice_smooth=dice_smooth, metric_aggregation=metric_aggregation, threshold=threshold,
                         monitor_metric=monitor_metric, figure_every_n_epochs=figure_every_n_epochs,
                         num_figure_samples=num_figure_samples, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         scheduler_interval=scheduler_interval, metrics=metrics, input_key=input_key,
                         target_key=target_key, class_names=class_names, hd95=hd95, multilabel=multilabel)
        self.save_config_hyperparameters()
        if augmentation not in ("sapm", "normaug", "none"):
            raise ValueError(f"augmentation must be sapm, normaug or none, got {augmentation!r}")
        if guidance_streams not in ("both", "original"):
            raise ValueError(f"guidance_streams must be both or original, got {guidance_streams!r}")
        if sensitivity and augmentation == "none":
            raise ValueError("sensitivity guidance compares the original and the augmented stream: it needs an "
                             "augmentation (sapm or normaug)")
        if sensitivity and getattr(network, "attention", None) is None:
            raise ValueError("sensitivity guidance needs the network's channel attention (sensitivity: true)")
        self.augmentation_name = augmentation
        self.augment = (SpatialAmplitudePerturbation(alpha, beta, per_channel, abs_mu, output_range)
                        if augmentation == "sapm" else NormalAugmentation() if augmentation == "normaug" else None)
        self.sensitivity = sensitivity
        self.seg_weight, self.con_weight, self.guidance_weight = seg_weight, con_weight, guidance_weight
        self.guidance_streams, self.detach_sensitivity = guidance_streams, detach_sensitivity
        if select_last:  # the checkpoint callback then keeps the latest epoch as "best"
            self.monitor = None

    def two_stream_losses(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 12's terms on one batch (see the class docstring)."""
        if self.augment is None:
            logits = self.network(image)
            seg = self._loss_terms(logits, mask)["loss"]
            return {"loss": self.seg_weight * seg, "seg": seg}
        with torch.no_grad():
            augmented = self.augment(image)
        batch = image.shape[0]
        logits, features, attention = self.network(torch.cat([image, augmented]), return_features=True)
        logits_ori, logits_aug = logits[:batch], logits[batch:]
        seg = 0.5 * (self._loss_terms(logits_ori, mask)["loss"] + self._loss_terms(logits_aug, mask)["loss"])
        con = consistency_loss(logits_ori, logits_aug)
        out = {"seg": seg, "con": con}
        total = self.seg_weight * seg + self.con_weight * con
        if self.sensitivity:
            s = sensitivity_vector(features[:batch].float(), features[batch:].float())
            s = s.detach() if self.detach_sensitivity else s
            terms = [guidance_loss(attention[:batch], s)]
            if self.guidance_streams == "both":
                terms.append(guidance_loss(attention[batch:], s))
            out["guidance"] = sum(terms) / len(terms)
            total = total + self.guidance_weight * out["guidance"]
        out["loss"] = total
        return out

    def on_test_epoch_end(self) -> None:
        """Also the paper's "Average" columns: the mean over the target domains of each domain's Dice per label,
        ``test/domain_mean/dice/<label>`` (and over the labels, ``test/domain_mean/dice``)."""
        sets = getattr(self, "test_set_metrics", {})
        if len(sets) > 1:
            per_set = torch.stack([metrics["metrics"].compute_per_class()["dice"].float() for metrics in sets.values()])
            for name, value in zip(self.foreground_names(), per_set.mean(0)):
                self.log(f"test/domain_mean/dice/{name}", value)
            self.log("test/domain_mean/dice", per_set.mean())
        super().on_test_epoch_end()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, mask = self._inputs(batch)
        out = self.two_stream_losses(image, mask)
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=image.shape[0])
        return out["loss"]
