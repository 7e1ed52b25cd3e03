"""Deformable DETR (Zhu et al., ICLR 2021): SwinCalc's third detection head (``SwinCalcDetector(head=
"deformable_detr")`` in lightning_modules/swincalc.py).

The plain single-stage model of the paper (no iterative box refinement, no two-stage proposals), as in the official
repository and MMDetection's ``deformable-detr_r50_16xb2-50e_coco`` config, whose lr (AdamW 2e-4 at batch 32) scaled
linearly to batch 2 is the 1.25e-5 of SwinCalc's Table 2 for every DDETR row:

* backbone stages C3-C5 -> per-level 1x1 conv + GroupNorm(32) to 256 channels, and a fourth level from a 3x3
  stride-2 conv + GN on the last stage (MMDetection's ``ChannelMapper``, the official ``input_proj``);
* sine positional encoding (128 features per axis, normalised with a -0.5 offset) + a learnt level embedding;
* 6 encoder layers (multi-scale deformable self-attention: 8 heads, 4 levels, 4 points; FFN 1024; dropout 0.1;
  post-norm), 6 decoder layers (self-attention, deformable cross-attention to the encoder memory, FFN);
* 300 queries: a learnt (query position, content) pair each; the position gives the 2-D reference point (sigmoid
  of a linear map) around which the decoder samples;
* per decoder layer a shared linear classifier (sigmoid, prior 0.01) and a shared 3-layer box MLP predicting
  (cx, cy, w, h) relative to the reference point in logit space;
* Hungarian matching per image (scipy's ``linear_sum_assignment``) on the focal classification cost (weight 2),
  L1 on normalised (cx, cy, w, h) (weight 5) and -GIoU (weight 2); the losses are the same three terms with the
  same weights (focal alpha 0.25, gamma 2), each divided by the number of true boxes, at the last decoder layer
  and (``aux_loss``) at each earlier one;
* inference: the top-100 (query, class) sigmoid scores, no NMS (the set loss makes predictions unique).

The attention's sampling is bilinear ``grid_sample`` over the levels (the official ``ms_deform_attn_core_pytorch``
semantics; the CUDA kernel is a faster equal). Images of a batch share one size here (the task stacks them), so no
padding mask: every level's valid ratio is 1.

Boxes enter and leave as pixel (x1, y1, x2, y2), x along the width (lightning_modules/batch.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from monai.data.box_utils import box_giou, box_pair_giou
from scipy.optimize import linear_sum_assignment
from torch import nn

from lightning_modules.swincalc import SigmoidFocalLoss, build_backbone, load_backbone


# --------------------------------------------------------------------------------------------------------------
# Box formats
# --------------------------------------------------------------------------------------------------------------
def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


# --------------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention
# --------------------------------------------------------------------------------------------------------------
def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                                     sampling_locations: torch.Tensor,
                                     attention_weights: torch.Tensor) -> torch.Tensor:
    """Attention-weighted sum of bilinearly sampled values.

    Args:
        value: (B, S, heads, D) with S = sum of H_l * W_l, the levels flattened row-major one after another.
        spatial_shapes: the (H_l, W_l) of each level.
        sampling_locations: (B, Q, heads, L, P, 2) as (x, y) in [0, 1] of each level (0 and 1 are the outer edges
            of the border pixels; outside samples zeros).
        attention_weights: (B, Q, heads, L, P), normally summing to 1 over (L, P).

    Returns:
        (B, Q, heads * D).
    """
    batch, _, heads, dim = value.shape
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    grid = sampling_locations * 2 - 1  # grid_sample's [-1, 1] with align_corners=False: pixel edges at +-1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, HW, heads, D) -> (B * heads, D, H, W); grid (B, Q, heads, P, 2) -> (B * heads, Q, P, 2)
        level_value = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, dim, height, width)
        level_grid = grid[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (B * heads, D, Q, P)
    sampled = torch.stack(sampled, dim=3)  # (B * heads, D, Q, L, P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    output = (sampled * weights).sum(dim=(3, 4))  # (B * heads, D, Q)
    return output.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` sampled locations per head and level around its reference point:
    offsets and weights (softmax over levels x points) are linear maps of the query (Zhu et al. Eq. 3)."""

    def __init__(self, embed_dim: int = 256, num_levels: int = 4, num_heads: int = 8, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_levels, self.num_heads, self.num_points = embed_dim, num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: zero offset weights, biases placing head h's k-th point k steps along
        direction 2 pi h / heads (scaled to the unit square's border); uniform attention; Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        bias = directions[:, None, None, :] * steps[None, None, :, None]  # (heads, 1, points, 2)
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], padding_mask: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """query (B, Q, C); reference_points (B, Q, L, 2) as (x, y) in [0, 1] (or (B, Q, L, 4) boxes (cx, cy, w,
        h), offsets then scale with the box); value (B, S, C); padding_mask (B, S), True where padded."""
        batch, queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"{len(spatial_shapes)} levels given to an attention built for {levels}")
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], heads, self.embed_dim // heads)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points).softmax(-1)
        weights = weights.view(batch, queries, heads, levels, points)
        if reference_points.shape[-1] == 2:  # offsets are in pixels of each level
            normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference points end in 2 or 4 values, got {reference_points.shape[-1]}")
        # Sampled in float32 under mixed precision: half-precision locations would be off by pixels on large maps.
        output = multi_scale_deformable_attention(value.float(), spatial_shapes, locations.float(), weights.float())
        return self.output_proj(output.to(query.dtype))


