"""Presentation attack detection metrics (face anti-spoofing).

Scores are bona fide (live) scores: higher = more likely live; a presentation is accepted as bona fide when
``score >= threshold``. Labels are presentation classes: 0 = bona fide, k >= 1 = attack instrument species k
(print, replay, ...), so the ISO/IEC 30107-3 error rates can be taken per attack type.

- APCER_k = share of attack-type-k presentations accepted as bona fide; APCER = max_k APCER_k (ISO/IEC
  30107-3's worst case, as the OULU-NPU protocols report it);
- BPCER = share of bona fide presentations rejected; ACER = (APCER + BPCER) / 2;
- FAR = share of all attacks accepted, FRR = BPCER, HTER = (FAR + FRR) / 2 (Replay-Attack, cross-dataset);
- EER: the error where FAR = FRR over the thresholds at the scores (the point of the ROC where |FAR - FRR| is
  smallest, EER = (FAR + FRR) / 2 there), and its threshold (the "dev EER threshold" of HTER and ACER).

All rates are fractions in [0, 1]; the face anti-spoofing task logs them in percent, as the papers report them.
"""
from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_auroc


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.detach().flatten().double().cpu()


def far_frr(scores: torch.Tensor, live: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FAR(t) (attacks with score >= t) and FRR(t) (bona fide with score < t) at each threshold t."""
    scores, live, thresholds = _as_float(scores), live.detach().flatten().bool().cpu(), _as_float(thresholds)
    attack_scores, live_scores = torch.sort(scores[~live]).values, torch.sort(scores[live]).values
    if not len(attack_scores) or not len(live_scores):
        raise ValueError("FAR/FRR need both bona fide and attack presentations")
    far = 1.0 - torch.searchsorted(attack_scores, thresholds, side="left").double() / len(attack_scores)
    frr = torch.searchsorted(live_scores, thresholds, side="left").double() / len(live_scores)
    return far, frr


def equal_error_rate(scores: torch.Tensor, live: torch.Tensor) -> tuple[float, float]:
    """(EER, threshold): over the thresholds at the scores (and +inf: reject all), the one where |FAR - FRR|
    is smallest (the higher threshold on ties), EER = (FAR + FRR) / 2 there."""
    candidates = torch.cat([torch.unique(_as_float(scores)), torch.tensor([float("inf")], dtype=torch.float64)])
    far, frr = far_frr(scores, live, candidates)
    gap = (far - frr).abs()
    index = int(torch.nonzero(gap == gap.min()).max())
    return float((far[index] + frr[index]) / 2), float(candidates[index])


def pad_error_rates(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """ISO/IEC 30107-3 rates at ``threshold``: ``apcer`` (worst attack type), ``apcer_<k>`` per attack type k,
    ``bpcer``, ``acer``, and ``far``, ``hter`` (all attacks pooled)."""
    scores, labels = _as_float(scores), labels.detach().flatten().long().cpu()
    accepted = scores >= threshold
    live = labels == 0
    types = [int(k) for k in torch.unique(labels[~live])]
    if not types or not live.any():
        raise ValueError("PAD error rates need both bona fide (label 0) and attack (label >= 1) presentations")
    out = {f"apcer_{k}": float(accepted[labels == k].double().mean()) for k in types}
    out["apcer"] = max(out[f"apcer_{k}"] for k in types)
    out["bpcer"] = float((~accepted[live]).double().mean())
    out["acer"] = (out["apcer"] + out["bpcer"]) / 2
    out["far"] = float(accepted[~live].double().mean())
    out["hter"] = (out["far"] + out["bpcer"]) / 2
    return out


def auc(scores: torch.Tensor, live: torch.Tensor) -> float:
    """Area under the ROC of bona fide vs attack (torchmetrics)."""
    return float(binary_auroc(_as_float(scores).float(), live.detach().flatten().long().cpu()))


def group_mean(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-level scores: the mean frame score per group (video id) and the group's label (its first frame's)."""
    scores, labels, groups = _as_float(scores), labels.flatten().long().cpu(), groups.flatten().long().cpu()
    ids, inverse = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, scores)
    counts = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(scores))
    first = torch.full((len(ids),), len(groups), dtype=torch.long).scatter_reduce_(
        0, inverse, torch.arange(len(groups)), reduce="amin")
    return sums / counts, labels[first]


def pad_report(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """Everything a PAD table needs: the rates at ``threshold`` (from the dev set), and the set's own EER, its
    threshold and the AUC."""
    live = labels.flatten() == 0
    out = pad_error_rates(scores, labels, threshold)
    out["eer"], out["eer_threshold"] = equal_error_rate(scores, live)
    out["auc"] = auc(scores, live)
    return out
