"""SwinCalc networks: Swin sizes and layout, detector protocol, losses against MONAI, the bright-spot baseline."""
from __future__ import annotations

import pytest
import torch
from monai.losses import FocalLoss

from lightning_modules.swincalc import (BrightSpotDetector, IoUMatcher, PerBoxL1Loss, RetinaNetCalcDetector,
                                        SigmoidFocalLoss, build_backbone, load_backbone, swin)
from lightning_modules.utils import count_parameters

TINY = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], stochastic_depth_prob=0.0)


@pytest.mark.parametrize("name,expected", [("swin_t", 28_288_354), ("swin_b", 87_768_224)])
def test_swin_parameter_counts_match_torchvision(name, expected):
    """The card's 28.3M / 87.8M (torchvision's swin_t / swin_b with the 1000-class head): exact."""
    with torch.device("meta"):
        model = swin(name)
    assert count_parameters(model) == expected


def test_swin_keeps_torchvision_key_names():
    keys = set(swin("swin_t", **TINY, num_classes=10).state_dict())
    for key in ("features.0.0.weight", "features.0.2.weight", "features.1.0.norm1.weight",
                "features.1.0.attn.qkv.weight", "features.1.0.attn.relative_position_bias_table",
                "features.1.0.attn.relative_position_index", "features.1.0.mlp.0.weight", "features.1.0.mlp.3.bias",
                "features.2.reduction.weight", "features.2.norm.weight", "features.7.0.norm2.bias", "norm.weight",
                "head.weight"):
        assert key in keys, key


def test_swin_features_strides_and_odd_sizes():
    model = build_backbone("swin_t", out_indices=(0, 1, 2, 3), **TINY).eval()
    features = model.forward_features(torch.randn(1, 3, 100, 70))  # not window or patch-merge multiples
    assert [tuple(f.shape[1:]) for f in features] == [(16, 25, 17), (32, 13, 9), (64, 7, 5), (128, 4, 3)]
    assert model.out_channels == [16, 32, 64, 128]


def test_shifted_window_attention_is_local():
    """A change in one corner pixel leaves a far corner unchanged after one stage of (shifted) windows."""
    model = build_backbone("swin_t", out_indices=(0,), window_size=(4, 4), **{**TINY, "depths": [2, 1, 1, 1]}).eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., :4, :4] += 5.0
    a, b = model.forward_features(x)[0], model.forward_features(y)[0]
    assert not torch.allclose(a[..., :2, :2], b[..., :2, :2])
    torch.testing.assert_close(a[..., 8:, 8:], b[..., 8:, 8:])


def test_load_backbone_from_a_classifier_state_dict(tmp_path):
    source = swin("swin_t", **TINY, num_classes=5)
    path = tmp_path / "swin.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("swin_t", out_indices=(1, 2, 3), **TINY)
    result = load_backbone(backbone, str(path))
    assert result["unexpected"] == [] and all(k.startswith("out_norms") for k in result["missing"])
    torch.testing.assert_close(backbone.features[3][0].attn.qkv.weight, source.features[3][0].attn.qkv.weight)


def test_focal_loss_matches_monai_focal_loss():
    logits = torch.randn(50, 1)
    target = (torch.rand(50, 1) < 0.2).float()
    ref = FocalLoss(gamma=2.0, alpha=0.25, reduction="none", use_softmax=False)(logits, target).sum() / target.sum()
    torch.testing.assert_close(SigmoidFocalLoss(0.25, 2.0)(logits, target), ref)


def test_box_l1_is_per_foreground_anchor():
    pred, target = torch.zeros(4, 4), torch.ones(4, 4)
    assert PerBoxL1Loss()(pred, target) == pytest.approx(4.0)


def test_iou_matcher_thresholds_and_low_quality_matches():
    quality = torch.tensor([[0.6, 0.45, 0.1, 0.3], [0.0, 0.2, 0.3, 0.35]])  # 2 boxes x 4 anchors
    matches = IoUMatcher(0.5, 0.4)(quality)
    # anchor 0 -> box 0 (0.6); 1 between (0.45); 2 below; 3: box 1's best anchor (0.35), kept as low quality
    assert matches.tolist() == [0, -2, -1, 1]
    assert IoUMatcher(0.5, 0.4, allow_low_quality_matches=False)(quality).tolist() == [0, -2, -1, -1]


def tiny_detector(**kwargs):
    return RetinaNetCalcDetector("swin_t", backbone_args=TINY, fpn_channels=32, out_indices=[0, 1, 2],
                                 extra_levels="none", anchor_sizes=[[12, 16, 20], [24, 32, 40], [48, 64, 80]],
                                 score_thresh=0.0, detections_per_img=10, **kwargs)


