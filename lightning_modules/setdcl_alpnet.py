"""SSL-ALPNet (Ouyang et al., "Self-supervision with superpixels: training few-shot medical image segmentation without
annotation", ECCV 2020): the few-shot baseline of Guided-SET-DCL's Table 1 (rows SABS, SABS + CTC and CTC).

ALPNet = a fully convolutional encoder (the release: torchvision's DeepLabv3 ResNet-101 backbone, MS-COCO weights,
dilated to output stride 8, no ASPP, then a 1x1 convolution 2048 -> 256 without bias: 256 x 32 x 32 maps for 256 px
slices) shared by support and query, and the adaptive local prototype pooling (ALP) classifier, which has no weights:

- prototypes: the support feature map average-pooled in non-overlapping ``pool_window`` windows (4 x 4 in training,
  2 x 2 at inference); a window is a local prototype of a class where the pooled class mask exceeds 0.95. Background:
  local prototypes only; foreground: local prototypes plus the global masked-average prototype, or the global one
  alone when no 4 x 4 window of the (bilinearly resized) foreground mask reaches 0.95 (a small structure);
- scores: cosine similarities of the query feature with each prototype times 20; a class's score map is the
  softmax-weighted sum over its prototypes ``sum_k softmax(d)_k d_k``; the (background, foreground) scores are the
  logits, upsampled bilinearly to the slice;
- training loss: weighted cross-entropy (0.05 / 1.0, the release's ``use_wce``) plus PANet's prototype alignment
  (``align``): the query's predicted masks give prototypes that must segment the support (plain cross-entropy).

``forward`` follows the episodic task's network interface (``tasks.episodic_segmentation``): the initial label and
the negatives are accepted and ignored (ALPNet has neither guidance nor contrastive terms), ``probabilities`` is the
softmax of the logits and ``losses["align"]`` the alignment term (training only).

Without torchvision (and offline), the backbone is ``backbones``' MONAI ResNet in torchvision's layout, dilated here
as torchvision's ``replace_stride_with_dilation = [False, True, True]``; MS-COCO weights load by key when a user has
them (the trunk's names are torchvision's), none are downloaded.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import RESNETS, build_trunk


def dilate_resnet(trunk: nn.Module, output_stride: int = 8) -> nn.Module:
    """torchvision's ``replace_stride_with_dilation`` on a ResNet trunk (layer1..layer4): ``output_stride`` 8 dilates
    layer3 and layer4 (2, 4), 16 layer4 (2); a stage's first block keeps the previous dilation, as torchvision."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    stages = {8: ("layer3", "layer4"), 16: ("layer4",), 32: ()}[output_stride]
    dilation = 1
    for name in stages:
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(getattr(trunk, name)):
            rate = previous if i == 0 else dilation
            convs = [block.conv2] if hasattr(block, "conv3") else [block.conv1, block.conv2]  # bottleneck / basic
            for conv in convs:
                conv.stride, conv.dilation, conv.padding = (1, 1), (rate, rate), (rate, rate)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    return trunk


