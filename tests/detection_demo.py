"""Shared by the detection heads' tests: a SwinCalc demo config overfitting one stand-in batch through run.py,
and the check that its best checkpoint rebuilds the same network from the saved config."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch


def overfit_one_standin_batch(demo: str, tmp_path: Path):
    """4 training images of 128 x 80, 16 epochs of one step, no augmentation; seeded by the config, so independent
    of earlier tests. Returns the CLI, the 16 training losses and the test metrics."""
    import run

    csv_logger = json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                             "init_args": {"save_dir": str(tmp_path / "csv"), "name": "", "version": ""}})
    cli = run.main(["--config", demo, "--data.init_args.num_train", "4", "--data.init_args.num_val", "2",
                    "--data.init_args.num_test", "2", "--data.init_args.image_size", "[128, 80]",
                    "--data.init_args.aug_p", "0.0", "--trainer.max_epochs", "16", "--trainer.log_every_n_steps", "1",
                    "--trainer.num_sanity_val_steps", "0", "--trainer.check_val_every_n_epoch", "8",
                    "--model.init_args.max_figure_images", "0",
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--trainer.logger", csv_logger, "--runs_dir", str(tmp_path), "--run_id", "r"])
    with open(tmp_path / "csv" / "metrics.csv", newline="") as file:
        losses = [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    return cli, losses, metrics


def restore_best_and_compare(cli):
    """Load the run's best checkpoint (network rebuilt from the saved config), check it predicts the same boxes and
    scores as the trained module on a test batch, and return it."""
    from lightning_modules.tasks.detection import DetectionTask

    restored = DetectionTask.load_from_checkpoint(str(Path(cli.run_dir) / "checkpoints" / "best.ckpt"),
                                                  map_location="cpu")
    cli.model.load_state_dict(restored.state_dict())
    images = next(iter(cli.datamodule.test_dataloader()))["image"]
    with torch.no_grad():
        ours, theirs = cli.model.eval()(images), restored.eval()(images)
    torch.testing.assert_close(ours[0]["boxes"], theirs[0]["boxes"])
    torch.testing.assert_close(ours[0]["scores"], theirs[0]["scores"])
    return restored