# --------------------------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------------------------
def sine_position_encoding(height: int, width: int, num_feats: int = 128, temperature: float = 10000.0,
                           offset: float = -0.5, scale: float = 2 * math.pi, device=None,
                           dtype=torch.float32) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of an unpadded (H, W) map: (2 * num_feats, H, W), the y half first;
    the positions (i + 1 + offset) / size * scale (Deformable DETR's offset -0.5 centres them on the pixels)."""
    eps = 1e-6
    y = (torch.arange(1, height + 1, device=device, dtype=dtype) + offset) / (height + eps) * scale
    x = (torch.arange(1, width + 1, device=device, dtype=dtype) + offset) / (width + eps) * scale
    dim_t = temperature ** (2 * torch.div(torch.arange(num_feats, device=device), 2, rounding_mode="floor")
                            .to(dtype) / num_feats)

    def encode(positions: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, num_feats): sin on even, cos on odd
        angles = positions[:, None] / dim_t
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1)


def _feedforward(embed_dim: int, feedforward_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, feedforward_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(feedforward_dim, embed_dim), nn.Dropout(dropout))


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels' pixels, then the FFN; post-norm, as the official layer."""

    def __init__(self, embed_dim: int = 256, feedforward_dim: int = 1024, dropout: float = 0.1, num_levels: int = 4,
                 num_heads: int = 8, num_points: int = 4):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(embed_dim, num_levels, num_heads, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = _feedforward(embed_dim, feedforward_dim, dropout)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask=None):
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes,
                                                            padding_mask)))
        return self.norm2(src + self.ffn(src))


class DeformableDecoderLayer(nn.Module):
    """Query self-attention (standard multi-head), deformable cross-attention to the memory, FFN; post-norm."""

    def __init__(self, embed_dim: int = 256, feedforward_dim: int = 1024, dropout: float = 0.1, num_levels: int = 4,
                 num_heads: int = 8, num_points: int = 4):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn = MultiScaleDeformableAttention(embed_dim, num_levels, num_heads, num_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = _feedforward(embed_dim, feedforward_dim, dropout)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, padding_mask=None):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        cross = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask)
        tgt = self.norm2(tgt + self.dropout2(cross))
        return self.norm3(tgt + self.ffn(tgt))


