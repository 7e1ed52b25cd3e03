"""Shared Grad-CAM tools for image classifiers: MONAI's ``GradCAM`` per target class, hand-written guided
backpropagation (ReLU backward hooks) and Guided Grad-CAM, the in-region mass of a map, and the figures.

- ``gradcam_maps(network, layer, images, targets)``: (B, 1, H, W) maps in [0, 1] of each image's own target class
  (MONAI's ``GradCAM`` takes one class per call, so the batch is run once per class present); MONAI upsamples the
  ReLU'd map bilinearly to the input size, then ``unit_normalizer`` min-max scales it;
- ``guided_backprop(network, images, targets)``: d score / d input with every ``nn.ReLU`` letting only positive
  gradients through (Springenberg et al.); needs ``nn.ReLU`` modules (not functional ReLUs) for the hooks;
- ``guided_gradcam``: guided backprop times the upsampled Grad-CAM map;
- ``region_mass(maps, masks)``: the fraction of each map's mass inside a region mask;
- ``display_images`` / ``gradcam_figure``: images above their maps (used by ABCDE and FER Grad-CAM).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn


def unit_normalizer(maps: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled to [0, 1], high = important (MONAI's ``default_normalizer`` maps (min, max) to (1, 0),
    the reverse); constant maps become 0."""
    flat = maps.flatten(1)
    low = flat.min(1).values.view(-1, *[1] * (maps.dim() - 1))
    high = flat.max(1).values.view(-1, *[1] * (maps.dim() - 1))
    return torch.where(high > low, (maps - low) / (high - low).clamp_min(1e-12), torch.zeros_like(maps))


def gradcam_maps(network: nn.Module, layer: str, images: torch.Tensor,
                 targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, 1, H, W) Grad-CAM maps in [0, 1] of ``targets`` (B,) class indices (None: the predicted classes) at the
    module ``layer`` (a name of ``network.named_modules()``), MONAI ``GradCAM`` once per class present. Runs with
    gradients enabled (also inside Lightning's inference-mode test loop); leaves no gradients on the weights."""
    from monai.visualize import GradCAM

    with torch.inference_mode(False), torch.enable_grad():
        x = images.detach().clone()
        if targets is None:
            with torch.no_grad():
                targets = network(x).argmax(1)
        targets = targets.long().to(x.device)
        cam = GradCAM(nn_module=network, target_layers=layer, postprocessing=unit_normalizer)
        out = torch.empty((x.shape[0], 1, *x.shape[2:]), device=x.device)
        for c in torch.unique(targets).tolist():
            chosen = targets == c
            out[chosen] = cam(x[chosen], class_idx=int(c)).detach().to(out.dtype)
    network.zero_grad(set_to_none=True)
    return out


def guided_backprop(network: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) guided backpropagation of each image's ``targets`` logit: every ``nn.ReLU`` of ``network``
    passes back only positive gradients (where its input was positive). Raises if the network has no ``nn.ReLU``
    module or one of them works in place (the hooks need its input)."""
    relus = [m for m in network.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"{type(network).__name__} has no nn.ReLU modules: guided backprop needs them")
    if any(m.inplace for m in relus):
        raise ValueError("guided backprop needs nn.ReLU(inplace=False) modules")

    def hook(module, grad_input, grad_output):
        return (grad_input[0].clamp_min(0.0),)

    handles = [m.register_full_backward_hook(hook) for m in relus]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = network(x)
            score = logits.gather(1, targets.detach().long().to(x.device).clone()[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, x)
    finally:
        for handle in handles:
            handle.remove()
    return gradient.detach()


def guided_gradcam(guided: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """Guided Grad-CAM: guided backprop (B, C, H, W) times the upsampled Grad-CAM map (B, 1, H, W)."""
    return guided * cams


def region_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) share of each map's total mass inside its binary region mask (maps (B, 1, H, W) >= 0, masks of the same
    shape); NaN where a map is all zero."""
    maps, masks = maps.flatten(1).double(), (masks.flatten(1) > 0.5).double()
    total = maps.sum(1)
    inside = (maps * masks).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def display_images(images: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) uint8 for display: each image min-max scaled (normalisation-agnostic)."""
    x = images.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    low = x.flatten(1).min(1).values[:, None, None, None]
    high = x.flatten(1).max(1).values[:, None, None, None]
    x = (x - low) / (high - low).clamp_min(1e-6)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def gradcam_figure(images: np.ndarray, maps: np.ndarray, titles: list[str]):
    """Images (N, H, W, 3) uint8 above themselves with their Grad-CAM maps (N, H, W) in [0, 1] overlaid (jet,
    alpha 0.45): 2 rows of N panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    figure, axes = plt.subplots(2, n, figsize=(1.6 * n + 0.4, 3.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i])
        axes[0, i].set_title(titles[i], fontsize=7)
        axes[1, i].imshow(images[i])
        axes[1, i].imshow(maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for ax in axes[:, i]:
            ax.axis("off")
    figure.tight_layout()
    return figure
