"""Segmentation end to end through run.py on the stand-in: learning, predict, checkpoints, real-layout configs."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import run
from lightning_modules.tasks.segmentation import SegmentationTask
from tests.test_segmentation_datasets import write_busi

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "saca_unet_demo.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--data.num_workers", "0", "--trainer.log_every_n_steps", "1"]


def _column(path, name):
    return [float(row[name]) for row in csv.DictReader(open(path)) if row.get(name)]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """~100 steps of the demo's SACA-UNet on 160 stand-in images (64 px)."""
    tmp = tmp_path_factory.mktemp("seg")
    cli = run.main(["--config", DEMO, *QUIET, "--trainer.max_epochs", "5", "--data.num_train", "160",
                    "--data.num_val", "32", "--data.num_test", "32", "--model.init_args.lr_scheduler.init_args.T_max", "5",
                    "--model.figure_every_n_epochs", "0", "--runs_dir", str(tmp), "--run_id", "learn"])
    return cli, tmp / "saca_unet_demo" / "learn"


def test_short_training_learns_and_beats_all_background(learned_run):
    _, run_dir = learned_run
    losses = _column(run_dir / "metrics.csv", "train/loss")
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test/dice_all_background"] == 0.0
    assert results["test/dice"] > 0.7 and results["test/iou"] > 0.5
    for key in ("test/sensitivity", "test/precision", "test/specificity", "test/num_images"):
        assert key in results
    assert results["test/num_images"] == 32
    assert (run_dir / "figures" / "test_overlay.png").stat().st_size > 5_000


def test_checkpoint_reloads_without_the_cli(learned_run):
    cli, run_dir = learned_run
    model = SegmentationTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert type(model.network).__name__ == "SACAUNet" and model.monitor == "val/dice"
    best = SegmentationTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu").eval()
    cli.model.load_state_dict(best.state_dict())
    cli.model.eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(cli.model(image), model.eval()(image), atol=1e-5)


def test_predict_writes_png_masks_named_after_the_inputs(learned_run, tmp_path):
    _, run_dir = learned_run
    run.main(["predict", "--config", DEMO, *QUIET, "--data.num_test", "5", "--ckpt_path",
              str(run_dir / "checkpoints" / "best.ckpt"), "--runs_dir", str(tmp_path), "--run_id", "pred",
              "--trainer.logger", "false"])
    files = sorted((tmp_path / "saca_unet_demo" / "pred" / "predictions").glob("*.png"))
    assert [f.stem for f in files] == [f"skin_test_{i:04d}" for i in range(5)]
    mask = np.asarray(Image.open(files[0]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255


def test_busi_config_runs_on_the_real_layout(tmp_path):
    """The paper's BUSI config, shrunk to one step, on a fixture tree in the public layout."""
    root = write_busi(tmp_path / "busi", per_class=(6, 4, 2))
    run.main(["--config", str(ROOT / "experiments" / "saca_unet" / "busi.yaml"), *QUIET, "--data.data_dir", str(root),
              "--data.image_size", "64", "--model.network.init_args.img_size", "64", "--data.batch_size", "2",
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.accelerator", "cpu",
              "--trainer.precision", "32-true", "--runs_dir", str(tmp_path / "runs"), "--run_id", "busi",
              "--trainer.logger", "false"])
    results = json.loads((tmp_path / "runs" / "saca_unet_busi" / "busi" / "results.json").read_text())
    assert results["paper"]["test/dice"] == 0.8424 and 0.0 <= results["test/dice"] <= 1.0
    assert results["test/num_images"] == 2  # 20 % of the 10 benign + malignant images


def test_missing_busi_data_ends_with_one_clear_message(tmp_path, capsys):
    """run.main prints the DatasetError alone (no traceback) and exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--config", str(ROOT / "experiments" / "saca_unet" / "busi.yaml"), "--data.data_dir", "/nowhere/busi",
                  "--runs_dir", str(tmp_path), "--trainer.logger", "false"])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in stderr
    assert "/nowhere/busi" in stderr and "benign (1)_mask.png" in stderr
    assert "experiments/saca_unet_demo.yaml" in stderr


@pytest.mark.slow
def test_demo_reaches_its_documented_dice(tmp_path):
    run.main(["--config", DEMO, "--runs_dir", str(tmp_path), "--run_id", "demo", "--trainer.enable_progress_bar", "false"])
    results = json.loads((tmp_path / "saca_unet_demo" / "demo" / "results.json").read_text())
    assert results["test/dice"] >= 0.9 and results["test/dice_all_background"] == 0.0


@pytest.mark.slow
def test_ddp_two_cpu_processes_count_each_test_image_once(tmp_path):
    """2 gloo processes: per-image values are gathered from both (13 test images, not one rank's 7),
    and the stratified batch sampler runs under DDP (Lightning leaves it unwrapped)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop(run.RUN_ID_ENV, None)
    cmd = [sys.executable, "run.py", "--config", DEMO, "--config", "experiments/trainer/ddp_cpu.yaml",
           "--data.kind", "ultrasound", "--data.stratified_batches", "true", "--data.num_train", "32",
           "--data.num_val", "10", "--data.num_test", "13", "--model.network.init_args.in_channels", "1",
           "--model.metric_aggregation", "per_image", "--trainer.max_epochs", "1", *QUIET,
           "--trainer.logger", "false", "--runs_dir", str(tmp_path), "--run_id", "ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "saca_unet_demo" / "ddp" / "results.json").read_text())
    assert results["test/num_images"] == 13
