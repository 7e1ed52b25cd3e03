"""DST (ICPR 2024 micro-expression recognition): the network's parts against their definitions (ResNet-18 sizes,
Eq. 4-7 dual-stream attention, the single-stream case against torch's MultiheadAttention), weight loading, the
pooled LOSO metrics against scikit-learn, and a short stand-in run that learns."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.dst_mer import (DST, DualStreamAttention, DualStreamEncoder, ResNetStem, load_dst_weights,
                                       pooled_loso, pooled_scores, resnet18_layer4, write_predictions)
from lightning_modules.utils import count_parameters

DEMO = "experiments/dst_mer_demo.yaml"
TINY = dict(num_classes=3, img_size=32, width=0.25, n_spatial_encoders=1, spatial_heads=4, tt_depth=1, tt_heads=4)


def test_resnet18_parts_have_torchvision_sizes():
    """torchvision resnet18: conv1 + bn1 9,536, layer1 147,968, layer2 525,568, layer3 2,099,712, layer4 8,393,728
    (11,689,512 with the 513,000 of fc)."""
    stem = ResNetStem()
    assert count_parameters(stem) == 9_536 + 147_968 + 525_568 + 2_099_712
    assert count_parameters(resnet18_layer4()) == 8_393_728
    assert {"conv1.weight", "bn1.running_mean", "layer3.1.bn2.weight", "layer2.0.downsample.0.weight"} <= set(
        stem.state_dict())
    assert stem(torch.zeros(1, 3, 112, 112)).shape == (1, 256, 7, 7)  # C = 256 on 7 x 7 tokens (FD)


def test_full_size_network_shapes_on_meta():
    with torch.device("meta"):
        net = DST(num_classes=5)
        out = net(torch.empty(2, 17, 6, 112, 112))
    assert out.shape == (2, 5)
    assert net.pos_embedding["mi"].shape == (1, 49, 256) and net.temporal_pos.shape == (1, 18, 512)
    assert len(net.encoders) == 3 and len(net.temporal.layers) == 3
    assert net.encoders[0].mlps[0][0].out_features == 512 and net.temporal.layers[0].mlps[0][0].out_features == 1024
    # two stems, layer4, the fusion FC 2C -> C, N=3 dual-stream encoders, the TT and the classifier
    stems = 2 * (9_536 + 147_968 + 525_568 + 2_099_712)
    encoder = 2 * (2 * 256 + 256 * 768 + 256 * 257 + 2 * 256 + 256 * 513 + 512 * 257)
    temporal = 3 * (2 * 512 + 512 * 1536 + 512 * 513 + 2 * 512 + 512 * 1025 + 1024 * 513)
    expected = (stems + 2 * 49 * 256 + 3 * encoder + 512 * 256 + 256 + 8_393_728 + 512 + 18 * 512 + temporal
                + 2 * 512 + 513 * 5)
    assert count_parameters(net) == expected


def test_dual_stream_attention_is_eq_6_7():
    torch.manual_seed(0)
    attention = DualStreamAttention(dim=8, heads=1)
    rgb, lof = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out_rgb, out_lof = attention([rgb, lof])

    def qkv(s, z):
        return attention.qkv[s](attention.norms[s](z)).chunk(3, dim=-1)

    (q_r, k_r, v_r), (q_l, k_l, v_l) = qkv(0, rgb), qkv(1, lof)
    expect_rgb = attention.proj[0](torch.softmax(q_r @ k_r.transpose(1, 2) / math.sqrt(8), -1) @ v_l)
    expect_lof = attention.proj[1](torch.softmax(q_l @ k_l.transpose(1, 2) / math.sqrt(8), -1) @ v_r)
    assert torch.allclose(out_rgb, expect_rgb, atol=1e-5) and torch.allclose(out_lof, expect_lof, atol=1e-5)


def test_single_stream_attention_is_multihead_self_attention():
    torch.manual_seed(0)
    attention = DualStreamAttention(dim=16, heads=4, num_streams=1)
    reference = torch.nn.MultiheadAttention(16, 4, bias=True, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv[0].weight)
        reference.in_proj_bias.zero_()
        reference.out_proj.weight.copy_(attention.proj[0][0].weight)
        reference.out_proj.bias.copy_(attention.proj[0][0].bias)
    x = torch.randn(3, 7, 16)
    normed = attention.norms[0](x)
    assert torch.allclose(attention([x])[0], reference(normed, normed, normed, need_weights=False)[0], atol=1e-5)


@pytest.mark.parametrize("cross", [True, False])
def test_encoder_residuals_follow_eq_4_5(cross):
    encoder = DualStreamEncoder(dim=8, heads=2, mlp_dim=16, cross_residual=cross)
    with torch.no_grad():  # attention and MLP outputs zero: only the residual paths remain
        for proj in encoder.attention.proj:
            proj[0].weight.zero_(), proj[0].bias.zero_()
        for mlp in encoder.mlps:
            mlp[3].weight.zero_(), mlp[3].bias.zero_()
    rgb, lof = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    out_rgb, out_lof = encoder([rgb, lof])
    assert torch.equal(out_rgb, lof if cross else rgb) and torch.equal(out_lof, rgb if cross else lof)


def test_variants_and_checks():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 32, 32)
    for streams, use_tt in [(["mi", "of"], True), (["of"], True), (["mi"], False)]:
        net = DST(num_frames=5, streams=streams, use_tt=use_tt, **TINY)
        assert net(x).shape == (2, 3)
        assert set(net.stems) == set(streams) and hasattr(net, "temporal") == use_tt
    single = DST(num_frames=5, streams=["of"], **TINY)
    y = x.clone()
    y[:, :, :3] = torch.randn_like(y[:, :, :3])  # the OF-only network ignores the MI channels
    single.eval()
    assert torch.allclose(single(x), single(y))
    with pytest.raises(ValueError, match="streams"):
        DST(streams=["rgb"])
    with pytest.raises(ValueError, match="17 frames"):
        DST(**TINY)(x)
    with pytest.raises(ValueError, match="B, T, 6"):
        DST(**TINY)(torch.randn(2, 17, 3, 32, 32))


def test_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    source = DST(num_frames=5, **{**TINY, "num_classes": 7})  # e.g. the DFEW model
    torch.save({"state_dict": {f"network.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "dfew.ckpt")
    target = DST(num_frames=5, **TINY, pretrained=str(tmp_path / "dfew.ckpt"))
    assert torch.equal(target.encoders[0].attention.qkv[1].weight, source.encoders[0].attention.qkv[1].weight)
    assert not torch.equal(target.head.weight[:3], source.head.weight[:3])  # 7 -> 3 classes: head skipped
    stem = ResNetStem(width=0.25)
    layer4 = {f"layer4.{k}": v for k, v in resnet18_layer4(0.25).state_dict().items()}
    torchvision_like = {**stem.state_dict(), **layer4,
                        "fc.weight": torch.zeros(1000, 128), "fc.bias": torch.zeros(1000)}
    torch.save(torchvision_like, tmp_path / "resnet18.pth")
    fresh = DST(num_frames=5, **TINY)
    report = load_dst_weights(fresh, tmp_path / "resnet18.pth")
    assert torch.equal(fresh.stems["of"].layer2[0].conv1.weight, stem.layer2[0].conv1.weight)
    assert torch.equal(fresh.stems["mi"].conv1.weight, stem.conv1.weight)
    assert "fc.weight" in report["skipped"] and any(k.startswith("layer4.") for k in report["loaded"])


def test_pooled_scores_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, 200)
    preds = np.where(rng.random(200) < 0.6, targets, rng.integers(0, 5, 200))
    scores = pooled_scores(targets, preds, 5)
    assert scores["uf1"] == pytest.approx(f1_score(targets, preds, average="macro"), abs=1e-6)
    assert scores["uar"] == pytest.approx(recall_score(targets, preds, average="macro"), abs=1e-6)
    assert scores["acc"] == pytest.approx(accuracy_score(targets, preds), abs=1e-6)
    # a class with neither samples nor predictions is left out, as scikit-learn with the present labels
    targets, preds = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 2])
    present = [0, 1, 2]
    scores = pooled_scores(targets, preds, 5)
    assert scores["uf1"] == pytest.approx(f1_score(targets, preds, average="macro", labels=present), abs=1e-6)
    assert scores["uar"] == pytest.approx(recall_score(targets, preds, average="macro", labels=present), abs=1e-6)


def test_pooled_loso_pools_the_folds(tmp_path):
    from sklearn.metrics import f1_score

    folds = [([0, 0, 1], [0, 1, 1]), ([2, 2, 1, 0], [2, 0, 1, 0])]
    results = []
    for i, (targets, preds) in enumerate(folds):
        run_dir = tmp_path / f"fold{i}"
        run_dir.mkdir()
        write_predictions(run_dir / "predictions.csv", [
            {"name": f"c{j}", "group": i, "target": t, "pred": p, "p0": 0.2, "p1": 0.3, "p2": 0.5}
            for j, (t, p) in enumerate(zip(targets, preds))])
        results.append({"entry": "dst", "run_dir": str(run_dir),
                        "paper": {"test/macro_f1": 0.7768, "test/acc": 0.7622}})
    table = pooled_loso(tmp_path, results)
    pooled = json.loads((tmp_path / "pooled.json").read_text())["dst"]
    all_t = [t for f in folds for t in f[0]]
    all_p = [p for f in folds for p in f[1]]
    assert pooled["n"] == 7 and pooled["folds"] == 2
    assert pooled["uf1"] == pytest.approx(f1_score(all_t, all_p, average="macro"), abs=1e-6)
    assert "paper 0.7768" in table and "| dst | 2 | 7 |" in table


def test_standin_learns(tmp_path):
    """A smaller demo (4 subjects x 3 classes x 5 clips, 9 frames at 48 px, 10 epochs, one LOSO fold): UF1 beats
    chance (1/3), the training loss falls, and the fold's predictions file is written."""
    import run

    small = ["--data.init_args.num_subjects", "4", "--data.init_args.clips_per_class", "5",
             "--data.init_args.size", "48", "--data.init_args.image_size", "48", "--data.init_args.amplitude", "1.5",
             "--data.init_args.num_frames", "9", "--model.init_args.network.init_args.num_frames", "9",
             "--data.init_args.batch_size", "6", "--trainer.max_epochs", "10", "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = run.main(["--config", DEMO, *small, "--runs_dir", str(tmp_path), "--run_id", "r"])
    run_dir = Path(cli.run_dir)
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    print({k: round(v, 3) for k, v in metrics.items()})
    assert metrics["test/macro_f1"] > 0.45 and metrics["test/acc"] > 0.45 and metrics["test/acc_prior"] < 0.34
    with open(run_dir / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(cli.datamodule.test_set) == 15 and {r["group"] for r in rows} == {"0"}
    assert torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=False)["epoch"] == 9  # the last epoch
    from lightning_modules.dst_mer import DSTTask

    reloaded = DSTTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt").eval()
    assert reloaded.select_best is False and reloaded.network.num_frames == 9
    data = cli.datamodule.train_set
    # every third training clip, without augmentation
    batch = {"video": torch.from_numpy(data.clips[::3]).float() / 127.5 - 1, "label": data.labels[::3]}
    torch.manual_seed(0)
    untrained = DST(num_frames=9, img_size=48, **{k: v for k, v in TINY.items() if k != "img_size"}).eval()
    model = cli.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(batch["video"]), model(batch["video"]), atol=1e-5)
        assert F.cross_entropy(model(batch["video"]), batch["label"]) < 0.8 * F.cross_entropy(
            untrained(batch["video"]), batch["label"])


