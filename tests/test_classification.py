"""The classification task family: metrics against scikit-learn, the trivial baselines, losses, mixup,
parameter groups with layer-wise lr decay, and a short run that learns."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from sklearn.metrics import accuracy_score, average_precision_score
from torch import nn
from torch.utils.data import DataLoader

from lightning_modules.metrics.classification import ClassPrior, classification_metrics
from lightning_modules.tasks.classification import ClassificationTask
from lightning_modules.tasks.optim import parameter_groups, scale_group_lrs


def test_map_and_accuracy_match_scikit_learn():
    rng = np.random.default_rng(0)
    target = (rng.random((200, 6)) < 0.3).astype(int)
    scores = np.clip(target * 0.3 + rng.random((200, 6)), 0, 1)
    metric = classification_metrics(6, multilabel=True)
    metric.update(torch.tensor(scores[:120]), torch.tensor(target[:120]))
    metric.update(torch.tensor(scores[120:]), torch.tensor(target[120:]))
    assert float(metric.compute()["mAP"]) == pytest.approx(average_precision_score(target, scores, average="macro"), abs=1e-6)
    labels = rng.integers(0, 5, 100)
    probs = rng.random((100, 5))
    accuracy = classification_metrics(5, multilabel=False)
    accuracy.update(torch.tensor(probs), torch.tensor(labels))
    assert float(accuracy.compute()["acc"]) == pytest.approx(accuracy_score(labels, probs.argmax(1)))


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


def test_losses_label_smoothing_and_mixup():
    task = ClassificationTask(_Tiny(), 3, label_smoothing=0.1, mixup_alpha=0.8, mixup_prob=1.0)
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert task.loss(logits, task.soft_targets(target)) == pytest.approx(float(F.cross_entropy(logits, target, label_smoothing=0.1)))
    x = torch.randn(6, 4)
    mixed_x, mixed_y = task.mixup(x, task.soft_targets(torch.tensor([0, 1, 2, 0, 1, 2])))
    assert torch.allclose(mixed_y.sum(1), torch.ones(6)) and not torch.equal(mixed_x, x)
    multi = ClassificationTask(_Tiny(), 3, multilabel=True)
    y = torch.tensor([[1.0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 1]])
    assert multi.loss(logits, y) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, y)))
    assert multi.monitor == "val/mAP" and task.monitor == "val/acc"
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassificationTask(_Tiny(), 3, multilabel=True, label_smoothing=0.1)


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