class DeformableTransformer(nn.Module):
    """Encoder over the flattened multi-scale maps, decoder over ``num_queries`` learnt queries.

    ``forward(features, positions)`` takes per level (B, C, H_l, W_l) maps and their (C, H_l, W_l) position
    encodings; returns the decoder states of every layer (num_decoder_layers, B, Q, C) and the queries' reference
    points (B, Q, 2) as (x, y) in [0, 1] of the image.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, feedforward_dim: int = 1024, dropout: float = 0.1,
                 num_levels: int = 4, num_points: int = 4, num_queries: int = 300):
        super().__init__()
        layer_args = (embed_dim, feedforward_dim, dropout, num_levels, num_heads, num_points)
        self.encoder = nn.ModuleList([DeformableEncoderLayer(*layer_args) for _ in range(num_encoder_layers)])
        self.decoder = nn.ModuleList([DeformableDecoderLayer(*layer_args) for _ in range(num_decoder_layers)])
        self.level_embed = nn.Parameter(torch.empty(num_levels, embed_dim))
        self.reference_points = nn.Linear(embed_dim, 2)
        self.embed_dim, self.num_levels = embed_dim, num_levels
        self.reset_parameters()
        # (query position, query content) per query; nn.Embedding's N(0, 1), outside the Xavier pass (official).
        self.query_embedding = nn.Embedding(num_queries, 2 * embed_dim)

    def reset_parameters(self) -> None:
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]], num_levels: int, batch: int,
                                 device, dtype) -> torch.Tensor:
        """Every level's pixel centres as (x, y) in [0, 1], each repeated for all levels: (B, S, L, 2)."""
        points = []
        for height, width in spatial_shapes:
            y, x = torch.meshgrid((torch.arange(height, device=device, dtype=dtype) + 0.5) / height,
                                  (torch.arange(width, device=device, dtype=dtype) + 0.5) / width, indexing="ij")
            points.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1))
        points = torch.cat(points, dim=0)
        return points[None, :, None, :].expand(batch, -1, num_levels, -1)

    def forward(self, features: Sequence[torch.Tensor], positions: Sequence[torch.Tensor]):
        if len(features) != self.num_levels:
            raise ValueError(f"{len(features)} feature levels for a transformer built for {self.num_levels}")
        batch = features[0].shape[0]
        spatial_shapes = [tuple(f.shape[-2:]) for f in features]
        src = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)  # (B, S, C)
        pos = torch.cat([(p.flatten(1).transpose(0, 1) + self.level_embed[level])
                         for level, p in enumerate(positions)], dim=0)[None]  # (1, S, C)
        reference = self.encoder_reference_points(spatial_shapes, self.num_levels, batch, src.device, src.dtype)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos, reference, spatial_shapes)
        query_pos, tgt = self.query_embedding.weight.split(self.embed_dim, dim=1)
        query_pos = query_pos[None].expand(batch, -1, -1)
        tgt = tgt[None].expand(batch, -1, -1)
        reference_points = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        # Valid ratios are all 1 (no padding): the same normalised point on every level.
        level_points = reference_points[:, :, None, :].expand(-1, -1, self.num_levels, -1)
        states = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, level_points, memory, spatial_shapes)
            states.append(tgt)
        return torch.stack(states), reference_points


