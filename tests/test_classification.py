"""The classification task family: metrics (per sample, per group, OOD detection) against scikit-learn, the
trivial baselines, losses and class weights, mixup, parameter groups with layer-wise lr decay, several test
loaders, and short runs that learn."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from scipy.special import logsumexp, softmax
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, cohen_kappa_score,
                             f1_score, roc_auc_score, roc_curve)
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassPrecision

from datamodules.base import BaseDataModule
from lightning_modules.metrics.classification import (ClassificationEvaluation, ClassPrior, GroupPooledScores,
                                                      classification_metrics)
from lightning_modules.metrics.ood import energy_score, max_logit_score, msp_score, ood_detection_metrics
from lightning_modules.tasks.classification import ClassificationTask
from lightning_modules.tasks.optim import parameter_groups, scale_group_lrs


def test_multiclass_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]  # informative, not perfect
    probs = softmax(logits, axis=1)
    metrics = classification_metrics(4, multilabel=False)
    metrics.update(torch.tensor(probs[:170]), torch.tensor(labels[:170]))  # two updates: states accumulate
    metrics.update(torch.tensor(probs[170:]), torch.tensor(labels[170:]))
    out = {k: float(v) for k, v in metrics.compute().items()}
    predicted = probs.argmax(1)
    assert out["acc"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
    assert out["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, predicted), abs=1e-6)
    assert out["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-6)
    assert out["kappa"] == pytest.approx(cohen_kappa_score(labels, predicted), abs=1e-6)
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-6)
    assert 0.4 < out["acc"] < 0.95 and out["balanced_acc"] != out["acc"]  # a case where they differ


def test_multilabel_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    target = (rng.random((200, 6)) < 0.3).astype(int)
    scores = np.clip(target * 0.3 + rng.random((200, 6)), 0, 1)
    metric = classification_metrics(6, multilabel=True)
    metric.update(torch.tensor(scores[:120]), torch.tensor(target[:120]))
    metric.update(torch.tensor(scores[120:]), torch.tensor(target[120:]))
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["mAP"] == pytest.approx(average_precision_score(target, scores, average="macro"), abs=1e-6)
    assert out["auroc"] == pytest.approx(roc_auc_score(target, scores, average="macro"), abs=1e-6)
    assert out["macro_f1"] == pytest.approx(f1_score(target, scores > 0.5, average="macro"), abs=1e-6)


def test_class_prior_is_the_score_of_a_constant_predictor():
    rng = np.random.default_rng(1)
    target = torch.tensor((rng.random((300, 5)) < [0.1, 0.2, 0.3, 0.4, 0.5]).astype(int))
    prior = ClassPrior(5, multilabel=True)
    prior.update(target)
    constant = classification_metrics(5, multilabel=True)
    constant.update(torch.full((300, 5), 0.5), target)  # every clip scored alike: AP = positive rate
    assert float(prior.compute()) == pytest.approx(float(constant.compute()["mAP"]), abs=1e-6)
    single = ClassPrior(3, multilabel=False)
    single.update(torch.tensor([0, 2, 2, 1, 2]))
    assert float(single.compute()) == pytest.approx(0.6)


def _grouped_windows(seed=4, groups=12, classes=3):
    """Windows of ``groups`` recordings (1-6 windows each, shuffled, ids not contiguous), noisy logits."""
    rng = np.random.default_rng(seed)
    group_labels = np.arange(groups) % classes
    sizes = rng.integers(1, 7, groups)
    window_group = np.repeat(np.arange(groups), sizes)
    order = rng.permutation(len(window_group))
    window_group = window_group[order]
    logits = rng.normal(size=(len(window_group), classes)) * 1.5 + np.eye(classes)[group_labels[window_group]]
    ids = 100 + 7 * window_group  # sorted like the group index
    return logits, group_labels[window_group], ids, window_group, group_labels


@pytest.mark.parametrize("pooling", ["mean_prob", "mean_logit", "majority"])
def test_group_pooling_matches_a_numpy_reference_and_scikit_learn(pooling):
    logits, labels, ids, window_group, group_labels = _grouped_windows()
    groups = np.unique(window_group)
    if pooling == "mean_prob":
        expected = np.stack([softmax(logits[window_group == g], axis=1).mean(0) for g in groups])
    elif pooling == "mean_logit":
        expected = softmax(np.stack([logits[window_group == g].mean(0) for g in groups]), axis=1)
    else:
        expected = np.stack([np.bincount(logits[window_group == g].argmax(1), minlength=3) / (window_group == g).sum()
                             for g in groups])
    pooled = GroupPooledScores(pooling, multilabel=False)
    pooled.update(torch.tensor(logits[:20]), torch.tensor(labels[:20]), torch.tensor(ids[:20]))
    pooled.update(torch.tensor(logits[20:]), torch.tensor(labels[20:]), torch.tensor(ids[20:]))
    scores, targets, out_ids = pooled.compute()
    assert np.allclose(scores.numpy(), expected, atol=1e-6)
    assert targets.tolist() == group_labels.tolist() and out_ids.tolist() == (100 + 7 * groups).tolist()
    evaluation = ClassificationEvaluation(3, multilabel=False, group_pooling=pooling)
    evaluation.update(torch.tensor(logits), torch.tensor(labels), torch.tensor(ids))
    out = {k: float(v) for k, v in evaluation.compute().items()}
    assert out["group/acc"] == pytest.approx(accuracy_score(group_labels, expected.argmax(1)))
    assert out["group/macro_f1"] == pytest.approx(f1_score(group_labels, expected.argmax(1), average="macro"))
    assert out["group/auroc"] == pytest.approx(roc_auc_score(group_labels, expected, multi_class="ovr"), abs=1e-6)
    assert out["group/num_groups"] == 12 and out["group/acc_prior"] == pytest.approx(4 / 12)
    assert out["acc"] == pytest.approx(accuracy_score(labels, logits.argmax(1)))  # windows still scored alone


def test_multilabel_group_pooling_votes_per_label():
    logits = torch.tensor([[2.0, -1.0], [1.0, 1.0], [-3.0, 2.0], [0.5, -0.5], [-1.0, -2.0]])
    target = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]])
    groups = torch.tensor([0, 0, 0, 5, 5])
    pooled = GroupPooledScores("majority", multilabel=True)
    pooled.update(logits, target, groups)
    scores, targets, ids = pooled.compute()
    assert torch.allclose(scores, torch.tensor([[2 / 3, 2 / 3], [0.5, 0.0]])) and targets.tolist() == [[1, 0], [0, 1]]


def test_ood_scores_and_detection_metrics_match_scikit_learn():
    logits = torch.tensor([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0], [30.0, -5.0, 2.0]])
    assert torch.allclose(msp_score(logits), -torch.tensor(softmax(logits.numpy(), axis=1).max(1)))
    assert torch.allclose(energy_score(logits, 2.0), -2.0 * torch.tensor(logsumexp(logits.numpy() / 2.0, axis=1)).float())
    assert torch.allclose(max_logit_score(logits), torch.tensor([-4.0, -1.0, -30.0]))
    rng = np.random.default_rng(5)
    # Energy-like magnitudes (a sigmoid in float32 would tie them all at 1) and ties across the two sets.
    id_scores = np.round(rng.normal(40.0, 3.0, 300), 1)
    ood_scores = np.round(rng.normal(43.0, 4.0, 200), 1)
    out = {k: float(v) for k, v in ood_detection_metrics(torch.tensor(id_scores), torch.tensor(ood_scores)).items()}
    scores, is_ood = np.concatenate([id_scores, ood_scores]), np.r_[np.zeros(300), np.ones(200)]
    fpr, tpr, _ = roc_curve(1 - is_ood, -scores, drop_intermediate=False)
    assert out["auroc"] == pytest.approx(roc_auc_score(is_ood, scores), abs=1e-6)
    assert out["aupr_in"] == pytest.approx(average_precision_score(1 - is_ood, -scores), abs=1e-6)
    assert out["aupr_out"] == pytest.approx(average_precision_score(is_ood, scores), abs=1e-6)
    assert out["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-6)
    assert 0.6 < out["auroc"] < 0.9 and 0.3 < out["fpr95"] < 1.0  # a case in between


class _Tiny(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, classes)
        self.num_layers = 2

    def forward(self, x):
        return self.head(self.norm(torch.relu(self.body(x))))

    def parameter_layer_id(self, name):
        return {"body": 0, "norm": 1, "head": 2}[name.split(".")[0]]


def test_losses_label_smoothing_and_injected_loss():
    task = ClassificationTask(_Tiny(), 3, label_smoothing=0.1)
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert task.loss(logits, task.soft_targets(target)) == pytest.approx(float(F.cross_entropy(logits, target, label_smoothing=0.1)))
    multi = ClassificationTask(_Tiny(), 3, multilabel=True)
    y = torch.tensor([[1.0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 1]])
    assert multi.loss(logits, y) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, y)))
    assert multi.monitor == "val/mAP" and task.monitor == "val/acc"
    injected = ClassificationTask(_Tiny(), 3, loss=nn.MSELoss())  # called with the (mixed) soft targets
    assert injected.loss(logits, injected.soft_targets(target)) == pytest.approx(float(((logits - F.one_hot(target, 3)) ** 2).mean()))
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationTask(_Tiny(), 3, multilabel=True, label_smoothing=0.1)
    with pytest.raises(ValueError, match="one weight per class"):
        ClassificationTask(_Tiny(), 3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="injected loss"):
        ClassificationTask(_Tiny(), 3, class_weights=[1.0, 2.0, 3.0], loss=nn.CrossEntropyLoss())


def test_class_weights_weight_the_target_class_and_the_positives():
    rng = np.random.default_rng(2)
    logits, labels, weights = rng.normal(size=(8, 3)), rng.integers(0, 3, 8), np.array([0.5, 1.0, 3.0])
    task = ClassificationTask(_Tiny(), 3, class_weights=weights.tolist())
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)
    expected = np.mean(-weights[labels] * log_p[np.arange(8), labels])  # Keras' class_weight: mean over samples
    assert float(task.loss(torch.tensor(logits), task.soft_targets(torch.tensor(labels)))) == pytest.approx(expected, rel=1e-5)
    multi = ClassificationTask(_Tiny(), 3, multilabel=True, class_weights=weights.tolist())
    y = (rng.random((8, 3)) < 0.4).astype(float)
    p = 1 / (1 + np.exp(-logits))
    expected = np.mean(-(weights * y * np.log(p) + (1 - y) * np.log(1 - p)))  # pos_weight on the positives
    assert float(multi.loss(torch.tensor(logits), torch.tensor(y).float())) == pytest.approx(expected, rel=1e-5)
    assert "class_weights" not in task.state_dict()  # an hparam, not a checkpoint tensor


def test_mixup_mixes_inputs_and_targets_by_the_drawn_lam_and_permutation():
    task = ClassificationTask(_Tiny(), 3, mixup_alpha=0.8, mixup_prob=1.0)
    x, y = torch.randn(6, 4), task.soft_targets(torch.tensor([0, 1, 2, 0, 1, 2]))
    random.seed(3)
    torch.manual_seed(3)
    mixed_x, mixed_y = task.mixup(x, y)
    random.seed(3)
    torch.manual_seed(3)
    random.random()  # the mixup_prob coin
    lam, perm = random.betavariate(0.8, 0.8), torch.randperm(6)
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(6))
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x[perm]) and torch.allclose(mixed_y, lam * y + (1 - lam) * y[perm])
    assert torch.allclose(mixed_y.sum(1), torch.ones(6))
    for off in (ClassificationTask(_Tiny(), 3, mixup_alpha=0.0), ClassificationTask(_Tiny(), 3, mixup_alpha=0.8, mixup_prob=0.0)):
        out_x, out_y = off.mixup(x, y)
        assert out_x is x and out_y is y


def test_parameter_groups_no_decay_on_biases_and_norms_and_layer_decay():
    network = _Tiny()
    groups = parameter_groups(network, layer_decay=0.5, layer_id=network.parameter_layer_id, num_layers=2)
    optimizer = torch.optim.AdamW(groups, lr=1.0, weight_decay=0.05)
    scale_group_lrs(optimizer)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(network.body.weight)]["lr"] == 0.25 and by_param[id(network.body.weight)]["weight_decay"] == 0.05
    assert by_param[id(network.body.bias)]["weight_decay"] == 0.0 and by_param[id(network.norm.weight)]["weight_decay"] == 0.0
    assert by_param[id(network.norm.weight)]["lr"] == 0.5 and by_param[id(network.head.weight)]["lr"] == 1.0


class _Blobs(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 4, generator=g) * 0.7 + F.one_hot(self.y, 4).float() * 2

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def test_a_short_run_learns_and_beats_the_majority_class(tmp_path):
    torch.manual_seed(0)
    task = ClassificationTask(_Tiny(), 3, label_smoothing=0.1,
                              optimizer=lambda params: torch.optim.AdamW(params, lr=0.02))
    trainer = Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path, accelerator="cpu", enable_model_summary=False)
    train, test = DataLoader(_Blobs(256, 0), batch_size=32, shuffle=True), DataLoader(_Blobs(128, 1), batch_size=64)
    before = trainer.validate(task, test, verbose=False)[0]["val/loss"]
    trainer.fit(task, train, test)
    metrics = trainer.test(task, test, verbose=False)[0]
    assert trainer.validate(task, test, verbose=False)[0]["val/loss"] < 0.6 * before
    assert metrics["test/acc"] > metrics["test/acc_prior"] + 0.4


class _MultiBlobs(torch.utils.data.Dataset):
    """Multi-hot float targets (as the audio datasets give): label k is on when feature k is high."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = (torch.rand(n, 3, generator=g) < 0.4).float()
        self.x = torch.cat([self.y * 2, torch.zeros(n, 1)], 1) + torch.randn(n, 4, generator=g) * 0.7

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def test_multilabel_run_with_float_multi_hot_targets_beats_the_prior(tmp_path):
    torch.manual_seed(0)
    task = ClassificationTask(_Tiny(), 3, multilabel=True, mixup_alpha=0.8,
                              optimizer=lambda params: torch.optim.AdamW(params, lr=0.02))
    trainer = Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path, accelerator="cpu", enable_model_summary=False)
    train, test = DataLoader(_MultiBlobs(256, 0), batch_size=32, shuffle=True), DataLoader(_MultiBlobs(128, 1), batch_size=64)
    trainer.fit(task, train, test)
    metrics = trainer.test(task, test, verbose=False)[0]
    assert metrics["test/mAP"] > metrics["test/mAP_prior"] + 0.3


