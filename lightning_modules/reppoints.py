"""RepPoints (Yang et al., ICCV 2019): the detection head of SwinCalc's best model (RepPoints / Swin-B).

Written after MMDetection's ``RepPointsHead`` with the ``reppoints_moment_r50_fpn_gn-neck+head`` settings (the head
the paper fine-tuned; mmcv is not used here):

* per FPN level (shared weights): two towers of 3 x (3x3 conv 256, GroupNorm 32, ReLU), one for classification and
  one for points; from the point tower a 3x3 conv + ReLU + 1x1 conv gives 9 initial points per location (offsets
  from the location, in units of the level's stride, (y, x) pairs);
* the initial points (their gradient scaled by ``gradient_mul`` = 0.1) become the offsets of two 3x3 deformable
  convolutions, which sample each tower at the points: one gives the class logits, one the refinement of the points
  (added to the detached initial points);
* a point set becomes a pseudo-box by the "moment" transform: the points' mean +- their standard deviation times a
  learnt per-axis factor exp(moment_transfer) (its gradient scaled by ``moment_mul`` = 0.01);
* training targets: the initial points' pseudo-box is assigned by the point assigner (each box to the location
  nearest its centre on the level log2(sqrt(w h) / 4), ``pos_num`` 1); the refined points' and the classification
  targets by the max-IoU assigner (IoU >= 0.5 positive, < 0.4 negative, each box's best proposal positive) on the
  initial pseudo-boxes; losses: sigmoid focal (alpha 0.25, gamma 2) + SmoothL1 (beta 0.11) on the pseudo-boxes
  scaled by 1 / (4 x stride), weights 0.5 (initial) and 1.0 (refined), each averaged over the positives;
* inference: the refined pseudo-boxes, the top 1000 scores per level, score threshold, NMS 0.5, 100 per image.

The deformable convolution (DCN v1, Dai et al. 2017) is written here in plain PyTorch: ``grid_sample`` reads the
input at every kernel point's offset position (bilinear, zero outside the map, as mmcv's and torchvision's kernels
do), and one matmul with the weight does the rest (``deform_conv2d``).

``RepPointsCalcDetector`` puts the head on SwinCalc's backbone + FPN (``lightning_modules.swincalc``) and follows
the detection family's protocol (``lightning_modules.tasks.detection``): boxes in and out are pixel (x1, y1, x2, y2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from monai.data.box_utils import box_iou, non_max_suppression
from monai.losses import FocalLoss
from torch import nn
from torch.nn.modules.utils import _pair

from lightning_modules.swincalc import BackboneFPN, build_backbone, load_backbone


# --------------------------------------------------------------------------------------------------------------
# Deformable convolution (DCN v1)
# --------------------------------------------------------------------------------------------------------------
def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Deformable convolution with torchvision's ``deform_conv2d`` signature and offset layout (groups 1).

    ``offset`` is (B, 2 * G * kh * kw, H_out, W_out): for offset group g (of G, splitting the input channels) and
    kernel point k = i * kw + j, channels 2 (g K + k) and 2 (g K + k) + 1 hold the (dy, dx) added to the regular
    position (h * stride - pad + i * dilation, w * stride - pad + j * dilation). The input is read there by bilinear
    interpolation with zeros outside the map."""
    batch, channels, height, width = input.shape
    out_channels, in_channels, kh, kw = weight.shape
    if in_channels != channels:
        raise ValueError(f"weight expects {in_channels} input channels, input has {channels} "
                         "(groups are not supported)")
    points = kh * kw
    out_h, out_w = offset.shape[-2:]
    groups = offset.shape[1] // (2 * points)
    if groups < 1 or offset.shape[1] != 2 * points * groups or channels % groups:
        raise ValueError(f"offset has {offset.shape[1]} channels: expected 2 x {points} x groups dividing {channels}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    expected = ((height + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
    if (out_h, out_w) != expected:
        raise ValueError(f"offset map {(out_h, out_w)} does not match the output size {expected}")
    device, dtype = input.device, offset.dtype
    kernel_y = (torch.arange(kh, device=device, dtype=dtype) * dh).repeat_interleave(kw)  # (K,), k = i * kw + j
    kernel_x = (torch.arange(kw, device=device, dtype=dtype) * dw).repeat(kh)
    rows = torch.arange(out_h, device=device, dtype=dtype) * sh - ph
    cols = torch.arange(out_w, device=device, dtype=dtype) * sw - pw
    offset = offset.view(batch, groups, points, 2, out_h, out_w)
    y = kernel_y.view(points, 1, 1) + rows.view(1, out_h, 1) + offset[:, :, :, 0]  # (B, G, K, H_out, W_out)
    x = kernel_x.view(points, 1, 1) + cols.view(1, 1, out_w) + offset[:, :, :, 1]
    # pixel centre p -> (2p + 1) / size - 1 with align_corners=False; grid_sample's zero padding = DCN's border
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
    grid = grid.view(batch * groups, points * out_h, out_w, 2).to(input.dtype)
    sampled = F.grid_sample(input.reshape(batch * groups, channels // groups, height, width), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (B G, C / G, K H_out, W_out)
    columns = sampled.view(batch, channels * points, out_h * out_w)  # row c * K + k, the weight's flattening
    out = weight.reshape(out_channels, channels * points).matmul(columns)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(batch, out_channels, out_h, out_w)


class DeformConv2d(nn.Module):
    """A deformable convolution layer (mmcv's ``DeformConv2d``: no bias by default); ``forward(x, offset)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0, dilation=1,
                 bias: bool = False):
        super().__init__()
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *_pair(kernel_size)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)


# --------------------------------------------------------------------------------------------------------------
# Point sets and their assignment
# --------------------------------------------------------------------------------------------------------------
def moment_boxes(points_yx: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Point sets (..., 2 n) as (y, x) pairs -> boxes (..., 4) (x1, y1, x2, y2): mean +- std (unbiased, as MMDet's
    ``torch.std``) x exp(transfer) per axis; ``transfer`` is (width, height)."""
    pts = points_yx.unflatten(-1, (-1, 2))
    y, x = pts[..., 0], pts[..., 1]
    cy, cx = y.mean(dim=-1), x.mean(dim=-1)
    half_w = x.std(dim=-1) * torch.exp(transfer[0])
    half_h = y.std(dim=-1) * torch.exp(transfer[1])
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def point_assign(centers: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor, scale: float = 4.0,
                 pos_num: int = 1) -> torch.Tensor:
    """MMDetection's ``PointAssigner``: each box goes to the ``pos_num`` locations nearest its centre (distance in
    units of its width / height) on the level int((log2(w / scale) + log2(h / scale)) / 2), clipped to the levels
    present; a location claimed by several boxes keeps the nearest. ``centers`` (N, 2) pixel (x, y), ``strides``
    (N,) powers of 2. Returns (N,) the box index, -1 for background."""
    assigned = torch.full((centers.shape[0],), -1, dtype=torch.long, device=centers.device)
    if gt_boxes.shape[0] == 0 or centers.shape[0] == 0:
        return assigned
    point_level = torch.log2(strides.float()).round().long()
    gt_xy = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    gt_wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)
    gt_level = ((torch.log2(gt_wh[:, 0] / scale) + torch.log2(gt_wh[:, 1] / scale)) / 2).int().long()
    gt_level = gt_level.clamp(int(point_level.min()), int(point_level.max()))
    best_distance = torch.full((centers.shape[0],), float("inf"), device=centers.device)
    for index in range(gt_boxes.shape[0]):
        on_level = torch.nonzero(point_level == gt_level[index]).squeeze(1)
        distance = ((centers[on_level] - gt_xy[index]) / gt_wh[index]).norm(dim=1)
        nearest, order = torch.topk(distance, min(pos_num, len(on_level)), largest=False)
        chosen = on_level[order]
        closer = nearest < best_distance[chosen]
        assigned[chosen[closer]] = index
        best_distance[chosen[closer]] = nearest[closer]
    return assigned


IGNORE = -2


def max_iou_assign(proposals: torch.Tensor, gt_boxes: torch.Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4,
                   min_pos_iou: float = 0.0) -> torch.Tensor:
    """MMDetection's ``MaxIoUAssigner`` (all of a box's best proposals positive for it, ``gt_max_assign_all``):
    (N,) the box index of each proposal, -1 background (IoU < ``neg_iou``), ``IGNORE`` in between. A box that no
    proposal overlaps claims none (MMDet's ``min_pos_iou`` 0 would make every proposal positive for it)."""
    assigned = torch.full((proposals.shape[0],), -1, dtype=torch.long, device=proposals.device)
    if gt_boxes.shape[0] == 0 or proposals.shape[0] == 0:
        return assigned
    iou = torch.as_tensor(box_iou(gt_boxes.detach().float(), proposals.detach().float()),
                          device=proposals.device, dtype=torch.float32)  # (G, N)
    best, best_gt = iou.max(dim=0)
    assigned[(best >= neg_iou) & (best < pos_iou)] = IGNORE
    positive = best >= pos_iou
    assigned[positive] = best_gt[positive]
    gt_best = iou.max(dim=1).values
    for index in range(gt_boxes.shape[0]):
        if gt_best[index] > 0 and gt_best[index] >= min_pos_iou:
            assigned[iou[index] == gt_best[index]] = index
    return assigned


# --------------------------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------------------------
def conv_gn_relu(in_channels: int, out_channels: int, gn_groups: int) -> nn.Sequential:
    """mmcv's ``ConvModule`` with GN: 3x3 conv without bias (the norm has one), GroupNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=gn_groups == 0),
                         nn.GroupNorm(gn_groups, out_channels) if gn_groups else nn.Identity(), nn.ReLU(inplace=True))


class RepPointsHead(nn.Module):
    """The RepPoints head on a list of FPN maps (shared over levels). ``forward`` returns per level the class
    logits (B, classes, H, W) and the initial and refined points (B, 2 n, H, W), offsets from each location in
    units of the level's stride, (y, x) pairs.

    Args:
        num_classes: foreground classes (sigmoid outputs).
        in_channels, feat_channels, point_feat_channels: FPN width, tower width, deformable-conv width (256 each).
        stacked_convs: convs per tower (3).
        num_points: points per set (9: a 3x3 deformable kernel).
        gradient_mul: the gradient the refinement and classification send back into the initial points (0.1).
        moment_mul: the gradient scale of the moment transform's factors (0.01).
        gn_groups: GroupNorm groups in the towers (32; 0: no norm, conv biases instead).
        prior_prob: initial foreground probability of the classifier (0.01, the focal-loss prior).
    """

    def __init__(self, num_classes: int = 1, in_channels: int = 256, feat_channels: int = 256,
                 point_feat_channels: int = 256, stacked_convs: int = 3, num_points: int = 9,
                 gradient_mul: float = 0.1, moment_mul: float = 0.01, gn_groups: int = 32, prior_prob: float = 0.01):
        super().__init__()
        kernel = int(round(math.sqrt(num_points)))
        if kernel * kernel != num_points or kernel % 2 == 0:
            raise ValueError(f"num_points must be an odd square (a k x k deformable kernel), got {num_points}")
        self.num_classes, self.num_points, self.kernel = num_classes, num_points, kernel
        self.gradient_mul, self.moment_mul = gradient_mul, moment_mul
        self.cls_convs = nn.ModuleList([conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels, gn_groups)
                                        for i in range(stacked_convs)])
        self.reg_convs = nn.ModuleList([conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels, gn_groups)
                                        for i in range(stacked_convs)])
        pad = (kernel - 1) // 2
        self.reppoints_cls_conv = DeformConv2d(feat_channels, point_feat_channels, kernel, 1, pad)
        self.reppoints_cls_out = nn.Conv2d(point_feat_channels, num_classes, 1)
        self.reppoints_pts_init_conv = nn.Conv2d(feat_channels, point_feat_channels, 3, padding=1)
        self.reppoints_pts_init_out = nn.Conv2d(point_feat_channels, 2 * num_points, 1)
        self.reppoints_pts_refine_conv = DeformConv2d(feat_channels, point_feat_channels, kernel, 1, pad)
        self.reppoints_pts_refine_out = nn.Conv2d(point_feat_channels, 2 * num_points, 1)
        self.moment_transfer = nn.Parameter(torch.zeros(2))  # log scale of (width, height)
        grid = torch.arange(-pad, pad + 1, dtype=torch.float32, device="cpu")
        base = torch.stack((grid.repeat_interleave(kernel), grid.repeat(kernel)), dim=1).reshape(1, -1, 1, 1)
        self.register_buffer("dcn_base_offset", base, persistent=False)  # the regular kernel's (y, x) positions
        # MMDetection's init_weights: normal(0, 0.01) everywhere, zero biases, the classifier's bias at the prior
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, DeformConv2d)):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.reppoints_cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def transfer(self) -> torch.Tensor:
        """The moment transform's (width, height) log factors with the gradient scaled by ``moment_mul``."""
        return self.moment_transfer * self.moment_mul + self.moment_transfer.detach() * (1 - self.moment_mul)

    def forward_level(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls_feat, pts_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            pts_feat = conv(pts_feat)
        pts_init = self.reppoints_pts_init_out(F.relu(self.reppoints_pts_init_conv(pts_feat)))  # centre init: + 0
        scaled = (1 - self.gradient_mul) * pts_init.detach() + self.gradient_mul * pts_init
        offset = scaled - self.dcn_base_offset.to(scaled.dtype)  # the points relative to the regular 3x3 kernel
        cls_out = self.reppoints_cls_out(F.relu(self.reppoints_cls_conv(cls_feat, offset)))
        pts_refine = self.reppoints_pts_refine_out(F.relu(self.reppoints_pts_refine_conv(pts_feat, offset)))
        return cls_out, pts_init, pts_refine + pts_init.detach()

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list, list, list]:
        outputs = [self.forward_level(f) for f in features]
        return [o[0] for o in outputs], [o[1] for o in outputs], [o[2] for o in outputs]


# --------------------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------------------
class RepPointsCalcDetector(nn.Module):
    """Backbone + FPN (``lightning_modules.swincalc``) + RepPoints head, one class by default: the detector protocol
    of ``lightning_modules.tasks.detection`` (training: ``(images, targets) -> {"classification", "points_init",
    "points_refine"}`` losses, already weighted; eval: ``images -> [{"boxes", "scores", "labels"}]``).

    Args:
        backbone, backbone_args, in_channels, out_indices, fpn_channels, extra_levels, backbone_ckpt: as
            ``RetinaNetCalcDetector`` (MMDetection's RepPoints: C3-C5 + two extra levels, P3-P7, 256 channels).
        feat_channels, point_feat_channels, stacked_convs, num_points, gradient_mul, moment_mul, gn_groups:
            the head (``RepPointsHead``; channels default to ``fpn_channels``).
        point_base_scale: the point assigner's scale and the loss normaliser's (4: boxes normalised by 4 x stride).
        init_pos_num: locations per box in the initial stage (1).
        refine_pos_iou, refine_neg_iou: the refinement's max-IoU assigner thresholds (0.5, 0.4).
        focal_alpha, focal_gamma, smooth_l1_beta: losses (0.25, 2, 0.11).
        init_loss_weight, refine_loss_weight: the point losses' weights (0.5, 1.0).
        score_thresh, nms_pre, nms_thresh, detections_per_img: inference (0.05, 1000 per level, 0.5, 100).
    """

    def __init__(self, backbone: str = "swin_t", backbone_args: Optional[dict] = None, num_classes: int = 1,
                 in_channels: int = 3, out_indices: Sequence[int] = (1, 2, 3), fpn_channels: int = 256,
                 extra_levels: Literal["p6p7", "maxpool", "none"] = "p6p7", feat_channels: Optional[int] = None,
                 point_feat_channels: Optional[int] = None, stacked_convs: int = 3, num_points: int = 9,
                 gradient_mul: float = 0.1, moment_mul: float = 0.01, gn_groups: int = 32,
                 point_base_scale: float = 4.0, init_pos_num: int = 1, refine_pos_iou: float = 0.5,
                 refine_neg_iou: float = 0.4, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 smooth_l1_beta: float = 0.11, init_loss_weight: float = 0.5, refine_loss_weight: float = 1.0,
                 score_thresh: float = 0.05, nms_pre: int = 1000, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, backbone_ckpt: Optional[str] = None):
        super().__init__()
        body = build_backbone(backbone, out_indices, in_channels, **dict(backbone_args or {}))
        if backbone_ckpt:
            load_backbone(body, backbone_ckpt)
        self.feature_extractor = BackboneFPN(body, fpn_channels, extra_levels)
        first = body.stage_strides[min(out_indices)]
        self.strides = [first * 2 ** level for level in range(self.feature_extractor.num_levels)]
        self.head = RepPointsHead(num_classes, fpn_channels, feat_channels or fpn_channels,
                                  point_feat_channels or fpn_channels, stacked_convs, num_points, gradient_mul,
                                  moment_mul, gn_groups)
        self.num_classes = num_classes
        self.point_base_scale, self.init_pos_num = point_base_scale, init_pos_num
        self.refine_pos_iou, self.refine_neg_iou = refine_pos_iou, refine_neg_iou
        self.focal = FocalLoss(gamma=focal_gamma, alpha=focal_alpha, use_softmax=False, reduction="none")
        self.smooth_l1_beta = smooth_l1_beta
        self.init_loss_weight, self.refine_loss_weight = init_loss_weight, refine_loss_weight
        self.score_thresh, self.nms_pre, self.nms_thresh = score_thresh, nms_pre, nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def backbone(self) -> nn.Module:
        return self.feature_extractor.body

    # -- shared steps --------------------------------------------------------------------------------------
    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-pad bottom / right to a multiple of the coarsest stride (boxes are unchanged)."""
        size = self.strides[-1]
        height, width = images.shape[-2:]
        return F.pad(images, (0, (-width) % size, 0, (-height) % size))

    def _flatten(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Per-level (B, C, H, W) -> (B, sum H W, C), levels in order, row-major inside a level."""
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    def locations(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel (x, y) of every location (MMDetection's point generator: x = column x stride, offset 0) and its
        stride, flattened as ``_flatten``."""
        centers, strides = [], []
        for feature, stride in zip(maps, self.strides):
            height, width = feature.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(height, device=feature.device),
                                    torch.arange(width, device=feature.device), indexing="ij")
            centers.append(torch.stack((xs.flatten(), ys.flatten()), dim=1).float() * stride)
            strides.append(torch.full((height * width,), float(stride), device=feature.device))
        return torch.cat(centers), torch.cat(strides)

    def points_to_boxes(self, points: torch.Tensor, centers: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
        """Offsets (..., N, 2 n) in stride units, (y, x) pairs -> pixel pseudo-boxes (..., N, 4) by the moment
        transform."""
        yx_center = centers[:, [1, 0]].repeat(1, self.head.num_points)
        return moment_boxes(points * strides[:, None] + yx_center, self.head.transfer())

    def forward(self, images: torch.Tensor, targets: Optional[list[dict[str, torch.Tensor]]] = None):
        height, width = images.shape[-2:]
        maps = list(self.feature_extractor(self._pad(images)).values())
        cls_maps, init_maps, refine_maps = self.head(maps)
        centers, strides = self.locations(maps)
        logits = self._flatten(cls_maps)  # (B, N, classes)
        boxes_init = self.points_to_boxes(self._flatten(init_maps), centers, strides)  # (B, N, 4)
        boxes_refine = self.points_to_boxes(self._flatten(refine_maps), centers, strides)
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            return self.losses(logits, boxes_init, boxes_refine, centers, strides, targets)
        level_sizes = [m.shape[-2] * m.shape[-1] for m in maps]
        return [self.select(s, b, level_sizes, height, width) for s, b in zip(logits.sigmoid(), boxes_refine)]

    # -- training ------------------------------------------------------------------------------------------
    def losses(self, logits: torch.Tensor, boxes_init: torch.Tensor, boxes_refine: torch.Tensor,
               centers: torch.Tensor, strides: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        normaliser = (self.point_base_scale * strides)[:, None]
        cls_sum = logits.new_zeros(())
        init_sum, refine_sum = logits.new_zeros(()), logits.new_zeros(())
        init_count = refine_count = 0
        for logit, box_init, box_refine, target in zip(logits, boxes_init, boxes_refine, targets):
            gt = target["boxes"].to(logit).reshape(-1, 4)
            labels = target["labels"].to(logit.device).long().reshape(-1)
            # initial points: the point assigner on the locations
            init_match = point_assign(centers, strides, gt, self.point_base_scale, self.init_pos_num)
            pos = init_match >= 0
            if pos.any():
                init_sum = init_sum + F.smooth_l1_loss(box_init[pos] / normaliser[pos],
                                                       gt[init_match[pos]] / normaliser[pos],
                                                       beta=self.smooth_l1_beta, reduction="sum")
            init_count += max(int(pos.sum()), 1)
            # refined points and classes: the max-IoU assigner on the initial pseudo-boxes
            refine_match = max_iou_assign(box_init.detach(), gt, self.refine_pos_iou, self.refine_neg_iou)
            pos = refine_match >= 0
            if pos.any():
                refine_sum = refine_sum + F.smooth_l1_loss(box_refine[pos] / normaliser[pos],
                                                           gt[refine_match[pos]] / normaliser[pos],
                                                           beta=self.smooth_l1_beta, reduction="sum")
            refine_count += max(int(pos.sum()), 1)
            cls_target = torch.zeros_like(logit)
            cls_target[pos, labels[refine_match[pos]]] = 1.0
            valid = refine_match != IGNORE
            cls_sum = cls_sum + self.focal(logit[valid].float(), cls_target[valid].float()).sum()
        return {"classification": cls_sum / refine_count,
                "points_init": self.init_loss_weight * init_sum / init_count,
                "points_refine": self.refine_loss_weight * refine_sum / refine_count}

    # -- inference -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def select(self, scores: torch.Tensor, boxes: torch.Tensor, level_sizes: list[int], height: int,
               width: int) -> dict[str, torch.Tensor]:
        """One image: the top ``nms_pre`` locations per level, boxes clipped to the image, classes above
        ``score_thresh``, NMS per class, the best ``detections_per_img``."""
        keep_boxes, keep_scores, keep_labels = [], [], []
        for level_scores, level_boxes in zip(scores.split(level_sizes), boxes.split(level_sizes)):
            if self.nms_pre > 0 and level_scores.shape[0] > self.nms_pre:
                top = level_scores.max(dim=1).values.topk(self.nms_pre).indices
                level_scores, level_boxes = level_scores[top], level_boxes[top]
            rows, classes = torch.nonzero(level_scores > self.score_thresh, as_tuple=True)
            keep_boxes.append(level_boxes[rows])
            keep_scores.append(level_scores[rows, classes])
            keep_labels.append(classes)
        boxes, scores, labels = torch.cat(keep_boxes), torch.cat(keep_scores), torch.cat(keep_labels)
        limits = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        # NMS per class in one call: classes moved apart so that boxes of different classes never overlap
        shift = labels.to(boxes.dtype)[:, None] * (max(height, width) + 1)
        keep = torch.as_tensor(non_max_suppression(boxes + shift, scores, self.nms_thresh,
                                                   max_proposals=self.detections_per_img),
                               dtype=torch.long, device=boxes.device)
        return {"boxes": boxes[keep].float(), "scores": scores[keep].float(), "labels": labels[keep].long()}
