"""Small helpers every paper uses."""
from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters as the papers' code counts them (FNOReg ``utils.count_parameters``).

    A complex-valued parameter counts as two reals (tensorly-torch already stores its complex factors
    as real pairs, so for them this is plain ``numel``).
    """
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in module.parameters() if p.requires_grad)


def import_class(class_path: str):
    """The class named by a dotted ``class_path`` (as LightningCLI writes it in a config)."""
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def network_from_checkpoint(checkpoint: str, network: nn.Module | None = None, key: str = "network",
                            train_command: str = "") -> nn.Module:
    """The ``<key>.*`` weights of a Lightning checkpoint loaded into ``network``, or, when None, into the network
    its saved hyperparameters name (``<key>`` as ``class_path``/``init_args``, as LightningCLI saves it): the
    first stage of a two-stage pipeline. A missing file names ``train_command``, the run that writes it."""
    import os

    import torch

    path = os.path.expanduser(str(checkpoint))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}" + (f". Train it first: {train_command}; it writes "
                                                                    "runs/<experiment>/<run id>/checkpoints/best.ckpt"
                                                                    if train_command else ""))
    state = torch.load(path, map_location="cpu", weights_only=False)
    weights = state.get("state_dict", state)
    prefix = key + "."
    network_weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)} or dict(weights)
    if network is None:
        spec = (state.get("hyper_parameters") or {}).get(key)
        if isinstance(spec, nn.Module):
            network = spec
        elif isinstance(spec, dict) and "class_path" in spec:
            network = import_class(spec["class_path"])(**dict(spec.get("init_args") or {}))
        else:
            raise ValueError(f"{path} does not say which network it holds (no '{key}' hyperparameters): give the "
                             "architecture explicitly")
    try:
        network.load_state_dict(network_weights)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit the network given ({type(network).__name__}): {error}") from error
    return network