@pytest.mark.slow
def test_demo_learns(tmp_path):
    """The demo as shipped (6 subjects x 3 x 5 clips, 17 frames at 64 px, 15 epochs, fold 0; ~1.5 min on 2 cores):
    UF1 well above chance (1/3; the shipped run: 0.683)."""
    import run

    cli = run.main(["--config", DEMO, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--runs_dir", str(tmp_path), "--run_id", "r"])
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    assert metrics["test/macro_f1"] > 0.55 and metrics["test/acc"] > 0.6


def test_lbp_top_histograms_match_skimage():
    from skimage.feature import local_binary_pattern

    from lightning_modules.dst_mer import lbp_top_features

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (6, 20, 15)).astype(np.uint8)
    features = lbp_top_features(clip, blocks=5)
    assert features.shape == (5 * 5 * 3 * 59,) and np.allclose(features.reshape(75, 59).sum(1), 1)
    # block (0, 0)'s XY histogram: codes of every frame's rows 0-3, columns 0-2
    codes = np.stack([local_binary_pattern(f.astype(np.float32), 8, 1, "nri_uniform") for f in clip])[:, :4, :3]
    expected = np.bincount(codes.astype(int).ravel(), minlength=59) / codes.size
    assert np.allclose(features[:59], expected)
    # its YT histogram: the YT plane of each column x (rows y, frames t), same block
    yt = np.stack([local_binary_pattern(clip[:, :, x].astype(np.float32), 8, 1, "nri_uniform") for x in range(15)], 2)
    assert np.allclose(features[2 * 59:3 * 59], np.bincount(yt[:, :4, :3].astype(int).ravel(), minlength=59) / 72)
