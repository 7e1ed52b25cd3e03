"""Guided-SET-DCL end to end through run.py on the synthetic CT colon stand-in: a short episodic run learns (the loss
falls, slice-to-slice inference from the MRF rectum beats all-background), the checkpoint reloads, and the slow test
runs the shipped demo (the paper's claim on the stand-in: above the MRF initial label alone)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

import run
from lightning_modules.tasks.episodic_segmentation import EpisodicSegmentationTask

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "setdcl_demo.yaml")
SHORT = ["--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", "--trainer.max_epochs", "2",
         "--trainer.check_val_every_n_epoch", "2", "--data.num_train", "3", "--data.num_val", "1",
         "--data.num_test", "1", "--data.episodes_per_epoch", "48",
         "--model.init_args.network.init_args.refine_iters", "2", "--model.init_args.optimizer.init_args.lr", "0.002"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("setdcl")
    run.main(["--config", DEMO, *SHORT, "--runs_dir", str(tmp), "--run_id", "learn"])
    return tmp / "setdcl_demo" / "learn"


def test_short_episodic_run_learns(learned):
    results = json.loads((learned / "results.json").read_text())
    assert results["test/dice_all_background"] == 0.0
    assert results["test/dice"] > 0.3  # well above all-background after 24 steps of 4 episodes (0.51 here)
    assert 0.5 < results["test/prior/dice"] < 1.0  # the MRF initial label alone, scored beside it
    rows = list(csv.DictReader(open(learned / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert any(r.get("train/cpcl") for r in rows) and any(r.get("val/dice") for r in rows)


def test_checkpoint_reloads(learned):
    model = EpisodicSegmentationTask.load_from_checkpoint(str(learned / "checkpoints" / "last.ckpt"))
    assert model.inference_support == "propagated" and model.aux_term_weights["ppcl"] == 0.12
    assert model.network.Conv1[0].out_channels == 8 and model.network.guidance == "mrf"


@pytest.mark.slow
def test_demo_beats_the_mrf_initial_label(tmp_path):
    """The shipped demo (a few minutes): Dice far above all-background and above the MRF label alone."""
    run.main(["--config", DEMO, "--runs_dir", str(tmp_path), "--run_id", "demo", "--trainer.enable_progress_bar",
              "false"])
    results = json.loads((tmp_path / "setdcl_demo" / "demo" / "results.json").read_text())
    assert results["test/dice"] > 0.8 and results["test/dice"] > results["test/prior/dice"] + 0.1