def safe_norm(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """L2 normalisation along dim 1 with the norm floored at ``eps`` (the release's ``safe_norm``)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


class ALPNet(nn.Module):
    """SSL-ALPNet's network (see the module docstring).

    Args:
        backbone: a ResNet of ``lightning_modules.backbones`` (the release: resnet101).
        width: the ResNet's width multiplier (1: the release; the demo uses a narrow resnet18).
        in_channels: channels of a slice; tiled to ``query_channels`` (the release's ``tile_z_dim`` 3).
        feature_channels: the 1x1 reduction's output (256).
        output_stride: the encoder's stride (8: 32 x 32 maps for 256 px slices).
        pool_window, eval_pool_window: the local-prototype window in training (4) and at inference (2).
        fg_threshold, bg_threshold: a window is a class's local prototype above this pooled mask value (0.95).
        scale: the cosine similarities' multiplier (20).
        align: return PANet's prototype-alignment loss in training.
    """

    def __init__(self, backbone: str = "resnet101", width: float = 1.0, in_channels: int = 1, query_channels: int = 3,
                 feature_channels: int = 256, output_stride: int = 8, pool_window: int = 4, eval_pool_window: int = 2,
                 fg_threshold: float = 0.95, bg_threshold: float = 0.95, scale: float = 20.0,
                 align: bool = True) -> None:
        super().__init__()
        if backbone not in RESNETS:
            raise ValueError(f"backbone must be one of {RESNETS}, got {backbone!r}")
        self.in_channels, self.query_channels = in_channels, max(in_channels, query_channels)
        trunk, channels = build_trunk(backbone, self.query_channels, width)
        self.backbone = dilate_resnet(trunk, output_stride)
        self.localconv = nn.Conv2d(channels, feature_channels, 1, bias=False)
        self.pool_window, self.eval_pool_window = pool_window, eval_pool_window
        self.fg_threshold, self.bg_threshold, self.scale, self.align = fg_threshold, bg_threshold, scale, align

    def features(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] != self.query_channels:
            image = image.repeat(1, self.query_channels // image.shape[1], 1, 1)
        return self.localconv(self.backbone(image))

    def class_score(self, query: torch.Tensor, support: torch.Tensor, mask: torch.Tensor, foreground: bool,
                    window: int) -> torch.Tensor:
        """One class's score map (1, 1, h, w): query/support features (1, C, h, w), the class's soft mask at the
        feature size (1, 1, h, w)."""
        threshold = self.fg_threshold if foreground else self.bg_threshold
        global_proto = (support * mask).sum((-2, -1)) / (mask.sum((-2, -1)) + 1e-5)  # (1, C)
        # background: local prototypes; foreground: local + global where a training window is nearly all foreground
        use_local = not foreground or F.avg_pool2d(mask, self.pool_window).max() >= threshold
        protos = support.new_zeros(0, support.shape[1])
        if use_local:
            pooled = F.avg_pool2d(support, window).flatten(2)[0].T  # (cells, C)
            share = F.avg_pool2d(mask, window).flatten()
            protos = pooled[share > threshold]
        if foreground and len(protos):
            protos = torch.cat([protos, global_proto])
        if not len(protos):  # no window qualifies: the global prototype alone ('mask' mode)
            return F.cosine_similarity(query, global_proto[..., None, None], dim=1, eps=1e-4)[:, None] * self.scale
        distances = F.conv2d(safe_norm(query), safe_norm(protos)[..., None, None]) * self.scale  # (1, P, h, w)
        return (torch.softmax(distances, 1) * distances).sum(1, keepdim=True)

    def logits(self, query: torch.Tensor, support: torch.Tensor, fg_mask: torch.Tensor, size) -> torch.Tensor:
        """(background, foreground) logits (1, 2, H, W) of one query given one support and its 0/1 mask (1, 1, H, W)."""
        window = self.pool_window if self.training else self.eval_pool_window
        fg = F.interpolate(fg_mask.float(), size=support.shape[-2:], mode="bilinear")
        bg = F.interpolate(1 - fg_mask.float(), size=support.shape[-2:], mode="bilinear")
        scores = torch.cat([self.class_score(query, support, bg, False, window),
                            self.class_score(query, support, fg, True, window)], 1)
        return F.interpolate(scores, size=tuple(size), mode="bilinear")

    def forward(self, support_image: torch.Tensor, support_mask: torch.Tensor, query_image: torch.Tensor,
                query_prior: Optional[torch.Tensor] = None, negative_image: Optional[torch.Tensor] = None,
                negative_mask: Optional[torch.Tensor] = None) -> dict:
        """Episode -> ``{"probabilities": (B, 2, H, W), "logits", "losses": {"align"}}`` (losses in training)."""
        batch, size = len(query_image), query_image.shape[-2:]
        features = self.features(torch.cat([support_image, query_image]))
        support, query = features[:batch], features[batch:]
        logits = torch.cat([self.logits(query[b:b + 1], support[b:b + 1], support_mask[b:b + 1], size)
                            for b in range(batch)])
        out = {"logits": logits, "probabilities": torch.softmax(logits, 1)}
        if self.training and self.align:
            out["losses"] = {"align": self.alignment_loss(support, query, logits, support_mask)}
        return out

    def alignment_loss(self, support: torch.Tensor, query: torch.Tensor, logits: torch.Tensor,
                       support_mask: torch.Tensor) -> torch.Tensor:
        """PANet's prototype alignment: the query's predicted foreground (argmax) as the mask of prototypes from the
        query features that segment the support; cross-entropy against the support mask, averaged over the batch."""
        losses = []
        for b in range(len(query)):
            predicted = logits[b:b + 1].argmax(1, keepdim=True)
            reverse = self.logits(support[b:b + 1], query[b:b + 1], predicted, support_mask.shape[-2:])
            losses.append(F.cross_entropy(reverse, support_mask[b:b + 1, 0].round().long()))
        return torch.stack(losses).mean()
