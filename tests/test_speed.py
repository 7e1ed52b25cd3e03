"""lightning_modules/speed.py: the opt-in speed switches and the step timer that benchmarks/gpu_check.py drives."""
from __future__ import annotations

import json
import math

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset

from lightning_modules.speed import ChannelsLast, CompileNetwork, StepTimer, batch_size_of, to_channels_last


class _Images(Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(3, 8, 8, generator=g), "label": torch.tensor(i % 2)}


class _Task(LightningModule):
    def __init__(self, nan_after: int | None = None):
        super().__init__()
        self.network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 2))
        self.nan_after = nan_after
        self.seen_formats = []

    def training_step(self, batch, batch_idx):
        self.seen_formats.append(batch["image"].is_contiguous(memory_format=torch.channels_last))
        loss = torch.nn.functional.cross_entropy(self.network(batch["image"]), batch["label"])
        if self.nan_after is not None and batch_idx >= self.nan_after:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self.network(batch["image"]), batch["label"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(task, callbacks, tmp_path, steps=6):
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2,
                      num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=tmp_path)
    loader = DataLoader(_Images(), batch_size=4)
    trainer.fit(task, loader, DataLoader(_Images(), batch_size=4))
    return trainer


def test_step_timer_reports_throughput_idle_share_memory_and_finite_loss(tmp_path):
    report = tmp_path / "timer.json"
    task = _Task()
    trainer = _fit(task, [StepTimer(report=str(report), warmup=2)], tmp_path)
    summary = json.loads(report.read_text())
    train = summary["train"]
    assert train["steps"] == 4 and train["batch_size"] == 4
    assert math.isclose(train["samples_per_s"], 4 / (train["step_ms_mean"] / 1000), rel_tol=1e-6)
    assert 0 <= train["idle_fraction"] < 1 and train["samples_per_s_with_loader"] <= train["samples_per_s"]
    assert summary["loss_finite"] and summary["parameters"] == sum(p.numel() for p in task.parameters())
    assert summary["peak_memory_mb"] > 0 and summary["device"] == "cpu" and summary["world_size"] == 1
    # trainer.validate afterwards adds the validation timing to the same report
    trainer.validate(task, DataLoader(_Images(), batch_size=4), verbose=False)
    validate = json.loads(report.read_text())["validate"]
    assert validate["steps"] == 1 and validate["step_ms_mean"] > 0  # 2 batches, the first left out


def test_step_timer_flags_a_loss_that_stops_being_finite(tmp_path):
    report = tmp_path / "timer.json"
    _fit(_Task(nan_after=3), [StepTimer(report=str(report), warmup=0)], tmp_path)
    summary = json.loads(report.read_text())
    assert not summary["loss_finite"] and math.isfinite(summary["first_loss"]) and math.isnan(summary["last_loss"])


def test_channels_last_converts_the_model_and_4d_batches_only(tmp_path):
    task = _Task()
    _fit(task, [ChannelsLast()], tmp_path, steps=2)
    assert task.seen_formats == [True, True]
    assert task.network[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = to_channels_last({"image": torch.randn(2, 3, 4, 5), "label": torch.zeros(2, dtype=torch.long),
                              "audio": [torch.randn(2, 100)]})
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["label"].dtype == torch.long and batch["audio"][0].is_contiguous()
    assert batch_size_of(batch) == 2 and batch_size_of({"name": ["a"], "x": [torch.zeros(5, 1)]}) == 5


def test_compile_network_compiles_in_place_and_keeps_checkpoint_keys(tmp_path):
    task = _Task()
    keys = list(task.state_dict())
    CompileNetwork().setup(None, task, "fit")
    assert task.network._compiled_call_impl is not None  # nn.Module.compile: compiled lazily at the first call
    assert list(task.state_dict()) == keys  # no "_orig_mod." prefix: checkpoints load into an uncompiled model
    CompileNetwork().setup(None, task, "fit")  # a second setup (fit, then test) does not wrap it twice
    assert list(task.state_dict()) == keys
