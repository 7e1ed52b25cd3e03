"""Scanpath angle-fern layer against direct loop implementations of the paper's Algorithms 1 and 2 (histograms,
invalid samples, range pseudo-gradient and its sign), ResNet-12 parameter counts, the task's range group and
clamp, the RNN/LSTM baselines, and a short stand-in run that beats the prior."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import run
from lightning_modules.blocks.angle_ferns import AngleFernHistogram, inter_sample_angles
from lightning_modules.scanpath_fern import ResNet12, ScanpathFernNet, ScanpathFernTask, ScanpathRNN, gaze_deltas
from lightning_modules.utils import count_parameters

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "scanpath_fern_demo.yaml")


def loop_histograms(xy: np.ndarray, base: np.ndarray, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 literally, one recording: (normalised histograms, counts) (n_sets, 2^S)."""
    n_sets, size = base.shape
    angles, valid = [], []
    for t in range(len(xy) - 1):
        dx, dy = xy[t + 1] - xy[t]
        valid.append(bool(np.isfinite(dx) and np.isfinite(dy)))
        angles.append(math.atan2(dy, dx) if valid[-1] else 0.0)
    counts = np.zeros((n_sets, 2 ** size))
    for i in range(n_sets):
        for j in range(len(angles) - size):  # seq_j < size(sequence) - size(set), per valid stretch:
            if not all(valid[j:j + size + 1]):  # the window's angles and the next one valid
                continue
            index = 0
            for k in range(size):
                delta = angles[j + k] - base[i, k]
                if abs(math.atan2(math.sin(delta), math.cos(delta))) <= ranges[i, k] / 2:
                    index += 2 ** k
            counts[i, index] += 1
    total = counts.sum(axis=1, keepdims=True)
    return counts / np.maximum(total, 1), counts


