"""Prediction writers (lightning_modules/callbacks.py): what the tasks' predict_step returns is written, unchanged,
into the run folder; a writer from the config replaces the task's default; under DDP every sample is written once."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lightning_modules.callbacks import MaskPNGWriter
from lightning_modules.metrics.segmentation import hard_prediction
from lightning_modules.tasks.segmentation import SegmentationTask
from lightning_modules.tasks.separation import SeparationTask

ROOT = Path(__file__).resolve().parents[1]


def _predict(task, batches, tmp_path, callbacks=()):
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      callbacks=list(callbacks))
    return trainer.predict(task, DataLoader(batches, batch_size=None))


def _image_batches():
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(3, 3, 8, 8, generator=generator), "name": [f"b{b}_{i}" for i in range(3)]}
            for b in range(2)]


@pytest.mark.parametrize("num_classes", [1, 3])
def test_mask_pngs_hold_the_hard_prediction(tmp_path, num_classes):
    torch.manual_seed(0)
    task = SegmentationTask(nn.Conv2d(3, num_classes, 1), num_classes=num_classes).eval()
    batches = _image_batches()
    outputs = _predict(task, batches, tmp_path)
    assert outputs[0]["name"] == ["b0_0", "b0_1", "b0_2"] and outputs[0]["mask"].shape == (3, 1, 8, 8)
    scale = 255 if num_classes == 1 else 1
    for batch in batches:
        with torch.no_grad():
            expected = hard_prediction(task(batch["image"]), num_classes)[:, 0].numpy().astype(np.uint8) * scale
        for name, mask in zip(batch["name"], expected):
            written = np.asarray(Image.open(tmp_path / "predictions" / f"{name}.png"))
            assert written.dtype == np.uint8 and np.array_equal(written, mask)
    assert len(list((tmp_path / "predictions").iterdir())) == 6
    assert len(np.unique(expected)) > 1  # the check compares more than one value


def test_unnamed_batches_get_batch_and_index_names(tmp_path):
    task = SegmentationTask(nn.Conv2d(3, 1, 1))
    _predict(task, [{"image": torch.randn(2, 3, 8, 8)}], tmp_path)
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["batch00000_000.png", "batch00000_001.png"]


def test_a_writer_from_the_config_replaces_the_default(tmp_path):
    task = SegmentationTask(nn.Conv2d(3, 1, 1))
    _predict(task, _image_batches(), tmp_path, callbacks=[MaskPNGWriter("elsewhere", scale=255)])
    assert len(list((tmp_path / "elsewhere").glob("*.png"))) == 6 and not (tmp_path / "predictions").exists()


def test_separated_stems_are_float_wavs_of_the_estimates(tmp_path):
    """The mixture baseline's stems are the mixture itself: the WAVs must hold it sample for sample."""
    task = SeparationTask(estimator="mixture", n_fft=64, hop_length=16)
    generator = torch.Generator().manual_seed(0)
    batches = [{"mixture": 0.3 * torch.randn(1, 800, generator=generator), "sources": torch.randn(1, 4, 800),
                "name": [f"track {i}"], "sample_rate": torch.tensor([8000])} for i in range(2)]
    outputs = _predict(task, batches, tmp_path)
    assert outputs[0]["sources"].shape == (1, 4, 800)
    for batch in batches:
        for stem in ("vocals", "bass", "drums", "other"):
            path = tmp_path / "separated" / batch["name"][0] / f"{stem}.wav"
            audio, rate = sf.read(path, dtype="float32")
            assert rate == 8000 and sf.info(path).subtype == "FLOAT"
            assert np.array_equal(audio, batch["mixture"][0].numpy())


class RankTaggedMaskWriter(MaskPNGWriter):
    """Names each file after the rank that wrote it, so a sample written by two ranks shows up twice."""

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        prediction = {**prediction, "name": [f"{name}__rank{trainer.global_rank}" for name in prediction["name"]]}
        super().write_on_batch_end(trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx)


@pytest.mark.slow
def test_ddp_predict_writes_every_sample_once(tmp_path):
    """5 test images on 2 CPU processes (a padding DistributedSampler would predict one of them twice)."""
    writer = {"class_path": "tests.test_prediction_writers.RankTaggedMaskWriter", "init_args": {"scale": 255}}
    cmd = [sys.executable, "run.py", "predict", "--config", "experiments/saca_unet_demo.yaml",
           "--config", "experiments/trainer/ddp_cpu.yaml", "--data.num_train", "2", "--data.num_val", "1",
           "--data.num_test", "5", "--data.batch_size", "2", "--data.num_workers", "0",
           "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false", "--trainer.callbacks", json.dumps([writer]),
           "--runs_dir", str(tmp_path), "--run_id", "ddp"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.stem for p in (tmp_path / "saca_unet_demo" / "ddp" / "predictions").glob("*.png"))
    names = [f.split("__rank")[0] for f in files]
    assert sorted(names) == [f"skin_test_{i:04d}" for i in range(5)]  # each once
    assert {f.split("__rank")[1] for f in files} == {"0", "1"}  # both ranks wrote
