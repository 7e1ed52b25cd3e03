"""Unsupervised deformable registration (2D and 3D): the task family FNOReg, VoxelMorph and
Fourier-Net share.

Batches are dicts (lightning_modules/batch.py) with ``fixed``, ``moving`` (B, 1, *spatial) float images and,
for evaluation or the segmentation loss, ``fixed_seg``, ``moving_seg`` (B, 1, *spatial) integer label maps, and/or
``fixed_landmarks``, ``moving_landmarks`` (B, K, 2) pixel (x, y) with ``diagonal`` (B,) for landmark errors
(ANHIR's rTRE family). A network maps ``(moving, fixed)`` to a displacement in normalised grid units, or to an
affine ``theta`` (B, D, D+1) (F.affine_grid's matrix, align_corners=True) that the task turns into that
displacement (see blocks/warp.py).
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric
from torchmetrics.aggregation import CatMetric

from lightning_modules import batch as keys
from lightning_modules.blocks.warp import (affine_to_displacement, is_affine, normalised_to_voxels,
                                           theta_to_pixel_matrix, transform_points, warp)
from lightning_modules.losses.registration import diffusion_regulariser, one_hot_labels, segmentation_dice_loss
from lightning_modules.metrics.registration import (anhir_pair_statistics, anhir_summary, dice_per_pair,
                                                    folding_percent, relative_tre, std_log_jacobian)
from lightning_modules.tasks.base import BaseTask


#: per-pair landmark values gathered during evaluation (see metrics.registration.anhir_pair_statistics)
LANDMARK_PAIR_VALUES = ("mrtre", "artre", "robustness", "mrire", "arire")


class RegistrationTask(BaseTask):
    """Loss ``MSE(f, m o phi) + smooth_weight * L_smooth (+ seg_weight * L_dice on warped one-hot labels)``;
    ``similarity`` replaces the MSE term.

    Evaluation uses what the batch has: label maps give Dice (``val/dice``, ``test/dice``); landmarks give the
    ANHIR measures over pairs (``test/mmrtre``, ``amrtre``, ``martre``, ``aartre``, robustness ``mr``/``ar``, and
    the unregistered ``*_before``). An affine network's landmarks are mapped exactly (moving landmarks through the
    inverse affine into the fixed frame, the challenge's "warped source landmarks"); a dense field is evaluated in
    the moving frame (fixed landmarks moved by the field, BIRL's "warped target landmarks").

    Args:
        network: ``forward(moving, fixed) -> displacement`` (normalised units) or ``-> theta`` (B, D, D+1).
        smooth_weight: lambda of the diffusion regulariser.
        seg_weight: gamma of the auxiliary Dice loss on warped one-hot labels (FNOReg 3D); 0 disables it.
        seg_num_classes: number of label values including background, needed when seg_weight > 0.
        train_scale: resolution factor of training (0.5 = the paper's "0.5x" scenario: images are
            resized before the network; validation and test always run at the data's full size).
        figure_every_n_epochs: how often a validation figure goes to W&B and figures/ (0: never).
        scheduler_interval: ``epoch`` or ``step``: when an injected ``lr_scheduler`` steps.
        similarity: the image similarity term ``similarity(warped, fixed) -> scalar`` in place of the MSE,
            e.g. ``monai.losses.LocalNormalizedCrossCorrelationLoss``; None: MSE. It is logged as
            ``train/similarity``; the regulariser and the Dice term are added as above.
        metrics: extra torchmetrics, updated with the warped moving labels and the fixed labels, int64
            (B, 1, *spatial), logged as ``val/<name>`` and ``test/<name>``.
        fixed_key, moving_key: the batch keys of the two images (their label maps are ``fixed_seg``/``moving_seg``).
        monitor_metric: the validation metric that selects ``best.ckpt``: ``val/dice`` (max), ``val/loss`` or a
            landmark measure ``val/mmrtre`` etc. (min).
    """

    monitor = "val/dice"
    monitor_mode = "max"

    def __init__(self, network: nn.Module, smooth_weight: float = 0.01, seg_weight: float = 0.0,
                 seg_num_classes: Optional[int] = None, train_scale: float = 1.0,
                 figure_every_n_epochs: int = 1,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", similarity: Optional[nn.Module] = None,
                 metrics: Optional[dict[str, Metric]] = None, fixed_key: str = keys.FIXED,
                 moving_key: str = keys.MOVING, monitor_metric: str = "val/dice"):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        if seg_weight > 0 and not seg_num_classes:
            raise ValueError("seg_weight > 0 needs seg_num_classes (label values including background)")
        if not 0 < train_scale <= 1:
            raise ValueError(f"train_scale must be in (0, 1], got {train_scale}")
        self.save_config_hyperparameters()
        self.network = network
        self.smooth_weight = smooth_weight
        self.seg_weight = seg_weight
        self.seg_num_classes = seg_num_classes
        self.train_scale = train_scale
        self.similarity = similarity
        self.fixed_key, self.moving_key = fixed_key, moving_key
        self.init_extra_metrics(metrics)
        self.monitor = monitor_metric
        self.monitor_mode = "max" if monitor_metric in ("val/dice", "val/mr", "val/ar") else "min"
        self.val_dice = CatMetric()
        self.test_values = nn.ModuleDict({name: CatMetric() for name in
                                          ("dice", "dice_before", "folding_percent", "sdlogj")})
        self.landmark_values = nn.ModuleDict({stage: nn.ModuleDict({name: CatMetric() for name in LANDMARK_PAIR_VALUES})
                                              for stage in ("val", "test")})

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.network(moving, fixed)

    def transform(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(displacement, theta or None): the network's output as the dense field the warp takes."""
        out = self(moving, fixed)
        if is_affine(out, moving):
            return affine_to_displacement(out, fixed.shape[2:]), out
        return out, None

    # -- training ---------------------------------------------------------------------------------
    def _resize(self, image: torch.Tensor, labels: bool = False) -> torch.Tensor:
        if self.train_scale == 1.0:
            return image
        size = [max(1, round(n * self.train_scale)) for n in image.shape[2:]]
        if labels:
            return F.interpolate(image.float(), size=size, mode="nearest").long()
        mode = "bilinear" if image.ndim == 4 else "trilinear"
        return F.interpolate(image, size=size, mode=mode, align_corners=False)

    def images(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(fixed, moving) of a batch."""
        keys.require(batch, self.fixed_key, self.moving_key, task=type(self).__name__)
        return batch[self.fixed_key], batch[self.moving_key]

    def labels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(fixed_seg, moving_seg) of a batch."""
        keys.require(batch, keys.FIXED_SEG, keys.MOVING_SEG, task=type(self).__name__)
        return batch[keys.FIXED_SEG], batch[keys.MOVING_SEG]

    def losses(self, batch: dict, resize: bool = False) -> dict[str, torch.Tensor]:
        fixed, moving = self.images(batch)
        if resize:
            fixed, moving = self._resize(fixed), self._resize(moving)
        displacement, theta = self.transform(moving, fixed)
        warped = warp(moving, displacement)
        similarity = F.mse_loss(warped, fixed) if self.similarity is None else self.similarity(warped, fixed)
        out = {"similarity": similarity, "smoothness": diffusion_regulariser(displacement)}
        out["loss"] = out["similarity"] + self.smooth_weight * out["smoothness"]
        if self.seg_weight > 0:
            fixed_seg, moving_seg = self.labels(batch)
            if resize:
                fixed_seg, moving_seg = self._resize(fixed_seg, True), self._resize(moving_seg, True)
            warped_onehot = warp(one_hot_labels(moving_seg, self.seg_num_classes), displacement)
            out["segmentation"] = segmentation_dice_loss(warped_onehot, one_hot_labels(fixed_seg, self.seg_num_classes))
            out["loss"] = out["loss"] + self.seg_weight * out["segmentation"]
        out["displacement"] = displacement
        out["warped"] = warped
        if theta is not None:
            out["affine"] = theta
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch, resize=True)
        batch_size = out["warped"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=batch_size)
        for name in ("similarity", "smoothness", "segmentation"):
            if name in out:
                self.log(f"train/{name}", out[name], batch_size=batch_size)
        return out["loss"]

    # -- evaluation -------------------------------------------------------------------------------
    def _warp_labels(self, labels: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
        return warp(labels.float(), displacement, mode="nearest").round().long()

    def _has_labels(self, batch: dict) -> bool:
        return keys.FIXED_SEG in batch and keys.MOVING_SEG in batch

    def _has_landmarks(self, batch: dict) -> bool:
        return all(key in batch for key in (keys.FIXED_LANDMARKS, keys.MOVING_LANDMARKS, keys.DIAGONAL))

    def landmark_errors(self, batch: dict, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(rTRE, rIRE) per landmark (B, K), NaN where a landmark is missing."""
        fixed, moving = self.images(batch)
        fixed_points = batch[keys.FIXED_LANDMARKS].float()
        moving_points = batch[keys.MOVING_LANDMARKS].float()
        diagonal = batch[keys.DIAGONAL].float()
        rire = relative_tre(moving_points, fixed_points, diagonal)
        if "affine" in out:
            to_moving = theta_to_pixel_matrix(out["affine"].float(), fixed.shape[2:], moving.shape[2:])
            warped_points = transform_points(torch.linalg.inv(to_moving), moving_points)
            return relative_tre(warped_points, fixed_points, diagonal), rire
        # dense field: move the fixed landmarks into the moving frame (bilinear sample of the voxel displacement)
        field = normalised_to_voxels(out["displacement"].float())  # (B, 2, H, W), channel 0 along rows
        sizes = fixed_points.new_tensor([fixed.shape[3] - 1, fixed.shape[2] - 1]).clamp_min(1)
        grid = (2.0 * torch.nan_to_num(fixed_points) / sizes - 1.0).unsqueeze(1)  # (B, 1, K, 2) as (x, y)
        sampled = F.grid_sample(field, grid, align_corners=True).squeeze(2)  # (B, 2, K)
        moved = fixed_points + sampled.flip(1).transpose(1, 2)
        return relative_tre(moved, moving_points, diagonal), rire

    def update_landmark_values(self, stage: str, batch: dict, out: dict) -> None:
        rtre, rire = self.landmark_errors(batch, out)
        for name, value in anhir_pair_statistics(rtre, rire).items():
            self.landmark_values[stage][name].update(value)

    def log_landmark_summary(self, stage: str) -> None:
        values = self.landmark_values[stage]
        if not values["mrtre"].update_count:
            return
        pairs = {name: metric.compute().float() for name, metric in values.items()}
        for name, value in anhir_summary(pairs).items():
            self.log(f"{stage}/{name}", value)
        self.log(f"{stage}/num_landmark_pairs", float((~torch.isnan(pairs["mrtre"])).sum()))
        for metric in values.values():
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.losses(batch)
        fixed, moving = self.images(batch)
        self.log("val/loss", out["loss"], sync_dist=True, batch_size=fixed.shape[0])
        if self._has_labels(batch):
            fixed_seg, moving_seg = self.labels(batch)
            warped_seg = self._warp_labels(moving_seg, out["displacement"])
            self.val_dice.update(dice_per_pair(warped_seg, fixed_seg))
            self.update_extra_metrics("val", warped_seg, fixed_seg.long())
        if self._has_landmarks(batch):
            self.update_landmark_values("val", batch, out)
        if batch_idx == 0 and self.figure_due():
            self.log_figure(f"val/registration_epoch{self.current_epoch:03d}",
                            registration_figure(fixed, moving, out))

    def on_validation_epoch_end(self) -> None:
        if self.val_dice.update_count or self.monitor == "val/dice":
            values = self.val_dice.compute() if self.val_dice.update_count else torch.zeros(0)
            self.log("val/dice", torch.nanmean(values) if values.numel() else torch.tensor(0.0))
        self.val_dice.reset()
        self.log_extra_metrics("val")
        self.log_landmark_summary("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        out = self.losses(batch)
        fixed, moving = self.images(batch)
        displacement = out["displacement"]
        if self._has_labels(batch):
            fixed_seg, moving_seg = self.labels(batch)
            warped_seg = self._warp_labels(moving_seg, displacement)
            self.test_values["dice"].update(dice_per_pair(warped_seg, fixed_seg))
            self.test_values["dice_before"].update(dice_per_pair(moving_seg, fixed_seg))
            self.update_extra_metrics("test", warped_seg, fixed_seg.long())
        if self._has_landmarks(batch):
            self.update_landmark_values("test", batch, out)
        self.test_values["folding_percent"].update(folding_percent(displacement))
        self.test_values["sdlogj"].update(std_log_jacobian(displacement))
        self.log("test/loss", out["loss"], sync_dist=True, batch_size=fixed.shape[0])
        if batch_idx == 0 and self.trainer.is_global_zero:
            self.log_figure("test/registration", registration_figure(fixed, moving, out))

    def on_test_epoch_end(self) -> None:
        # CatMetric gathers every pair from every process: mean and std are over pairs, as in the papers.
        values = {name: metric.compute().float() for name, metric in self.test_values.items() if metric.update_count}
        self.log_mean_std("test", values)
        self.log("test/num_pairs", float(values["folding_percent"].numel()))
        for metric in self.test_values.values():
            metric.reset()
        self.log_extra_metrics("test")
        self.log_landmark_summary("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        fixed, moving = self.images(batch)
        displacement, theta = self.transform(moving, fixed)
        out = {"displacement": displacement, "warped": warp(moving, displacement)}
        if theta is not None:
            out["affine"] = theta
            if keys.MOVING_LANDMARKS in batch:  # the challenge's submission: source landmarks in the target frame
                to_moving = theta_to_pixel_matrix(theta.float(), fixed.shape[2:], moving.shape[2:])
                out["warped_moving_landmarks"] = transform_points(torch.linalg.inv(to_moving),
                                                                  batch[keys.MOVING_LANDMARKS].float())
        return out


def _middle_slice(volume: torch.Tensor) -> np.ndarray:
    """First sample of a (B, C, *spatial) tensor as a 2D array (the middle slice of the last axis in 3D)."""
    array = volume[0].detach().float().cpu()
    if array.ndim == 4:
        array = array[..., array.shape[-1] // 2]
    return array.numpy()


def registration_figure(fixed: torch.Tensor, moving: torch.Tensor, out: dict):
    """The paper's Fig. 4 panels for one pair: fixed, moving, warped, deformation grid, |DFT| of the field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed, moving, warped = _middle_slice(fixed)[0], _middle_slice(moving)[0], _middle_slice(out["warped"])[0]
    field = _middle_slice(normalised_to_voxels(out["displacement"].detach().float()))[:2]
    figure, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    for ax, image, title in zip(axes, (fixed, moving, warped), ("fixed", "moving", "warped")):
        ax.imshow(image, cmap="gray")
        ax.set_title(title)
    h, w = field.shape[1:]
    step = max(2, min(h, w) // 24)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = rows + field[0], cols + field[1]
    grid_ax = axes[3]
    for i in range(0, h, step):
        grid_ax.plot(x[i], y[i], "k-", linewidth=0.6)
    for j in range(0, w, step):
        grid_ax.plot(x[:, j], y[:, j], "k-", linewidth=0.6)
    grid_ax.set_xlim(0, w - 1)
    grid_ax.set_ylim(h - 1, 0)
    grid_ax.set_aspect("equal")
    grid_ax.set_title("deformation grid")
    spectrum = sum(np.abs(np.fft.fftshift(np.fft.fft2(channel))) for channel in field)
    axes[4].imshow(np.log1p(spectrum), cmap="viridis")
    axes[4].set_title("log |DFT| of the field")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return figure
