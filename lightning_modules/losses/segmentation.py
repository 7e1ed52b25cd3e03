"""Segmentation losses: weighted cross-entropy + soft Dice, binary (sigmoid) or multi-class (softmax).

One module covers the papers' variants:
- SACA-UNet / UNeXt ``BCEDiceLoss``: ``0.5 * BCE + (1 - mean_i Dice_i)``, soft Dice per sample with
  smooth 1e-5 in numerator and denominator (``SegmentationLoss(bce_weight=0.5, dice_weight=1.0)``).
- BCE only (UNet-GCN): ``SegmentationLoss(bce_weight=1.0, dice_weight=0.0)``.
- BCE + (1 - Dice) with smooth 1 (SFRSeg-Net): ``SegmentationLoss(1.0, 1.0, smooth=1.0)``.
- Multi-label (SAPM's optic disc and cup, which overlap): ``SegmentationLoss(1.0, 1.0, num_classes=2,
  multilabel=True)``: BCE on every sigmoid channel + soft Dice per sample and channel, mean over both.

The Dice term is MONAI's ``DiceLoss`` with ``batch=False`` (a Dice per sample and channel, then the
mean), which for one channel is exactly UNeXt's formula (tested against a hand computation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


class SegmentationLoss(nn.Module):
    """``bce_weight * CE + dice_weight * (1 - soft Dice)`` on logits.

    Args:
        bce_weight: weight of the cross-entropy term (binary CE with logits when ``num_classes == 1``,
            softmax cross-entropy otherwise).
        dice_weight: weight of the soft Dice loss.
        num_classes: 1 = binary, logits (B, 1, H, W), target (B, 1, H, W) in {0, 1} (float);
            > 1 = multi-class, logits (B, K, H, W), target (B, 1, H, W) integer labels.
        smooth: added to the Dice numerator and denominator (UNeXt: 1e-5).
        dice_include_background: multi-class only: whether class 0 enters the Dice term.
        pos_weight: binary only: BCE weight of positive pixels (``BCEWithLogitsLoss(pos_weight)``).
        multilabel: K independent sigmoid channels: logits (B, K, H, W), target (B, K, H, W) multi-hot float
            (binary CE and soft Dice per channel, as the binary case for each).
    """

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 1.0, num_classes: int = 1,
                 smooth: float = 1e-5, dice_include_background: bool = True,
                 pos_weight: float | None = None, multilabel: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if bce_weight < 0 or dice_weight < 0 or bce_weight + dice_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got bce {bce_weight}, dice {dice_weight}")
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.num_classes = num_classes
        self.pos_weight = pos_weight
        self.multilabel = multilabel
        binary = num_classes == 1 or multilabel
        self.dice = DiceLoss(sigmoid=binary, softmax=not binary, to_onehot_y=not binary,
                             include_background=binary or dice_include_background,
                             smooth_nr=smooth, smooth_dr=smooth, batch=False, reduction="mean")

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted total (``loss``) and its unweighted parts (``ce``, ``dice``)."""
        out = {}
        zero = logits.new_zeros(())
        if self.num_classes == 1 or self.multilabel:
            target = target.to(logits.dtype)
            pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
            out["ce"] = (F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
                         if self.bce_weight > 0 else zero)
        else:
            target = target.long()
            out["ce"] = F.cross_entropy(logits, target[:, 0]) if self.bce_weight > 0 else zero
        # The soft Dice in float32: sums over 512x512 pixels lose precision in bf16.
        out["dice"] = self.dice(logits.float(), target) if self.dice_weight > 0 else zero
        out["loss"] = self.bce_weight * out["ce"] + self.dice_weight * out["dice"]
        return out

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.terms(logits, target)["loss"]
