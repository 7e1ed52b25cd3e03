"""SwinCalc (ICPR 2024): calcification-cluster detection in mammograms with a Swin Transformer backbone.

Backbone (Swin-T/B, or a ResNet for the CNN rows) -> FPN (256 channels) -> detection head. The head here is
RetinaNet, on MONAI's ``RetinaNet`` network and ``RetinaNetDetector`` (anchors, matching, box coding, NMS); the
paper's RepPoints and Deformable DETR heads are not built (docs/papers/swincalc.md).

The Swin Transformer is written in torchvision's layout (``features.<i>``, ``norm``, ``head``; blocks with
``norm1``/``attn.qkv``/``attn.proj``/``attn.relative_position_bias_table``/``norm2``/``mlp.0``/``mlp.3``), so a
torchvision ``swin_t``/``swin_b`` ImageNet state dict loads as is (``load_backbone``). With the classification
head it has torchvision's parameter counts (Swin-T 28,288,354; Swin-B 87,768,224).

Boxes enter and leave as pixel (x1, y1, x2, y2), x along the width (lightning_modules/batch.py); MONAI orders box
coordinates by array axis (row first), so the detector swaps them on the way in and out.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.data.box_utils import non_max_suppression
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from torch import nn

from lightning_modules.backbones import Permute, StochasticDepth

# --------------------------------------------------------------------------------------------------------------
# Swin Transformer (Liu et al. 2021), torchvision layout
# --------------------------------------------------------------------------------------------------------------
SWIN_CONFIGS = {
    "swin_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), stochastic_depth_prob=0.2),
    "swin_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), stochastic_depth_prob=0.3),
    "swin_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), stochastic_depth_prob=0.5),
}


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (4C) -> LayerNorm -> linear to 2C (halves H and W; odd sizes padded)."""

    def __init__(self, dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        height, width = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]],
                      dim=-1)
        return self.reduction(self.norm(x))


