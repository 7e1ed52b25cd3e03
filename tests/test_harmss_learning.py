"""HarmonizedSS end to end: the demo config (shrunk) learns on the stand-in through run.py (loss falls, Dice beats
all-background, ECE/MCE and HD95 logged); the multi-class demo (shrunk) scores per restacked volume and class; the
task scores calibration on every test set and applies test-time noise."""
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

import run
from datamodules.kvasir_seg import KvasirSEGDataModule
from lightning_modules.harmss import HarmonizedLoss, HarmonizedSegmentationTask, TransUNet, UNetR50

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "harmss_demo.yaml"
SMALL = ["--data.init_args.num_train", "96", "--data.init_args.num_val", "16", "--data.init_args.num_test", "16",
         "--data.init_args.num_shifted", "16",
         "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0",
         "--model.init_args.network.init_args.decoder_channels", "[32, 16, 16, 8, 8]",
         "--model.init_args.figure_every_n_epochs", "0", "--trainer.max_epochs", "4",
         "--model.init_args.lr_scheduler.init_args.total_iters", "4",
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def test_demo_learns_and_beats_all_background(tmp_path):
    cli = run.main(["--config", str(DEMO), *SMALL, "--runs_dir", str(tmp_path), "--run_id", "r"])
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    assert metrics["test/dice_all_background"] == 0.0
    assert metrics["test/dice"] > 0.6  # trivial baseline: 0
    assert 0 <= metrics["test/ece"] <= metrics["test/mce"] <= 1 and metrics["test/hd95"] >= 0
    assert metrics["test/shifted/num_images"] == 16 and metrics["test/shifted/dice_all_background"] == 0.0
    assert metrics["test/shifted/dice"] > 0.3 and 0 <= metrics["test/shifted/ece"] <= 1  # OOD: lower, above baseline
    batch = next(iter(cli.datamodule.val_dataloader()))
    torch.manual_seed(0)
    untrained = UNetR50(3, 1, backbone="resnet18", decoder_channels=(32, 16, 16, 8, 8)).eval()
    model = cli.model.eval()
    with torch.no_grad():
        assert model.loss_fn(model(batch["image"]), batch["mask"]) < 0.7 * model.loss_fn(untrained(batch["image"]),
                                                                                          batch["mask"])


MULTICLASS_DEMO = ROOT / "experiments" / "harmss_demo_multiclass.yaml"


def test_multiclass_demo_learns_per_volume_dice_per_class(tmp_path):
    """The multi-class demo (synthetic cardiac volumes, RV/Myo/LV), shrunk: slices restacked per test volume and
    scored in 3-D per class, well above the all-background baseline (0)."""
    # Adam instead of the paper's SGD: the randomly initialised ResNet leaves the all-background plateau in ~60 steps
    small = ["--data.init_args.num_train", "3", "--data.init_args.num_val", "1", "--data.init_args.num_test", "2",
             "--data.init_args.slices", "6", "--data.init_args.batch_size", "4",
             "--model.init_args.network.init_args.decoder_channels", "[32, 16, 16, 8, 8]",
             "--model.init_args.optimizer", "torch.optim.Adam", "--model.init_args.optimizer.init_args.lr", "0.003",
             "--model.init_args.figure_every_n_epochs", "0", "--trainer.max_epochs", "12",
             "--model.init_args.lr_scheduler.init_args.total_iters", "12",
             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    cli = run.main(["--config", str(MULTICLASS_DEMO), *small, "--runs_dir", str(tmp_path), "--run_id", "r"])
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    assert metrics["test/num_volumes"] == 2 and metrics["test/dice_all_background"] == 0.0
    # 0.55 here (LV 0.87, Myo 0.78, RV not yet found after 60 steps); all-background: 0
    assert metrics["test/dice_3d"] > 0.3
    assert max(metrics[f"test/dice_3d/{organ}"] for organ in ("rv", "myo", "lv")) > 0.6
    assert metrics["test/hd95_3d/lv"] >= 0 and metrics["test/hd95_3d"] > 0
    assert 0 <= metrics["test/ece"] <= metrics["test/mce"] <= 1


def _fixture(root: Path):
    rng = np.random.default_rng(0)
    for k, folder in enumerate([root / "Kvasir-SEG"] * 8 + [root / "PolypGen" / "data_C1"] * 4):
        image, mask = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), np.zeros((32, 32), np.uint8)
        mask[4 + k % 5:20, 6:26] = 255
        image[mask > 0] = 250
        if folder.name == "Kvasir-SEG":
            paths = folder / "images" / f"{k}.png", folder / "masks" / f"{k}.png"
        else:
            paths = folder / "images_C1" / f"{k}.png", folder / "masks_C1" / f"{k}_mask.png"
        for path, array in zip(paths, (image, mask)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    for k in range(2, 7):  # the other centres, one frame each
        for sub, name in ((f"images_C{k}", "a.png"), (f"masks_C{k}", "a_mask.png")):
            (root / "PolypGen" / f"data_C{k}" / sub).mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3) if sub.startswith("images") else (32, 32), 200, np.uint8)).save(
                root / "PolypGen" / f"data_C{k}" / sub / name)


def test_task_scores_calibration_per_test_set_and_noise_changes_predictions(tmp_path):
    _fixture(tmp_path)
    dm = KvasirSEGDataModule(str(tmp_path / "Kvasir-SEG"), polypgen_dir=str(tmp_path / "PolypGen"), image_size=32,
                             test_size=0.25, val_fraction=0.2, num_workers=0, batch_size=4)
    net = TransUNet(3, 1, img_size=32, width=8, units=(1, 1, 1), hidden=32, layers=1, heads=8, mlp_dim=64,
                    head_channels=16, decoder_channels=(16, 8, 8, 8), gn_groups=4)
    results = {}
    for noise in (None, "bernoulli"):
        torch.manual_seed(0)
        task = HarmonizedSegmentationTask(net, loss=HarmonizedLoss(0.2), test_noise=noise, noise_level=0.3, figure_every_n_epochs=0,
                                          optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
        trainer = L.Trainer(max_epochs=1 if noise is None else 0, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, default_root_dir=tmp_path, enable_model_summary=False)
        if noise is None:
            trainer.fit(task, datamodule=dm)
        results[str(noise)] = {k: float(v) for k, v in trainer.test(task, datamodule=dm, verbose=False)[0].items()}
    clean, noisy = results["None"], results["bernoulli"]
    for prefix in ("test", "test/polypgen"):
        assert 0 <= clean[f"{prefix}/ece"] <= clean[f"{prefix}/mce"] <= 1
    assert clean["test/polypgen/num_images"] == 9
    assert noisy["test/ece"] != clean["test/ece"]  # same weights, noisy inputs