# -- end to end: groups, a further test set, an OOD set -------------------------------------------------
class _Quadrants(torch.utils.data.Dataset):
    """1x8x8 images: class k lights quadrant k (k < 3; classes 50/30/20 %), four windows per recording with the
    recording's brightness offset. ``ood``: all three quadrants half lit, an input no class explains."""

    def __init__(self, recordings, seed, ood=False):
        g = torch.Generator().manual_seed(seed)
        label = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), recordings, replacement=True, generator=g)
        self.label, self.group = label.repeat_interleave(4), torch.arange(recordings).repeat_interleave(4) + 1000 * seed
        offset = (torch.rand(recordings, generator=g) - 0.5).repeat_interleave(4)
        light = torch.zeros(len(self.label), 3) + 0.5 if ood else F.one_hot(self.label, 3).float()
        quadrants = torch.cat([light, torch.zeros(len(self.label), 1)], 1).view(-1, 1, 2, 2)
        image = quadrants.repeat_interleave(4, 2).repeat_interleave(4, 3) + offset.view(-1, 1, 1, 1)
        self.image = image + 1.6 * torch.randn(image.shape, generator=g)

    def __len__(self):
        return len(self.label)

    def __getitem__(self, i):
        return {"image": self.image[i], "label": self.label[i], "group": self.group[i]}