def _window_mask(pad_h: int, pad_w: int, window: Sequence[int], shift: Sequence[int], device) -> torch.Tensor:
    """(num_windows, N, N) additive mask keeping attention within the regions a cyclic shift glued together."""
    region = torch.zeros((pad_h, pad_w), device=device)
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            region[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    region = region.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    mask = region.unsqueeze(1) - region.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class ShiftedWindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention with a relative position bias; pads to window multiples."""

    def __init__(self, dim: int, window_size: Sequence[int], shift_size: Sequence[int], num_heads: int,
                 attention_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads = num_heads
        self.attention_dropout, self.dropout = attention_dropout, dropout
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Built on the CPU also under a meta/cuda default device (the index is data; .to() moves it).
        coords = torch.stack(torch.meshgrid(torch.arange(wh, device="cpu"), torch.arange(ww, device="cpu"),
                                            indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
        relative[:, :, 0] += wh - 1
        relative[:, :, 1] += ww - 1
        relative[:, :, 0] *= 2 * ww - 1
        self.register_buffer("relative_position_index", relative.sum(-1).flatten(), persistent=True)

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        batch, height, width, channels = x.shape
        window = self.window_size
        pad_r = (window[1] - width % window[1]) % window[1]
        pad_b = (window[0] - height % window[0]) % window[0]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        _, pad_h, pad_w, _ = x.shape
        shift = list(self.shift_size)
        if window[0] >= pad_h:
            shift[0] = 0
        if window[1] >= pad_w:
            shift[1] = 0
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        num_windows = (pad_h // window[0]) * (pad_w // window[1])
        x = x.view(batch, pad_h // window[0], window[0], pad_w // window[1], window[1], channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * num_windows, window[0] * window[1], channels)
        tokens = x.shape[1]
        qkv = self.qkv(x).reshape(x.shape[0], tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q = q * (channels // self.num_heads) ** -0.5
        attn = q.matmul(k.transpose(-2, -1)) + self.relative_position_bias()
        if sum(shift) > 0:
            mask = _window_mask(pad_h, pad_w, window, shift, x.device).to(attn.dtype)
            attn = attn.view(batch, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        attn = F.dropout(attn.softmax(dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(x.shape[0], tokens, channels)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
        x = x.view(batch, pad_h // window[0], pad_w // window[1], window[0], window[1], channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, pad_h, pad_w, channels)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shift_size: Sequence[int],
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ShiftedWindowAttention(dim, window_size, shift_size, num_heads, attention_dropout, dropout)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.norm2 = norm_layer(dim)
        hidden = int(dim * mlp_ratio)
        # torchvision.ops.MLP's indices: 0 linear, 1 GELU, 2 dropout, 3 linear, 4 dropout.
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class SwinTransformer(nn.Module):
    """Swin Transformer; ``forward_features`` returns the NCHW maps of ``out_indices`` (stages 0-3: strides
    4/8/16/32 of the patch size 4, channels C/2C/4C/8C), each through its own LayerNorm (``out_norms``, as
    MMDetection's Swin adds for detection; none with the default ``out_indices=()``, the classifier of
    torchvision); ``forward`` classifies (``num_classes`` > 0)."""

    def __init__(self, patch_size: Sequence[int] = (4, 4), embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: Sequence[int] = (7, 7),
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = 0.1, num_classes: int = 1000, in_channels: int = 3,
                 out_indices: Sequence[int] = ()):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads need one entry per stage")
        norm_layer = partial(nn.LayerNorm, eps=1e-5)
        self.embed_dim, self.depths = embed_dim, list(depths)
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_channels, embed_dim, kernel_size=tuple(patch_size), stride=tuple(patch_size)),
            Permute([0, 2, 3, 1]), norm_layer(embed_dim))]
        total, block_id = sum(depths), 0
        for stage, depth in enumerate(depths):
            dim = embed_dim * 2 ** stage
            blocks = []
            for layer in range(depth):
                prob = stochastic_depth_prob * block_id / max(total - 1, 1)
                blocks.append(SwinTransformerBlock(
                    dim, num_heads[stage], window_size, [0 if layer % 2 == 0 else w // 2 for w in window_size],
                    mlp_ratio, dropout, attention_dropout, prob, norm_layer))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim, norm_layer))
        self.features = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.stage_channels = [embed_dim * 2 ** i for i in range(len(depths))]
        self.stage_strides = [int(patch_size[0]) * 2 ** i for i in range(len(depths))]
        self.out_indices = list(out_indices)
        if num_classes == 0 and not self.out_indices:
            raise ValueError("a Swin without a classification head needs out_indices (the stages it returns)")
        if any(i < 0 or i >= len(depths) for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} outside stages 0..{len(depths) - 1}")
        self.out_norms = nn.ModuleList([norm_layer(self.stage_channels[i]) for i in self.out_indices])
        self.num_classes = num_classes
        if num_classes > 0:
            self.norm = norm_layer(self.num_features)
            self.head = nn.Linear(self.num_features, num_classes)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def out_channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs, stage = [], -1
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index % 2 == 1:  # features 1, 3, 5, 7 are the stages
                stage = index // 2
                if stage in self.out_indices:
                    norm = self.out_norms[self.out_indices.index(stage)]
                    outputs.append(norm(x).permute(0, 3, 1, 2).contiguous())
                if stage >= max(self.out_indices) and self.num_classes == 0:
                    break
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 0:
            raise RuntimeError("built without a classification head (num_classes=0): use forward_features")
        x = self.norm(self.features(x))
        return self.head(x.mean(dim=(1, 2)))


def swin(name: str = "swin_t", **kwargs) -> SwinTransformer:
    """``swin_t``/``swin_s``/``swin_b`` with torchvision's hyperparameters (patch 4, window 7), overridable."""
    if name not in SWIN_CONFIGS:
        raise ValueError(f"unknown Swin variant {name!r}; choose from {sorted(SWIN_CONFIGS)}")
    return SwinTransformer(**{**SWIN_CONFIGS[name], **kwargs})


class ResNetStages(nn.Module):
    """MONAI's ResNet-10/18/34/50/101 (torchvision layout: conv1, bn1, layer1-4) returning the NCHW maps of
    ``out_indices`` (layer1-4: strides 4/8/16/32): the CNN backbones of the paper's comparison (50, 101) and a
    narrow ResNet-10/18 (``widen_factor``) as the CPU stand-in's CNN control."""

    DEPTHS = (10, 18, 34, 50, 101)

    def __init__(self, depth: int = 50, in_channels: int = 3, out_indices: Sequence[int] = (1, 2, 3),
                 widen_factor: float = 1.0):
        super().__init__()
        from monai.networks import nets

        if depth not in self.DEPTHS:
            raise ValueError(f"ResNet depth must be one of {self.DEPTHS}, got {depth}")
        net = getattr(nets, f"resnet{depth}")(spatial_dims=2, n_input_channels=in_channels, conv1_t_size=7,
                                              conv1_t_stride=2, num_classes=1, widen_factor=widen_factor)
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_indices = list(out_indices)
        self.stage_channels = [[m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
                               for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        self.stage_strides = [4, 8, 16, 32]

    @property
    def out_channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        outputs = []
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if index in self.out_indices:
                outputs.append(x)
            if index >= max(self.out_indices):
                break
        return outputs


def build_backbone(name: str, out_indices: Sequence[int] = (1, 2, 3), in_channels: int = 3, **kwargs) -> nn.Module:
    """``swin_t``/``swin_s``/``swin_b`` (kwargs override the Swin hyperparameters), ``resnet10/18/34/50/101``
    (kwargs: ``widen_factor``), ``convnext_tiny``/``convnext_small`` (kwargs override ConvNeXt's) or
    ``efficientnet_b0``..``b7`` (lightning_modules/swincalc_cnn_backbones.py)."""
    from lightning_modules.swincalc_cnn_backbones import (CONVNEXT_CONFIGS, EFFICIENTNET_NAMES, EfficientNetStages,
                                                          convnext)

    if name in SWIN_CONFIGS:
        return swin(name, num_classes=0, out_indices=out_indices, in_channels=in_channels, **kwargs)
    if name in CONVNEXT_CONFIGS:
        return convnext(name, num_classes=0, out_indices=out_indices, in_channels=in_channels, **kwargs)
    if name in EFFICIENTNET_NAMES:
        if kwargs:
            raise ValueError(f"{name} takes no backbone_args, got {sorted(kwargs)}")
        return EfficientNetStages(name, in_channels, out_indices)
    if name.startswith("resnet") and name[6:].isdigit():
        unknown = set(kwargs) - {"widen_factor"}
        if unknown:
            raise ValueError(f"{name} takes only widen_factor in backbone_args, got {sorted(unknown)}")
        return ResNetStages(int(name[6:]), in_channels, out_indices, **kwargs)
    raise ValueError(f"unknown backbone {name!r}: swin_t, swin_s, swin_b, resnet10/18/34/50/101, "
                     "convnext_tiny, convnext_small or efficientnet_b0..b7")


def load_backbone(backbone: nn.Module, path: str) -> dict[str, list[str]]:
    """Load a local ImageNet checkpoint (torchvision key names; a ``state_dict``/``model`` wrapper is unwrapped);
    the classification head is skipped. Returns the missing and unexpected keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc.", "norm.", "classifier."))}
    result = backbone.load_state_dict(state, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


class BackboneFPN(nn.Module):
    """Backbone stages -> MONAI's FeaturePyramidNetwork; ``extra``: ``p6p7`` (RetinaNet's two stride-2 convs on
    P5), ``maxpool`` (one pooled level) or ``none``. Returns an ordered dict of maps with ``out_channels`` each."""

    def __init__(self, backbone: nn.Module, out_channels: int = 256,
                 extra: Literal["p6p7", "maxpool", "none"] = "p6p7"):
        super().__init__()
        self.body = backbone
        extra_block = {"p6p7": LastLevelP6P7(2, out_channels, out_channels), "maxpool": LastLevelMaxPool(2),
                       "none": None}[extra]
        self.fpn = FeaturePyramidNetwork(2, list(backbone.out_channels), out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels
        self.num_levels = len(backbone.out_channels) + {"p6p7": 2, "maxpool": 1, "none": 0}[extra]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body.forward_features(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


# --------------------------------------------------------------------------------------------------------------
# RetinaNet losses and detector
# --------------------------------------------------------------------------------------------------------------
class SigmoidFocalLoss(nn.Module):
    """RetinaNet's focal loss (Lin et al. 2017), summed over anchors and classes and divided by the number of
    foreground anchors (rows of ``target`` with a 1), as torchvision's and MMDetection's RetinaNet normalise it."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        prob = logits.sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = prob * target + (1 - prob) * (1 - target)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha >= 0:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return loss.sum() / target.sum().clamp(min=1.0)


class PerBoxL1Loss(nn.Module):
    """L1 over the encoded box deltas, summed over coordinates and averaged over foreground anchors."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred.float() - target.float()).abs().sum() / max(pred.shape[0], 1)


class IoUMatcher:
    """Anchor-to-box assignment of torchvision's ``Matcher`` (which MONAI's detector imports from torchvision):
    each anchor takes its best box when their IoU reaches ``high``, is background below ``low`` (-1) and ignored in
    between (-2); with ``allow_low_quality_matches`` every box also keeps the anchors of its highest IoU."""

    BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS = -1, -2

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = True):
        if low > high:
            raise ValueError(f"low {low} > high {high}")
        self.high, self.low, self.allow_low_quality_matches = high, low, allow_low_quality_matches

    def __call__(self, quality: torch.Tensor) -> torch.Tensor:  # (boxes, anchors) -> (anchors,)
        values, matches = quality.max(dim=0)
        all_matches = matches.clone()
        matches[values < self.low] = self.BELOW_LOW_THRESHOLD
        matches[(values >= self.low) & (values < self.high)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best = quality.max(dim=1).values
            anchors = torch.where(quality == best[:, None])[1]
            matches[anchors] = all_matches[anchors]
        return matches


class _Detector(RetinaNetDetector):
    """MONAI's RetinaNetDetector with the IoU matcher above (no torchvision)."""

    def compute_anchor_matched_idxs(self, anchors, targets, num_anchor_locs_per_level):
        if not isinstance(self.proposal_matcher, IoUMatcher):
            return super().compute_anchor_matched_idxs(anchors, targets, num_anchor_locs_per_level)
        matched = []
        for anchors_per_image, target in zip(anchors, targets):
            boxes = target[self.target_box_key].to(anchors_per_image.device)
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_per_image.shape[0],), -1, dtype=torch.int64,
                                          device=anchors_per_image.device))
                continue
            matched.append(self.proposal_matcher(self.box_overlap_metric(boxes, anchors_per_image)))
        return matched


