"""What every task family shares: optimiser and scheduler injection, the checkpoint metric, figure cadence and
logging, per-sample mean/std logging."""
from __future__ import annotations

import inspect
import os
import warnings
from typing import Any, Literal, Mapping, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics import Metric, MetricCollection


class BaseTask(LightningModule):
    """A task family's LightningModule: subclasses add steps, losses and metrics.

    ``optimizer``/``lr_scheduler`` are injected callables (jsonargparse dependency injection), so a
    paper's recipe lives in its YAML: ``optimizer: {class_path: torch.optim.Adam, init_args: {lr: 1e-4}}``.
    ``monitor``/``monitor_mode`` name the validation metric that selects the best checkpoint.

    Every task also takes (and forwards here) ``scheduler_interval`` (when an injected scheduler steps) and
    ``figure_every_n_epochs`` (validation figure cadence), and may accept ``metrics``: extra torchmetrics
    injected from the config (``metrics: {f1: {class_path: torchmetrics.F1Score, init_args: {...}}}``),
    which ``init_extra_metrics`` turns into one ``MetricCollection`` per stage (``val/``, ``test/``).
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", figure_every_n_epochs: int = 1):
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if figure_every_n_epochs < 0:
            raise ValueError(f"figure_every_n_epochs must be >= 0, got {figure_every_n_epochs}")
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.figure_every_n_epochs = figure_every_n_epochs

    def init_extra_metrics(self, metrics: Optional[dict[str, Metric]]) -> None:
        """Config-injected metrics, cloned per stage: ``self.extra_metrics["val"]`` logs ``val/<name>``."""
        collection = MetricCollection(dict(metrics or {}))
        self.extra_metrics = torch.nn.ModuleDict({stage: collection.clone(prefix=f"{stage}/")
                                                 for stage in ("val", "test")})

    def update_extra_metrics(self, stage: str, *args: Any) -> None:
        """Update the injected metrics of ``stage`` with the task's (prediction, target) for them."""
        if hasattr(self, "extra_metrics") and len(self.extra_metrics[stage]):
            self.extra_metrics[stage].update(*args)

    def log_extra_metrics(self, stage: str) -> None:
        """Compute, log and reset the injected metrics of ``stage`` (call at the epoch end)."""
        if hasattr(self, "extra_metrics") and len(self.extra_metrics[stage]):
            self.log_dict(self.extra_metrics[stage].compute())
            self.extra_metrics[stage].reset()

    # Subclasses that override these hooks call super() first.
    def on_validation_epoch_start(self) -> None:
        self.renew_inference_metric_states()

    def on_test_epoch_start(self) -> None:
        self.renew_inference_metric_states()

    def renew_inference_metric_states(self) -> None:
        """Reset every torchmetrics metric whose states are inference tensors, when not in inference mode.

        A metric reset at the end of ``trainer.validate``/``test`` (inference mode) keeps inference tensors,
        which fit's validation (no-grad, not inference mode) cannot update in place; such states hold nothing
        of this run yet, so resetting them only remakes them in the current mode.
        """
        if torch.is_inference_mode_enabled():
            return
        for module in self.modules():
            if isinstance(module, Metric) and any(isinstance(state, torch.Tensor) and state.is_inference()
                                                  for state in module.metric_state.values()):
                module.reset()

    def optimizer_parameters(self):
        """What the optimiser is built over; tasks override it for parameter groups (no decay on norms, ...)."""
        return self.parameters()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_parameters())
        return self.with_scheduler(optimizer)

    def with_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The optimiser alone, or with the injected scheduler stepping every ``scheduler_interval``
        (``ReduceLROnPlateau`` reads ``monitor``)."""
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval,
                                                         "monitor": self.monitor}}

    def figure_due(self) -> bool:
        """Whether this validation epoch draws its figure: every ``figure_every_n_epochs`` epochs (0: never),
        on rank 0, not in the sanity check."""
        return (self.figure_every_n_epochs > 0 and not self.trainer.sanity_checking and self.trainer.is_global_zero
                and self.current_epoch % self.figure_every_n_epochs == 0)

    def log_mean_std(self, prefix: str, values: Mapping[str, torch.Tensor], std: bool = True) -> None:
        """Log ``{prefix}/{name}`` as the NaN-ignoring mean over samples and ``{prefix}/{name}_std`` as their
        sample standard deviation (0 for a single sample): the "mean +- std over test cases" of the papers.
        Computed in the values' precision (pass float64 for a float64 sum), logged as float32."""
        for name, value in values.items():
            value = value.detach().flatten()
            value = value if value.is_floating_point() else value.float()
            finite = value[~torch.isnan(value)]
            mean = finite.mean() if finite.numel() else value.new_tensor(float("nan"))
            self.log(f"{prefix}/{name}", mean.float())
            if std:
                self.log(f"{prefix}/{name}_std", (finite.std() if finite.numel() > 1 else value.new_zeros(())).float())

    def save_config_hyperparameters(self) -> None:
        """Save the caller's init arguments as hparams so ``load_from_checkpoint`` rebuilds the module.

        Under LightningCLI the hparams are the config (networks and optimisers as class_path dicts,
        which Lightning's instantiator rebuilds); when a module is built in Python, live objects
        (networks, optimiser factories) cannot be saved and are dropped.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters(frame=inspect.currentframe().f_back)
        for key in list(self.hparams):
            value = self.hparams[key]
            if isinstance(value, torch.nn.Module) or callable(value):
                del self.hparams[key]

    @property
    def figure_dir(self) -> str:
        root = self.trainer.default_root_dir if self._trainer is not None else "."
        return os.path.join(root, "figures")

    @rank_zero_only
    def log_figure(self, name: str, figure) -> str:
        """Save a matplotlib figure as PNG in the run folder and send it to W&B; returns the path."""
        import matplotlib.pyplot as plt

        os.makedirs(self.figure_dir, exist_ok=True)
        path = os.path.join(self.figure_dir, name.replace("/", "_") + ".png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=name.split("_epoch")[0], images=[path], step=self.global_step)
        plt.close(figure)
        return path
