"""Weight initialisations that several networks share."""
from __future__ import annotations

from torch import nn


def init_small_output(conv: nn.Module) -> None:
    """VoxelMorph's flow-layer init: N(0, 1e-5) weights, zero bias, so training starts near identity."""
    nn.init.normal_(conv.weight, mean=0.0, std=1e-5)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_keras(module: nn.Module) -> None:
    """Keras's layer defaults on every Conv/Linear of ``module``: Glorot-uniform weights, zero biases (networks
    first written in Keras; PyTorch's default draws about half the weight variance, which compounds through
    deep plain ReLU stacks)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