def test_detector_protocol_losses_in_training_boxes_in_eval():
    torch.manual_seed(0)
    detector = tiny_detector()
    images = torch.randn(2, 3, 64, 48)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 36.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {"classification", "box_regression"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert detector.backbone.features[0][0].weight.grad is not None
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) == len(out[0]["labels"]) <= 10
    boxes = out[0]["boxes"]
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_detector_overfits_one_box_in_xy_order():
    """A few steps on one image: the top box lands on the target (so the (x, y) <-> MONAI axis swap is right)."""
    torch.manual_seed(0)
    detector = tiny_detector()
    image = torch.zeros(1, 3, 64, 48)
    image[..., 8:24, 28:44] = 3.0  # rows 8-24, cols 28-44: a wide-left/narrow-top position that a swap would miss
    target = [{"boxes": torch.tensor([[28.0, 8.0, 44.0, 24.0]]), "labels": torch.tensor([0])}]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=3e-3)
    detector.train()
    for _ in range(40):
        optimizer.zero_grad()
        sum(detector(image, target).values()).backward()
        optimizer.step()
    detector.eval()
    with torch.no_grad():
        top = detector(image)[0]["boxes"][0]
    from monai.data.box_utils import box_iou

    assert float(box_iou(top[None], target[0]["boxes"])[0, 0]) > 0.3


def test_backbone_choices():
    with torch.device("meta"):
        resnet = build_backbone("resnet50", out_indices=(1, 2, 3))
    assert resnet.out_channels == [512, 1024, 2048]
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("convnext_s")


def test_bright_spot_baseline_finds_the_bright_blob_in_xy_order():
    image = torch.zeros(1, 3, 100, 60)
    image[..., 70:80, 10:20] = 1.0  # rows 70-80, cols 10-20
    out = BrightSpotDetector(box_size=10, max_detections=3)(image)[0]
    x1, y1, x2, y2 = out["boxes"][0].tolist()
    assert 5 <= (x1 + x2) / 2 <= 25 and 65 <= (y1 + y2) / 2 <= 85
    assert out["scores"][0] == out["scores"].max()


DEMO_RESNET = "experiments/swincalc_demo_resnet.yaml"
DEMO_SWIN = "experiments/swincalc_demo.yaml"
QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
         "false"]


def _train_losses(run_dir):
    import csv

    with open(run_dir / "metrics.csv", newline="") as file:
        return [float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")]


# Slow, not fast: it passed alone and in one full xdist run of the suite, and failed in the next full run from a
# fresh clone (same seed; the outcome depends on the process's history), so it cannot gate CI yet.
@pytest.mark.slow
def test_standin_learns_beyond_the_bright_spot_baseline(tmp_path):
    """The CNN-control demo, smaller (32 training images of 128 x 80, 3 epochs): the loss falls and the test TPR at
    1 FPpI beats the untrained bright-spot detector's on the same images (which also finds the distractor dots)."""
    import json
    from pathlib import Path

    import run

    small = ["--data.init_args.num_train", "32", "--data.init_args.num_val", "4", "--data.init_args.num_test", "32",
             "--data.init_args.image_size", "[128, 80]", "--trainer.max_epochs", "3",
             "--trainer.log_every_n_steps", "1",
             "--model.init_args.max_figure_images", "2"]
    csv_logger = json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                             "init_args": {"save_dir": str(tmp_path / "csv"), "name": "", "version": ""}})
    cli = run.main(["--config", DEMO_RESNET, *small, *QUIET[2:], "--trainer.logger", csv_logger,
                    "--runs_dir", str(tmp_path), "--run_id", "r"])
    run_dir = Path(cli.run_dir)
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert metrics["test/num_targets"] >= 16
    assert metrics["test/tpr@1"] > metrics["test/baseline_bright_spot/tpr@1"] + 0.1
    assert metrics["test/aufc@1"] > metrics["test/baseline_bright_spot/aufc@1"]
    losses = _train_losses(tmp_path / "csv")
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert (run_dir / "figures" / "test_froc.png").is_file()
    # the best checkpoint rebuilds the task (network and baselines from the saved config) and predicts the same
    from lightning_modules.tasks.detection import DetectionTask

    restored = DetectionTask.load_from_checkpoint(str(run_dir / "checkpoints" / "best.ckpt"), map_location="cpu")
    images = next(iter(cli.datamodule.test_dataloader()))["image"][:2]
    cli.model.load_state_dict(restored.state_dict())
    with torch.no_grad():
        ours, theirs = cli.model.eval()(images), restored.eval()(images)
    torch.testing.assert_close(ours[0]["scores"], theirs[0]["scores"])
    assert set(restored.baselines) == {"bright_spot"}


@pytest.mark.slow
def test_resnet_demo_learns(tmp_path):
    """The CNN-control demo as shipped: TPR at 0.1 and 1 FPpI well above the bright-spot baseline's."""
    import json
    from pathlib import Path

    import run

    cli = run.main(["--config", DEMO_RESNET, *QUIET, "--runs_dir", str(tmp_path), "--run_id", "r"])
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    assert metrics["test/tpr@1"] > metrics["test/baseline_bright_spot/tpr@1"] + 0.2
    assert metrics["test/tpr@0.1"] > metrics["test/baseline_bright_spot/tpr@0.1"] + 0.2
