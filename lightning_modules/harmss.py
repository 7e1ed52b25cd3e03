"""Harmonized spatial and spectral learning (HarmonizedSS, ICPR 2024): the Spectral Correlation Coefficient.

The paper adds one loss term to any encoder-decoder: the Spectral Correlation Coefficient (SCC, Eq. 2) between
the 2-D FFTs of the predicted probabilities and the ground-truth mask,

    SCC = 2 sum_i (Re Y_i Re P_i + Im Y_i Im P_i) / sum_i (|Y_i|^2 + |P_i|^2),

summed over every frequency of every sample (and class) of the batch: one scalar in [-1, 1], 1 for a perfect
prediction. ``L_final = L_spatial + lambda * L_spectral`` with lambda = 0.2; SCC is a similarity, so the loss
term here is ``1 - SCC`` (the paper writes the similarity itself; minimising it would push the prediction away
from the mask).

With the full complex ``fft2`` and no frequency weighting, Parseval makes SCC identical to the squared-denominator
soft Dice ``2 sum y p / (sum y^2 + sum p^2)`` computed in the image domain (unit-tested); ``rfft2`` (half
spectrum, DC and Nyquist columns counted once) is a different weighting and not equivalent.

Contents:
* :func:`spectral_correlation_coefficient`, :class:`SpectralCorrelationLoss` (``1 - SCC``, on logits) and
  :class:`HarmonizedLoss` (BCE/CE + soft Dice + lambda (1 - SCC)), usable on any network through the
  segmentation task's ``loss`` argument.
* The paper's networks: :class:`UNetR50` (ResNet encoder + U-Net decoder 256-128-64-32-16, MONAI
  ``FlexibleUNet``, the layout of ``segmentation_models_pytorch.Unet("resnet50")``) and :class:`TransUNet`
  (R50-ViT-B/16 hybrid, Chen et al. 2021, with the paper's 8 attention heads).
* :class:`HarmonizedSegmentationTask`: the segmentation task plus pixel-wise calibration (ECE/MCE, every test
  set) and the test-time noise of the paper's robustness study (Gaussian or salt-and-pepper, level 0.01).
* :class:`BinnedCalibrationError`: streaming ECE/MCE over binned pixel confidences (equal to torchmetrics'
  ``BinaryCalibrationError`` / ``MulticlassCalibrationError`` without storing every pixel; tested).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import Metric

from lightning_modules.losses.segmentation import SegmentationLoss
from lightning_modules.tasks.segmentation import SegmentationTask

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- the loss
def spectral_correlation_coefficient(prediction: torch.Tensor, target: torch.Tensor,
                                     fft: Literal["fft2", "rfft2"] = "fft2", eps: float = 1e-8) -> torch.Tensor:
    """Eq. 2: SCC of (B, K, H, W) predicted probabilities and (B, K, H, W) one-hot / binary target, one scalar
    over all frequencies, samples and channels of the batch."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    transform = {"fft2": torch.fft.fft2, "rfft2": torch.fft.rfft2}[fft]
    p = transform(prediction.float(), dim=(-2, -1))
    y = transform(target.float(), dim=(-2, -1))
    numerator = 2 * (y.real * p.real + y.imag * p.imag).sum()
    denominator = (y.real ** 2 + y.imag ** 2 + p.real ** 2 + p.imag ** 2).sum()
    return numerator / (denominator + eps)