class _QuadrantData(BaseDataModule):
    def setup(self, stage=None):
        self.train_set, self.val_set, self.test_set = _Quadrants(64, 0), _Quadrants(16, 1), _Quadrants(32, 2)
        self.test_sets = {"other_site": _Quadrants(16, 3)}
        self.ood_test_sets = {"mixed": _Quadrants(16, 4, ood=True)}


def _quadrant_net():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))


@pytest.mark.parametrize("ood_score", ["msp", "energy"])
def test_image_run_with_groups_and_an_ood_set_learns(tmp_path, ood_score):
    torch.manual_seed(0)
    task = ClassificationTask(_quadrant_net(), 3, group_pooling="mean_prob", ood_score=ood_score,
                              class_weights=[1.0, 1.5, 2.0], metrics={"precision": MulticlassPrecision(3, average="macro")},
                              optimizer=lambda params: torch.optim.AdamW(params, lr=0.01))
    trainer = Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path, accelerator="cpu", enable_model_summary=False)
    data = _QuadrantData(batch_size=32, num_workers=0)
    data.setup()
    before = trainer.validate(task, data, verbose=False)[0]["val/loss"]
    trainer.fit(task, data)
    metrics = trainer.test(task, data, verbose=False)[0]
    assert trainer.validate(task, data, verbose=False)[0]["val/loss"] < 0.6 * before
    assert metrics["test/acc"] > metrics["test/acc_prior"] + 0.3 and metrics["test/acc_prior"] >= 0.4
    # Pooling four noisy windows per recording beats the windows alone (stand-in: 0.97 vs 0.91).
    assert metrics["test/group/acc"] > metrics["test/acc"] and metrics["test/group/num_groups"] == 32
    assert metrics["test/other_site/acc"] > metrics["test/other_site/acc_prior"] + 0.2
    assert metrics["test/mixed/ood_auroc"] > 0.65 and metrics["test/mixed/ood_fpr95"] < 0.95  # stand-in: 0.77-0.79
    assert 0 < metrics["test/precision"] <= 1 and "test/mixed/acc" not in metrics  # OOD sets get no class metrics
    assert (tmp_path / "figures" / "test_confusion_matrix.png").stat().st_size > 5_000