def loop_range_update(xy: np.ndarray, base: np.ndarray, ranges: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Algorithm 2's accumulated rangeUpdate for one recording: every window adds gradient[i][index] to every check
    of set i that fired."""
    n_sets, size = base.shape
    update = np.zeros_like(ranges)
    angles = [math.atan2(*(xy[t + 1] - xy[t])[::-1]) for t in range(len(xy) - 1)]
    for i in range(n_sets):
        for j in range(len(angles) - size):
            bits = []
            for k in range(size):
                delta = angles[j + k] - base[i, k]
                bits.append(abs(math.atan2(math.sin(delta), math.cos(delta))) <= ranges[i, k] / 2)
            index = sum(2 ** k for k in range(size) if bits[k])
            for k in range(size):
                if bits[k]:
                    update[i, k] += grad[i, index]
    return update


def test_forward_matches_algorithm_1_loop_with_invalid_samples_and_padding():
    torch.manual_seed(0)
    layer = AngleFernHistogram(n_sets=7, set_size=3, range_init=(0.3, 2.5), seed=3)
    xy = torch.randn(3, 30, 2, dtype=torch.float64).cumsum(1).float()
    xy[1, 12] = float("nan")  # a blink: the two angles touching it are invalid
    xy[2, 20:] = float("nan")  # padding of a shorter recording
    hist = layer(xy)
    assert hist.shape == (3, 7, 8)
    base, ranges = layer.base.double().numpy(), layer.ranges.detach().double().numpy()
    for b in range(3):
        expected, counts = loop_histograms(xy[b].double().numpy(), base, ranges)
        torch.testing.assert_close(hist[b].double(), torch.from_numpy(expected), rtol=0, atol=1e-6)
    assert torch.allclose(hist.sum(-1), torch.ones(3, 7))  # every set's histogram sums to 1
    _, counts = loop_histograms(xy[2].double().numpy(), base, ranges)
    assert counts.sum(axis=1)[0] == 19 - 3  # 19 valid angles, windows j < 19 - 3
    torch.testing.assert_close(layer(xy[2:3, :20]), hist[2:3])  # padding changes nothing
    chunked = AngleFernHistogram(n_sets=7, set_size=3, range_init=(0.3, 2.5), seed=3, max_elements=50)
    torch.testing.assert_close(chunked(xy), hist)  # chunking over sets changes nothing


def test_backward_matches_algorithm_2_loop_and_signs():
    layer = AngleFernHistogram(n_sets=5, set_size=3, range_init=(0.5, 2.0), seed=1)
    xy = torch.randn(2, 25, 2).cumsum(1)
    weight = torch.randn(2, 5, 8)
    (layer(xy) * weight).sum().backward()  # dL/dh = weight
    base, ranges = layer.base.double().numpy(), layer.ranges.detach().double().numpy()
    expected = sum(loop_range_update(xy[b].double().numpy(), base, ranges, weight[b].double().numpy())
                   for b in range(2))
    torch.testing.assert_close(layer.ranges.grad.double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
    literal = AngleFernHistogram(n_sets=5, set_size=3, range_init=(0.5, 2.0), seed=1, range_update_sign="paper_literal")
    (literal(xy) * weight).sum().backward()
    torch.testing.assert_close(literal.ranges.grad, -layer.ranges.grad)
    assert xy.grad is None  # no gradient to the gaze samples
    frozen = AngleFernHistogram(n_sets=5, set_size=3, learn_ranges=False)
    assert not frozen(xy).requires_grad


def test_descent_step_follows_the_papers_update_and_clamp():
    """One SGD step moves r by -lr U (descent) = the paper's r += lr * (back-propagated error -dL/dh accumulated);
    the clamp keeps every range in [1 deg, 180 deg]."""
    layer = AngleFernHistogram(n_sets=4, set_size=2, range_init=(0.5, 1.0), seed=0)
    xy = torch.randn(1, 40, 2).cumsum(1)
    weight = torch.randn(1, 4, 4)
    before = layer.ranges.detach().clone()
    (layer(xy) * weight).sum().backward()
    error = -weight[0].double().numpy()  # the back-propagated error
    accumulated = loop_range_update(xy[0].double().numpy(), layer.base.double().numpy(), before.double().numpy(), error)
    paper = before.double() + 0.01 * torch.from_numpy(accumulated)
    torch.optim.SGD([layer.ranges], lr=0.01).step()
    torch.testing.assert_close(layer.ranges.detach().double(), paper, rtol=1e-5, atol=1e-6)
    layer.ranges.data[0, 0], layer.ranges.data[1, 1] = -3.0, 9.0
    layer.clamp_ranges_()
    assert layer.ranges.min() >= math.radians(1) - 1e-7 and layer.ranges.max() <= math.pi + 1e-7


def test_angles_and_deltas():
    xy = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [float("nan"), 0.0], [0.0, 1.0], [-1.0, 1.0]]])
    angles, valid = inter_sample_angles(xy)
    torch.testing.assert_close(angles[0, :2], torch.tensor([0.0, math.pi / 2]))
    assert valid.tolist() == [[True, True, False, False, True]] and angles[0, 4] == pytest.approx(math.pi)
    deltas, lengths = gaze_deltas(xy)
    assert lengths.tolist() == [3]
    raw = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    torch.testing.assert_close(gaze_deltas(3 * xy)[0], deltas)
    torch.testing.assert_close(deltas[0, :3], raw)  # unit steps: RMS length 1
    assert (deltas[0, 3:] == 0).all()


def resnet12_closed_form(widths, in_channels=1, num_classes=10):
    total, previous = 0, in_channels
    for w in widths:  # 3x3 convs 9 (in w + 2 w^2), 1x1 shortcut in w, four BNs 8 w
        total += 9 * previous * w + 18 * w * w + previous * w + 8 * w
        previous = w
    return total + previous * num_classes + num_classes


def test_resnet12_and_network_parameter_counts():
    """Exact closed form; the card estimates the paper's classifier at ~12.4 M (the paper gives no count): the
    tolerance is the card's rounding to three significant digits (12,423,040 in the blocks + the 10-class head)."""
    with torch.device("meta"):
        net = ScanpathFernNet(num_classes=10)
    backbone = resnet12_closed_form((64, 160, 320, 640), num_classes=10)
    assert count_parameters(net.classifier) == backbone == 12_423_040 + 6_410
    assert count_parameters(net) == backbone + 4096 * 5  # + the trainable ranges
    assert round(backbone / 1e5) == 124
    frozen = ScanpathFernNet(num_classes=6, n_sets=64, set_size=4, learn_ranges=False, widths=(8, 16, 32, 64))
    assert count_parameters(frozen) == resnet12_closed_form((8, 16, 32, 64), num_classes=6)


def test_network_shapes_gradients_and_rnn_baselines():
    net = ScanpathFernNet(num_classes=6, n_sets=32, set_size=4, widths=(8, 16, 32, 64))
    xy = torch.randn(4, 80, 2).cumsum(1)
    xy[3, 50:] = float("nan")
    logits = net(xy)
    assert logits.shape == (4, 6)
    F.cross_entropy(logits, torch.arange(4)).backward()
    assert net.ferns.ranges.grad is not None and net.ferns.ranges.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.classifier.parameters())
    assert ResNet12(3, widths=(4, 4, 8, 8))(torch.randn(2, 1, 33, 17)).shape == (2, 3)
    for cell in ("rnn", "lstm"):
        rnn = ScanpathRNN(num_classes=5, cell=cell, hidden_size=16, num_layers=2)
        out = rnn(xy)
        assert out.shape == (4, 5)
        out.sum().backward()
        # a recording padded with NaN scores as its unpadded self
        torch.testing.assert_close(rnn(xy[3:4, :50]), out[3:4].detach(), rtol=1e-5, atol=1e-5)


