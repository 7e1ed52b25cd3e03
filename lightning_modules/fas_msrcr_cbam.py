"""Face anti-spoofing with MSRCR + CBAM and a depth-supervised GAN (ICPR 2024, "Securing Faces: A GAN-Powered
Defense Against Spoofing with MSRCR and CBAM").

Three networks (plain ``nn.Module``s) and the task that trains them:

- ``DepthGenerator`` (G): the RGB frame and its MSRCR image in, a pseudo-depth map and the encoder latent out.
  CBAM on the MSRCR image re-weights the RGB image, R = I_RGB * CBAM(I_MSRCR) (Eq. 5; ``fusion="cbam"``), or on
  3x3-conv stem features of both branches (``cbam_on="features"``, the introduction's "multiplication of the
  features of each branch"); ablations: ``fusion="concat"`` (RGB + MSRCR as 6 channels, no CBAM: Table 6's "U-Net
  RGB+MSRCR"), ``fusion="rgb"`` (RGB only) and ``skips=False`` (plain encoder-decoder). U-Net on an EfficientNet-B4
  encoder (MONAI's, channels 24/32/56/160/448 at strides 2-32; a lukemelas / MONAI ImageNet checkpoint loads from a
  local file) or a small CNN for CPU stand-ins; the decoder upsamples from stride 32 to ``depth_stride`` (8: a 32x32
  map from 256x256) with skip connections, then conv -> tanh, mapped to [0, 1] by (y + 1) / 2.
- ``DepthPatchDiscriminator`` (D): pix2pix PatchGAN on the pair (depth, RGB resized to the depth's size).
- ``LatentClassifier`` (C): GAP -> dropout -> linear on the encoder latent: the live logit.

``FaceAntiSpoofingGANTask`` trains them with ``tasks.adversarial.AdversarialTraining``: G + C minimise
lambda_GAN BCE(D(I, G(I)), real) + lambda_L1 |D_gt - G(I)|_1 + lambda_cls BCE(C(z), live) (Eqs. 7-9), D minimises
(BCE(D(I, D_gt), real) + BCE(D(I, G(I)), fake)) / 2 (Eq. 6). Evaluation: the classifier's live probability per
frame (and its mean per video), APCER / BPCER / ACER / HTER at the threshold chosen on the validation (dev) set at
its EER, the set's own EER and AUC (``metrics/antispoofing.py``), in percent.

Batches (``lightning_modules/batch.py``): ``image`` (B, 6, H, W) RGB then MSRCR in [0, 1] (3 channels: RGB only),
``target`` (B, 1, H/s, W/s) the pseudo-depth (zeros for attacks), ``label`` (B,) the presentation class (0 bona
fide, k >= 1 attack type k), ``group`` (B,) the video id.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.aggregation import CatMetric

from lightning_modules import batch as keys
from lightning_modules.blocks.cbam import CBAM
from lightning_modules.losses.reconstruction import discriminator_loss, generator_adversarial_loss
from lightning_modules.metrics.antispoofing import equal_error_rate, group_mean, pad_report
from lightning_modules.tasks.adversarial import FAKE, AdversarialTraining
from lightning_modules.tasks.base import BaseTask

Encoder = Literal["efficientnet_b4", "tiny_cnn"]
Fusion = Literal["cbam", "concat", "rgb"]


# ------------------------------------------------------------------------------------------------ encoders
class TinyEncoder(nn.Module):
    """Five stride-2 stages of [conv3x3-BN-ReLU] x 2 (strides 2..32), the CPU stand-in's encoder; returns every
    stage's features (the U-Net skips) like ``EfficientNetB4Encoder``."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (8, 16, 24, 32, 64)):
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"the encoder has 5 stages (strides 2-32); got channels {list(channels)}")
        self.out_channels = tuple(channels)
        stages, cin = [], in_channels
        for cout in channels:
            stages.append(nn.Sequential(conv_bn_relu(cin, cout, stride=2), conv_bn_relu(cout, cout)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class EfficientNetB4Encoder(nn.Module):
    """MONAI's EfficientNet-B4 feature encoder (24/32/56/160/448 channels at strides 2/4/8/16/32), optionally
    from a local ImageNet checkpoint (lukemelas ``efficientnet_pytorch`` or MONAI ``EfficientNetBN`` keys, which
    are the same; the classifier head's keys are ignored). No checkpoint: random init (the paper's is ImageNet)."""

    out_channels = (24, 32, 56, 160, 448)

    def __init__(self, in_channels: int = 3, pretrained: Optional[str] = None):
        super().__init__()
        from monai.networks.nets.efficientnet import EfficientNetEncoder

        self.net = EfficientNetEncoder(model_name="efficientnet-b4", pretrained=False, spatial_dims=2,
                                       in_channels=in_channels)
        # The classification head (conv_head 448 -> 1792, bn1, fc) is not used by the feature encoder: dropped, so
        # that every parameter gets a gradient (DDP) and the optimiser holds only what trains.
        for name in ("_conv_head", "_bn1", "_fc", "_avg_pooling", "_dropout"):
            delattr(self.net, name)
        if pretrained is not None:
            self.load_checkpoint(pretrained)

    def load_checkpoint(self, path: str) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"EfficientNet-B4 checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = self.net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in usable]
        if len(usable) < 0.9 * len(own):
            raise RuntimeError(f"{path}: only {len(usable)} of the encoder's {len(own)} tensors match "
                               f"(missing e.g. {missing[:3]}); expected lukemelas/MONAI EfficientNet-B4 keys")
        self.net.load_state_dict(usable, strict=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def he_uniform_(module: nn.Module) -> None:
    """Keras' "He uniform" on the convolutions and linear layers of the paper's new modules; zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------- generator
class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the skip (if any), 2 x [conv3x3-BN-ReLU]."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(cin + skip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class DepthGenerator(nn.Module):
    """G: (B, 6, H, W) [RGB, MSRCR] (or (B, 3, H, W) RGB with ``fusion="rgb"``) -> (depth (B, 1, H/s, W/s) in
    [0, 1], latent (B, C, H/32, W/32)).

    Args:
        encoder: "efficientnet_b4" (the paper) or "tiny_cnn" (stand-ins; widths ``encoder_channels``).
        fusion: "cbam" (R = RGB * CBAM(MSRCR), Eq. 5), "concat" (RGB and MSRCR stacked, no attention) or "rgb".
        cbam_on: "image" (CBAM on the 3-channel MSRCR image, Eq. 5) or "features" (3x3 conv stems to
            ``stem_channels`` on both branches, CBAM on the MSRCR features, their product into the encoder).
        cbam_reduction: CBAM's channel MLP ratio (8; hidden = max(1, C // 8)).
        skips: U-Net skip connections (False: the "simple encoder-decoder" ablation).
        depth_stride: output stride of the depth map (8: 32x32 from 256x256); a power of 2 in 2..32.
        decoder_channels: one width per decoder block (log2(32 / depth_stride) blocks).
        pretrained: local EfficientNet-B4 ImageNet checkpoint (None: random init).
    """

    def __init__(self, encoder: Encoder = "efficientnet_b4", fusion: Fusion = "cbam",
                 cbam_on: Literal["image", "features"] = "image", cbam_reduction: int = 8, skips: bool = True,
                 depth_stride: int = 8, decoder_channels: Sequence[int] = (256, 128),
                 encoder_channels: Sequence[int] = (8, 16, 24, 32, 64), stem_channels: int = 32,
                 pretrained: Optional[str] = None):
        super().__init__()
        if fusion not in ("cbam", "concat", "rgb"):
            raise ValueError(f"fusion must be cbam, concat or rgb; got {fusion!r}")
        if cbam_on not in ("image", "features"):
            raise ValueError(f"cbam_on must be image or features; got {cbam_on!r}")
        if depth_stride not in (2, 4, 8, 16, 32):
            raise ValueError(f"depth_stride must be a power of 2 in 2..32, got {depth_stride}")
        blocks = int(math.log2(32 // depth_stride))
        if len(decoder_channels) != blocks:
            raise ValueError(f"depth_stride {depth_stride} needs {blocks} decoder widths, got {list(decoder_channels)}")
        self.fusion, self.cbam_on, self.skips, self.depth_stride = fusion, cbam_on, skips, depth_stride
        self.in_channels = 3 if fusion == "rgb" else 6
        encoder_in = 6 if fusion == "concat" else 3
        if fusion == "cbam" and cbam_on == "features":
            self.rgb_stem, self.msrcr_stem = conv_bn_relu(3, stem_channels), conv_bn_relu(3, stem_channels)
            self.cbam = CBAM(stem_channels, reduction=cbam_reduction)
            encoder_in = stem_channels
        elif fusion == "cbam":
            self.cbam = CBAM(3, reduction=cbam_reduction)
        if encoder == "efficientnet_b4":
            self.encoder = EfficientNetB4Encoder(encoder_in, pretrained)
        elif encoder == "tiny_cnn":
            if pretrained is not None:
                raise ValueError("pretrained applies to the efficientnet_b4 encoder")
            self.encoder = TinyEncoder(encoder_in, encoder_channels)
        else:
            raise ValueError(f"encoder must be efficientnet_b4 or tiny_cnn; got {encoder!r}")
        enc = self.encoder.out_channels
        self.latent_channels = enc[-1]
        decoder, cin = [], enc[-1]
        for i, cout in enumerate(decoder_channels):
            skip = enc[-2 - i] if skips else 0
            decoder.append(DecoderBlock(cin, skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv2d(cin, 1, 3, padding=1)
        new_modules = [self.decoder, self.head] + [getattr(self, n) for n in ("cbam", "rgb_stem", "msrcr_stem")
                                                   if hasattr(self, n)]
        if encoder == "tiny_cnn":
            new_modules.append(self.encoder)
        for module in new_modules:
            he_uniform_(module)

    def fuse(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input from the (RGB, MSRCR) stack."""
        if x.shape[1] < self.in_channels:
            raise ValueError(f"fusion {self.fusion!r} needs {self.in_channels} input channels, got {x.shape[1]}")
        rgb = x[:, :3]
        if self.fusion == "rgb":
            return rgb
        msrcr = x[:, 3:6]
        if self.fusion == "concat":
            return torch.cat([rgb, msrcr], dim=1)
        if self.cbam_on == "features":
            return self.rgb_stem(rgb) * self.cbam(self.msrcr_stem(msrcr))
        return rgb * self.cbam(msrcr)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(self.fuse(x))
        y = features[-1]
        for i, block in enumerate(self.decoder):
            y = block(y, features[-2 - i] if self.skips else None)
        depth = (torch.tanh(self.head(y)) + 1.0) / 2.0
        return depth, features[-1]


# ------------------------------------------------------------------------------------ discriminator, classifier
class DepthPatchDiscriminator(nn.Module):
    """pix2pix PatchGAN on (depth, RGB) pairs: C64 (stride 2, no norm) - C128 (s2) - C256 (s1) - conv -> 1 logit
    map, ``kernel_size`` convs (4 in pix2pix; 3 keeps an 8x8 stand-in map non-empty), BN, LeakyReLU 0.2."""

    def __init__(self, in_channels: int = 4, channels: Sequence[int] = (64, 128, 256),
                 strides: Sequence[int] = (2, 2, 1), kernel_size: int = 4):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("one stride per discriminator layer")
        layers, cin = [], in_channels
        for i, (cout, stride) in enumerate(zip(channels, strides)):
            layers.append(nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=1, bias=i == 0))
            if i:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, kernel_size, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        he_uniform_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentClassifier(nn.Module):
    """C: global average pool -> dropout -> linear -> the live logit (B,)."""

    def __init__(self, in_channels: int = 448, dropout: float = 0.3):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, 1)
        he_uniform_(self)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(latent.mean(dim=(2, 3)))).squeeze(1)


