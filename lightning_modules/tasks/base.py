"""What every task family shares: optimiser injection, the checkpoint metric, figure logging."""
from __future__ import annotations

import inspect
import os
import warnings
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only


class BaseTask(LightningModule):
    """A task family's LightningModule: subclasses add steps, losses and metrics.

    ``optimizer``/``lr_scheduler`` are injected callables (jsonargparse dependency injection), so a
    paper's recipe lives in its YAML: ``optimizer: {class_path: torch.optim.Adam, init_args: {lr: 1e-4}}``.
    ``monitor``/``monitor_mode`` name the validation metric that selects the best checkpoint.
    """

    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(self, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None):
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor}}

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