def _swap_xy(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) <-> MONAI's array-axis order (row1, col1, row2, col2)."""
    return boxes[..., [1, 0, 3, 2]]


def default_anchor_sizes(num_levels: int, base: float = 32.0) -> list[list[float]]:
    """torchvision RetinaNet's anchors: per level base * 2^level x (1, 2^(1/3), 2^(2/3))."""
    return [[base * 2 ** level * 2 ** (i / 3) for i in range(3)] for level in range(num_levels)]


class RetinaNetCalcDetector(nn.Module):
    """Backbone + FPN + RetinaNet head, one class by default: the detector protocol of
    ``lightning_modules.tasks.detection`` (training: ``(images, targets) -> {"classification", "box_regression"}``
    losses; eval: ``images -> [{"boxes", "scores", "labels"}]``).

    Args:
        backbone: ``swin_t``/``swin_s``/``swin_b``/``resnet10/18/34/50/101``.
        backbone_args: Swin hyperparameter overrides (a tiny Swin for the CPU demo) or a ResNet's ``widen_factor``.
        out_indices: backbone stages fed to the FPN (1, 2, 3 -> C3-C5, strides 8-32, RetinaNet's).
        fpn_channels: FPN width (the paper's heads use 256).
        extra_levels: ``p6p7`` (RetinaNet's P6, P7), ``maxpool`` or ``none``.
        anchor_sizes: per FPN level the anchor sizes in pixels; default torchvision's 32 * 2^level x
            (1, 2^(1/3), 2^(2/3)) from the first level, scaled by ``anchor_base / 32``.
        aspect_ratios: anchor height/width ratios at every level (torchvision's 0.5, 1, 2).
        fg_iou, bg_iou: anchor matching thresholds (torchvision's 0.5, 0.4).
        focal_alpha, focal_gamma: the focal loss.
        score_thresh, nms_thresh, topk_candidates, detections_per_img: box selection at inference.
        backbone_ckpt: optional local ImageNet checkpoint for the backbone (torchvision keys).
    """

    def __init__(self, backbone: str = "swin_t", backbone_args: Optional[dict] = None, num_classes: int = 1,
                 in_channels: int = 3, out_indices: Sequence[int] = (1, 2, 3), fpn_channels: int = 256,
                 extra_levels: Literal["p6p7", "maxpool", "none"] = "p6p7",
                 anchor_sizes: Optional[Sequence[Sequence[float]]] = None, anchor_base: float = 32.0,
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), fg_iou: float = 0.5, bg_iou: float = 0.4,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, topk_candidates: int = 1000, detections_per_img: int = 100,
                 backbone_ckpt: Optional[str] = None):
        super().__init__()
        body = build_backbone(backbone, out_indices, in_channels, **dict(backbone_args or {}))
        if backbone_ckpt:
            load_backbone(body, backbone_ckpt)
        extractor = BackboneFPN(body, fpn_channels, extra_levels)
        sizes = [list(s) for s in anchor_sizes] if anchor_sizes is not None else default_anchor_sizes(
            extractor.num_levels, anchor_base)
        if len(sizes) != extractor.num_levels:
            raise ValueError(f"{len(sizes)} anchor size lists for {extractor.num_levels} FPN levels")
        anchors = AnchorGenerator(sizes=tuple(tuple(s) for s in sizes),
                                  aspect_ratios=tuple(tuple(aspect_ratios) for _ in sizes))
        num_anchors = anchors.num_anchors_per_location()[0]
        first_stride = body.stage_strides[min(out_indices)]
        divisible = first_stride * 2 ** (extractor.num_levels - 1)
        network = RetinaNet(spatial_dims=2, num_classes=num_classes, num_anchors=num_anchors,
                            feature_extractor=extractor, size_divisible=divisible)
        self.detector = _Detector(network, anchors)
        self.detector.proposal_matcher = IoUMatcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.detector.set_cls_loss(SigmoidFocalLoss(focal_alpha, focal_gamma))
        self.detector.set_box_regression_loss(PerBoxL1Loss(), encode_gt=True, decode_pred=False)
        self.detector.set_box_selector_parameters(score_thresh=score_thresh, topk_candidates_per_level=topk_candidates,
                                                  nms_thresh=nms_thresh, detections_per_img=detections_per_img)
        self.detector.set_target_keys(box_key="boxes", label_key="labels")
        self.num_classes = num_classes

    @property
    def backbone(self) -> nn.Module:
        return self.detector.network.feature_extractor.body

    def forward(self, images: torch.Tensor, targets: Optional[list[dict[str, torch.Tensor]]] = None):
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            monai_targets = [{"boxes": _swap_xy(t["boxes"].float()), "labels": t["labels"].long()} for t in targets]
            losses = self.detector(images, monai_targets)
            return {"classification": losses[self.detector.cls_key],
                    "box_regression": losses[self.detector.box_reg_key]}
        outputs = self.detector(images)
        score_key = self.detector.pred_score_key
        return [{"boxes": _swap_xy(o["boxes"].float()), "scores": o[score_key].float(), "labels": o["labels"].long()}
                for o in outputs]


