"""Chandna CNN end to end through run.py: the stand-in learns and beats the mixture, the checkpoint reloads,
the real DSD100 loader and BSS Eval run on a fake DSD100 tree, predict writes stems, baselines, errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import run
from datamodules.standins.synthetic_music import write_dsd100_tree
from lightning_modules.tasks.separation import SeparationTask

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "chandna_demo.yaml")
DSD100 = str(ROOT / "experiments" / "chandna" / "dsd100.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "5"]
SOURCE_NAMES = ("vocals", "bass", "drums", "other")


def _metric_column(csv_path, name):
    import csv
    return [float(r[name]) for r in csv.DictReader(open(csv_path)) if r.get(name)]


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    """60 Adam steps on 12 synthetic songs, tested on 4 clips (+8.1 dB here; the full demo is a slow test)."""
    tmp = tmp_path_factory.mktemp("chandna_runs")
    cli = run.main(["--config", DEMO, *QUIET, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "60",
                    "--data.num_train", "12", "--data.num_val", "2", "--data.num_test", "4",
                    "--runs_dir", str(tmp), "--run_id", "short"])
    return cli, tmp / "chandna_demo" / "short"


def test_short_training_learns_and_beats_the_mixture(short_demo):
    _, run_dir = short_demo
    losses = _metric_column(run_dir / "metrics.csv", "train/loss")
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test/si_sdr_improvement"] > 3.0  # dB over "mixture as estimate"
    assert results["test/si_sdr"] > results["test/si_sdr_mixture"] + 3.0
    for metric in ("sdr", "isr", "sir", "sar"):
        for source in SOURCE_NAMES:
            assert np.isfinite(results[f"test/{metric}_{source}"]) and np.isfinite(results[f"test/{metric}_{source}_std"])
    assert results["test/num_tracks"] == 4
    assert (run_dir / "figures" / "test_separation.png").stat().st_size > 10_000


def test_checkpoint_reloads_without_the_cli(short_demo):
    cli, run_dir = short_demo
    model = SeparationTask.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert type(model.network).__name__ == "ChandnaCNN" and model.stft.n_fft == 256
    chunk = torch.rand(2, 30, 129)
    cli.model.eval(), model.eval()
    torch.testing.assert_close(model(chunk), cli.model(chunk))


def test_oracle_and_mixture_baselines_bracket_the_model(short_demo, tmp_path):
    _, run_dir = short_demo
    model = json.loads((run_dir / "results.json").read_text())
    scores = {}
    for estimator in ("oracle_irm", "mixture"):
        run.main(["test", "--config", str(ROOT / "experiments" / f"chandna_demo_{estimator}.yaml"), *QUIET,
                  "--data.num_train", "1", "--data.num_val", "1", "--data.num_test", "4",
                  "--model.bss_eval", "false", "--runs_dir", str(tmp_path), "--run_id", estimator])
        scores[estimator] = json.loads((tmp_path / f"chandna_demo_{estimator}" / estimator / "results.json").read_text())
    assert scores["mixture"]["test/si_sdr_improvement"] == pytest.approx(0.0, abs=1e-6)
    assert scores["oracle_irm"]["test/si_sdr"] > model["test/si_sdr"] > scores["mixture"]["test/si_sdr"]


def test_real_dsd100_loader_metrics_and_predict_on_a_fake_tree(tmp_path):
    """The paper's config (1024/256 STFT, 513 bins) on a 4-track DSD100 tree of synthetic songs at 16 kHz:
    train a few steps, test with BSS Eval images v3, then write the separated stems as WAVs."""
    data = tmp_path / "DSD100"
    write_dsd100_tree(data, ["001 - Actions - One Minute Smile", "002 - A - B"], ["051 - C - D", "052 - E - F"],
                      seconds=3.0, sample_rate=16000)
    common = ["--config", DSD100, *QUIET, "--data.data_dir", str(data), "--data.sample_rate", "16000",
              "--data.num_workers", "0", "--runs_dir", str(tmp_path / "runs")]
    run.main([*common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--run_id", "fit"])
    results = json.loads((tmp_path / "runs" / "chandna_dsd100" / "fit" / "results.json").read_text())
    assert results["test/num_tracks"] == 2
    assert results["paper"]["test/sdr_vocals"] == 1.3
    assert all(np.isfinite(results[f"test/{m}"]) for m in ("sdr", "isr", "sir", "sar", "si_sdr"))
    ckpt = tmp_path / "runs" / "chandna_dsd100" / "fit" / "checkpoints" / "last.ckpt"
    run.main(["predict", *common, "--ckpt_path", str(ckpt), "--run_id", "predict",
              "--trainer.logger", "false"])
    for track in ("051 - C - D", "052 - E - F"):
        for source in SOURCE_NAMES:
            audio, rate = sf.read(tmp_path / "runs" / "chandna_dsd100" / "predict" / "separated" / track / f"{source}.wav")
            assert rate == 16000 and audio.shape == (48000,)


def test_missing_dataset_ends_with_one_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--config", DSD100, "--data.data_dir", str(tmp_path / "nowhere"), "--runs_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "nowhere" in message and "Mixtures/Dev" in message and "experiments/chandna_demo.yaml" in message


def test_baseline_refuses_to_train(tmp_path):
    with pytest.raises(ValueError, match="nothing to train"):
        run.main(["--config", str(ROOT / "experiments" / "chandna_demo_mixture.yaml"), *QUIET, "--data.num_train", "2",
                  "--data.num_val", "1", "--data.num_test", "1", "--runs_dir", str(tmp_path)])


@pytest.mark.slow
def test_full_demo_beats_the_mixture_by_more_than_3_db(tmp_path):
    run.main(["--config", DEMO, "--trainer.enable_progress_bar", "false", "--runs_dir", str(tmp_path), "--run_id", "demo"])
    results = json.loads((tmp_path / "chandna_demo" / "demo" / "results.json").read_text())
    assert results["test/si_sdr_improvement"] > 3.0
    assert results["test/sdr"] > 0.0
