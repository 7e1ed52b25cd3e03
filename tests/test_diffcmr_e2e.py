"""DiffCMR, U-Net and cGAN end to end through run.main on the MRI stand-in: results.json, checkpoint reload,
learning (the loss falls; the U-Net beats the zero-filled input), the stand-in's data, and the full demo (slow)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import run
from datamodules.standins.mri_undersampling import MRIUndersamplingDataModule
from lightning_modules.tasks.reconstruction import DiffusionReconstructionTask, ReconstructionTask

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SMALL_DATA = ["--data.num_train", "32", "--data.num_val", "8", "--data.num_test", "8", "--data.image_size", "32",
              "--data.num_workers", "0", "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]


def _metric_column(csv_path, name):
    return [float(r[name]) for r in csv.DictReader(open(csv_path)) if r.get(name)]


@pytest.fixture(scope="module")
def diffcmr_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    cli = run.main(["--config", str(EXPERIMENTS / "diffcmr_demo.yaml"), *SMALL_DATA, "--trainer.max_epochs", "1",
                    "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
                    "--model.init_args.inference_steps", "4", "--model.init_args.rounds", "2",
                    "--data.batch_size", "4", "--model.init_args.figure_every_n_epochs", "1",
                    "--runs_dir", str(tmp), "--run_id", "t"])
    return cli, tmp / "diffcmr_demo" / "t"


def test_diffcmr_fit_then_test_writes_every_metric(diffcmr_run):
    _, run_dir = diffcmr_run
    results = json.loads((run_dir / "results.json").read_text())
    for name in ("psnr", "ssim", "nmse"):
        for suffix in ("", "_r1", "_zero_filled"):
            assert np.isfinite(results[f"test/{name}{suffix}"])
    assert results["test/num_slices"] == 8
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "figures" / "test_reconstruction.png").stat().st_size > 5_000
    assert "val/loss" in (run_dir / "metrics.csv").read_text().splitlines()[0]


def test_diffcmr_checkpoint_reloads_without_the_cli(diffcmr_run):
    cli, run_dir = diffcmr_run
    path = run_dir / "checkpoints" / "last.ckpt"
    assert DiffusionReconstructionTask.load_from_checkpoint(path, map_location="cpu").rounds == 4  # sampling: defaults
    model = DiffusionReconstructionTask.load_from_checkpoint(path, map_location="cpu", inference_steps=4, rounds=2,
                                                             clip_range=cli.model.clip_range)
    assert type(model.network).__name__ == "DiffCMR" and model.network.unet.model_channels == 32
    # The reference: the CLI-built module with the checkpoint's (EMA-averaged) weights.
    reference = cli.model  # (a deepcopy would copy the attached W&B run, which cannot be copied)
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    condition = torch.rand(2, 1, 32, 32)
    reference.eval(), model.eval()
    assert torch.allclose(reference.reconstruct(condition)[""], model.reconstruct(condition)[""], atol=1e-5)


def test_ddim_and_paper_ablation_options_from_the_command_line(diffcmr_run, tmp_path):
    """Table 4's T and R and the DDIM sampler are test-time options of a trained checkpoint."""
    _, run_dir = diffcmr_run
    cli = run.main(["test", "--config", str(EXPERIMENTS / "diffcmr_demo.yaml"), *SMALL_DATA,
                    "--model.init_args.sampler", "ddim", "--model.init_args.ddim_steps", "3",
                    "--model.init_args.rounds", "3", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                    "--runs_dir", str(tmp_path), "--run_id", "ddim", "--trainer.logger", "false"])
    assert cli.model.sampler == "ddim" and cli.model.rounds == 3
    results = json.loads((tmp_path / "diffcmr_demo" / "ddim" / "results.json").read_text())
    assert np.isfinite(results["test/psnr"]) and results["test/num_slices"] == 8


