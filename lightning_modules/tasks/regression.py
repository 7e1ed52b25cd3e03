"""Regression from segments of a longer recording (e.g. depression level from speech): the task family.

Batches are dicts (lightning_modules/batch.py) with the network's input under ``input_key`` (e.g. ``audio``
(B, samples)), the score under ``target_key`` (``target``, (B,) float) and the recording a segment was cut
from under ``group_key`` (``group``, (B,) int64). The network maps the input to one value per segment; a
recording's prediction is the mean over its segments, and MAE/RMSE are computed over recordings. The
trivial baseline -- predicting the training mean for every recording -- is logged next to them
(``*_mean_baseline``); the DataModule provides it as ``train_target_mean``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric

from lightning_modules import batch as keys
from lightning_modules.losses.regression import LossName, range_weights, regression_loss
from lightning_modules.metrics.regression import RecordingLevelErrors
from lightning_modules.tasks.base import BaseTask


class TrainingMeanBaseline:
    """Keeps the ``train_target_mean`` buffer (registered by the task, NaN until known) equal to the DataModule's
    ``train_target_mean`` at fit and test start: the trivial baseline a regression task is scored against."""

    def _refresh_train_target_mean(self) -> None:
        mean = getattr(getattr(self.trainer, "datamodule", None), "train_target_mean", None)
        if mean is not None:
            self.train_target_mean.fill_(float(mean))

    def on_fit_start(self) -> None:
        self._refresh_train_target_mean()

    def on_test_start(self) -> None:
        self._refresh_train_target_mean()


class RegressionTask(TrainingMeanBaseline, BaseTask):
    """Segment-level training, recording-level evaluation.

    Args:
        network: ``forward(batch[input_key]) -> (B,)`` (or (B, 1)) predictions.
        loss: "rmse" (DCCANet, CSENet), "mse", "l1" or "huber"; or a module ``loss(predictions (B,), targets (B,))
            -> scalar`` (e.g. ``torch.nn.SmoothL1Loss``) from the config.
        loss_bin_edges, loss_weights: optional per-target-range loss weights (see losses.regression.range_weights;
            the named losses only).
        clamp_range: evaluation predictions are clipped to this [low, high] (e.g. BDI-II [0, 63]);
            training sees the raw outputs, so the gradient never vanishes at the bounds.
        input_key: the batch key fed to the network.
        huber_delta: delta of the Huber loss.
        figure: log a true-vs-predicted scatter plot of the test recordings (DCCANet Fig. 3).
        scheduler_interval: ``epoch`` or ``step``: when an injected ``lr_scheduler`` steps.
        metrics: extra torchmetrics (e.g. ``torchmetrics.PearsonCorrCoef``), updated at the epoch end with the
            recording-level predictions and targets (B_recordings,), logged as ``val/<name>``, ``test/<name>``.
        target_key, group_key: the batch keys of the score and of the recording index.
    """

    monitor = "val/rmse"
    monitor_mode = "min"

    def __init__(self, network: nn.Module, loss: Union[LossName, nn.Module] = "rmse",
                 loss_bin_edges: Optional[Sequence[float]] = None,
                 loss_weights: Optional[Sequence[float]] = None, clamp_range: Optional[Sequence[float]] = None,
                 input_key: str = keys.AUDIO, huber_delta: float = 1.0, figure: bool = True,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch",
                 metrics: Optional[dict[str, Metric]] = None, target_key: str = keys.TARGET,
                 group_key: str = keys.GROUP):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval)
        if isinstance(loss, nn.Module) and loss_weights is not None:
            raise ValueError("loss_bin_edges/loss_weights weight the named losses; a loss module takes its own")
        if (loss_bin_edges is None) != (loss_weights is None):
            raise ValueError("give both loss_bin_edges and loss_weights, or neither")
        if loss_weights is not None and len(loss_weights) != len(loss_bin_edges) + 1:
            raise ValueError(f"{len(loss_bin_edges)} bin edges need {len(loss_bin_edges) + 1} loss weights")
        if clamp_range is not None and (len(clamp_range) != 2 or clamp_range[0] >= clamp_range[1]):
            raise ValueError(f"clamp_range must be [low, high] with low < high, got {clamp_range}")
        self.save_config_hyperparameters()
        self.network = network
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss_fn = loss if isinstance(loss, nn.Module) else None
        self.loss_bin_edges = None if loss_bin_edges is None else list(loss_bin_edges)
        self.loss_weights = None if loss_weights is None else list(loss_weights)
        self.clamp_range = None if clamp_range is None else tuple(float(v) for v in clamp_range)
        self.input_key, self.target_key, self.group_key = input_key, target_key, group_key
        self.huber_delta = huber_delta
        self.figure = figure
        # Saved in checkpoints, so `run.py test --ckpt_path` reports the baseline without the train set.
        self.register_buffer("train_target_mean", torch.tensor(float("nan")))
        self.val_errors = RecordingLevelErrors()
        self.test_errors = RecordingLevelErrors()
        self.init_extra_metrics(metrics)
        # Fed with recording-level values that RecordingLevelErrors has already gathered from every process:
        # syncing them again would count each recording once per process.
        for collection in self.extra_metrics.values():
            for metric in collection.values():
                metric.sync_on_compute = metric._to_sync = False

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs).reshape(inputs.shape[0])

    def predict_scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """Evaluation predictions: the network's, clipped to ``clamp_range``."""
        predictions = self(inputs)
        return predictions if self.clamp_range is None else predictions.clamp(*self.clamp_range)

    def compute_loss(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(predictions, targets.to(predictions.dtype))
        weights = None
        if self.loss_weights is not None:
            weights = range_weights(targets.float(), self.loss_bin_edges, self.loss_weights)
        return regression_loss(predictions, targets, self.loss_name, weights, self.huber_delta)

    # -- steps ------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        keys.require(batch, self.input_key, self.target_key, task=type(self).__name__)
        predictions = self(batch[self.input_key])
        loss = self.compute_loss(predictions, batch[self.target_key])
        self.log("train/loss", loss, prog_bar=True, batch_size=predictions.shape[0])
        return loss

    def _update_errors(self, errors: RecordingLevelErrors, batch: dict) -> None:
        keys.require(batch, self.input_key, self.target_key, self.group_key, task=type(self).__name__)
        predictions = self.predict_scores(batch[self.input_key])
        errors.update(predictions, batch[self.target_key], batch[self.group_key])

    def _log_extra(self, stage: str, errors: dict) -> None:
        self.update_extra_metrics(stage, errors["recording_predictions"], errors["recording_targets"])
        self.log_extra_metrics(stage)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._update_errors(self.val_errors, batch)

    def on_validation_epoch_end(self) -> None:
        errors = self.val_errors.compute()
        self.log_dict({"val/rmse": errors["rmse"], "val/mae": errors["mae"],
                       "val/segment_rmse": errors["segment_rmse"]}, prog_bar=True)
        self._log_extra("val", errors)
        self.val_errors.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._update_errors(self.test_errors, batch)

    def on_test_epoch_end(self) -> None:
        baseline = self.train_target_mean if torch.isfinite(self.train_target_mean) else None
        errors = self.test_errors.compute(baseline=baseline)
        for name in ("mae", "rmse", "segment_mae", "segment_rmse", "num_recordings", "num_segments"):
            self.log(f"test/{name}", errors[name])
        if baseline is not None:
            self.log("test/mae_mean_baseline", errors["mae_baseline"])
            self.log("test/rmse_mean_baseline", errors["rmse_baseline"])
        self._log_extra("test", errors)
        if self.figure and self.trainer.is_global_zero:
            self.log_figure("test/true_vs_predicted", true_vs_predicted_figure(
                errors["recording_targets"], errors["recording_predictions"], baseline))
        self.test_errors.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Segment predictions and their group (recording) index."""
        out = {"prediction": self.predict_scores(batch[self.input_key])}
        if self.group_key in batch:
            out[self.group_key] = batch[self.group_key]
        return out


def true_vs_predicted_figure(actual: torch.Tensor, predicted: torch.Tensor, baseline: Optional[torch.Tensor] = None):
    """True and predicted score of every test recording, sorted by the true score (cf. DCCANet Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actual, predicted = actual.detach().float().cpu(), predicted.detach().float().cpu()
    order = torch.argsort(actual)
    figure, ax = plt.subplots(figsize=(7, 3.5))
    ax.scatter(range(len(order)), actual[order], s=14, label="true")
    ax.scatter(range(len(order)), predicted[order], s=14, marker="x", label="predicted (mean of segments)")
    if baseline is not None:
        ax.axhline(float(baseline), color="grey", linestyle="--", linewidth=0.8, label="training mean")
    ax.set_xlabel("test recording (sorted by true score)")
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
