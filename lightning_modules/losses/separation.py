"""Losses of the source-separation family."""
from __future__ import annotations

from typing import Literal

import torch

#: Source order of the whole family (DSD100 / MUSDB18 stems); Chandna's loss indexes sources in this order.
SOURCES = ("vocals", "bass", "drums", "other")


def _squared_error(a: torch.Tensor, b: torch.Tensor, reduction: str) -> torch.Tensor:
    error = (a - b).square()
    return error.sum() if reduction == "sum" else error.mean()


def chandna_discriminative_loss(estimates: torch.Tensor, targets: torch.Tensor, alpha: float = 0.001,
                                beta: float = 0.01, beta_vocals: float = 0.03,
                                reduction: Literal["sum", "mean"] = "sum") -> dict[str, torch.Tensor]:
    """Chandna et al.'s discriminative objective, as in the authors' code (DeepConvSep trainCNN.py).

    Sources in ``SOURCES`` order (1 vocals, 2 bass, 3 drums, 4 other); ``estimates`` are the masked
    magnitudes y_tilde and ``targets`` the true magnitudes y, both (B, 4, T, F). SE(a, b) is the squared
    error summed (or averaged, ``reduction="mean"``) over batch, frames and bins:

        L_sq    = sum_{n=1..3} SE(y~_n, y_n)                  ("other" is not fitted directly)
        L_diff  = sum_{n=1..3} sum_{m=1..3, m!=n} SE(y~_n, y_m)
        L_other = sum_{n=2,3} SE(y~_n, y_4);   L_othervocals = SE(y~_1, y_4)
        L_total = | L_sq - alpha L_diff - beta L_other - beta_vocals L_othervocals |

    The report writes the "difference" terms against estimates (y~_m); the code, which produced the
    paper's numbers, uses the ground truth y_m, as here. The abs() is the code's.
    """
    if estimates.shape != targets.shape or estimates.shape[1] != 4:
        raise ValueError(f"expected (B, 4, T, F) estimates and targets, got {tuple(estimates.shape)} and "
                         f"{tuple(targets.shape)}")
    se = lambda n, m: _squared_error(estimates[:, n], targets[:, m], reduction)  # noqa: E731
    vocals, bass, drums, other = range(4)
    fitted = (vocals, bass, drums)
    terms = {
        "sq": sum(se(n, n) for n in fitted),
        "diff": sum(se(n, m) for n in fitted for m in fitted if m != n),
        "other": se(bass, other) + se(drums, other),
        "othervocals": se(vocals, other),
    }
    terms["loss"] = (terms["sq"] - alpha * terms["diff"] - beta * terms["other"]
                     - beta_vocals * terms["othervocals"]).abs()
    return terms