def test_task_puts_ranges_in_their_own_group_and_clamps():
    net = ScanpathFernNet(num_classes=3, n_sets=16, set_size=3, widths=(4, 4, 8, 8))
    task = ScanpathFernTask(net, num_classes=3, range_lr_scale=50.0,
                            optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-4))
    optimizer = task.configure_optimizers()
    groups = {g.get("name", i): g for i, g in enumerate(optimizer.param_groups)}
    assert groups["ranges"]["params"] == [net.ferns.ranges] and groups["ranges"]["weight_decay"] == 0.0
    assert groups["ranges"]["lr"] == pytest.approx(0.5)
    others = [p for g in optimizer.param_groups if g.get("name") != "ranges" for p in g["params"]]
    assert len(others) + 1 == len(list(net.parameters())) and all(p is not net.ferns.ranges for p in others)
    net.ferns.ranges.data.fill_(10.0)
    task.on_train_batch_end(None, None, 0)
    assert torch.all(net.ferns.ranges == math.pi)
    frozen = ScanpathFernTask(ScanpathFernNet(num_classes=3, n_sets=16, set_size=3, learn_ranges=False,
                                              widths=(4, 4, 8, 8)), num_classes=3)
    assert all(g.get("name") != "ranges" for g in frozen.configure_optimizers().param_groups)


def test_demo_learns_and_beats_the_prior(tmp_path):
    """A shortened demo (6 epochs): the loss falls from chance level, test accuracy far above the 1/6 prior, the
    ranges moved and stayed in bounds, and the best checkpoint reloads."""
    cli = run.main(["--config", DEMO, "--trainer.max_epochs", "6", "--runs_dir", str(tmp_path), "--run_id", "t",
                    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    results = json.loads((tmp_path / "scanpath_fern_demo" / "t" / "results.json").read_text())
    assert results["test/acc_prior"] == pytest.approx(1 / 6, abs=0.02)
    assert results["test/acc"] > 0.45
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    model = ScanpathFernTask.load_from_checkpoint(ckpt).eval()
    fresh = ScanpathFernNet(num_classes=6, n_sets=256, set_size=4, range_init=(0.1745, 1.5708),
                            widths=(8, 16, 32, 64)).eval()
    batch = next(iter(cli.datamodule.train_dataloader()))
    with torch.no_grad():
        before = F.cross_entropy(fresh(batch["signal"]), batch["label"]).item()
        after = F.cross_entropy(model.network(batch["signal"]), batch["label"]).item()
    assert before > 1.3 and after < 0.7 * before
    ranges = model.network.ferns.ranges
    assert not torch.allclose(ranges, fresh.ferns.ranges) and ranges.min() >= math.radians(1) - 1e-6
    assert ranges.max() <= math.pi + 1e-6


def test_em_statistics_by_hand_and_fern_features():
    from lightning_modules.scanpath_features import em_statistics, fern_features

    steps = [(1.0, 0.0)] * 5 + [(20.0, 0.0)] * 3 + [(0.0, 1.0)] * 4  # fixation, saccade, fixation
    xy = np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])
    xy = np.insert(xy, 3, np.nan, axis=0)[[0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 3]]  # a NaN sample is dropped
    features = em_statistics(xy, sample_rate=100.0).reshape(2, 3, 4)  # (fixation, saccade) x (dur, speed, acc) x stats
    std = np.std([0.05, 0.04], ddof=1)
    np.testing.assert_allclose(features[0, 0], [0.045, std ** 2, std, 1.96 * std / np.sqrt(2)])
    np.testing.assert_allclose(features[0, 1, :2], [100.0, 0.0])
    np.testing.assert_allclose(features[1, 0], [0.03, 0, 0, 0])
    np.testing.assert_allclose(features[1, 1, 0], 2000.0)
    np.testing.assert_allclose(features[1, 2, 0], 1900 * 100 / 3)  # |d speed| * rate at the saccade onset
    np.testing.assert_allclose(features[0, 2, 0], (0 + 1900 * 100 / 4) / 2)
    layer = AngleFernHistogram(8, 3, learn_ranges=False)
    signals = torch.randn(5, 30, 2).cumsum(1)
    feats = fern_features(layer, signals, batch_size=2)
    np.testing.assert_allclose(feats, layer(signals).flatten(1).numpy())
