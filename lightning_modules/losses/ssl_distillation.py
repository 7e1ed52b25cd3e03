"""Losses of masked self-distillation pre-training (data2vec 2.0, EAT, ASDA).

Normalisation follows the official code (fairseq data2vec 2.0 ``d2v_loss``, ``cls_loss * sample_size``,
gradients divided by ``sample_size`` = the number of masked tokens):

    L_frame = sum over masked tokens t and channels d of (pred - Y)^2 / sqrt(D)  /  #masked tokens
    L_utt   = sum over students s of || CLS_s - mean_t Y_s ||^2 / sqrt(D)         (ASDA eq. 4)

so the total ``alpha * L_utt + L_frame`` (eq. 6) is the code's loss divided by ``sample_size``. The
sums run over the students of one process (the code's per-GPU batch).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def layer_averaged_targets(layer_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Teacher targets Y: each layer's (B, L, D) patch outputs instance-normalised per channel over the
    tokens, averaged over layers, then LayerNorm (no affine) over D. Computed in float32."""
    layers = [F.instance_norm(y.float().transpose(1, 2)).transpose(1, 2) for y in layer_outputs]
    y = torch.stack(layers).mean(dim=0)
    return F.layer_norm(y, y.shape[-1:])


def frame_loss(prediction: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error on the masked tokens only: prediction, targets (S, L, D); mask (S, L) True = masked."""
    error = (prediction.float() - targets.float()).pow(2).sum(dim=-1)  # (S, L)
    weights = mask.to(error.dtype)
    return (error * weights).sum() / math.sqrt(prediction.shape[-1]) / weights.sum().clamp_min(1.0)


def utterance_loss(cls: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Student CLS (S, D) against the mean of the teacher targets (S, L, D) over all tokens, summed over students."""
    return (cls.float() - targets.float().mean(dim=1)).pow(2).sum() / math.sqrt(cls.shape[-1])