# ----------------------------------------------------------------------------------------------------- task
class FaceAntiSpoofingGANTask(AdversarialTraining, BaseTask):
    """The depth-supervised GAN with a latent classifier (see the module docstring).

    Args:
        generator, discriminator, classifier: G, D, C.
        lambda_gan, lambda_l1, lambda_cls: the generator's loss weights (1, 100, 1; lambda_gan = 0: the
            depth-only U-Net baseline, D then trains but G ignores it).
        classifier_mode: "joint" (C's gradient reaches the encoder) or "detached" (C on the detached latent:
            the encoder learns from the depth losses only).
        video_level: also score videos (mean frame score per ``group``), logged as ``<stage>/video/...``.
        discriminator_optimizer: D's optimiser (None: ``optimizer``'s recipe).
        figure_every_n_epochs: cadence of the validation depth figure (0: none; the test figure is always drawn).
    """

    monitor, monitor_mode = "val/acer", "min"

    def __init__(self, generator: nn.Module, discriminator: nn.Module, classifier: nn.Module,
                 lambda_gan: float = 1.0, lambda_l1: float = 100.0, lambda_cls: float = 1.0,
                 classifier_mode: Literal["joint", "detached"] = "joint", video_level: bool = True,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 discriminator_optimizer: Optional[OptimizerCallable] = None,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", figure_every_n_epochs: int = 0,
                 gradient_clip_val: Optional[float] = None, input_key: str = keys.IMAGE,
                 depth_key: str = keys.TARGET, label_key: str = keys.LABEL, group_key: str = keys.GROUP):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        if classifier_mode not in ("joint", "detached"):
            raise ValueError(f"classifier_mode must be joint or detached; got {classifier_mode!r}")
        latent, fc = getattr(generator, "latent_channels", None), getattr(classifier, "fc", None)
        if latent is not None and isinstance(fc, nn.Linear) and fc.in_features != latent:
            raise ValueError(f"the classifier takes {fc.in_features} channels, the generator's latent has {latent}: "
                             "set the classifier's in_channels to it (448 for efficientnet_b4)")
        self.save_config_hyperparameters()
        self.generator, self.discriminator, self.classifier = generator, discriminator, classifier
        self.lambda_gan, self.lambda_l1, self.lambda_cls = lambda_gan, lambda_l1, lambda_cls
        self.classifier_mode, self.video_level = classifier_mode, video_level
        self.input_key, self.depth_key, self.label_key, self.group_key = input_key, depth_key, label_key, group_key
        self.init_adversarial(discriminator_optimizer, gradient_clip_val)
        # The dev set's EER threshold, chosen at each validation and saved with the checkpoint that test loads.
        self.register_buffer("threshold", torch.tensor(0.5))
        self.scores = nn.ModuleDict({stage: nn.ModuleDict({k: CatMetric() for k in ("score", "label", "group")})
                                     for stage in ("val", "test")})
        self._figure_batch: Optional[dict] = None

    # -- networks -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(live probability (B,), depth (B, 1, h, w))."""
        depth, latent = self.generator(x)
        return torch.sigmoid(self.classifier(latent)), depth

    def generator_parameters(self):
        return list(self.generator.parameters()) + list(self.classifier.parameters())

    def discriminator_parameters(self):
        return self.discriminator.parameters()

    def _pair(self, x: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        rgb = F.interpolate(x[:, :3], size=depth.shape[-2:], mode="area")
        return torch.cat([depth, rgb], dim=1)

    def _batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys.require(batch, self.input_key, self.depth_key, self.label_key, task=type(self).__name__)
        return batch[self.input_key], batch[self.depth_key], batch[self.label_key]

    # -- losses -----------------------------------------------------------------------------------------
    def generator_losses(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        x, depth_gt, label = self._batch(batch)
        depth, latent = self.generator(x)
        if depth.shape != depth_gt.shape:
            raise ValueError(f"the generator's depth {tuple(depth.shape)} and the data's {tuple(depth_gt.shape)} "
                             "differ: match depth_stride to the data's depth_size")
        adversarial = generator_adversarial_loss(self.discriminator(self._pair(x, depth)))
        l1 = F.l1_loss(depth, depth_gt)
        logit = self.classifier(latent.detach() if self.classifier_mode == "detached" else latent)
        cls = F.binary_cross_entropy_with_logits(logit, (label == 0).float())
        loss = self.lambda_gan * adversarial + self.lambda_l1 * l1 + self.lambda_cls * cls
        return {"loss": loss, "adversarial": adversarial, "l1": l1, "cls": cls, FAKE: depth}

    def discriminator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        x, depth_gt, _ = self._batch(batch)
        return {"loss": discriminator_loss(self.discriminator(self._pair(x, depth_gt)),
                                           self.discriminator(self._pair(x, fake)))}

    # -- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, stage: str, batch: dict, batch_idx: int) -> None:
        x, depth_gt, label = self._batch(batch)
        score, depth = self(x)
        self.log(f"{stage}/depth_l1", F.l1_loss(depth, depth_gt), batch_size=len(x))
        group = batch.get(self.group_key, torch.arange(len(x), device=x.device) + batch_idx * 100003)
        for name, value in (("score", score), ("label", label), ("group", group)):
            self.scores[stage][name].update(value.float())
        if batch_idx == 0 and (stage == "test" or self.figure_due()):
            # up to 4 bona fide and 4 attack frames of the first batch (Fig. 4's live / spoof columns)
            live = torch.nonzero(label == 0).flatten()
            attack = torch.nonzero(label != 0).flatten()
            keep = torch.cat([live[:4], attack[:8 - min(4, len(live))]])
            self._figure_batch = {"image": x[keep, :3].detach().cpu(), "gt": depth_gt[keep].detach().cpu(),
                                  "depth": depth[keep].detach().cpu(), "score": score[keep].detach().cpu(),
                                  "label": label[keep].detach().cpu()}

    def _collected(self, stage: str) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        metrics = self.scores[stage]
        if not metrics["score"].update_called:
            return None
        values = tuple(metrics[name].compute().flatten().cpu() for name in ("score", "label", "group"))
        for metric in metrics.values():
            metric.reset()
        return values[0], values[1].long(), values[2].long()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch, batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch, batch_idx)

    def _log_report(self, prefix: str, scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict:
        report = pad_report(scores, labels, threshold)
        for name, value in report.items():
            scale = 1.0 if name == "eer_threshold" else 100.0
            self.log(f"{prefix}/{name}", float(value) * scale)
        return report

    def on_validation_epoch_end(self) -> None:
        collected = self._collected("val")
        if collected is None:
            return
        scores, labels, groups = collected
        live = labels == 0
        if live.all() or not live.any():  # e.g. the sanity check's two batches: nothing to threshold
            return
        _, threshold = equal_error_rate(scores, live)
        threshold = min(threshold, 1.0)  # +inf (reject all) only when no threshold separates better
        if not self.trainer.sanity_checking:
            self.threshold.fill_(threshold)
        self._log_report("val", scores, labels, threshold)
        if self.video_level:
            video_scores, video_labels = group_mean(scores, labels, groups)
            if (video_labels == 0).any() and (video_labels != 0).any():
                self._log_report("val/video", video_scores, video_labels, threshold)
        self._draw("val")

    def on_test_epoch_end(self) -> None:
        collected = self._collected("test")
        if collected is None:
            return
        scores, labels, groups = collected
        threshold = float(self.threshold)
        self.log("test/threshold", threshold)
        self._log_report("test", scores, labels, threshold)
        # A constant score (the trivial detector) at the same threshold: ACER 50 % whatever the threshold.
        constant = pad_report(torch.full_like(scores, 0.5), labels, threshold)
        self.log("test/acer_constant", constant["acer"] * 100.0)
        if self.video_level:
            video_scores, video_labels = group_mean(scores, labels, groups)
            self._log_report("test/video", video_scores, video_labels, threshold)
        self._draw("test")

    def _draw(self, stage: str) -> None:
        if self._figure_batch is None:
            return
        figure = depth_figure(**self._figure_batch)
        self._figure_batch = None
        self.log_figure(f"{stage}_depth_epoch{self.current_epoch}", figure)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        keys.require(batch, self.input_key, task=type(self).__name__)
        score, depth = self(batch[self.input_key])
        return {"score": score, "depth": depth, "live": score >= self.threshold}


def depth_figure(image: torch.Tensor, gt: torch.Tensor, depth: torch.Tensor, score: torch.Tensor,
                 label: torch.Tensor):
    """The paper's Fig. 4 layout: RGB inputs, ground-truth depth, generated depth (live score in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(image)
    figure, axes = plt.subplots(3, n, figsize=(1.6 * n, 5), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(image[i].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, i].set_title(f"{'live' if int(label[i]) == 0 else f'attack {int(label[i])}'}\np={float(score[i]):.2f}",
                             fontsize=7, color="green" if int(label[i]) == 0 else "red")
        axes[1, i].imshow(gt[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2, i].imshow(depth[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        for row in range(3):
            axes[row, i].axis("off")
    axes[1, 0].set_ylabel("ground truth")
    axes[2, 0].set_ylabel("generated")
    figure.tight_layout()
    return figure
