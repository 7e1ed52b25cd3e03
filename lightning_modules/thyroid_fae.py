"""ThyroidFAE (ICPR 2024): a Fusion AutoEncoder (FAE) fuses three multiphoton microscopy images of one RoI
(backward SHG, forward SHG, TPEF) into a 3-channel latent map, which a CNN (EfficientNet-B4) classifies as
follicular adenoma (FA) or follicular thyroid carcinoma (FTC).

Two stages, two runs:

1. ``FusionAutoencoder`` trained by ``lightning_modules.tasks.autoencoder.AutoencoderTask`` to reconstruct each
   modality (loss L_B + 0.5 L_F + 0.05 L_T: ``output_weights: [1, 0.5, 0.05]``);
2. ``FAELatentClassifier``: the frozen FAE of stage 1's checkpoint computes the latent, which is min-max
   normalised per image, resized to the classifier's input, ImageNet-normalised and classified by an
   ``ImageClassifier`` (lightning_modules/backbones.py) with a 2-unit sigmoid head trained with BCE on one-hot
   targets (``ThyroidClassificationTask``). ``MPMImageClassifier`` is the single-modality baseline (Table 2).

Architecture (Table 1 of the paper, checked against the official code): every conv is 3x3, unpadded, stride 1
and followed by GELU. Sizes for a 512 input:

- stems, one per modality, each to 4 x 502^2: BSHG conv0 -> BN(1) -> convD (1->4, dilation 4); FSHG
  conv0 -> convD (the same conv0/convD modules as BSHG's); TPEF conv0 -> conv0 -> convA (1->2) -> convB (2->3)
  -> convC (3->4) (the code's one ``conv0`` module); concatenated to 12 x 502^2;
- encoder conv1 ... conv11: 12->14 (500), max-pool (250), 14->16, 16->20, 20->20, 20->32, 32->64 (240),
  max-pool (120), 64->128, 128->128, 128->256, 256->512, 512->512 (110);
- latent conv_latent 512->3 (108): the fused feature map;
- shared decoder tconv1 ... tconv6 (3x3 transposed): 512->256 (112) ... 24->12 (122), from conv11's output
  (code and Table 1 row 14; ``latent_on_path: true`` starts it from the latent with a 5x5 tconv1 instead);
- three heads on 4 channels each: tconv7 4->1 (124), tconv8 (126), tconv9 (128), tconv10 stride 2 (257),
  tconv11 stride 2, pad 2, output pad 1 (512), tconv_out pad 1 (512), GELU on the output too.

For an input size N divisible by 4 with N >= 84 the output is N x N and the latent (N/4 - 20)^2.
"""
from __future__ import annotations

import importlib
import math
import os
from typing import Any, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_modules.metrics.thyroid_fae import ThyroidAUROC
from lightning_modules.tasks.classification import ClassificationTask

MODALITIES = ("bshg", "fshg", "tpef")
CLASSES = ("FA", "FTC")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE1_COMMAND = ("python run.py --config experiments/thyroid_fae_demo_fae.yaml (stand-in) or python run.py "
                  "--config experiments/thyroid_fae/mpm_fae.yaml --data.data_dir D (real data)")

#: Encoder (conv1 ... conv11) and decoder (tconv1 ... tconv5) widths of the paper (Table 1), before width_mult.
ENCODER_CHANNELS = (14, 16, 20, 20, 32, 64, 128, 128, 256, 512, 512)
DECODER_CHANNELS = (256, 128, 64, 32, 24)
POOL_AFTER = (1, 6)  # max-pool 2x2 after conv1 and conv6


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    modalities = tuple(str(m).lower() for m in modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or len(set(modalities)) != len(modalities) or not modalities:
        raise ValueError(f"modalities must be distinct names out of {list(MODALITIES)}, got {list(modalities)}")
    return modalities


class FAEHead(nn.Module):
    """One output head: tconv7 (in -> c7), tconv8 (c7 -> 1), tconv9, tconv10 (stride 2), tconv11 (stride 2,
    pad 2, output pad 1), tconv_out (pad 1): +2, +2, +2, x2+1, x2-1, +0 pixels; GELU after each."""

    def __init__(self, in_channels: int, mid_channels: int = 1):
        super().__init__()
        self.tconv7 = nn.ConvTranspose2d(in_channels, mid_channels, 3)
        self.tconv8 = nn.ConvTranspose2d(mid_channels, 1, 3)
        self.tconv9 = nn.ConvTranspose2d(1, 1, 3)
        self.tconv10 = nn.ConvTranspose2d(1, 1, 3, stride=2)
        self.tconv11 = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=2, output_padding=1)
        self.tconv_out = nn.ConvTranspose2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.tconv7, self.tconv8, self.tconv9, self.tconv10, self.tconv11, self.tconv_out):
            x = F.gelu(layer(x))
        return x


