"""The detection family: FROC metric (hand-made answers and MONAI's FROC utilities), collate, task steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics.froc import compute_fp_tp_probs, compute_froc_curve_data, compute_froc_score
from torch import nn

from datamodules.detection import DetectionDataset, DetectionItem, detection_collate, patient_split, preprocess
from lightning_modules import batch as keys
from lightning_modules.metrics.detection import FROC, aufc, froc_curve, match_scores, tpr_at_fppi
from lightning_modules.tasks.detection import DetectionTask


def _pred(boxes, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.zeros(len(scores), dtype=torch.long)}


def _target(boxes):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}


def test_match_scores_counts_a_box_once_and_extra_hits_are_not_false_positives():
    gt = [[10, 10, 30, 30], [100, 100, 120, 120]]
    preds = _pred([[12, 12, 30, 30], [10, 10, 28, 31], [200, 200, 210, 210], [0, 0, 5, 5]], [0.9, 0.8, 0.7, 0.2])
    fp, per_gt = match_scores(preds["boxes"], preds["scores"], torch.tensor(gt, dtype=torch.float32), 0.1)
    assert sorted(fp.tolist()) == pytest.approx([0.2, 0.7])
    assert per_gt[0] == pytest.approx(0.9) and per_gt[1] == float("-inf")


def test_iou_threshold_decides_a_hit():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # IoU of [0, 0, 10, 10] and [0, 0, 10, 1.5] is 0.15; with [0, 0, 10, 0.5] it is 0.05.
    fp, per_gt = match_scores(torch.tensor([[0.0, 0.0, 10.0, 1.5]]), torch.tensor([0.5]), gt, 0.1)
    assert fp.numel() == 0 and per_gt[0] == pytest.approx(0.5)
    fp, per_gt = match_scores(torch.tensor([[0.0, 0.0, 10.0, 0.5]]), torch.tensor([0.5]), gt, 0.1)
    assert fp.numel() == 1 and per_gt[0] == float("-inf")


def test_froc_known_answer():
    """4 images (2 normal), 4 boxes. Ordered scores: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 TP, 0.4 FP, 0.3 FP; one
    box never found. At FPpI 0.25 (1 FP) TPR = 2/4 ... the curve steps by hand below."""
    metric = FROC(iou_threshold=0.1, fppi=(0.25, 0.5, 1.0), aufc_limits=(0.5,))
    preds = [_pred([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.4]),
             _pred([[0, 0, 10, 10], [30, 30, 40, 40]], [0.7, 0.5]),
             _pred([[0, 0, 10, 10]], [0.8]),
             _pred([[0, 0, 10, 10], [5, 5, 9, 9]], [0.6, 0.3])]
    targets = [_target([[0, 0, 10, 10], [80, 80, 90, 90]]), _target([[1, 1, 10, 10], [30, 30, 41, 41]]),
               _target([]), _target([])]
    metric.update(preds, targets)
    out = metric.compute()
    # thresholds from the top: 0.9 -> (0 FP, 1 TP), 0.8 -> (1, 1), 0.7 -> (1, 2), 0.6 -> (2, 2), 0.5 -> (2, 3),
    # 0.4 -> (3, 3), 0.3 -> (4, 3); FPpI = FP / 4, TPR = TP / 4. MONAI's interpolation on the points
    # (FPpI, TPR) from FPpI 0 upward: (0, 0), (0, .25), (.25, .25), (.25, .5), (.5, .5), (.5, .75), (.75, .75),
    # (1, .75): np.interp on repeated x takes the last value listed for that x.
    fppi, tpr, _ = metric.curve()
    assert out["num_targets"] == 4 and out["num_images"] == 4
    assert out["tpr@0.25"] == pytest.approx(float(np.interp(0.25, fppi[::-1], tpr[::-1])))
    assert out["tpr@0.5"] == pytest.approx(0.75)
    assert out["tpr@1"] == pytest.approx(0.75)
    assert sorted(zip(fppi.tolist(), tpr.tolist())) == sorted(
        [(0.0, 0.0), (0.0, 0.25), (0.25, 0.25), (0.25, 0.5), (0.5, 0.5), (0.5, 0.75), (0.75, 0.75), (1.0, 0.75)])
    expected_area = float(np.trapezoid(np.interp(np.linspace(0, 0.5, 2001), fppi[::-1], tpr[::-1]),
                                       np.linspace(0, 0.5, 2001)) / 0.5)
    assert out["aufc@0.5"] == pytest.approx(expected_area)
    assert 0.25 <= out["aufc@0.5"] <= 0.75


def test_froc_agrees_with_monai_curve_and_score():
    rng = np.random.default_rng(0)
    fp = torch.tensor(rng.uniform(0.01, 1, 40), dtype=torch.float32)
    per_target = torch.tensor(np.where(rng.random(25) < 0.8, rng.uniform(0.01, 1, 25), -np.inf), dtype=torch.float32)
    num_images = 30
    fppi, tpr, _ = froc_curve(fp, per_target, num_images)
    # MONAI: missed targets score 0, and its sweep skips the lowest score (0 here): pass an extra 0 FP score.
    tp_probs = torch.where(torch.isfinite(per_target), per_target, torch.zeros_like(per_target))
    ref_fppi, ref_tpr = compute_froc_curve_data(torch.cat([fp, torch.zeros(1)]), tp_probs, 25, num_images)
    np.testing.assert_allclose(fppi, ref_fppi)
    np.testing.assert_allclose(tpr, ref_tpr)
    points = (0.1, 0.25, 0.5, 1.0)
    ours = np.mean([tpr_at_fppi(fppi, tpr, x) for x in points])
    assert ours == pytest.approx(compute_froc_score(ref_fppi, ref_tpr, points))


def test_froc_matches_monai_point_hits_where_iou_and_containment_agree():
    """MONAI's compute_fp_tp_probs counts a detection point inside a labelled region as a hit. With square boxes
    of the regions' size centred on those points, IoU >= 0.1 and containment of the centre coincide here."""
    mask = np.zeros((100, 100), dtype=int)
    mask[10:30, 10:30] = 1
    mask[60:80, 50:70] = 2
    centres = np.array([[20, 20], [22, 18], [5, 90], [90, 5], [70, 60]])  # (row, col)
    probs = np.array([0.9, 0.6, 0.8, 0.3, 0.5])
    fp_probs, tp_probs, num_targets = compute_fp_tp_probs(probs, centres[:, 0], centres[:, 1], mask)
    boxes = np.stack([centres[:, 1] - 10, centres[:, 0] - 10, centres[:, 1] + 10, centres[:, 0] + 10], 1)
    gt = torch.tensor([[10, 10, 30, 30], [50, 60, 70, 80]], dtype=torch.float32)  # (x1, y1, x2, y2)
    fp, per_gt = match_scores(torch.tensor(boxes, dtype=torch.float32), torch.tensor(probs, dtype=torch.float32),
                              gt, 0.1)
    assert sorted(fp.tolist()) == pytest.approx(sorted(np.asarray(fp_probs).tolist()))
    assert sorted(per_gt.tolist()) == pytest.approx(sorted(np.asarray(tp_probs).tolist()))
    assert num_targets == 2


