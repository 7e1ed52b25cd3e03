"""Regression task family: recording-level MAE/RMSE against NumPy and scikit-learn, the same under two
gloo processes that split recordings between them, losses against torch, and the task through run.py."""
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import mean_absolute_error, mean_squared_error

import run
from lightning_modules.losses.regression import range_weights, regression_loss
from lightning_modules.metrics.regression import RecordingLevelErrors, mean_per_group
from lightning_modules.tasks.regression import RegressionTask

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "dcca_demo.yaml")


def _segments(seed=0, recordings=7):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, recordings)
    ids = np.repeat(np.arange(recordings) * 3 + 5, counts)  # ids need not be contiguous
    labels = rng.integers(0, 64, recordings).astype(np.float32)
    targets = np.repeat(labels, counts)
    predictions = (targets + rng.normal(0, 8, len(targets))).astype(np.float32)
    order = rng.permutation(len(ids))  # segments arrive in any order
    return predictions[order], targets[order], ids[order]


def _reference(predictions, targets, ids):
    unique = np.unique(ids)
    mean_pred = np.array([predictions[ids == i].mean() for i in unique])
    label = np.array([targets[ids == i][0] for i in unique])
    return mean_pred, label


def test_recording_level_errors_match_numpy_and_sklearn():
    predictions, targets, ids = _segments()
    metric = RecordingLevelErrors()
    for chunk in np.array_split(np.arange(len(ids)), 3):
        metric.update(torch.from_numpy(predictions[chunk]), torch.from_numpy(targets[chunk]), torch.from_numpy(ids[chunk]))
    out = metric.compute(baseline=20.0)
    mean_pred, label = _reference(predictions, targets, ids)
    assert out["mae"].item() == pytest.approx(mean_absolute_error(label, mean_pred), rel=1e-5)
    assert out["rmse"].item() == pytest.approx(np.sqrt(mean_squared_error(label, mean_pred)), rel=1e-5)
    assert out["segment_rmse"].item() == pytest.approx(np.sqrt(np.mean((predictions - targets) ** 2)), rel=1e-5)
    assert out["num_recordings"].item() == 7 and out["num_segments"].item() == len(ids)
    assert out["mae_baseline"].item() == pytest.approx(np.mean(np.abs(label - 20.0)), rel=1e-5)
    assert out["rmse_baseline"].item() == pytest.approx(np.sqrt(np.mean((label - 20.0) ** 2)), rel=1e-5)
    # averaging per recording is not averaging per segment: the two RMSEs differ here
    assert abs(out["rmse"].item() - out["segment_rmse"].item()) > 0.5
    ids_out, means = mean_per_group(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([9, 2, 9]))
    assert ids_out.tolist() == [2, 9] and means.tolist() == [3.0, 3.0]


def _ddp_worker(rank, world_size, port, predictions, targets, ids, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    metric = RecordingLevelErrors()
    part = slice(rank, None, world_size)  # every recording's segments are split between the ranks
    metric.update(torch.from_numpy(predictions[part]), torch.from_numpy(targets[part]), torch.from_numpy(ids[part]))
    out = metric.compute()
    queue.put((rank, out["mae"].item(), out["rmse"].item(), out["num_segments"].item()))
    torch.distributed.destroy_process_group()


def test_recording_level_errors_gather_segments_across_processes():
    predictions, targets, ids = _segments(seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = torch.multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, port, predictions, targets, ids, queue), nprocs=2,
                                          start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    mean_pred, label = _reference(predictions, targets, ids)
    for _, mae, rmse, segments in results:
        assert mae == pytest.approx(np.mean(np.abs(mean_pred - label)), rel=1e-5)
        assert rmse == pytest.approx(np.sqrt(np.mean((mean_pred - label) ** 2)), rel=1e-5)
        assert segments == len(ids)


def test_losses_match_torch_and_weights_follow_the_bdi_ranges():
    torch.manual_seed(0)
    pred, target = torch.randn(16) * 10 + 20, torch.randint(0, 64, (16,)).float()
    assert torch.allclose(regression_loss(pred, target, "rmse"), torch.sqrt(F.mse_loss(pred, target)), atol=1e-5)
    assert torch.allclose(regression_loss(pred, target, "mse"), F.mse_loss(pred, target))
    assert torch.allclose(regression_loss(pred, target, "l1"), F.l1_loss(pred, target))
    assert torch.allclose(regression_loss(pred, target, "huber", huber_delta=2.0), F.huber_loss(pred, target, delta=2.0))
    # BDI-II: none < 14 <= mild < 20 <= rest
    weights = range_weights(torch.tensor([0.0, 13.9, 14.0, 19.9, 20.0, 63.0]), [14, 20], [3.0, 2.0, 1.0])
    assert weights.tolist() == [3.0, 3.0, 2.0, 2.0, 1.0, 1.0]
    w = range_weights(target, [14, 20], [3.0, 2.0, 1.0])
    expected = torch.sqrt((w * (pred - target) ** 2).sum() / w.sum())
    assert torch.allclose(regression_loss(pred, target, "rmse", w), expected, atol=1e-5)
    with pytest.raises(ValueError):
        range_weights(target, [14, 20], [1.0, 2.0])
    with pytest.raises(ValueError):
        regression_loss(pred, target, "mape")


FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--data.num_train", "6", "--data.num_dev", "3", "--data.num_test", "4", "--data.recording_seconds", "3.0",
        "--data.rounds_per_epoch", "1", "--data.batch_size", "8", "--data.num_workers", "0",
        "--trainer.enable_progress_bar", "false"]


