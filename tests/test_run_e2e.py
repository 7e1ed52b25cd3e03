"""End to end through run.py: fit+test, run folder contents, bf16, resume, DDP, missing data."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import run
from lightning_modules.tasks.registration import RegistrationTask
from tests.conftest import write_oasis_tree

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "fnoreg_demo.yaml")
FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "2", "--trainer.log_every_n_steps", "1", "--data.num_workers", "0",
        "--data.train_pairs_per_epoch", "24", "--trainer.enable_progress_bar", "false"]


def _run(tmp_path, *extra, run_id="t"):
    return run.main(["--config", DEMO, *FAST, "--runs_dir", str(tmp_path), "--run_id", run_id, *extra])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    cli = _run(tmp)
    return cli, tmp / "fnoreg_demo" / "t"


def test_fit_then_test_leaves_a_complete_run_folder(demo_run):
    _, run_dir = demo_run
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("test/dice", "test/dice_before", "test/folding_percent", "test/sdlogj"):
        assert key in results and results[key] == results["metrics"][key]
    assert 0.0 <= results["test/dice"] <= 1.0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["init_args"]["network"]["class_path"] == "lightning_modules.fnoreg.FNOReg"
    assert config["trainer"]["max_epochs"] == 1  # the CLI override is in the resolved config
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "train/loss" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert list((run_dir / "wandb").glob("offline-run-*")), "an offline W&B run is written"
    assert (run_dir / "figures" / "test_registration.png").stat().st_size > 10_000


def test_checkpoint_reloads_without_the_cli(demo_run):
    cli, run_dir = demo_run
    model = RegistrationTask.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    assert type(model.network).__name__ == "FNOReg"
    moving, fixed = torch.rand(1, 1, 80, 96), torch.rand(1, 1, 80, 96)
    cli.model.eval(), model.eval()
    assert torch.allclose(cli.model(moving, fixed), model(moving, fixed), atol=1e-5)


def test_resume_from_last_checkpoint(tmp_path):
    _run(tmp_path, run_id="r")
    cli = run.main(["fit", "--config", DEMO, *FAST, "--trainer.max_epochs", "2", "--runs_dir", str(tmp_path),
                    "--run_id", "r", "--ckpt_path", "last"])
    assert cli.trainer.current_epoch == 2
    assert cli.trainer.global_step == 6  # 3 steps restored + 3 new ones


def test_bf16_mixed_precision_on_cpu(tmp_path):
    cli = _run(tmp_path, "--trainer.precision", "bf16-mixed", "--model.figure_every_n_epochs", "0")
    results = json.loads((tmp_path / "fnoreg_demo" / "t" / "results.json").read_text())
    assert cli.trainer.precision == "bf16-mixed"
    assert all(torch.isfinite(torch.tensor(v)) for k, v in results["metrics"].items() if not k.endswith("_std"))


def test_missing_data_ends_with_one_clear_message(tmp_path):
    proc = subprocess.run([sys.executable, "run.py", "--config", "experiments/fnoreg/oasis2d.yaml",
                           "--config", "experiments/fnoreg/oasis2d/small.yaml",
                           "--data.data_dir", "/nowhere", "--runs_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "/nowhere" in proc.stderr and "subjects.txt" in proc.stderr
    assert "experiments/fnoreg_demo.yaml" in proc.stderr


@pytest.mark.parametrize("configs, experiment", [
    (["experiments/saca_unet/busi.yaml", "experiments/saca_unet/busi/aspp.yaml"], "saca_unet_busi_aspp"),
    (["experiments/saca_unet/busi.yaml", "experiments/saca_unet/busi/aspp.yaml", "experiments/trainer/gpu.yaml"],
     "saca_unet_busi_aspp"),  # a trainer preset after the setting does not name the run
    (["experiments/trainer/cpu.yaml", "experiments/fnoreg/oasis2d.yaml"], "fnoreg_oasis2d"),
    (["experiments/fnoreg_demo.yaml"], "fnoreg_demo"),
    ([str(ROOT / "experiments" / "fnoreg" / "oasis3d.yaml"), "experiments/fnoreg/oasis3d/half.yaml"], "fnoreg_oasis3d_half"),
])
def test_run_folder_is_named_after_the_last_experiment_config(tmp_path, monkeypatch, configs, experiment):
    monkeypatch.setenv(run.RUN_ID_ENV, "")  # _resolve_run_dir exports the run id; undone after the test
    args = ["fit", *[a for c in configs for a in ("--config", c)], "--runs_dir", str(tmp_path), "--run_id", "n"]
    cli = run.parse_config(args)
    assert cli._resolve_run_dir() == (experiment, "n", os.path.join(str(tmp_path), experiment, "n"))


def test_run_folder_name_of_a_config_outside_experiments_is_its_stem(tmp_path, monkeypatch):
    monkeypatch.setenv(run.RUN_ID_ENV, "")
    config = tmp_path / "mine.yaml"
    config.write_text(Path(DEMO).read_text())
    cli = run.parse_config(["fit", "--config", str(config), "--run_id", "n"])
    assert cli._resolve_run_dir()[0] == "mine"
    cli = run.parse_config(["fit", "--config", str(config), "--experiment", "chosen", "--run_id", "n"])
    assert cli._resolve_run_dir()[0] == "chosen"  # --experiment wins


def test_ddp_two_cpu_processes_count_each_test_pair_once(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    env.pop(run.RUN_ID_ENV, None)
    cmd = [sys.executable, "run.py", "--config", DEMO, "--config", "experiments/trainer/ddp_cpu.yaml", *FAST,
           "--trainer.limit_test_batches", "1.0", "--data.batch_size", "4", "--runs_dir", str(tmp_path),
           "--run_id", "ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "fnoreg_demo" / "ddp" / "results.json").read_text())
    single = run.main(["test", "--config", DEMO, "--data.num_workers", "0", "--runs_dir", str(tmp_path),
                       "--run_id", "single", "--trainer.logger", "false"])
    expected = len(single.datamodule.test_set)
    assert results["test/num_pairs"] == expected  # DistributedSampler padding would duplicate pairs


def _metric_column(csv_path, name):
    import csv
    return [float(r[name]) for r in csv.DictReader(open(csv_path)) if r.get(name)]


def test_short_training_learns_and_beats_the_identity_warp(tmp_path):
    """~200 steps at 40x48: the loss falls and the test Dice beats no registration (affine only)."""
    run.main(["--config", DEMO, "--data.image_size", "[40,48]", "--trainer.max_epochs", "8",
              "--data.train_pairs_per_epoch", "192", "--data.num_workers", "0", "--model.figure_every_n_epochs", "0",
              "--trainer.log_every_n_steps", "1",
              "--trainer.enable_progress_bar", "false", "--runs_dir", str(tmp_path), "--run_id", "learn"])
    run_dir = tmp_path / "fnoreg_demo" / "learn"
    losses = _metric_column(run_dir / "metrics.csv", "train/loss")
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test/dice"] > results["test/dice_before"] + 0.01
    assert results["test/folding_percent"] < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("config, margin", [("fnoreg_demo.yaml", 0.03), ("fnoreg_demo3d.yaml", 0.015)])
def test_demo_reaches_its_documented_dice(tmp_path, config, margin):
    run.main(["--config", str(ROOT / "experiments" / config), "--runs_dir", str(tmp_path), "--run_id", "demo",
              "--trainer.enable_progress_bar", "false"])
    results = json.loads((tmp_path / Path(config).stem / "demo" / "results.json").read_text())
    assert results["test/dice"] > results["test/dice_before"] + margin


def test_3d_demo_runs_with_the_segmentation_loss(tmp_path):
    cli = run.main(["--config", str(ROOT / "experiments" / "fnoreg_demo3d.yaml"), *FAST,
                    "--data.image_size", "[24,28,24]", "--data.train_pairs_per_epoch", "6",
                    "--runs_dir", str(tmp_path), "--run_id", "d3"])
    results = json.loads((tmp_path / "fnoreg_demo3d" / "d3" / "results.json").read_text())
    assert cli.model.seg_weight == 0.01
    assert _metric_column(tmp_path / "fnoreg_demo3d" / "d3" / "metrics.csv", "train/segmentation")
    assert 0.0 <= results["test/dice"] <= 1.0 and results["test/folding_percent"] >= 0.0


def test_oasis_config_runs_on_the_real_layout_at_half_resolution(tmp_path):
    """The paper's 0.5x config on a tiny tree in the neurite-oasis layout: train at 80x96, test at 160x192."""
    write_oasis_tree(tmp_path / "oasis", 8)
    cli = run.main(["--config", str(ROOT / "experiments" / "fnoreg" / "oasis2d.yaml"),
                    "--config", str(ROOT / "experiments" / "fnoreg" / "oasis2d" / "small_half.yaml"),
                    "--data.data_dir", str(tmp_path / "oasis"), "--data.batch_size", "2", "--data.num_workers", "0",
                    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                    "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
                    "--trainer.logger", "false", "--runs_dir", str(tmp_path / "runs"), "--run_id", "oasis"])
    assert cli.model.train_scale == 0.5 and cli.datamodule.train_set[0]["fixed"].shape == (1, 160, 192)
    results = json.loads((tmp_path / "runs" / "fnoreg_oasis2d_small_half" / "oasis" / "results.json").read_text())
    assert results["paper"]["test/dice"] == 0.751 and 0.0 <= results["test/dice"] <= 1.0