def test_aufc_of_a_flat_curve_is_its_height():
    fppi, tpr = np.array([2.0, 0.0, 0.0]), np.array([0.6, 0.6, 0.0])
    assert aufc(fppi, tpr, 1.0) == pytest.approx(0.6, abs=1e-3)


def test_froc_with_no_predictions_is_zero_and_no_targets_is_safe():
    metric = FROC()
    metric.update([_pred([], [])], [_target([[0, 0, 5, 5]])])
    out = metric.compute()
    assert out["tpr@0.1"] == 0 and out["aufc@1"] == 0
    metric = FROC()
    metric.update([_pred([[0, 0, 5, 5]], [0.5])], [_target([])])
    assert metric.compute()["tpr@1"] == 0


def test_detection_collate_keeps_box_lists():
    items = [{keys.IMAGE: torch.zeros(3, 8, 8), keys.BOXES: torch.zeros(n, 4),
              keys.BOX_LABELS: torch.zeros(n, dtype=torch.long), keys.NAME: f"x{n}"} for n in (0, 2, 1)]
    batch = detection_collate(items)
    assert batch[keys.IMAGE].shape == (3, 3, 8, 8)
    assert [b.shape[0] for b in batch[keys.BOXES]] == [0, 2, 1]
    assert batch[keys.NAME] == ["x0", "x2", "x1"]


