"""Weight initialisations that several networks share."""
from __future__ import annotations

from torch import nn


def init_small_output(conv: nn.Module) -> None:
    """VoxelMorph's flow-layer init: N(0, 1e-5) weights, zero bias, so training starts near identity."""
    nn.init.normal_(conv.weight, mean=0.0, std=1e-5)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
