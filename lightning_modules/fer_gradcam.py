"""FER Grad-CAM (ICPR 2024, "Interpreting Emotions Through the Grad-CAM Lens"): a small AlexNet-inspired CNN for
7-class facial emotion recognition, explained with Grad-CAM, guided backpropagation and Guided Grad-CAM at its last
conv layer.

- ``FERNet``: 4 units of [Conv 5x5 'same' + ReLU, Conv 5x5 'same' + ReLU, MaxPool 2] (48 -> 24 -> 12 -> 6 -> 3),
  Flatten -> Dense 128 + ReLU -> Dropout -> Dense 64 + ReLU -> Dropout -> Dense 7; Keras init (Glorot-uniform,
  zero bias). Table 2's layers: conv1 2,432, conv2 25,632, dense 295,040 / 8,256 / 455. Its Grad-CAM layer is
  ``features.unit4.conv2`` (6 x 6 x 256 maps at 48 px).
- ``FERGradCAMTask``: ``ClassificationTask`` (cross-entropy, per-class precision / recall / F1: Table 3) that, at
  test, computes the Grad-CAM map of every test image (MONAI ``GradCAM`` through ``lightning_modules.gradcam``; of
  the ground-truth class, or the predicted one with ``cam_target: pred``), accumulates per-class pixelwise mean
  and std maps (``figures/test_gradcam_class_maps.{png,npz}``), and, for ``n_vis_per_class`` random test images of
  each class (fixed seed), draws panels of the image, its Grad-CAM (true and predicted class), guided backprop
  and Guided Grad-CAM (``figures/test_gradcam_<class>.png``; misclassified images marked with a red cross).
  Where the batch carries a ``mask`` (the expected facial region of the image's class: the stand-in draws it),
  it logs the in-region mass ``test/cam_mass/<class>`` (share of the map's mass inside the region) next to the
  region's area share ``test/cam_area/<class>`` (the mass a uniform map would get), and their class means.
- ``aggregate_class_maps``: study hook pooling the per-class mean/std maps of every run (the 5 seeds).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from datamodules.fer2013 import EMOTIONS
from lightning_modules.blocks.init import init_keras
from lightning_modules.gradcam import (display_images, gradcam_maps, guided_backprop, guided_gradcam,
                                       region_mass)
from lightning_modules.batch import MASK
from lightning_modules.tasks.classification import ClassificationTask



class FERNet(nn.Module):
    """The AlexNet-inspired CNN (card "Model"; widths of units 2-3, kernels after unit 1 and dropout are choices).

    Args:
        in_channels: 3 (FER-2013's grey replicated).
        num_classes: 7.
        channels: filters of the 4 units.
        kernel_size: every conv's kernel ('same' padding).
        dense: the two hidden dense layers.
        dropout: after each hidden dense layer.
        img_size: input side (a multiple of 16; linked to the data's image_size).
        init: ``keras`` (the original's Glorot-uniform weights, zero biases) or ``he`` (Kaiming-normal for ReLU,
            zero biases: keeps the signal's scale through the 8 conv + 2 dense ReLU layers; Glorot halves it at
            every layer, which leaves small-data runs (the CPU stand-in) on a long plateau at ln 7).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 7, channels: Sequence[int] = (32, 64, 128, 256),
                 kernel_size: int = 5, dense: Sequence[int] = (128, 64), dropout: float = 0.5, img_size: int = 48,
                 init: Literal["keras", "he"] = "keras"):
        super().__init__()
        if img_size % 2 ** len(channels):
            raise ValueError(f"img_size must be a multiple of {2 ** len(channels)}, got {img_size}")
        units, previous = [], in_channels
        for i, width in enumerate(channels):
            units.append((f"unit{i + 1}", nn.Sequential(OrderedDict(
                conv1=nn.Conv2d(previous, width, kernel_size, padding="same"), relu1=nn.ReLU(),
                conv2=nn.Conv2d(width, width, kernel_size, padding="same"), relu2=nn.ReLU(),
                pool=nn.MaxPool2d(2)))))
            previous = width
        self.features = nn.Sequential(OrderedDict(units))
        side = img_size // 2 ** len(channels)
        layers, width = [nn.Flatten()], previous * side * side
        for hidden in dense:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)
        self.target_layer = self.features[-1].conv2
        if init == "keras":
            init_keras(self)
        elif init == "he":
            for layer in self.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        else:
            raise ValueError(f"init must be 'keras' or 'he', got {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FERGradCAMTask(ClassificationTask):
    """``ClassificationTask`` with the paper's test-time explanations (module docstring).

    Args:
        network: a ``FERNet`` (any network with ``nn.ReLU`` modules works; guided backprop needs them).
        num_classes: 7.
        gradcam_layer: module name (of ``network``) whose activations Grad-CAM uses.
        cam_target: the class explained in the per-class aggregates: ``true`` (ground truth) or ``pred``.
        n_vis_per_class: random test images per class drawn in the panels (0: none).
        vis_seed: seed of that sample.
        **kwargs: ``ClassificationTask`` 's (class_names, per_class_metrics, optimizer, ...).
    """

    def __init__(self, network: nn.Module, num_classes: int = 7, gradcam_layer: str = "features.unit4.conv2",
                 cam_target: Literal["true", "pred"] = "true", n_vis_per_class: int = 10, vis_seed: int = 0,
                 **kwargs):
        kwargs.setdefault("class_names", list(EMOTIONS) if num_classes == len(EMOTIONS) else None)
        kwargs.setdefault("per_class_metrics", True)
        super().__init__(network, num_classes, **kwargs)
        self.save_config_hyperparameters()
        if cam_target not in ("true", "pred"):
            raise ValueError(f"cam_target must be 'true' or 'pred', got {cam_target!r}")
        if n_vis_per_class < 0:
            raise ValueError(f"n_vis_per_class must be >= 0, got {n_vis_per_class}")
        names = dict(network.named_modules())
        if gradcam_layer not in names:
            raise ValueError(f"gradcam_layer {gradcam_layer!r} is not a module of {type(network).__name__}")
        self.gradcam_layer, self.cam_target = gradcam_layer, cam_target
        self.n_vis_per_class, self.vis_seed = n_vis_per_class, vis_seed
        self._reset_cam_state()

    def _reset_cam_state(self) -> None:
        self._cam_sum = self._cam_sq = self._cam_count = None
        self._mass = torch.zeros(self.num_classes, dtype=torch.float64)
        self._area = torch.zeros(self.num_classes, dtype=torch.float64)
        self._mass_count = torch.zeros(self.num_classes, dtype=torch.float64)
        self._vis: dict[int, dict] = {}
        self._vis_generator = torch.Generator().manual_seed(self.vis_seed)

    def on_test_start(self) -> None:
        super().on_test_start()
        self._reset_cam_state()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        if dataloader_idx != 0 or self._test_loaders[0][1]:
            return
        x, labels = batch[self.input_key], batch[self.target_key].long()
        with torch.no_grad():
            preds = self(x).argmax(1)
        targets = labels if self.cam_target == "true" else preds
        cams = gradcam_maps(self.network, self.gradcam_layer, x, targets)
        maps = cams[:, 0].double().cpu()
        if self._cam_sum is None:
            shape = (self.num_classes, *maps.shape[1:])
            self._cam_sum = torch.zeros(shape, dtype=torch.float64)
            self._cam_sq = torch.zeros(shape, dtype=torch.float64)
            self._cam_count = torch.zeros(self.num_classes, dtype=torch.float64)
        classes = targets.cpu()
        self._cam_sum.index_add_(0, classes, maps)
        self._cam_sq.index_add_(0, classes, maps ** 2)
        self._cam_count.index_add_(0, classes, torch.ones(len(classes), dtype=torch.float64))
        if MASK in batch:
            mass = region_mass(cams, batch[MASK]).cpu()
            area = batch[MASK].flatten(1).gt(0.5).double().mean(1).cpu()
            valid = ~torch.isnan(mass)
            self._mass.index_add_(0, labels.cpu()[valid], mass[valid])
            self._area.index_add_(0, labels.cpu()[valid], area[valid])
            self._mass_count.index_add_(0, labels.cpu()[valid], torch.ones(int(valid.sum()), dtype=torch.float64))
        if self.n_vis_per_class:
            self._keep_for_panels(x, labels, preds, batch.get("name"))

    def _keep_for_panels(self, x: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, names) -> None:
        """A uniform random sample of ``n_vis_per_class`` test images per class: each image draws a priority, each
        class keeps its highest ones."""
        priority = torch.rand(len(labels), generator=self._vis_generator)
        names = list(names) if names is not None else [""] * len(labels)
        for c in torch.unique(labels).tolist():
            chosen = (labels == c).nonzero().flatten().cpu()
            kept = self._vis.get(c)
            new = {"priority": priority[chosen], "image": x[chosen].detach().cpu(), "pred": preds[chosen].cpu(),
                   "name": [names[i] for i in chosen.tolist()]}
            if kept is not None:
                new = {k: (kept[k] + new[k] if k == "name" else torch.cat([kept[k], new[k]])) for k in new}
            order = torch.argsort(new["priority"], descending=True)[:self.n_vis_per_class]
            self._vis[c] = {k: ([new[k][i] for i in order.tolist()] if k == "name" else new[k][order]) for k in new}

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self._cam_sum is None:
            return
        if self.trainer.world_size > 1:
            self._cam_sum, self._cam_sq, self._cam_count, self._mass, self._area, self._mass_count = (
                self.all_gather(t.to(self.device)).sum(0).double().cpu()
                for t in (self._cam_sum, self._cam_sq, self._cam_count, self._mass, self._area, self._mass_count))
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        if self._mass_count.sum() > 0:
            present = self._mass_count > 0
            mass = self._mass / self._mass_count.clamp_min(1)
            area = self._area / self._mass_count.clamp_min(1)
            for c in present.nonzero().flatten().tolist():
                self.log(f"test/cam_mass/{names[c]}", float(mass[c]))
                self.log(f"test/cam_area/{names[c]}", float(area[c]))
            self.log("test/cam_mass", float(mass[present].mean()))
            self.log("test/cam_area", float(area[present].mean()))
        if self.trainer.is_global_zero:
            mean, std = class_map_stats(self._cam_sum, self._cam_sq, self._cam_count)
            os.makedirs(self.figure_dir, exist_ok=True)
            np.savez_compressed(os.path.join(self.figure_dir, "test_gradcam_class_maps.npz"),
                                sum=self._cam_sum.numpy(), sum_sq=self._cam_sq.numpy(), count=self._cam_count.numpy(),
                                class_names=np.array(names), target=self.cam_target)
            self.log_figure("test/gradcam_class_maps", class_maps_figure(
                mean, std, self._cam_count.numpy(), names, f"Grad-CAM of the {self.cam_target} class, per class"))
            self._draw_panels(names)
        self._reset_cam_state()

    def _draw_panels(self, names: list[str]) -> None:
        for c, kept in sorted(self._vis.items()):
            images, preds = kept["image"].to(self.device), kept["pred"].to(self.device)
            labels = torch.full_like(preds, c)
            true_cam = gradcam_maps(self.network, self.gradcam_layer, images, labels)
            pred_cam = gradcam_maps(self.network, self.gradcam_layer, images, preds)
            guided = guided_backprop(self.network, images, labels)
            self.network.zero_grad(set_to_none=True)
            rows = {"image": display_images(images), f"Grad-CAM ({names[c]})": true_cam[:, 0].cpu().numpy(),
                    "Grad-CAM (pred)": pred_cam[:, 0].cpu().numpy(),
                    "guided backprop": _unit_rgb(guided),
                    "Guided Grad-CAM": _unit_rgb(guided_gradcam(guided, true_cam))}
            titles = [f"pred {names[int(p)]}" for p in preds]
            wrong = (preds != c).cpu().numpy()
            self.log_figure(f"test/gradcam_{names[c]}", explanation_panel(rows, titles, wrong))


def _unit_rgb(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) signed maps -> (B, H, W, 3) display images: centred at 0.5, scaled by each map's max |x|."""
    x = x.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    scale = x.flatten(1).abs().max(1).values.clamp_min(1e-12)[:, None, None, None]
    return (0.5 + 0.5 * x / scale).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def class_map_stats(total: torch.Tensor, total_sq: torch.Tensor, count: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixelwise mean and (population) std maps from running sums; NaN for classes with no image."""
    total, total_sq, count = (torch.as_tensor(t, dtype=torch.float64) for t in (total, total_sq, count))
    n = count.view(-1, *[1] * (total.dim() - 1))
    mean = torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, float("nan")))
    var = (total_sq / n.clamp_min(1) - mean ** 2).clamp_min(0)
    return mean.numpy(), var.sqrt().numpy()


def class_maps_figure(mean: np.ndarray, std: np.ndarray, count: np.ndarray, names: list[str], title: str):
    """Two rows (mean, std) of per-class Grad-CAM maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    figure, axes = plt.subplots(2, k, figsize=(1.6 * k + 0.6, 3.7), squeeze=False)
    for c in range(k):
        axes[0, c].imshow(mean[c], cmap="jet", vmin=0, vmax=1)
        axes[0, c].set_title(f"{names[c]} (n={int(count[c])})", fontsize=7)
        axes[1, c].imshow(std[c], cmap="magma", vmin=0, vmax=0.5)
        for ax in axes[:, c]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("mean", fontsize=8)
    axes[1, 0].set_ylabel("std", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def explanation_panel(rows: dict[str, np.ndarray], titles: list[str], wrong: np.ndarray):
    """One column per image, one row per explanation: the image, Grad-CAM maps (overlaid on the image, jet) and
    guided maps (RGB); misclassified columns get a red cross on the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = rows["image"]
    n, r = len(images), len(rows)
    figure, axes = plt.subplots(r, n, figsize=(1.3 * n + 1.2, 1.35 * r), squeeze=False)
    for j, (label, values) in enumerate(rows.items()):
        for i in range(n):
            ax = axes[j, i]
            ax.imshow(images[i] if values.ndim == 3 or j == 0 else values[i])
            if values.ndim == 3 and j > 0:
                ax.imshow(values[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if j == 0:
                ax.set_title(titles[i], fontsize=6)
                if wrong[i]:
                    h, w = images[i].shape[:2]
                    ax.plot([0, w - 1], [0, h - 1], color="red", lw=1.5)
                    ax.plot([0, w - 1], [h - 1, 0], color="red", lw=1.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=6)
    figure.tight_layout()
    return figure


def aggregate_class_maps(study_dir, results: list[dict]) -> str:
    """Study analysis hook (``analysis: lightning_modules.fer_gradcam:aggregate_class_maps``): the per-class mean and
    std Grad-CAM maps over every image of every run that left ``figures/test_gradcam_class_maps.npz`` (the 5
    seeds' models pooled), written to ``<study>/gradcam_class_maps.{png,npz}``; returns the summary's line."""
    study_dir = Path(study_dir)
    total = total_sq = count = None
    names, runs = None, 0
    for record in results:
        path = Path(record["run_dir"]) / "figures" / "test_gradcam_class_maps.npz"
        if not path.is_file():
            continue
        with np.load(path) as data:
            if total is None:
                total, total_sq, count = data["sum"].copy(), data["sum_sq"].copy(), data["count"].copy()
                names = [str(n) for n in data["class_names"]]
            else:
                total, total_sq, count = total + data["sum"], total_sq + data["sum_sq"], count + data["count"]
        runs += 1
    if total is None:
        return ""
    mean, std = class_map_stats(torch.from_numpy(total), torch.from_numpy(total_sq), torch.from_numpy(count))
    np.savez_compressed(study_dir / "gradcam_class_maps.npz", mean=mean, std=std, count=count,
                        class_names=np.array(names))
    import matplotlib.pyplot as plt

    figure = class_maps_figure(mean, std, count, names, f"Grad-CAM per class over {runs} runs")
    figure.savefig(study_dir / "gradcam_class_maps.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return f"Per-class mean/std Grad-CAM maps over {runs} runs: {study_dir / 'gradcam_class_maps.png'}"
