"""Small helpers every paper uses."""
from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters as the papers' code counts them (FNOReg ``utils.count_parameters``).

    A complex-valued parameter counts as two reals (tensorly-torch already stores its complex factors
    as real pairs, so for them this is plain ``numel``).
    """
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in module.parameters() if p.requires_grad)