def probabilities_and_onehot(logits: torch.Tensor, target: torch.Tensor, num_classes: int, multilabel: bool = False,
                             include_background: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid (binary, multi-label) or softmax probabilities and the matching one-hot target, (B, K', H, W);
    multi-class without background unless ``include_background``."""
    if num_classes == 1 or multilabel:
        return torch.sigmoid(logits.float()), target.float()
    probabilities = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target[:, 0].long(), num_classes).movedim(-1, 1).float()
    start = 0 if include_background else 1
    return probabilities[:, start:], onehot[:, start:]


class SpectralCorrelationLoss(nn.Module):
    """``1 - SCC`` on logits (B, K, H, W) and a mask (B, 1, H, W) of labels (binary 0/1 or class indices) or
    (B, K, H, W) multi-hot (``multilabel``).

    Args:
        num_classes: 1 = binary (sigmoid); K > 1 = softmax over K classes (one-hot target).
        fft: ``fft2`` (Eq. 2 literally) or ``rfft2`` (half spectrum; not equivalent to Dice).
        include_background: multi-class only: whether class 0's channel enters the sums (default: foreground
            only, as the TransUNet soft Dice).
        multilabel: K independent sigmoid channels.
    """

    def __init__(self, num_classes: int = 1, fft: Literal["fft2", "rfft2"] = "fft2",
                 include_background: bool = False, multilabel: bool = False):
        super().__init__()
        if fft not in ("fft2", "rfft2"):
            raise ValueError(f"fft must be fft2 or rfft2, got {fft!r}")
        self.num_classes, self.fft = num_classes, fft
        self.include_background, self.multilabel = include_background, multilabel

    def scc(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, y = probabilities_and_onehot(logits, target, self.num_classes, self.multilabel, self.include_background)
        return spectral_correlation_coefficient(p, y, self.fft)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1 - self.scc(logits, target)


class HarmonizedLoss(SegmentationLoss):
    """``L_final = bce_weight * CE + dice_weight * (1 - soft Dice) + spectral_weight * (1 - SCC)``.

    The spatial part is the shared ``SegmentationLoss`` (paper Eq. 1: BCE + (1 - Dice), weights 1 and 1;
    multi-class: CE + soft Dice over the foreground classes, the TransUNet recipe); ``spectral_weight`` is the
    paper's lambda (0.2; 0 = the paper's baselines). ``terms`` adds ``scc`` (the similarity) to the parts.
    """

    def __init__(self, spectral_weight: float = 0.2, bce_weight: float = 1.0, dice_weight: float = 1.0,
                 num_classes: int = 1, smooth: float = 1e-5, dice_include_background: bool = False,
                 fft: Literal["fft2", "rfft2"] = "fft2", spectral_include_background: bool = False,
                 multilabel: bool = False):
        super().__init__(bce_weight, dice_weight, num_classes, smooth, dice_include_background, multilabel=multilabel)
        if spectral_weight < 0:
            raise ValueError(f"spectral_weight must be >= 0, got {spectral_weight}")
        self.spectral_weight = spectral_weight
        self.spectral = SpectralCorrelationLoss(num_classes, fft, spectral_include_background, multilabel)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().terms(logits, target)
        out["scc"] = self.spectral.scc(logits, target)
        out["loss"] = out["loss"] + self.spectral_weight * (1 - out["scc"])
        return out


# ----------------------------------------------------------------------------------------------- networks
class UNetR50(nn.Module):
    """U-Net with a ResNet encoder (the paper: ResNet-50, ImageNet) and the decoder 256-128-64-32-16: MONAI's
    ``FlexibleUNet``, the layout of ``segmentation_models_pytorch.Unet("resnet50")``.

    Args:
        in_channels, num_classes: input channels and output logits (1 = binary).
        backbone: ``resnet18``/``34``/``50``/``101``/``152``.
        decoder_channels: the five decoder stages.
        pretrained: a local torchvision ResNet state dict (``resnet50-*.pth``) for the encoder; ``None``: random
            initialisation (offline machines cannot download ImageNet weights).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, backbone: str = "resnet50",
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), pretrained: Optional[str] = None):
        super().__init__()
        from monai.networks.nets import FlexibleUNet

        self.net = FlexibleUNet(in_channels, num_classes, backbone=backbone, pretrained=False,
                                decoder_channels=tuple(decoder_channels), spatial_dims=2)
        if pretrained:
            self.load_encoder(pretrained)

    def load_encoder(self, path: str) -> None:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        encoder = self.net.encoder
        if encoder.conv1.weight.shape[1] != state["conv1.weight"].shape[1]:  # grey-scale input: sum RGB kernels
            state["conv1.weight"] = state["conv1.weight"].sum(1, keepdim=True).repeat(
                1, encoder.conv1.weight.shape[1], 1, 1) / encoder.conv1.weight.shape[1]
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise RuntimeError(f"{path}: not a torchvision ResNet of this depth (missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]})")
        log.info("UNetR50: encoder weights from %s", path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (BiT / TransUNet's ResNet-v2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BottleneckGN(nn.Module):
    """TransUNet's ResNet-v2 unit (StdConv + GroupNorm(32), stride on the 3x3 conv, projection shortcut)."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1, groups: int = 32):
        super().__init__()
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn1 = nn.GroupNorm(groups, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(groups, cmid, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.gn3 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = self.gn_proj = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        return self.relu(residual + self.gn3(self.conv3(y)))


class ResNetV2Hybrid(nn.Module):
    """The R50 part of R50-ViT: root (7x7/2 conv, GN, ReLU, 3x3/2 max pool) and stages of ``units`` bottlenecks
    (widths 4w, 8w, 16w); returns the H/16 map and the skips at H/8, H/4, H/2."""

    def __init__(self, in_channels: int = 3, units: Sequence[int] = (3, 4, 9), width: int = 64, groups: int = 32):
        super().__init__()
        self.root = nn.Sequential(StdConv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                                  nn.GroupNorm(groups, width, eps=1e-6), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], width
        for i, n in enumerate(units):
            cout, cmid = width * 4 * 2 ** i, width * 2 ** i
            stages.append(nn.Sequential(*[BottleneckGN(cin if j == 0 else cout, cout, cmid,
                                                       stride=2 if (i > 0 and j == 0) else 1, groups=groups)
                                          for j in range(n)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        self.skip_channels = [width * 4 * 2 ** i for i in range(len(units) - 1)][::-1] + [width]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.root(x)
        skips = [x]  # H/2
        x = self.pool(x)
        for stage in self.stages[:-1]:
            x = stage(x)
            skips.append(x)  # H/4, H/8
        return self.stages[-1](x), skips[::-1]


class TransformerLayer(nn.Module):
    """Pre-LN ViT layer: x + MHSA(LN x), x + MLP(LN x) (GELU, dropout)."""

    def __init__(self, hidden: int, heads: int, mlp: int, dropout: float = 0.1, attention_dropout: float = 0.0):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=attention_dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, hidden),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attn_dropout(self.attn(h, h, h, need_weights=False)[0])
        return x + self.ffn(self.ffn_norm(x))


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TransUNet(nn.Module):
    """TransUNet (Chen et al. 2021), R50-ViT-B/16 hybrid, with the paper's 8 attention heads (original: 12).

    ResNet-v2 (units (3, 4, 9)) -> 1024 @ H/16 -> 1x1 patch embedding to ``hidden`` tokens + learned positions
    (dropout) -> ``layers`` pre-LN transformer layers -> LN -> reshape -> 3x3 conv-BN-ReLU to 512 -> cascaded
    upsampler: blocks [bilinear x2, concat skip, (3x3 conv-BN-ReLU) x 2] of ``decoder_channels`` (256, 128, 64,
    16) with skips at H/8, H/4, H/2 (the last block has none) -> 3x3 conv to the class logits.

    Args:
        img_size: input side (224); sizes the position embedding (img_size/16 squared tokens); other sizes that
            are multiples of 16 interpolate it bicubically.
        width: the ResNet's base width (64); smaller values give the demo's tiny variant.
        hidden, layers, heads, mlp_dim, dropout: the ViT (B/16: 768, 12, 12 -> 8 here, 3072, 0.1).
        decoder_channels: the four upsampler blocks; ``head_channels`` the conv after the transformer (512).
        gn_groups: GroupNorm groups in the ResNet (32).
        pretrained: a local ``R50+ViT-B_16.npz`` (Google's ImageNet-21k ViT release, the file TransUNet's
            ``load_from`` reads) for the ResNet, the patch embedding, the positions and the transformer
            (:meth:`load_npz`); ``None``: random initialisation (offline machines cannot download it).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, img_size: int = 224, width: int = 64,
                 units: Sequence[int] = (3, 4, 9), hidden: int = 768, layers: int = 12, heads: int = 8,
                 mlp_dim: int = 3072, dropout: float = 0.1, head_channels: int = 512,
                 decoder_channels: Sequence[int] = (256, 128, 64, 16), gn_groups: int = 32,
                 pretrained: Optional[str] = None):
        super().__init__()
        if len(units) != 3 or len(decoder_channels) != 4:
            raise ValueError("TransUNet needs 3 ResNet stages and 4 decoder blocks")
        self.in_channels = in_channels
        self.resnet = ResNetV2Hybrid(in_channels, units, width, gn_groups)
        self.patch_embeddings = nn.Conv2d(self.resnet.out_channels, hidden, 1)
        self.grid = img_size // 16
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid ** 2, hidden))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.embedding_dropout = nn.Dropout(dropout)
        self.encoder = nn.Sequential(*[TransformerLayer(hidden, heads, mlp_dim, dropout) for _ in range(layers)])
        self.encoder_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.conv_more = conv_bn_relu(hidden, head_channels)
        skips = list(self.resnet.skip_channels) + [0]  # H/8, H/4, H/2, none
        inputs = [head_channels, *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(nn.Sequential(conv_bn_relu(cin + skip, cout), conv_bn_relu(cout, cout))
                                    for cin, skip, cout in zip(inputs, skips, decoder_channels))
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)
        if pretrained:
            self.load_npz(pretrained)

    def npz_state_dict(self, weights) -> dict[str, torch.Tensor]:
        """The encoder's state dict from the arrays of a ViT ``.npz`` (keys and layouts of TransUNet's
        ``VisionTransformer.load_from``): HWIO convolutions -> OIHW, (in, out) dense kernels -> (out, in), the
        per-head query/key/value/out kernels flattened to ``hidden`` x ``hidden`` (so 12-head weights fill the
        8-head layers, as TransUNet does with its head count changed), the position embedding without its class
        token and resized (linear zoom, as ``load_from``) when the token grid differs."""
        from scipy import ndimage

        def get(key: str) -> np.ndarray:
            if key not in weights:
                raise KeyError(f"{key!r} not in the checkpoint: not an R50+ViT .npz of this depth")
            return np.asarray(weights[key], dtype=np.float32)

        conv = lambda key: torch.from_numpy(get(key).transpose(3, 2, 0, 1).copy())  # noqa: E731  HWIO -> OIHW
        vector = lambda key: torch.from_numpy(get(key).reshape(-1).copy())  # noqa: E731
        hidden = self.patch_embeddings.out_channels
        state = {"patch_embeddings.weight": conv("embedding/kernel"), "patch_embeddings.bias": vector("embedding/bias"),
                 "encoder_norm.weight": vector("Transformer/encoder_norm/scale"),
                 "encoder_norm.bias": vector("Transformer/encoder_norm/bias")}
        positions = get("Transformer/posembed_input/pos_embedding")[0]
        if positions.shape[0] == self.grid ** 2 + 1:
            positions = positions[1:]
        elif positions.shape[0] != self.grid ** 2:  # another token grid: zoom the grid (drop the class token)
            old = int(math.isqrt(positions.shape[0] - 1))
            grid = positions[1:].reshape(old, old, -1)
            positions = ndimage.zoom(grid, (self.grid / old, self.grid / old, 1), order=1).reshape(self.grid ** 2, -1)
        state["position_embeddings"] = torch.from_numpy(np.ascontiguousarray(positions))[None]
        for i in range(len(self.encoder)):
            root, prefix = f"Transformer/encoderblock_{i}", f"encoder.{i}"
            attention = f"{root}/MultiHeadDotProductAttention_1"
            q, k, v = (get(f"{attention}/{n}/kernel").reshape(hidden, hidden).T for n in ("query", "key", "value"))
            state[f"{prefix}.attn.in_proj_weight"] = torch.from_numpy(np.concatenate([q, k, v]).copy())
            state[f"{prefix}.attn.in_proj_bias"] = torch.cat([vector(f"{attention}/{n}/bias")
                                                              for n in ("query", "key", "value")])
            state[f"{prefix}.attn.out_proj.weight"] = torch.from_numpy(
                get(f"{attention}/out/kernel").reshape(hidden, hidden).T.copy())
            state[f"{prefix}.attn.out_proj.bias"] = vector(f"{attention}/out/bias")
            for index, name in ((0, "Dense_0"), (3, "Dense_1")):
                kernel = get(f"{root}/MlpBlock_3/{name}/kernel")  # (in, out) -> (out, in)
                state[f"{prefix}.ffn.{index}.weight"] = torch.from_numpy(kernel.T.copy())
                state[f"{prefix}.ffn.{index}.bias"] = vector(f"{root}/MlpBlock_3/{name}/bias")
            for norm, name in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_2")):
                state[f"{prefix}.{norm}.weight"] = vector(f"{root}/{name}/scale")
                state[f"{prefix}.{norm}.bias"] = vector(f"{root}/{name}/bias")
        root_conv = conv("conv_root/kernel")
        if root_conv.shape[1] != self.in_channels:  # grey-scale input: the summed RGB kernels (same response)
            root_conv = root_conv.sum(1, keepdim=True).repeat(1, self.in_channels, 1, 1) / self.in_channels
        state.update({"resnet.root.0.weight": root_conv, "resnet.root.1.weight": vector("gn_root/scale"),
                      "resnet.root.1.bias": vector("gn_root/bias")})
        for b, stage in enumerate(self.resnet.stages):
            for u, unit in enumerate(stage):
                npz, prefix = f"block{b + 1}/unit{u + 1}", f"resnet.stages.{b}.{u}"
                for n in (1, 2, 3):
                    state[f"{prefix}.conv{n}.weight"] = conv(f"{npz}/conv{n}/kernel")
                    state[f"{prefix}.gn{n}.weight"] = vector(f"{npz}/gn{n}/scale")
                    state[f"{prefix}.gn{n}.bias"] = vector(f"{npz}/gn{n}/bias")
                if unit.downsample is not None:
                    state[f"{prefix}.downsample.weight"] = conv(f"{npz}/conv_proj/kernel")
                    state[f"{prefix}.gn_proj.weight"] = vector(f"{npz}/gn_proj/scale")
                    state[f"{prefix}.gn_proj.bias"] = vector(f"{npz}/gn_proj/bias")
        return state

    def load_npz(self, path: str) -> None:
        """Load the ImageNet-21k R50+ViT-B/16 encoder from a local ``.npz`` (see :meth:`npz_state_dict`); the
        decoder and the head stay randomly initialised, as in TransUNet."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such R50+ViT-B_16 .npz (download "
                                    "https://storage.googleapis.com/vit_models/imagenet21k/R50%2BViT-B_16.npz)")
        with np.load(path) as weights:
            state = self.npz_state_dict(weights)
        own = self.state_dict()
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise RuntimeError(f"{path}: {key} has shape {tuple(value.shape)}, the network {tuple(own[key].shape)}")
        missing, unexpected = self.load_state_dict(state, strict=False)
        encoder_missing = [k for k in missing if not k.startswith(("conv_more", "blocks", "segmentation_head"))]
        if encoder_missing or unexpected:
            raise RuntimeError(f"{path}: encoder keys not loaded {encoder_missing[:5]}, unexpected {unexpected[:5]}")
        log.info("TransUNet: R50+ViT encoder weights from %s", path)

    def positions(self, h: int, w: int) -> torch.Tensor:
        if h * w == self.position_embeddings.shape[1] and h == self.grid:
            return self.position_embeddings
        grid = self.position_embeddings.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"TransUNet needs sides divisible by 16, got {tuple(x.shape[-2:])}")
        features, skips = self.resnet(x)
        tokens = self.patch_embeddings(features)
        h, w = tokens.shape[-2:]
        tokens = self.embedding_dropout(tokens.flatten(2).transpose(1, 2) + self.positions(h, w))
        tokens = self.encoder_norm(self.encoder(tokens))
        y = self.conv_more(tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w))
        for block, skip in zip(self.blocks, [*skips, None]):
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            if skip is not None:
                y = torch.cat([y, skip], dim=1)
            y = block(y)
        return self.segmentation_head(y)


# ----------------------------------------------------------------------------------------------- calibration
class BinnedCalibrationError(Metric):
    """Pixel-wise expected and maximum calibration error (``ece``, ``mce``) from ``n_bins`` equal-width
    confidence bins, accumulated as per-bin sums (no per-pixel storage).

    Binary (``num_classes == 1`` or multi-label): confidence = sigmoid probability of the foreground, accuracy =
    the target (torchmetrics ``BinaryCalibrationError``); multi-class: confidence = the top softmax
    probability, accuracy = (argmax == target) (``MulticlassCalibrationError``). Bin i holds (i/n, (i+1)/n],
    as torchmetrics' ``bucketize(right=True) - 1``.
    """

    full_state_update = False

    def __init__(self, num_classes: int = 1, n_bins: int = 15, multilabel: bool = False):
        super().__init__()
        self.num_classes, self.n_bins, self.multilabel = num_classes, n_bins, multilabel
        for name in ("count", "confidence", "accuracy"):
            self.add_state(name, torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probabilities: torch.Tensor, target: torch.Tensor) -> None:
        """``probabilities`` (B, K, *S): sigmoid (binary/multi-label) or softmax; ``target`` (B, 1 or K, *S)."""
        if self.num_classes == 1 or self.multilabel:
            confidence, accuracy = probabilities.flatten(), target.flatten().to(probabilities.dtype)
        else:
            confidence, predicted = probabilities.max(1)
            accuracy = (predicted == target[:, 0].long()).to(probabilities.dtype).flatten()
            confidence = confidence.flatten()
        boundaries = torch.linspace(0, 1, self.n_bins + 1, device=confidence.device, dtype=confidence.dtype)
        index = (torch.bucketize(confidence, boundaries, right=True) - 1).clamp(0, self.n_bins - 1)
        self.count += torch.bincount(index, minlength=self.n_bins).double()
        self.confidence += torch.bincount(index, confidence.double(), minlength=self.n_bins)
        self.accuracy += torch.bincount(index, accuracy.double(), minlength=self.n_bins)

    def compute(self) -> dict[str, torch.Tensor]:
        filled = self.count > 0
        gap = (self.accuracy[filled] / self.count[filled] - self.confidence[filled] / self.count[filled]).abs()
        if not filled.any():
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.count.device)
            return {"ece": nan, "mce": nan}
        return {"ece": (gap * self.count[filled]).sum() / self.count.sum(), "mce": gap.max()}


# ----------------------------------------------------------------------------------------------- test-time noise
def add_noise(image: torch.Tensor, kind: Literal["gaussian", "bernoulli"], level: float,
              mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The paper's robustness noise on a normalised image batch (B, C, H, W), applied in [0, 1] intensity space
    (``x * std + mean``) as ``skimage.util.random_noise``: ``gaussian``: + N(0, level) (``level`` is the
    variance, skimage's ``var``), clipped to [0, 1]; ``bernoulli``: salt-and-pepper, each value replaced with
    probability ``level`` (skimage's ``amount``) by 0 or 1 with equal chance. Then normalised again."""
    shape = (1, -1) + (1,) * (image.dim() - 2)
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(shape)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(shape)
    x = image * s + m
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype).to(x.device)
        x = (x + math.sqrt(level) * noise).clamp(0, 1)
    elif kind == "bernoulli":
        flip = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < level
        salt = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < 0.5
        x = torch.where(flip, salt.to(x.dtype), x)
    else:
        raise ValueError(f"noise kind must be gaussian or bernoulli, got {kind!r}")
    return (x - m) / s


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class HarmonizedSegmentationTask(SegmentationTask):
    """``SegmentationTask`` plus the paper's calibration and noise studies.

    Every test set logs ``<prefix>/ece`` and ``<prefix>/mce`` (in [0, 1]; the paper's tables are in %), pixel-wise
    over the whole set (:class:`BinnedCalibrationError`, ``calibration_bins`` bins).

    Args:
        test_noise: ``gaussian`` or ``bernoulli`` adds that noise (:func:`add_noise`, ``noise_level``: 0.01 in the
            paper) to every test image (all test sets) before the network; ``None``: clean test images.
        loss: e.g. :class:`HarmonizedLoss` (``spectral_weight`` 0.2; 0 = the baselines); ``None``: the family's
            BCE/CE + Dice from ``bce_weight``/``dice_weight``.
        normalization: how the datamodule normalised the images (``imagenet`` or ``unit``), so the noise is
            added in [0, 1] intensity space.
        noise_seed: the noise generator's seed (reproducible tests).
        volume_metrics, hd95_3d: slices of volumes (Synapse, ACDC: batches with ``volume`` and ``slice_index``)
            are also scored per restacked 3-D volume, the TransUNet protocol (``test/dice_3d[/<class>]``,
            ``test/hd95_3d[/<class>]``; ``hd95_3d`` ``None``: as ``hd95``).
        Other arguments: ``SegmentationTask``'s.
    """

    def __init__(self, network: nn.Module, num_classes: int = 1, loss: Optional[nn.Module] = None,
                 calibration_bins: int = 15,
                 test_noise: Optional[Literal["gaussian", "bernoulli"]] = None, noise_level: float = 0.01,
                 normalization: Literal["imagenet", "unit"] = "imagenet", noise_seed: int = 0,
                 bce_weight: float = 1.0, dice_weight: float = 1.0, dice_smooth: float = 1e-5,
                 metric_aggregation: Literal["micro", "per_image"] = "per_image", threshold: float = 0.5,
                 monitor_metric: str = "val/dice", figure_every_n_epochs: int = 1, num_figure_samples: int = 4,
                 optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch",
                 metrics: Optional[dict[str, Metric]] = None, class_names: Optional[Sequence[str]] = None,
                 hd95: bool = False, spacing: Optional[Sequence[float]] = None, multilabel: bool = False,
                 volume_metrics: bool = True, hd95_3d: Optional[bool] = None):
        super().__init__(network, num_classes=num_classes, bce_weight=bce_weight, dice_weight=dice_weight,
                         dice_smooth=dice_smooth, metric_aggregation=metric_aggregation, threshold=threshold,
                         monitor_metric=monitor_metric, figure_every_n_epochs=figure_every_n_epochs,
                         num_figure_samples=num_figure_samples, optimizer=optimizer, lr_scheduler=lr_scheduler,
                         scheduler_interval=scheduler_interval, loss=loss, metrics=metrics, class_names=class_names,
                         hd95=hd95, spacing=spacing, multilabel=multilabel, volume_metrics=volume_metrics,
                         hd95_3d=hd95_3d)
        self.save_config_hyperparameters()
        if test_noise not in (None, "gaussian", "bernoulli"):
            raise ValueError(f"test_noise must be gaussian, bernoulli or None, got {test_noise!r}")
        if normalization not in ("imagenet", "unit"):
            raise ValueError(f"normalization must be imagenet or unit, got {normalization!r}")
        self.test_noise, self.noise_level = test_noise, float(noise_level)
        self.normalization, self.noise_seed = normalization, noise_seed
        self.calibration_bins = calibration_bins
        self._calibration = {}
        self._last_logits = None

    def on_test_start(self) -> None:
        super().on_test_start()
        self._calibration = {name: BinnedCalibrationError(self.num_classes, self.calibration_bins, self.multilabel)
                             .to(self.device) for name in self._test_loader_names}
        self._noise_generator = torch.Generator().manual_seed(self.noise_seed)

    def _noisy(self, image: torch.Tensor) -> torch.Tensor:
        if self.test_noise is None:
            return image
        channels = image.shape[1]
        if self.normalization == "imagenet":
            mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,) * channels
            std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,) * channels
        else:
            mean, std = (0.0,) * channels, (1.0,) * channels
        return add_noise(image, self.test_noise, self.noise_level, mean, std, self._noise_generator)

    def _predict(self, image: torch.Tensor):
        testing = self._trainer is not None and self.trainer.testing
        if testing:
            image = self._noisy(image)
        outputs, prediction = super()._predict(image)
        self._last_logits = outputs[0] if testing else None
        return outputs, prediction

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        logits, mask = self._last_logits, batch[self.target_key]
        if self.num_classes == 1 or self.multilabel:
            probabilities = torch.sigmoid(logits.float())
        else:
            probabilities = torch.softmax(logits.float(), dim=1)
        self._calibration[self._test_loader_names[dataloader_idx]].update(probabilities.detach(), mask)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        for index, (name, metric) in enumerate(self._calibration.items()):
            prefix = "test" if index == 0 else f"test/{name}"
            if metric.count.sum() > 0:
                for key, value in metric.compute().items():
                    self.log(f"{prefix}/{key}", value.float())
            metric.reset()