# --------------------------------------------------------------------------------------------------------------
# Neck and prediction heads
# --------------------------------------------------------------------------------------------------------------
class ChannelMapper(nn.Module):
    """Backbone stages -> ``embed_dim`` channels: a 1x1 conv + GroupNorm(32) per stage and ``extra_levels`` 3x3
    stride-2 convs + GN, the first on the last stage (MMDetection's ``ChannelMapper``, the official
    ``input_proj``; Xavier-initialised convs, zero biases)."""

    def __init__(self, in_channels: Sequence[int], embed_dim: int = 256, extra_levels: int = 1,
                 num_groups: int = 32):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(nn.Conv2d(c, embed_dim, 1), nn.GroupNorm(num_groups, embed_dim))
                                    for c in in_channels])
        extra, previous = [], in_channels[-1]
        for _ in range(extra_levels):
            extra.append(nn.Sequential(nn.Conv2d(previous, embed_dim, 3, stride=2, padding=1),
                                       nn.GroupNorm(num_groups, embed_dim)))
            previous = embed_dim
        self.extra_convs = nn.ModuleList(extra)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs = [conv(f) for conv, f in zip(self.convs, features)]
        last = features[-1]
        for conv in self.extra_convs:
            last = conv(last)
            outputs.append(last)
        return outputs


class BoxMLP(nn.Module):
    """DETR's box regressor: ``num_layers`` linear layers, ReLU between them."""

    def __init__(self, embed_dim: int = 256, out_dim: int = 4, num_layers: int = 3):
        super().__init__()
        dims = [embed_dim] * num_layers + [out_dim]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


