"""Opt-in speed switches and a step timer, as Lightning callbacks that any experiment can add on the command line:

    python run.py --config experiments/saca_unet_demo.yaml \
        --trainer.callbacks+=lightning_modules.speed.CompileNetwork \
        --trainer.callbacks+=lightning_modules.speed.ChannelsLast

- ``CompileNetwork``: ``torch.compile`` of the task's network in place (``nn.Module.compile``), so checkpoint keys
  are unchanged and a compiled run's checkpoint loads into an uncompiled model.
- ``ChannelsLast``: the model's 4-D weights and every 4-D floating-point batch tensor in NHWC memory format (faster
  convolutions on tensor cores); a no-op for other tensors.
- ``StepTimer``: per-step wall time of training and validation batches, the time the loop waited for its next batch
  (the loader and the host-to-device copy: the device idles meanwhile), samples per second, peak memory and whether
  the loss stayed finite; written as JSON at the end of fit/validate. It synchronises the device at each step
  boundary, so use it to measure, not in production runs (``benchmarks/gpu_check.py`` drives it).
"""
from __future__ import annotations

import json
import math
import os
import resource
import time
from typing import Any, Optional

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_only


def _network(pl_module) -> torch.nn.Module:
    return getattr(pl_module, "network", pl_module)


class CompileNetwork(Callback):
    """``torch.compile`` the task's ``network`` (or the whole module if it has none) once, at setup."""

    def __init__(self, mode: Optional[str] = None, dynamic: Optional[bool] = None, fullgraph: bool = False):
        self.kwargs = {"mode": mode, "dynamic": dynamic, "fullgraph": fullgraph}

    def setup(self, trainer, pl_module, stage: str) -> None:
        module = _network(pl_module)
        if not getattr(module, "_compiled_by_callback", False):
            module.compile(**self.kwargs)
            module._compiled_by_callback = True


def to_channels_last(batch: Any) -> Any:
    """4-D floating-point tensors of a (nested) batch in channels_last memory format; the rest unchanged."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_channels_last(value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(value) for value in batch)
    return batch


class ChannelsLast(Callback):
    """Model and 4-D batch tensors in channels_last (NHWC) memory format."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)

    @staticmethod
    def _convert(batch) -> None:
        if isinstance(batch, dict):  # the loops hand the same dict to the step: convert in place
            batch.update(to_channels_last(batch))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._convert(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._convert(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._convert(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._convert(batch)


def batch_size_of(batch: Any) -> int:
    """The leading dimension of the first tensor in a (nested) batch (0 if it holds none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = batch_size_of(value)
        if size:
            return size
    return 0


class _Phase:
    def __init__(self):
        self.step_s: list[float] = []
        self.wait_s: list[float] = []
        self.samples: list[int] = []
        self.started: Optional[float] = None
        self.ended: Optional[float] = None

    def summary(self, warmup: int, world_size: int) -> dict:
        steps, waits, samples = self.step_s[warmup:], self.wait_s[warmup:], self.samples[warmup:]
        if not steps:
            return {"steps": 0}
        busy, idle = sum(steps), sum(waits)
        return {
            "steps": len(steps),
            "step_ms_mean": 1000 * busy / len(steps),
            "step_ms_median": 1000 * sorted(steps)[len(steps) // 2],
            "batch_size": samples[0] if samples else 0,
            "samples_per_s": world_size * sum(samples) / busy if busy else float("nan"),
            "samples_per_s_with_loader": world_size * sum(samples) / (busy + idle) if busy + idle else float("nan"),
            "loader_wait_ms_mean": 1000 * idle / len(waits) if waits else 0.0,
            "idle_fraction": idle / (busy + idle) if waits and busy + idle else 0.0,
        }


class StepTimer(Callback):
    """Times training and validation steps (after ``warmup`` steps of each) and writes ``report`` (JSON).

    ``idle_fraction`` = time between the end of one step and the start of the next (fetching the batch, copying it
    to the device, the loop's own work) over the whole time: the share of time the device waits for data.
    """

    def __init__(self, report: Optional[str] = None, warmup: int = 3):
        self.report = report
        self.warmup = warmup
        self.phases = {"train": _Phase(), "validate": _Phase()}
        self.loss_finite = True
        self.losses: list[float] = []

    # -- timing -------------------------------------------------------------------------------------
    @staticmethod
    def _sync(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _start(self, phase: str, pl_module, batch) -> None:
        record = self.phases[phase]
        now = self._sync(pl_module)
        if record.ended is not None:
            record.wait_s.append(now - record.ended)
        record.started = now
        record.samples.append(batch_size_of(batch))

    def _end(self, phase: str, pl_module) -> None:
        record = self.phases[phase]
        record.ended = self._sync(pl_module)
        record.step_s.append(record.ended - record.started)

    def on_fit_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start("train", pl_module, batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._end("train", pl_module)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # manual optimisation returns None: the logged metrics are checked
            value = float(loss.detach())    # the step already synchronised; this copy costs nothing more
            self.losses.append(value)
            self.loss_finite &= math.isfinite(value)

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "validate":  # a standalone trainer.validate: report its batches alone
            self.phases["validate"] = _Phase()

    def on_validation_epoch_start(self, trainer, pl_module):
        self.phases["validate"].ended = None  # the gap before an epoch's first batch is not loader time

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start("validate", pl_module, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._end("validate", pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        self.phases["train"].ended = None

    # -- report -------------------------------------------------------------------------------------
    def summary(self, trainer, pl_module) -> dict:
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()
                  if isinstance(v, torch.Tensor) and v.numel() == 1 and "loss" in k}
        finite = self.loss_finite and all(math.isfinite(v) for v in logged.values())
        device = pl_module.device
        peak_mb = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "parameters": sum(p.numel() for p in pl_module.parameters()),
            "train": self.phases["train"].summary(self.warmup, trainer.world_size),
            # validation's first batch (cuDNN autotune, first eval-mode pass) is left out when there are others
            "validate": self.phases["validate"].summary(int(len(self.phases["validate"].step_s) > 1),
                                                        trainer.world_size),
            "loss_finite": bool(finite),
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "logged_losses": logged,
            # CUDA: peak allocated by tensors; CPU: the process's peak resident set (all of Python, not only torch)
            "peak_memory_mb": peak_mb,
            "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        }

    @rank_zero_only
    def _write(self, trainer, pl_module) -> None:
        if self.report:
            os.makedirs(os.path.dirname(os.path.abspath(self.report)), exist_ok=True)
            with open(self.report, "w") as f:
                json.dump(self.summary(trainer, pl_module), f, indent=2)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._write(trainer, pl_module)