def test_demo_config_runs_end_to_end_and_reloads(tmp_path):
    cli = run.main(["--config", DEMO, *FAST, "--runs_dir", str(tmp_path), "--run_id", "t", "--trainer.logger", "false"])
    run_dir = tmp_path / "dcca_demo" / "t"
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("test/mae", "test/rmse", "test/mae_mean_baseline", "test/rmse_mean_baseline", "test/segment_rmse"):
        assert key in results and np.isfinite(results[key])
    assert results["test/num_recordings"] == 4 and results["test/num_segments"] == 4 * 5
    train_mean = cli.datamodule.train_target_mean
    labels = np.array([r.score for r in cli.datamodule.test_set.recordings])
    assert results["test/mae_mean_baseline"] == pytest.approx(np.mean(np.abs(labels - train_mean)), rel=1e-5)
    assert (run_dir / "figures" / "test_true_vs_predicted.png").stat().st_size > 5_000
    # the CLI saved the network's config: the checkpoint rebuilds the whole task alone
    model = RegressionTask.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert type(model.network).__name__ == "DCCANet" and float(model.train_target_mean) == pytest.approx(train_mean)
    wave = torch.randn(2, 8000)
    cli.model.eval(), model.eval()
    assert torch.allclose(cli.model.predict_scores(wave), model.predict_scores(wave), atol=1e-5)


def test_missing_avec_data_ends_with_one_clear_message(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "run.py", "--config", "experiments/dcca/avec2013.yaml", "--data.data_dir",
                           "/nowhere", "--runs_dir", str(tmp_path), "--trainer.logger", "false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "/nowhere" in proc.stderr and "Depression.csv" in proc.stderr and "experiments/dcca_demo.yaml" in proc.stderr


@pytest.mark.slow
def test_demo_beats_the_training_mean(tmp_path):
    """The full demo (~10 epochs): recording-level MAE and RMSE below predicting the training mean."""
    run.main(["--config", DEMO, "--runs_dir", str(tmp_path), "--run_id", "demo", "--trainer.enable_progress_bar", "false"])
    results = json.loads((tmp_path / "dcca_demo" / "demo" / "results.json").read_text())
    assert results["test/rmse"] < 0.7 * results["test/rmse_mean_baseline"]
    assert results["test/mae"] < 0.7 * results["test/mae_mean_baseline"]


@pytest.mark.slow
def test_paper_config_trains_a_step_on_the_avec_layout(tmp_path):
    """(slow: the full-size network costs ~80 CPU-seconds here) dcca/avec2014.yaml as written (full-size DCCANet, balanced sampler, the other corpus added), one
    step on tiny fixture trees in the AVEC layout, then the test partition scored per recording."""
    from datamodules.standins.synthetic_speech_depression import standin_recordings, write_partitions_tree

    recordings = standin_recordings(num_train=2, num_dev=1, num_test=2, recording_seconds=3.0, seed=5)
    write_partitions_tree(tmp_path / "avec2014", recordings)
    write_partitions_tree(tmp_path / "avec2013", recordings)  # same sessions: its test ones are left out
    run.main(["--config", str(ROOT / "experiments" / "dcca" / "avec2014.yaml"), "--data.data_dir", str(tmp_path / "avec2014"),
              "--data.extra_train_dir", str(tmp_path / "avec2013"), "--data.batch_size", "2", "--data.num_workers", "0",
              "--data.rounds_per_epoch", "1", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
              "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--model.figure", "false", "--runs_dir", str(tmp_path / "runs"), "--run_id", "a"])
    results = json.loads((tmp_path / "runs" / "dcca_avec2014" / "a" / "results.json").read_text())
    assert results["paper"]["test/rmse"] == 7.54 and results["test/num_recordings"] == 2
    assert np.isfinite(results["test/rmse"]) and 0 <= results["test/mae"] <= 63