# -- image-classification options: per-class metrics, a positive class, balanced weights, ROC figures -----
def test_per_class_and_positive_class_metrics_match_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    g = torch.Generator().manual_seed(3)
    logits, target = torch.randn(60, 3, generator=g), torch.randint(0, 3, (60,), generator=g)
    evaluation = ClassificationEvaluation(3, False, per_class=True, class_names=["gli", "men", "pit"],
                                          positive_class=2, roc=True)
    evaluation.update(logits[:25], target[:25])
    evaluation.update(logits[25:], target[25:])
    out = evaluation.compute()
    pred, scores = logits.argmax(1).numpy(), softmax(logits.numpy(), axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(target.numpy(), pred, labels=[0, 1, 2], zero_division=0)
    for i, name in enumerate(["gli", "men", "pit"]):
        assert out[f"precision/{name}"].item() == pytest.approx(precision[i], abs=1e-6)
        assert out[f"recall/{name}"].item() == pytest.approx(recall[i], abs=1e-6)
        assert out[f"f1/{name}"].item() == pytest.approx(f1[i], abs=1e-6)
    positive, p = (target.numpy() == 2).astype(int), scores[:, 2]
    hard = (p >= 0.5).astype(int)
    assert out["pos/auroc"].item() == pytest.approx(roc_auc_score(positive, p), abs=1e-6)
    assert out["pos/aupr"].item() == pytest.approx(average_precision_score(positive, p), abs=1e-6)
    assert out["pos/acc"].item() == pytest.approx(accuracy_score(positive, hard), abs=1e-6)
    assert out["pos/specificity"].item() == pytest.approx(((hard == 0) & (positive == 0)).sum() / (positive == 0).sum(), abs=1e-6)
    fprs, tprs = evaluation.roc_curves()
    fpr, tpr, _ = roc_curve(positive, p)
    assert float(torch.trapezoid(tprs[2], fprs[2])) == pytest.approx(roc_auc_score(positive, p), abs=1e-6)


class _CountedQuadrants(_QuadrantData):
    @property
    def class_counts(self):
        return torch.bincount(self.train_set.label, minlength=3).tolist()


def test_balanced_class_weights_positive_class_and_figures_in_a_run(tmp_path):
    torch.manual_seed(0)
    task = ClassificationTask(_quadrant_net(), 3, class_weights="balanced", per_class_metrics=True, positive_class=0,
                              class_names=["a", "b", "c"], optimizer=lambda params: torch.optim.AdamW(params, lr=0.01))
    trainer = Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path, accelerator="cpu", enable_model_summary=False)
    data = _CountedQuadrants(batch_size=32, num_workers=0)
    data.setup()
    trainer.fit(task, data)
    counts = torch.tensor(data.class_counts, dtype=torch.float32)
    assert torch.allclose(task.class_weights, counts.sum() / (3 * counts))
    metrics = trainer.test(task, data, verbose=False)[0]
    assert {"test/recall/a", "test/f1/c", "test/pos/auroc", "test/pos/specificity",
            "test/other_site/pos/auroc"} <= set(metrics)
    assert (tmp_path / "figures" / "test_roc.png").stat().st_size > 5_000
    with pytest.raises(ValueError, match="balanced"):
        ClassificationTask(_quadrant_net(), 3, class_weights="equal")
    with pytest.raises(ValueError, match="multi-class"):
        ClassificationTask(_quadrant_net(), 3, multilabel=True, positive_class=1)