# --------------------------------------------------------------------------------------------------------------
# The paper's detectors by head
# --------------------------------------------------------------------------------------------------------------
# Each head's detector class (imported when chosen: the head modules import this one for the backbones). Every
# class takes backbone, backbone_args, num_classes, in_channels and backbone_ckpt, and follows the detector protocol.
DETECTION_HEADS = {
    "retinanet": "lightning_modules.swincalc.RetinaNetCalcDetector",
    "reppoints": "lightning_modules.reppoints.RepPointsCalcDetector",
    "deformable_detr": "lightning_modules.deformable_detr.DeformableDETRCalcDetector",
}


class SwinCalcDetector(nn.Module):
    """One of the paper's detectors chosen by its ``head`` (a key of ``DETECTION_HEADS``) on ``backbone``;
    ``head_args`` are that head's own arguments (e.g. RetinaNet's anchors, Deformable DETR's queries). Follows the
    detector protocol of ``lightning_modules.tasks.detection``; ``parameter_groups`` passes the head's optimiser
    groups (lr multipliers) on when it has them."""

    def __init__(self, head: str = "retinanet", backbone: str = "swin_t", backbone_args: Optional[dict] = None,
                 num_classes: int = 1, in_channels: int = 3, backbone_ckpt: Optional[str] = None,
                 head_args: Optional[dict] = None):
        super().__init__()
        if head not in DETECTION_HEADS:
            raise ValueError(f"unknown head {head!r}; choose from {sorted(DETECTION_HEADS)}")
        import importlib

        module_name, class_name = DETECTION_HEADS[head].rsplit(".", 1)
        detector_class = getattr(importlib.import_module(module_name), class_name)
        self.head = head
        self.detector = detector_class(backbone=backbone, backbone_args=backbone_args, num_classes=num_classes,
                                       in_channels=in_channels, backbone_ckpt=backbone_ckpt, **dict(head_args or {}))

    def parameter_groups(self) -> list[dict]:
        groups = getattr(self.detector, "parameter_groups", None)
        return groups() if callable(groups) else [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def forward(self, images: torch.Tensor, targets: Optional[list[dict[str, torch.Tensor]]] = None):
        return self.detector(images, targets)


# --------------------------------------------------------------------------------------------------------------
# The trivial baseline: boxes on the brightest blobs
# --------------------------------------------------------------------------------------------------------------
class BrightSpotDetector(nn.Module):
    """No learning: smooth the first channel with a box filter of ``box_size`` pixels and put ``box_size`` boxes
    on its ``max_detections`` highest local maxima (NMS at ``nms_thresh``), scored by the smoothed intensity
    (a sigmoid of it). It finds bright clusters and bright isolated dots alike: the baseline a learned detector
    must beat on the stand-in."""

    def __init__(self, box_size: int = 24, max_detections: int = 10, nms_thresh: float = 0.1):
        super().__init__()
        self.box_size, self.max_detections, self.nms_thresh = box_size, max_detections, nms_thresh

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        k = self.box_size
        x = images[:, :1].float()
        smooth = F.avg_pool2d(x, k | 1, stride=1, padding=(k | 1) // 2, count_include_pad=False)
        peaks = smooth == F.max_pool2d(smooth, 5, stride=1, padding=2)
        outputs = []
        height, width = x.shape[-2:]
        for s, p in zip(smooth[:, 0], peaks[:, 0]):
            rows, cols = torch.nonzero(p, as_tuple=True)
            values = s[rows, cols]
            order = torch.argsort(values, descending=True)[: 50 * self.max_detections]
            rows, cols, values = rows[order].float(), cols[order].float(), values[order]
            boxes = torch.stack([(cols - k / 2).clamp(0, width), (rows - k / 2).clamp(0, height),
                                 (cols + k / 2).clamp(0, width), (rows + k / 2).clamp(0, height)], dim=1)
            keep = torch.as_tensor(non_max_suppression(boxes, values, self.nms_thresh,
                                                       max_proposals=self.max_detections), dtype=torch.long)
            outputs.append({"boxes": boxes[keep], "scores": torch.sigmoid(values[keep]),
                            "labels": torch.zeros(len(keep), dtype=torch.long, device=images.device)})
        return outputs

