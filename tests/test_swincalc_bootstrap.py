"""SwinCalc's patient bootstrap (the paper's section 3.5): resampled FROC metrics against a plain loop that repeats
the drawn patients' images, the percentile interval against scipy.stats.bootstrap, the paired p-value, the FROC
metric's per-image split, and the task logging intervals at test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_modules.metrics.detection import (FROC, aufc, bootstrap_compare, bootstrap_froc, froc_curve,
                                                 resample_counts, tpr_at_fppi)

FPPI, AUFC = (0.1, 0.5), (0.1, 1.0)


def _fake_images(rng: np.random.Generator, num_images: int, quality: float = 0.0):
    """Per image 0-3 false-positive scores and 0-2 targets (a third of them missed); ``quality`` lifts hits."""
    fps, targets = [], []
    for _ in range(num_images):
        fps.append(rng.uniform(0, 1, rng.integers(0, 4)))
        hit = rng.uniform(0, 1, rng.integers(0, 3)) + quality
        targets.append(np.where(rng.uniform(size=hit.size) < 0.33, -np.inf, hit))
    return fps, targets


def _metrics_of(fps, targets, images):
    """The plain way: the drawn images, repeated, through froc_curve."""
    fp = torch.from_numpy(np.concatenate([fps[i] for i in images] + [np.zeros(0)]))
    tp = torch.from_numpy(np.concatenate([targets[i] for i in images] + [np.zeros(0)]))
    curve_fppi, curve_tpr, _ = froc_curve(fp, tp, len(images))
    return [tpr_at_fppi(curve_fppi, curve_tpr, x) for x in FPPI] + [aufc(curve_fppi, curve_tpr, x) for x in AUFC]


def _patients(num_images: int) -> list[str]:
    return [f"p{i // 2}" for i in range(num_images)]  # two images (views) per patient, as in screening


def test_bootstrap_replicates_equal_repeating_the_drawn_patients_images():
    rng = np.random.default_rng(0)
    fps, targets = _fake_images(rng, 24)
    groups = _patients(24)
    result = bootstrap_froc(fps, targets, groups, FPPI, AUFC, n_resamples=60, seed=3)
    counts = resample_counts(12, 60, seed=3)
    assert counts.shape == (60, 12) and (counts.sum(axis=1) == 12).all()  # as many patients as the set has
    for r in range(60):
        images = [i for i in range(24) for _ in range(counts[r, i // 2])]
        expected = _metrics_of(fps, targets, images)
        got = [result.replicates[name][r] for name in result.replicates]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert list(result.estimate.values()) == pytest.approx(_metrics_of(fps, targets, list(range(24))))


def test_percentile_interval_equals_scipy_bootstrap():
    rng = np.random.default_rng(1)
    fps, targets = _fake_images(rng, 30)
    groups = [f"p{i}" for i in range(30)]  # one image per patient: scipy resamples the image indices

    def statistic(indices):
        return _metrics_of(fps, targets, [int(i) for i in indices])[0]  # tpr@0.1

    ref = stats.bootstrap((np.arange(30),), statistic, n_resamples=500, vectorized=False, method="percentile",
                          confidence_level=0.9, random_state=np.random.default_rng(7))
    ours = bootstrap_froc(fps, targets, groups, FPPI, AUFC, n_resamples=500, confidence=0.9, seed=7)
    np.testing.assert_allclose(np.sort(ours.replicates["tpr@0.1"]), np.sort(ref.bootstrap_distribution), atol=1e-12)
    assert ours.low["tpr@0.1"] == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high["tpr@0.1"] == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.low["tpr@0.1"] < ours.estimate["tpr@0.1"] < ours.high["tpr@0.1"]


def test_identical_patients_give_a_zero_width_interval_and_the_curve_itself():
    fps = [np.array([0.2, 0.6])] * 6
    targets = [np.array([0.9, -np.inf])] * 6
    result = bootstrap_froc(fps, targets, [f"p{i}" for i in range(6)], (0.5, 1.0), (1.0,), n_resamples=50,
                            max_fppi=2.0, grid_points=5)
    # each image: a hit at 0.9, FPs at 0.6 and 0.2, one of two targets missed -> TPR 0.5 from FPpI 0
    assert result.estimate == {"tpr@0.5": 0.5, "tpr@1": 0.5, "aufc@1": 0.5}
    assert result.low == result.estimate == result.high
    np.testing.assert_allclose(result.mean_tpr, [0.5] * 5)


def test_paired_comparison_p_value_is_the_share_of_non_positive_differences():
    rng = np.random.default_rng(2)
    fps, targets = _fake_images(rng, 40)
    better = [np.where(np.isfinite(t), t + 1.0, 1.5) for t in targets]  # every target found, above every FP
    groups = _patients(40)
    comparison = bootstrap_compare((fps, better), (fps, targets), groups, FPPI, AUFC, n_resamples=300, seed=5)
    assert all(d > 0 for d in comparison.delta.values())
    assert comparison.p_value["tpr@0.1"] < 0.01 and comparison.low["tpr@0.1"] > 0
    diffs = comparison.a.replicates["aufc@1"] - comparison.b.replicates["aufc@1"]
    assert comparison.p_value["aufc@1"] == np.mean(diffs <= 0)
    # the same resamples as the unpaired bootstrap of each detector with the same seed
    alone = bootstrap_froc(fps, targets, groups, FPPI, AUFC, n_resamples=300, seed=5)
    np.testing.assert_array_equal(alone.replicates["tpr@0.5"], comparison.b.replicates["tpr@0.5"])
    # a detector against itself never wins: every difference is 0, p = 1
    same = bootstrap_compare((fps, targets), (fps, targets), groups, FPPI, AUFC, n_resamples=50)
    assert set(same.p_value.values()) == {1.0}


def test_froc_metric_splits_its_scores_per_image():
    metric = FROC(iou_threshold=0.1, fppi=FPPI, aufc_limits=AUFC)
    box = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    far = torch.tensor([[50.0, 50.0, 60.0, 60.0]])
    preds = [{"boxes": torch.cat([box, far]), "scores": torch.tensor([0.9, 0.4])},
             {"boxes": far, "scores": torch.tensor([0.7])},
             {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]
    targets = [{"boxes": torch.cat([box, far + 100])}, {"boxes": torch.zeros(0, 4)}, {"boxes": box}]
    metric.update(preds, targets)
    fps, tps = metric.per_image()
    assert [f.tolist() for f in fps] == [pytest.approx([0.4]), pytest.approx([0.7]), []]
    assert [t.tolist() for t in tps] == [pytest.approx([0.9, -np.inf]), [], [-np.inf]]
    result = bootstrap_froc(fps, tps, ["a", "b", "c"], FPPI, AUFC, n_resamples=20)
    assert result.estimate == pytest.approx({k: float(v) for k, v in metric.compute().items() if "@" in k})


def test_bootstrap_rejects_mismatched_groups():
    with pytest.raises(ValueError, match="group"):
        bootstrap_froc([np.zeros(1)] * 3, [np.zeros(0)] * 3, ["a", "b"], n_resamples=5)


def test_task_logs_bootstrap_intervals_and_p_values_against_baselines(tmp_path):
    """trainer.test with bootstrap_resamples: intervals around the network's metrics, resampled by the patients the
    dataset writes, and the paired p-value that it does not beat a baseline that misses every cluster."""
    from lightning.pytorch import Trainer
    from torch import nn

    from datamodules.detection import DetectionDataModule, DetectionDataset, DetectionItem
    from lightning_modules.tasks.detection import DetectionTask

    box = [2.0, 2.0, 6.0, 6.0]

    class _Data(DetectionDataModule):
        def setup(self, stage=None):
            image = np.zeros((8, 8), dtype=np.float32)
            # 12 patients, two views each; the first view of the first 8 has a cluster
            items = [DetectionItem(image, [box] if (i % 2 == 0 and i < 16) else [], f"p{i // 2}", f"im{i}")
                     for i in range(24)]
            self.test_set = DetectionDataset(items, input_hw=None, crop_breast=False)

    class _Finds(nn.Module):  # the true box at 0.9 and a false positive at 0.2 on every image
        def forward(self, images, targets=None):
            return [{"boxes": torch.tensor([box, [0.0, 0.0, 1.0, 1.0]]), "scores": torch.tensor([0.9, 0.2]),
                     "labels": torch.zeros(2, dtype=torch.long)} for _ in images]

    class _Misses(nn.Module):  # one box away from every cluster
        def forward(self, images, targets=None):
            return [{"boxes": torch.tensor([[6.5, 0.0, 8.0, 1.0]]), "scores": torch.tensor([0.5]),
                     "labels": torch.zeros(1, dtype=torch.long)} for _ in images]

    seen = []

    class _Spy(DetectionTask):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            seen.extend(batch["patient"])
            return super().test_step(batch, batch_idx, dataloader_idx)

    task = _Spy(_Finds(), fppi=(1.0,), aufc_limits=(1.0,), baselines={"misses": _Misses()}, bootstrap_resamples=200)
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu")
    (out,) = trainer.test(task, datamodule=_Data(batch_size=5, num_workers=0), verbose=False)
    assert seen == [f"p{i // 2}" for i in range(24)]
    assert out["test/tpr@1"] == pytest.approx(1.0)
    assert out["test/tpr@1_ci_low"] == pytest.approx(1.0) and out["test/tpr@1_ci_high"] == pytest.approx(1.0)
    assert out["test/aufc@1_ci_low"] <= out["test/aufc@1"] <= out["test/aufc@1_ci_high"]
    assert out["test/baseline_misses/p_tpr@1"] == 0.0  # the network finds every cluster, the baseline none