# --------------------------------------------------------------------------------------------------------------
# Matching and losses
# --------------------------------------------------------------------------------------------------------------
class HungarianMatcher:
    """One-to-one query-to-box assignment minimising ``cls_weight`` x focal cost + ``l1_weight`` x L1 of the
    normalised (cx, cy, w, h) + ``giou_weight`` x (-GIoU), per image (the official matcher's costs; MMDetection's
    ``FocalLossCost``, ``BBoxL1Cost`` in xywh, ``IoUCost`` giou with weights 2, 5, 2)."""

    def __init__(self, cls_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0):
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.alpha, self.gamma = alpha, gamma

    def cost(self, logits: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor,
             target_labels: torch.Tensor) -> torch.Tensor:
        """(Q, K) logits, (Q, 4) and (N, 4) normalised (cx, cy, w, h) boxes, (N,) labels -> (Q, N) cost."""
        prob = logits.float().sigmoid()[:, target_labels]
        positive = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        negative = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + 1e-8).log()
        cost_l1 = torch.cdist(boxes.float(), target_boxes.float(), p=1)
        cost_giou = -box_giou(box_cxcywh_to_xyxy(boxes.float()), box_cxcywh_to_xyxy(target_boxes.float()))
        return self.cls_weight * (positive - negative) + self.l1_weight * cost_l1 + self.giou_weight * cost_giou

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(B, Q, K) logits, (B, Q, 4) boxes, per image ``{"boxes": (N, 4) normalised cxcywh, "labels"}`` ->
        per image (query indices, target indices), int64, sorted by query."""
        matches = []
        for image_logits, image_boxes, target in zip(logits, boxes, targets):
            if len(target["boxes"]) == 0:
                empty = torch.zeros(0, dtype=torch.long, device=logits.device)
                matches.append((empty, empty))
                continue
            cost = self.cost(image_logits, image_boxes, target["boxes"], target["labels"])
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.long, device=logits.device),
                            torch.as_tensor(cols, dtype=torch.long, device=logits.device)))
        return matches


class SetCriterion(nn.Module):
    """Deformable DETR's loss for one decoder layer's predictions: sigmoid focal loss over all queries (matched
    queries' one-hot classes as targets, the rest background), L1 and 1 - GIoU of the matched boxes, each summed
    and divided by the number of true boxes in the batch (at least 1), weighted 2, 5, 2."""

    def __init__(self, matcher: HungarianMatcher, cls_weight: float = 2.0, l1_weight: float = 5.0,
                 giou_weight: float = 2.0, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.matcher = matcher
        self.cls_weight, self.l1_weight, self.giou_weight = cls_weight, l1_weight, giou_weight
        self.focal = SigmoidFocalLoss(alpha, gamma)  # sum / number of one-hot rows = sum / matched boxes

    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
        matches = self.matcher(logits, boxes, targets)
        onehot = torch.zeros_like(logits, dtype=torch.float32)
        pred_boxes, true_boxes = [], []
        for image, ((queries, indices), target) in enumerate(zip(matches, targets)):
            onehot[image, queries, target["labels"][indices]] = 1.0
            pred_boxes.append(boxes[image, queries])
            true_boxes.append(target["boxes"][indices])
        num_boxes = max(sum(len(t["boxes"]) for t in targets), 1)
        pred_boxes, true_boxes = torch.cat(pred_boxes).float(), torch.cat(true_boxes).float()
        if len(pred_boxes):
            l1 = (pred_boxes - true_boxes).abs().sum() / num_boxes
            giou = (1 - box_pair_giou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(true_boxes))).sum()
            giou = giou / num_boxes
        else:  # no true box in the batch: only the background classification is learnt
            l1 = giou = boxes.sum() * 0.0
        return {"classification": self.cls_weight * self.focal(logits, onehot),
                "box_l1": self.l1_weight * l1, "giou": self.giou_weight * giou}


# --------------------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------------------
class DeformableDETRCalcDetector(nn.Module):
    """Backbone (SwinCalc's Swin or ResNet stages) + ChannelMapper + deformable transformer + class / box heads:
    the detector protocol of ``lightning_modules.tasks.detection`` (training: ``(images, targets) ->`` the last
    decoder layer's ``classification``, ``box_l1``, ``giou`` losses and the earlier layers' summed as ``aux_*``;
    eval: ``images -> [{"boxes", "scores", "labels"}]``, the top ``detections_per_img``).

    Args:
        backbone, backbone_args, in_channels, backbone_ckpt: as ``RetinaNetCalcDetector``'s.
        out_indices: backbone stages fed to the transformer (1, 2, 3: C3-C5, strides 8-32).
        embed_dim, num_heads, num_encoder_layers, num_decoder_layers, feedforward_dim, dropout, num_points,
            num_queries: the transformer (the paper's 256, 8, 6, 6, 1024, 0.1, 4, 300).
        num_feature_levels: levels attended; those beyond the backbone stages come from stride-2 convs (4).
        aux_loss: the set loss also at every earlier decoder layer.
        cls_weight, l1_weight, giou_weight, focal_alpha, focal_gamma: matching costs and loss weights (2, 5, 2;
            0.25, 2).
        detections_per_img: predictions kept per image at inference (100).
        lr_scale_backbone, lr_scale_sampling: lr multipliers of the backbone and of the sampling offsets and
            reference points (MMDetection's and the official 0.1), used through ``parameter_groups``.
        neck_groups: GroupNorm groups of the ChannelMapper (32; fewer for a narrow CPU stand-in).
    """

    def __init__(self, backbone: str = "swin_t", backbone_args: Optional[dict] = None, num_classes: int = 1,
                 in_channels: int = 3, out_indices: Sequence[int] = (1, 2, 3), embed_dim: int = 256,
                 num_heads: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 feedforward_dim: int = 1024, dropout: float = 0.1, num_feature_levels: int = 4,
                 num_points: int = 4, num_queries: int = 300, aux_loss: bool = True, cls_weight: float = 2.0,
                 l1_weight: float = 5.0, giou_weight: float = 2.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, detections_per_img: int = 100, lr_scale_backbone: float = 0.1,
                 lr_scale_sampling: float = 0.1, neck_groups: int = 32, backbone_ckpt: Optional[str] = None):
        super().__init__()
        self.body = build_backbone(backbone, out_indices, in_channels, **dict(backbone_args or {}))
        if backbone_ckpt:
            load_backbone(self.body, backbone_ckpt)
        stages = list(self.body.out_channels)
        if num_feature_levels < len(stages):
            raise ValueError(f"num_feature_levels {num_feature_levels} < the {len(stages)} backbone stages")
        self.neck = ChannelMapper(stages, embed_dim, num_feature_levels - len(stages), neck_groups)
        self.transformer = DeformableTransformer(embed_dim, num_heads, num_encoder_layers, num_decoder_layers,
                                                 feedforward_dim, dropout, num_feature_levels, num_points,
                                                 num_queries)
        # One classifier and one box MLP shared by all decoder layers (no box refinement).
        self.class_embed = nn.Linear(embed_dim, num_classes)
        self.bbox_embed = BoxMLP(embed_dim, 4, 3)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)  # initial boxes ~0.12 of the image
        self.criterion = SetCriterion(HungarianMatcher(cls_weight, l1_weight, giou_weight, focal_alpha, focal_gamma),
                                      cls_weight, l1_weight, giou_weight, focal_alpha, focal_gamma)
        self.num_classes, self.aux_loss, self.detections_per_img = num_classes, aux_loss, detections_per_img
        self.lr_scale_backbone, self.lr_scale_sampling = lr_scale_backbone, lr_scale_sampling

    @property
    def backbone(self) -> nn.Module:
        return self.body

    def parameter_groups(self) -> list[dict]:
        """The backbone at ``lr_scale_backbone`` x lr, sampling offsets and reference points at
        ``lr_scale_sampling`` x lr, the rest at lr (``lr_scale`` keys, applied by the detection task)."""
        backbone, sampling, rest = [], [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("body."):
                backbone.append(param)
            elif ".sampling_offsets." in name or name.startswith("transformer.reference_points."):
                sampling.append(param)
            else:
                rest.append(param)
        return [{"params": rest, "lr_scale": 1.0}, {"params": backbone, "lr_scale": self.lr_scale_backbone},
                {"params": sampling, "lr_scale": self.lr_scale_sampling}]

    def predict_layers(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every decoder layer's (L, B, Q, K) class logits and (L, B, Q, 4) normalised (cx, cy, w, h) boxes."""
        features = self.neck(self.body.forward_features(images))
        positions = [sine_position_encoding(f.shape[-2], f.shape[-1], self.transformer.embed_dim // 2,
                                            device=f.device, dtype=f.dtype) for f in features]
        states, reference = self.transformer(features, positions)
        logits = self.class_embed(states)
        deltas = self.bbox_embed(states)
        boxes = torch.cat([deltas[..., :2] + inverse_sigmoid(reference)[None], deltas[..., 2:]], dim=-1).sigmoid()
        return logits, boxes

    def forward(self, images: torch.Tensor, targets: Optional[list[dict[str, torch.Tensor]]] = None):
        logits, boxes = self.predict_layers(images)
        height, width = images.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=images.device)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            normalised = [{"boxes": box_xyxy_to_cxcywh(t["boxes"].float() / scale), "labels": t["labels"].long()}
                          for t in targets]
            losses = self.criterion(logits[-1], boxes[-1], normalised)
            if self.aux_loss and len(logits) > 1:
                aux = [self.criterion(lg, bx, normalised) for lg, bx in zip(logits[:-1], boxes[:-1])]
                losses.update({f"aux_{name}": sum(layer[name] for layer in aux) for name in aux[0]})
            return losses
        return self.postprocess(logits[-1], boxes[-1], scale)

    def postprocess(self, logits: torch.Tensor, boxes: torch.Tensor, scale: torch.Tensor) -> list[dict]:
        """Top ``detections_per_img`` (query, class) pairs by sigmoid score, boxes in pixels clipped to the image."""
        batch, queries, classes = logits.shape
        prob = logits.float().sigmoid().flatten(1)
        scores, index = prob.topk(min(self.detections_per_img, queries * classes), dim=1)
        labels, query = index % classes, torch.div(index, classes, rounding_mode="floor")
        picked = torch.gather(boxes.float(), 1, query[..., None].expand(-1, -1, 4))
        pixel = box_cxcywh_to_xyxy(picked) * scale
        pixel = torch.minimum(pixel.clamp(min=0), scale)
        return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(pixel, scores, labels)]
