"""Autoencoder training (reconstruction of the input, one or several outputs): the first stage of two-stage
pipelines whose encoder or latent a later stage uses (ThyroidFAE's fusion autoencoder, CutiViral's CAE).

The network maps ``batch[input_key]`` to one reconstruction or a tuple of k (e.g. one head per imaging
modality). The target (``batch[target_key]``, default the input itself) is split along channels into the
outputs' channel counts, so a 3-modality input (B, 3, H, W) trains three 1-channel heads. The loss is
``sum_i w_i MSE(output_i, target_i)`` (``output_weights``, default 1 each).

Logs ``train/loss``; ``val/loss`` (the checkpoint metric, lowest best) and ``val/mse_<i>`` per output;
``test/mse`` and ``test/psnr`` (dB, per image over the data range ``psnr_data_range``, then averaged) with
their per-image standard deviations; a figure of inputs and reconstructions every ``figure_every_n_epochs``.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules.batch import IMAGE
from lightning_modules.tasks.base import BaseTask


class AutoencoderTask(BaseTask):
    """Weighted MSE reconstruction of the input (or of ``target_key``) by one or several outputs.

    Args:
        network: ``forward(x) -> reconstruction`` or a tuple of reconstructions (B, C_i, H, W) whose channel
            counts sum to the target's.
        output_weights: the weight of each output's MSE (ThyroidFAE: [1, 0.5, 0.05]); None: 1 each.
        input_key, target_key: batch keys of the input and of the target (None: the input).
        psnr_data_range: the targets' value range for PSNR (1 for [0, 1] images).
    """

    def __init__(self, network: nn.Module, output_weights: Optional[Sequence[float]] = None,
                 input_key: str = IMAGE, target_key: Optional[str] = None, psnr_data_range: float = 1.0,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", figure_every_n_epochs: int = 1,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        if psnr_data_range <= 0:
            raise ValueError(f"psnr_data_range must be > 0, got {psnr_data_range}")
        self.save_config_hyperparameters()
        self.network = network
        self.output_weights = None if output_weights is None else [float(w) for w in output_weights]
        self.input_key, self.target_key = input_key, target_key
        self.psnr_data_range = psnr_data_range
        self.monitor, self.monitor_mode = "val/loss", "min"
        self._test_mse: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor):
        return self.network(x)

    def outputs_and_targets(self, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The network's outputs and the target split to match them (channel counts, in order)."""
        outputs = self(batch[self.input_key])
        outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
        target = batch[self.target_key or self.input_key]
        sizes = [o.shape[1] for o in outputs]
        if sum(sizes) != target.shape[1]:
            raise ValueError(f"the outputs' channels {sizes} do not add up to the target's {target.shape[1]}")
        if self.output_weights is not None and len(self.output_weights) != len(outputs):
            raise ValueError(f"{len(self.output_weights)} output_weights for {len(outputs)} outputs")
        for output in outputs:
            if output.shape[2:] != target.shape[2:]:
                raise ValueError(f"reconstruction of size {tuple(output.shape[2:])} for a target of size "
                                 f"{tuple(target.shape[2:])}")
        return outputs, list(torch.split(target, sizes, dim=1))

    def losses(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        mses = [F.mse_loss(o.float(), t.float()) for o, t in zip(outputs, targets)]
        weights = self.output_weights or [1.0] * len(mses)
        return sum(w * m for w, m in zip(weights, mses)), mses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self.losses(*self.outputs_and_targets(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[self.input_key].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        outputs, targets = self.outputs_and_targets(batch)
        loss, mses = self.losses(outputs, targets)
        size = batch[self.input_key].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)
        for i, mse in enumerate(mses):
            self.log(f"val/mse_{i}", mse, batch_size=size, sync_dist=True)
        if batch_idx == 0 and self.figure_due():
            self.log_figure(f"val/reconstruction_epoch{self.current_epoch:04d}",
                            reconstruction_figure(torch.cat(targets, 1), torch.cat(outputs, 1),
                                                  f"epoch {self.current_epoch}"))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._test_mse = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        outputs, targets = self.outputs_and_targets(batch)
        output, target = torch.cat(outputs, 1).float(), torch.cat(targets, 1).float()
        self._test_mse.append((output - target).pow(2).flatten(1).mean(1))

    def on_test_epoch_end(self) -> None:
        mse = torch.cat(self._test_mse) if self._test_mse else torch.zeros(0, device=self.device)
        mse = self.all_gather(mse).flatten() if self.trainer.world_size > 1 else mse
        psnr = 10 * torch.log10(self.psnr_data_range ** 2 / mse.clamp_min(1e-12))
        self.log_mean_std("test", {"mse": mse, "psnr": psnr})

    def predict_step(self, batch: dict, batch_idx: int):
        return self(batch[self.input_key])


def reconstruction_figure(target: torch.Tensor, output: torch.Tensor, title: str, max_images: int = 4):
    """Rows: up to ``max_images`` samples; columns: each channel's target and reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target, output = target[:max_images].detach().float().cpu(), output[:max_images].detach().float().cpu()
    n, c = target.shape[:2]
    figure, axes = plt.subplots(n, 2 * c, figsize=(2 * 2 * c, 2 * n), squeeze=False)
    for i in range(n):
        for j in range(c):
            for k, (image, label) in enumerate(((target, "input"), (output, "reconstruction"))):
                ax = axes[i, 2 * j + k]
                ax.imshow(image[i, j].numpy(), cmap="gray")
                ax.set_axis_off()
                if i == 0:
                    ax.set_title(f"{label} {j}", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