class FusionAutoencoder(nn.Module):
    """The Fusion AutoEncoder: one input head (the stacked modalities), a shared encoder and decoder, one output
    head per modality.

    Args:
        modalities: the input channels in order, out of ``bshg``, ``fshg``, ``tpef``; 3 (the paper) or 2 (the
            Fig. 4 / Table 3 ablations: 8 stem channels, two heads of 6 channels, tconv7 6->4, tconv8 4->1).
        latent_on_path: False (official code, Table 1): the decoder starts from conv11's output and the latent
            is a side branch (conv_latent gets no gradient from the reconstruction loss and keeps its random
            init). True (the paper's text): the decoder starts from the latent, tconv1 being 5x5 (3 -> 256) to
            keep the sizes.
        share_head_weights: False (the paper's "private" heads): one head per modality. True (official code):
            the heads share their weights.
        decoder_bn: add BatchNorm(12) after tconv6 (the paper's second BN; the code has only the stem's).
        width_mult: scales the encoder and shared-decoder widths (not the stems, latent or heads); 1 = paper.
    """

    def __init__(self, modalities: Sequence[str] = MODALITIES, latent_on_path: bool = False,
                 share_head_weights: bool = False, decoder_bn: bool = False, width_mult: float = 1.0):
        super().__init__()
        self.modalities = check_modalities(modalities)
        if len(self.modalities) not in (2, 3):
            raise ValueError(f"the FAE fuses 2 or 3 modalities, got {list(self.modalities)}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.latent_on_path, self.share_head_weights = latent_on_path, share_head_weights
        self.width_mult = width_mult
        m = len(self.modalities)
        width = [max(1, int(round(c * width_mult))) for c in ENCODER_CHANNELS]
        dec = [max(1, int(round(c * width_mult))) for c in DECODER_CHANNELS]

        # Per-modality stems (4 channels each). One conv0 (used by every stem, twice by TPEF's) and one
        # convD (BSHG, FSHG), as in the code.
        self.conv0 = nn.Conv2d(1, 1, 3)
        if "bshg" in self.modalities:
            self.bn0 = nn.BatchNorm2d(1)
        if "bshg" in self.modalities or "fshg" in self.modalities:
            self.convD = nn.Conv2d(1, 4, 3, dilation=4)
        if "tpef" in self.modalities:
            self.convA = nn.Conv2d(1, 2, 3)
            self.convB = nn.Conv2d(2, 3, 3)
            self.convC = nn.Conv2d(3, 4, 3)

        self.encoder = nn.ModuleList()
        in_channels = 4 * m
        for out_channels in width:
            self.encoder.append(nn.Conv2d(in_channels, out_channels, 3))
            in_channels = out_channels
        self.conv_latent = nn.Conv2d(in_channels, 3, 3)

        self.decoder = nn.ModuleList()
        in_channels, kernel = (3, 5) if latent_on_path else (width[-1], 3)
        for out_channels in (*dec, 12):
            self.decoder.append(nn.ConvTranspose2d(in_channels, out_channels, kernel))
            in_channels, kernel = out_channels, 3
        self.decoder_norm = nn.BatchNorm2d(12) if decoder_bn else None

        group = 12 // m
        mid = 1 if m == 3 else 4  # 3 heads: tconv7 4->1; 2 heads (code): tconv7 6->4, tconv8 4->1
        self.heads = nn.ModuleList([FAEHead(group, mid) for _ in range(1 if share_head_weights else m)])

    # -- stems --------------------------------------------------------------------------------------
    def stem(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        if modality == "bshg":
            return F.gelu(self.convD(F.gelu(self.bn0(self.conv0(x)))))
        if modality == "fshg":
            return F.gelu(self.convD(F.gelu(self.conv0(x))))
        x = F.gelu(self.conv0(F.gelu(self.conv0(x))))
        for layer in (self.convA, self.convB, self.convC):
            x = F.gelu(layer(x))
        return x

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != len(self.modalities):
            raise ValueError(f"FusionAutoencoder({list(self.modalities)}) takes (B, {len(self.modalities)}, H, W) "
                             f"images (one channel per modality, in that order), got {tuple(x.shape)}")

    def encode_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv11's output, the latent): (B, 512 w, N/4-18, .), (B, 3, N/4-20, .)."""
        self._check(x)
        h = torch.cat([self.stem(name, x[:, i:i + 1]) for i, name in enumerate(self.modalities)], dim=1)
        for index, layer in enumerate(self.encoder, start=1):
            h = F.gelu(layer(h))
            if index in POOL_AFTER:
                h = F.max_pool2d(h, 2)
        return h, F.gelu(self.conv_latent(h))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The fused feature map (B, 3, N/4 - 20, N/4 - 20) that the classifier sees."""
        return self.encode_features(x)[1]

    def decode(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for index, layer in enumerate(self.decoder):
            h = layer(h)
            if index == len(self.decoder) - 1 and self.decoder_norm is not None:
                h = self.decoder_norm(h)
            h = F.gelu(h)
        groups = h.chunk(len(self.modalities), dim=1)
        heads = [self.heads[0]] * len(groups) if self.share_head_weights else list(self.heads)
        return tuple(head(g) for head, g in zip(heads, groups))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One reconstruction (B, 1, N, N) per modality, in ``modalities`` order."""
        features, latent = self.encode_features(x)
        return self.decode(latent if self.latent_on_path else features)

    @staticmethod
    def output_size(n: int) -> int:
        """Spatial output size for an n x n input (= n for n divisible by 4, n >= 84)."""
        n = ((n - 12) // 2 - 10) // 2 - 10  # conv11 output
        n += 12 + 6  # tconv1-6, tconv7-9
        n = (n - 1) * 2 + 3  # tconv10
        return (n - 1) * 2 - 4 + 3 + 1  # tconv11 (tconv_out keeps it)

    @staticmethod
    def latent_size(n: int) -> int:
        return ((n - 12) // 2 - 10) // 2 - 12  # = n/4 - 20


# -- stage 2 --------------------------------------------------------------------------------------------
def minmax_per_image(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each image (all its channels together) scaled to [0, 1]; a constant image becomes 0."""
    flat = x.flatten(1)
    low = flat.min(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    high = flat.max(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    return (x - low) / (high - low).clamp_min(eps)


def minmax_per_channel(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each channel of each image scaled to [0, 1] on its own; a constant channel becomes 0."""
    return minmax_per_image(x.reshape(-1, 1, *x.shape[2:]), eps).reshape(x.shape)


def random_resized_crop_boxes(batch: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                              generator: Optional[torch.Generator] = None) -> list[tuple[int, int, int, int]]:
    """torchvision's RandomResizedCrop.get_params per sample: (top, left, h, w), 10 tries then a centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    boxes = []
    for _ in range(batch):
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
            aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                boxes.append((top, left, h, w))
                break
        else:
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            boxes.append(((height - h) // 2, (width - w) // 2, h, w))
    return boxes


class ClassifierInput(nn.Module):
    """[0, 1] images -> the classifier's input: resize to ``input_size`` (bilinear), RandomResizedCrop when
    ``crop`` says so, ImageNet normalisation.

    ``crop``: ``train`` (random resized crops in training, a plain resize in evaluation: our choice),
    ``always`` (the official code: RandomResizedCrop(224) for train, val and test), ``none``.
    """

    def __init__(self, input_size: int = 224, crop: Literal["train", "always", "none"] = "train",
                 crop_scale: Sequence[float] = (0.08, 1.0), crop_ratio: Sequence[float] = (3 / 4, 4 / 3)):
        super().__init__()
        if crop not in ("train", "always", "none"):
            raise ValueError(f"crop must be 'train', 'always' or 'none', got {crop!r}")
        self.input_size, self.crop = int(input_size), crop
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                             antialias=bool(x.shape[-1] > self.input_size and x.device.type != "meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> 3 channels
        if self.crop == "always" or (self.crop == "train" and self.training):
            boxes = random_resized_crop_boxes(x.shape[0], x.shape[-2], x.shape[-1], self.crop_scale, self.crop_ratio)
            x = torch.cat([self._resize(x[i:i + 1, :, t:t + h, l:l + w]) for i, (t, l, h, w) in enumerate(boxes)])
        else:
            x = self._resize(x)
        return (x - self.mean) / self.std


def init_head(head: nn.Linear, low: float, high: float) -> None:
    """The official code's init of nn.Linear weights: U(low, high) (1e-4, 1e-3); the bias keeps its default."""
    with torch.no_grad():
        head.weight.uniform_(low, high)


def _build_classifier(backbone: str, num_classes: int, pretrained: Optional[str], dropout: float,
                      head_init: Optional[Sequence[float]]) -> nn.Module:
    from lightning_modules.backbones import ImageClassifier

    classifier = ImageClassifier(backbone=backbone, num_classes=num_classes, in_channels=3, pretrained=pretrained,
                                 dropout=dropout)
    if head_init is not None:
        init_head(classifier.head, *head_init)
    return classifier


def _on_meta_device() -> bool:
    return torch.empty(0).device.type == "meta"


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_fae(checkpoint: Optional[str], fae: Optional[nn.Module] = None) -> nn.Module:
    """Stage 1's FAE from its Lightning checkpoint (the task's ``network.*`` weights). The architecture is
    ``fae`` when given, else rebuilt from the checkpoint's saved hyperparameters (``network`` as
    ``class_path``/``init_args``, as LightningCLI saves it)."""
    if _on_meta_device():  # config checks build every model on the meta device: nothing to read
        return fae if fae is not None else FusionAutoencoder()
    if not checkpoint:
        raise ValueError("FAELatentClassifier needs fae_checkpoint, the stage-1 FAE checkpoint (best.ckpt of a "
                         f"fusion-autoencoder run). Train it first: {STAGE1_COMMAND}; then pass "
                         "--model.init_args.network.init_args.fae_checkpoint runs/<experiment>/<run id>/checkpoints/best.ckpt")
    path = os.path.expanduser(str(checkpoint))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FAE checkpoint not found: {path}. Train stage 1 first: {STAGE1_COMMAND}; it "
                                "writes runs/<experiment>/<run id>/checkpoints/best.ckpt")
    state = torch.load(path, map_location="cpu", weights_only=False)
    weights = state.get("state_dict", state)
    prefix = "network."
    network_weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not network_weights:
        network_weights = dict(weights)  # a bare FusionAutoencoder state dict
    if fae is None:
        spec = (state.get("hyper_parameters") or {}).get("network")
        if isinstance(spec, nn.Module):
            fae = spec
        elif isinstance(spec, dict) and "class_path" in spec:
            fae = _import(spec["class_path"])(**dict(spec.get("init_args") or {}))
        else:
            raise ValueError(f"{path} does not say which FAE it holds (no network hyperparameters): give the "
                             "architecture as FAELatentClassifier's `fae:` (the stage-1 config's network)")
    try:
        fae.load_state_dict(network_weights)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the FAE given ({type(fae).__name__}): {error}") from error
    return fae


class _PreparedClassifier(nn.Module):
    """Shared by both classifiers: (B, C, H, W) [0, 1] maps -> ClassifierInput -> ImageClassifier logits.
    The logits are the pre-activations of the paper's 2-unit sigmoid layer."""

    def _init_classifier(self, backbone: str, num_classes: int, pretrained: Optional[str], input_size: int,
                         crop: str, crop_scale: Sequence[float], head_init: Optional[Sequence[float]],
                         dropout: float, map_norm: str = "image") -> None:
        if map_norm not in ("image", "channel"):
            raise ValueError(f"latent_norm must be 'image' or 'channel', got {map_norm!r}")
        self.scale = minmax_per_image if map_norm == "image" else minmax_per_channel
        self.prepare = ClassifierInput(input_size, crop, crop_scale)
        self.classifier = _build_classifier(backbone, num_classes, pretrained, dropout, head_init)
        self.num_classes = num_classes

    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.prepare(self.scale(maps)))


class FAELatentClassifier(_PreparedClassifier):
    """Stage 2: the frozen FAE's latent of the stacked modalities, min-max normalised to [0, 1] (per channel),
    resized to ``input_size`` (random resized crops per ``crop``), ImageNet-normalised, classified.

    Args:
        fae_checkpoint: stage 1's Lightning checkpoint (best.ckpt). Required (except when the config is only
            built on the meta device).
        fae: the FAE's architecture; None: rebuilt from the checkpoint's hyperparameters.
        backbone: an ``ImageClassifier`` backbone (efficientnet_b4 in the paper; Table 4: resnet18, resnet50,
            densenet121, efficientnet_b0).
        num_classes: 2 (FA, FTC): the sigmoid layer's units.
        pretrained: a local ImageNet checkpoint of the backbone (None: random init).
        input_size: the classifier's input (224; the stand-in demo 64).
        crop: see ``ClassifierInput`` (``always`` = the code's test-time random crops).
        head_init: U(low, high) init of the final Linear's weight (the code's 1e-4, 1e-3); None: default.
        latent_norm: ``channel`` (each latent channel min-max scaled to [0, 1] on its own, default) or ``image``
            (the 3 channels together). The paper does not say; the code writes the raw latent x 255 to uint8
            PNGs. With ``image`` the latent channels' different offsets (the untrained ``conv_latent`` of the
            code-faithful FAE adds its own bias to each) take the whole [0, 1] range and leave the spatial
            variation that carries the class ~1e-6 wide: the classifier then cannot learn (stand-in: train loss
            stays at ln 2, AUROC 0.5).
    """

    def __init__(self, fae_checkpoint: Optional[str] = None, fae: Optional[nn.Module] = None,
                 backbone: str = "efficientnet_b4", num_classes: int = 2, pretrained: Optional[str] = None,
                 input_size: int = 224, crop: Literal["train", "always", "none"] = "train",
                 crop_scale: Sequence[float] = (0.08, 1.0), head_init: Optional[Sequence[float]] = (1e-4, 1e-3),
                 dropout: float = 0.0, latent_norm: Literal["channel", "image"] = "channel"):
        super().__init__()
        self.fae = load_fae(fae_checkpoint, fae)
        for parameter in self.fae.parameters():
            parameter.requires_grad_(False)
        self.fae.eval()
        self._init_classifier(backbone, num_classes, pretrained, input_size, crop, crop_scale, head_init, dropout,
                              latent_norm)

    def train(self, mode: bool = True) -> "FAELatentClassifier":
        super().train(mode)
        self.fae.eval()  # frozen: its BatchNorm keeps stage 1's statistics
        return self

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fae.encode(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.latent(x))


class MPMImageClassifier(_PreparedClassifier):
    """Table 2's single-modality baselines: one modality image (grey, replicated to 3 channels), min-max
    normalised per image, resized, ImageNet-normalised, classified by an ``ImageClassifier``."""

    def __init__(self, backbone: str = "resnet18", num_classes: int = 2, pretrained: Optional[str] = None,
                 input_size: int = 224, crop: Literal["train", "always", "none"] = "train",
                 crop_scale: Sequence[float] = (0.08, 1.0), head_init: Optional[Sequence[float]] = (1e-4, 1e-3),
                 dropout: float = 0.0):
        super().__init__()
        self._init_classifier(backbone, num_classes, pretrained, input_size, crop, crop_scale, head_init, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"MPMImageClassifier takes 1 (one modality) or 3 channels, got {tuple(x.shape)}")
        return self.classify(x)


# -- the classification task ----------------------------------------------------------------------------
class ThyroidClassificationTask(ClassificationTask):
    """``ClassificationTask`` with the paper's head, loss, checkpoint rule and metrics.

    - The network's 2 outputs are the pre-activations of the sigmoid layer; the loss is BCE of their sigmoid
      against one-hot targets (``BCEWithLogitsLoss``, the numerically stable form of the code's
      ``BCELoss(sigmoid(.))``); the predicted class is the argmax; ``predict`` returns the sigmoid outputs.
    - ``best.ckpt`` is the epoch of lowest validation loss (the paper keeps the best validation loss).
    - Metrics, besides the built-in ones: per class (each class in turn positive) ``test/precision/<class>``,
      ``test/recall/<class>``, ``test/f1/<class>`` (``per_class_metrics``); on validation and the first test
      loader ``auroc_labels`` (the code's AUROC: ``roc_auc_score`` of the argmax labels, (TPR + TNR) / 2),
      ``auroc_probs`` (AUROC of the ``positive_class`` sigmoid output) and ``auroc_paper``, the one
      ``auroc_from`` names (what the paper's tables report). ``test/pos/...`` is the base task's one-vs-rest
      view of ``positive_class`` on its softmax probability.

    Args:
        auroc_from: ``labels`` (official code) or ``probs`` (the standard AUROC).
        positive_class: the class scored against the other (1 = FTC).
        class_names: FA, FTC (metric keys).
        Other arguments: ``ClassificationTask``'s (optimizer default Adam, epoch-wise scheduler).
    """

    def __init__(self, network: nn.Module, num_classes: int = 2, auroc_from: Literal["labels", "probs"] = "labels",
                 positive_class: int = 1, class_names: Optional[list[str]] = None, per_class_metrics: bool = True,
                 loss: Optional[nn.Module] = None, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler_interval: Literal["step", "epoch"] = "epoch", **kwargs):
        if auroc_from not in ("labels", "probs"):
            raise ValueError(f"auroc_from must be 'labels' or 'probs', got {auroc_from!r}")
        if kwargs.get("multilabel"):
            raise ValueError("ThyroidClassificationTask is multi-class (one-hot BCE targets, argmax prediction)")
        class_names = list(class_names) if class_names else list(CLASSES[:num_classes])
        super().__init__(network=network, num_classes=num_classes, loss=loss if loss is not None else nn.BCEWithLogitsLoss(),
                         optimizer=optimizer, scheduler_interval=scheduler_interval, class_names=class_names,
                         per_class_metrics=per_class_metrics, positive_class=positive_class, **kwargs)
        self.auroc_from = auroc_from
        self.monitor, self.monitor_mode = "val/loss", "min"
        self.thyroid_auroc = nn.ModuleDict({stage: ThyroidAUROC(positive_class) for stage in ("val", "test")})

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The sigmoid layer's outputs (B, 2): the paper's class probabilities (argmax = prediction)."""
        return torch.sigmoid(logits.float())

    def update_extra_metrics(self, stage: str, *args: Any) -> None:
        super().update_extra_metrics(stage, *args)
        self.thyroid_auroc[stage].update(*args)

    def log_extra_metrics(self, stage: str) -> None:
        super().log_extra_metrics(stage)
        values = self.thyroid_auroc[stage].compute()
        self.log_dict({f"{stage}/auroc_labels": values["auroc_labels"], f"{stage}/auroc_probs": values["auroc_probs"],
                       f"{stage}/auroc_paper": values[f"auroc_{self.auroc_from}"]})
        self.thyroid_auroc[stage].reset()