def test_diffusion_training_lowers_the_noise_prediction_error(tmp_path):
    """~60 steps on 32x32: the epsilon-MSE falls well below the trivial predictor's 1.0 (the raw weights:
    the demo's EMA averages over ~200 steps, longer than this run)."""
    run.main(["fit", "--config", str(EXPERIMENTS / "diffcmr_demo.yaml"), *SMALL_DATA, "--trainer.callbacks", "[]",
              "--data.num_train", "96",
              "--data.batch_size", "8", "--trainer.max_epochs", "5", "--trainer.check_val_every_n_epoch", "5",
              "--runs_dir", str(tmp_path), "--run_id", "learn", "--trainer.enable_checkpointing", "false"])
    run_dir = tmp_path / "diffcmr_demo" / "learn"
    losses = _metric_column(run_dir / "metrics.csv", "train/loss")
    assert len(losses) >= 50
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:3])
    assert _metric_column(run_dir / "metrics.csv", "val/loss")[-1] < 0.3


def test_unet_baseline_learns_and_beats_the_zero_filled_input(tmp_path):
    run.main(["--config", str(EXPERIMENTS / "diffcmr_unet_demo.yaml"), *SMALL_DATA, "--data.num_train", "192",
              "--data.batch_size", "8", "--trainer.max_epochs", "6", "--runs_dir", str(tmp_path), "--run_id", "u"])
    run_dir = tmp_path / "diffcmr_unet_demo" / "u"
    results = json.loads((run_dir / "results.json").read_text())
    losses = _metric_column(run_dir / "metrics.csv", "train/loss")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
    assert results["test/psnr"] > results["test/psnr_zero_filled"] + 1.0
    assert results["test/nmse"] < results["test/nmse_zero_filled"]
    model = ReconstructionTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert type(model.network).__name__ == "ReconstructionUNet"


def test_cgan_baseline_trains_both_networks(tmp_path):
    cli = run.main(["--config", str(EXPERIMENTS / "diffcmr_cgan_demo.yaml"), *SMALL_DATA, "--data.batch_size", "4",
                    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                    "--runs_dir", str(tmp_path), "--run_id", "g"])
    run_dir = tmp_path / "diffcmr_cgan_demo" / "g"
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/discriminator" in header and "train/adversarial" in header
    assert cli.trainer.global_step == 6  # generator and discriminator each stepped on 3 batches
    assert np.isfinite(json.loads((run_dir / "results.json").read_text())["test/psnr"])


def test_standin_pairs_are_undersampled_real_anatomy():
    module = MRIUndersamplingDataModule(image_size=32, num_train=4, num_val=2, num_test=6, augment=False)
    module.setup()
    item = module.test_set[0]
    assert item["image"].shape == item["target"].shape == (1, 32, 32)
    assert float(item["target"].max()) == pytest.approx(1.0) and float(item["image"].max()) == pytest.approx(1.0)
    again = MRIUndersamplingDataModule(image_size=32, num_train=2, num_val=2, num_test=3, augment=False)
    again.setup()
    assert torch.equal(again.test_set[0]["target"], item["target"])  # sample k does not depend on the split size
    assert module.line_mask.sum() < 32 / 4 + module.center_lines + 1
    inputs = torch.stack([module.test_set[i]["image"] for i in range(6)])
    targets = torch.stack([module.test_set[i]["target"] for i in range(6)])
    assert not torch.allclose(inputs, targets)


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    run.main(["--config", str(EXPERIMENTS / "diffcmr_demo.yaml"), "--runs_dir", str(tmp), "--run_id", "demo",
              "--trainer.enable_progress_bar", "false"])
    return json.loads((tmp / "diffcmr_demo" / "demo" / "results.json").read_text())


@pytest.mark.slow
def test_demo_four_rounds_beat_one(demo_results):
    """Table 4b's ensembling on the stand-in: R = 4 beats R = 1 (numbers in docs/papers/diffcmr.md)."""
    assert demo_results["test/psnr"] > demo_results["test/psnr_r1"]
    assert demo_results["test/nmse"] < demo_results["test/nmse_r1"]


@pytest.mark.slow
def test_demo_beats_zero_filled(demo_results):
    """The issue's criterion: the demo's reconstructions beat the zero-filled input (RAW) in PSNR and SSIM."""
    assert demo_results["test/psnr"] > demo_results["test/psnr_zero_filled"] + 1.0
    assert demo_results["test/ssim"] > demo_results["test/ssim_zero_filled"]