def test_test_subcommand_with_ckpt_path_reproduces_the_run(demo_run, tmp_path):
    _, run_dir = demo_run
    results = json.loads((run_dir / "results.json").read_text())
    run.main(["test", "--config", DEMO, *FAST, "--ckpt_path", results["ckpt_path"], "--runs_dir", str(tmp_path),
              "--run_id", "again", "--trainer.logger", "false"])
    again = json.loads((tmp_path / "fnoreg_demo" / "again" / "results.json").read_text())
    assert again["test/dice"] == pytest.approx(results["test/dice"], abs=1e-6)


def test_model_flags_on_the_command_line_win_over_checkpoint_hyperparameters(demo_run, tmp_path):
    """Lightning restores the model's init arguments from --ckpt_path; an explicit --model.* flag must still apply."""
    _, run_dir = demo_run
    args = ["test", "--config", DEMO, *FAST, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
            "--runs_dir", str(tmp_path), "--trainer.logger", "false"]
    cli = run.main([*args, "--run_id", "flag", "--model.init_args.smooth_weight", "0.25"])
    assert cli.model.smooth_weight == 0.25
    cli = run.main([*args, "--run_id", "short", "--model.smooth_weight=0.5"])
    assert cli.model.smooth_weight == 0.5
    cli = run.main([*args, "--run_id", "none"])
    assert cli.model.smooth_weight == 0.01  # from the checkpoint (and the config)


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "paperbench", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def test_slurm_requeue_resumes_from_the_hpc_checkpoint(tmp_path, monkeypatch):
    """Under SLURM the run folder is the job id; a requeued job (same id) resumes from hpc_ckpt_N.ckpt,
    which Lightning's SLURM signal handler writes there before requeueing."""
    import shutil

    from lightning.pytorch.plugins.environments import SLURMEnvironment

    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(run.RUN_ID_ENV, raising=False)
    args = ["fit", "--config", DEMO, *FAST, "--runs_dir", str(tmp_path)]
    first = run.main(args)
    run_dir = tmp_path / "fnoreg_demo" / "4242"
    assert SLURMEnvironment.detect()
    assert Path(first.trainer.default_root_dir) == run_dir
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt")  # what SIGUSR1 leaves
    monkeypatch.delenv(run.RUN_ID_ENV, raising=False)
    requeued = run.main([*args, "--trainer.max_epochs", "2"])
    assert requeued.trainer.global_step == 6  # 3 restored + 3 new
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert {row["epoch"] for row in rows if row.get("train/loss")} == {"0", "1"}, "the first attempt's rows are kept"
