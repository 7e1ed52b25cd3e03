"""Optimiser parameter groups that tasks share: no weight decay on biases and norms, layer-wise lr decay."""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn


def parameter_groups(module: nn.Module, layer_decay: Optional[float] = None,
                     layer_id: Optional[Callable[[str], int]] = None, num_layers: Optional[int] = None) -> list[dict]:
    """Optimiser groups: no weight decay on biases and 1-D parameters (norms, tokens of shape (1, 1, D)
    count as decayed only if > 1-D); with ``layer_decay`` the lr of layer i is scaled by
    ``layer_decay ** (num_layers - i)`` (BEiT/data2vec layer-wise decay; the head is layer num_layers).

    Each group carries ``lr_scale``, which ``scale_group_lrs`` applies once the optimiser exists.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name.endswith("cls_token")
        layer = layer_id(name) if (layer_decay is not None and layer_id is not None) else 0
        key = (layer, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers - layer) if layer_decay is not None and num_layers else 1.0
            groups[key] = {"params": [], "lr_scale": scale, **({"weight_decay": 0.0} if no_decay else {})}
        groups[key]["params"].append(param)
    return list(groups.values())


def scale_group_lrs(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        group["initial_lr"] = group["lr"]