def test_preprocess_crops_resizes_and_moves_boxes():
    image = np.zeros((200, 100), dtype=np.float32)
    image[20:180, 0:60] = 1.0  # the "breast"
    image[50:60, 10:20] += 1.0
    out, boxes = preprocess(image, np.array([[10, 50, 20, 60]]), (80, 60), crop_breast=True)
    assert out.shape == (80, 60)
    assert abs(out.mean()) < 1e-4 and out.std() == pytest.approx(1.0, abs=1e-3)
    # crop rows 20-180, cols 0-60 (to the 4-px grid), then rows x 0.5, cols x 1
    np.testing.assert_allclose(boxes, [[10, 15, 20, 20]], atol=1.0)


def test_dataset_augmentation_keeps_boxes_on_the_bright_spot():
    image = np.zeros((64, 48), dtype=np.float32)
    image[20:30, 5:15] = 5.0
    dataset = DetectionDataset([DetectionItem(image, [[5, 20, 15, 30]], "p", "a")], input_hw=(64, 48),
                               crop_breast=False, augment=True, aug_p=1.0)
    torch.manual_seed(0)
    for _ in range(5):
        sample = dataset[0]
        x1, y1, x2, y2 = sample[keys.BOXES][0].round().long().tolist()
        image = sample[keys.IMAGE][0]
        inside = torch.zeros_like(image, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        # relative to the image's range: the contrast x brightness factors (down to 0.4 x 0.3) shrink the spot's lead
        assert image[inside].mean() > image[~inside].mean() + 0.5 * (image.max() - image.min())


def test_patient_split_keeps_patients_together_and_is_deterministic():
    patients = [f"p{i // 3}" for i in range(60)]
    first = patient_split(patients, (0.7, 0.1, 0.2), seed=1)
    assert first == patient_split(patients, (0.7, 0.1, 0.2), seed=1)
    sides = [{patients[i] for i in split} for split in first]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert [len(s) for s in sides] == [14, 2, 4]


class _Toy(nn.Module):
    """A detector that predicts one fixed box per image with a learnable score: trains and evaluates."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(()))

    def forward(self, images, targets=None):
        if self.training:
            has = torch.tensor([float(len(t["boxes"]) > 0) for t in targets])
            return {"classification": nn.functional.binary_cross_entropy_with_logits(self.logit.expand(len(has)), has)}
        return [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": self.logit.sigmoid().reshape(1),
                 "labels": torch.zeros(1, dtype=torch.long)} for _ in images]


def test_task_steps_log_froc(tmp_path):
    task = DetectionTask(_Toy(), fppi=(0.5,), aufc_limits=(1.0,), max_figure_images=0)
    assert task.monitor == "val/aufc@1"
    batch = {keys.IMAGE: torch.zeros(2, 3, 8, 8), keys.BOXES: [torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.zeros(0, 4)],
             keys.BOX_LABELS: [torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long)]}
    task.train()
    assert torch.isfinite(task.training_step(batch, 0))
    task.eval()
    task.validation_step(batch, 0)
    out = task.val_froc.compute()
    # one hit (box found) and one false positive on the normal image: TPR 1 at FPpI 0.5
    assert out["tpr@0.5"] == pytest.approx(1.0)


def test_task_tests_every_loader_and_scores_baselines(tmp_path):
    """trainer.test over a main and a further test set: metrics under test/ and test/<name>/, the baseline under
    test/baseline_<name>/, and the FROC figure written."""
    from lightning.pytorch import Trainer

    from datamodules.detection import DetectionDataModule

    class _Data(DetectionDataModule):
        def setup(self, stage=None):
            image = np.zeros((8, 8), dtype=np.float32)
            make = lambda boxes: DetectionDataset([DetectionItem(image, boxes, "p", "a")], input_hw=None,  # noqa: E731
                                                  crop_breast=False)
            self.test_set = make([[0, 0, 4, 4]])
            self.test_sets = {"ext": make([])}

    class _Fixed(nn.Module):
        def forward(self, images, targets=None):
            return [{"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "scores": torch.tensor([0.3]),
                     "labels": torch.zeros(1, dtype=torch.long)} for _ in images]

    task = DetectionTask(_Toy(), fppi=(1.0,), aufc_limits=(1.0,), baselines={"fixed": _Fixed()})
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu")
    results = trainer.test(task, datamodule=_Data(batch_size=1, num_workers=0), verbose=False)
    merged = {k: v for r in results for k, v in r.items()}
    assert merged["test/tpr@1"] == pytest.approx(1.0) and merged["test/baseline_fixed/tpr@1"] == pytest.approx(1.0)
    assert merged["test/ext/num_targets"] == 0 and merged["test/ext/num_images"] == 1
    assert (tmp_path / "figures" / "test_froc.png").is_file()
