"""Coglier networks (parameter counts against hand-derived counts of the TorchEEG definitions, shapes, gradients,
DGCNN against its formula), the warm-up + cosine schedule against the code's CosineAnnealingWarmUpRestarts, the
one-hot AUROC against scikit-learn, the ODM sensitivity / specificity, the High/Low ranking, and a learning test
on the concept-shift stand-in."""
from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from datamodules.eeg_emotion import rank_groups
from lightning_modules.coglier import (CCNN, DGCNN, CoglierTask, OneHotPredictionAUROC, TSception,
                                       normalize_adjacency, threshold_sens_spec)
from lightning_modules.utils import count_parameters


def ccnn_count(c: int, bands: int = 4) -> int:
    convs = (bands * 64 * 16 + 64) + (64 * 128 * 16 + 128) + (128 * 256 * 16 + 256) + (256 * 64 * 16 + 64)
    return convs + (81 * 64 * 1024 + 1024) + (1024 * c + c)


def tsception_count(c: int, e: int, fs: int) -> int:
    temporal = sum(15 * int(w * fs) + 15 for w in (0.5, 0.25, 0.125))
    spatial = (15 * 15 * e + 15) + (15 * 15 * (e // 2) + 15) + (15 * 15 * 3 + 15)
    return temporal + spatial + 3 * 30 + (15 * 32 + 32) + (32 * c + c)


def dgcnn_count(c: int, e: int, bands: int = 4, k: int = 2, hidden: int = 32) -> int:
    return 2 * bands + k * bands * hidden + (e * hidden * 64 + 64) + (64 * c + c) + e * e


@pytest.mark.parametrize("classes", [3, 4, 9])
def test_parameter_counts_match_the_hand_derived_counts(classes):
    # exact (tolerance 0): the TorchEEG / code definitions, layer by layer
    assert count_parameters(CCNN(classes)) == ccnn_count(classes)
    assert count_parameters(TSception(classes, num_electrodes=14, sampling_rate=128)) == tsception_count(classes, 14, 128)
    assert count_parameters(TSception(classes, num_electrodes=62, sampling_rate=200)) == tsception_count(classes, 62, 200)
    assert count_parameters(DGCNN(classes, num_electrodes=14)) == dgcnn_count(classes, 14)
    assert count_parameters(DGCNN(classes, num_electrodes=62)) == dgcnn_count(classes, 62)
    assert count_parameters(CCNN(9)) == 6_240_777 and count_parameters(DGCNN(3, 62)) == 131_343


def test_shapes_and_gradients():
    torch.manual_seed(0)
    cases = [(CCNN(9), torch.randn(3, 4, 9, 9)), (TSception(4, 62, 200), torch.randn(3, 62, 400)),
             (TSception(9, 14, 128), torch.randn(3, 1, 14, 256)), (DGCNN(3, 62), torch.randn(3, 62, 4))]
    for net, x in cases:
        out = net(x)
        assert out.shape == (3, net.lin2.out_features if isinstance(net, CCNN) else
                             (net.fc[-1].out_features if isinstance(net, TSception) else net.fc2.out_features))
        out.sum().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (type(net).__name__, name)
    ts = TSception(4, 62, 200).eval()
    x = torch.randn(2, 62, 400)
    torch.testing.assert_close(ts(x), ts(x.unsqueeze(1)))


def test_dgcnn_matches_its_formula():
    torch.manual_seed(1)
    net = DGCNN(3, num_electrodes=5, in_channels=4, num_layers=3).eval()
    x = torch.randn(2, 5, 4)
    a = torch.relu(net.A.detach())
    d = torch.diag((a.sum(1) + 1e-10) ** -0.5)
    lap = d @ a @ d
    torch.testing.assert_close(normalize_adjacency(net.A.detach()), lap)
    bn = net.BN1
    xn = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    supports = [torch.eye(5), lap, lap @ lap]
    h = torch.relu(sum(s @ xn @ w for s, w in zip(supports, net.weights)))
    expected = net.fc2(torch.relu(net.fc1(h.flatten(1))))
    torch.testing.assert_close(net(x), expected)


def code_schedule(step: int, total: int, up: int, eta_max: float) -> float:
    """The code's CosineAnnealingWarmUpRestarts (base lr 0, T_0 = total, T_mult 1), first cycle."""
    if step < up:
        return eta_max * step / up
    return eta_max * (1 + math.cos(math.pi * (step - up) / (total - up))) / 2


def test_schedule_matches_the_code(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(40, 5, 4), torch.randint(0, 3, (40,))
    data = [{"signal": x[i], "label": y[i]} for i in range(40)]
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # 5 steps per epoch
    task = CoglierTask(DGCNN(3, num_electrodes=5), num_classes=3, max_lr=1e-3, warmup_epochs=3)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    L.Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[Record()], limit_val_batches=0).fit(task, loader)
    assert len(lrs) == 50
    np.testing.assert_allclose(lrs, [code_schedule(s, 50, 15, 1e-3) for s in range(50)], rtol=1e-6, atol=1e-12)
    optimizer = task.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4 and isinstance(optimizer, torch.optim.Adam)


def test_onehot_auroc_matches_the_codes_sklearn_call():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, 200)
    probs = rng.random((200, 6))  # 6 model classes, 4 present in the targets (GAMEEMO per-subject case)
    probs[np.arange(200), target] += rng.random(200)
    preds = probs.argmax(1)
    # the code: OneHotEncoder fitted on each, then roc_auc_score (macro) -- it requires the same category sets
    keep = np.isin(preds, np.unique(target))
    enc = OneHotEncoder(categories=[np.unique(target)])
    expected = roc_auc_score(enc.fit_transform(target[keep, None]).toarray(),
                             enc.fit_transform(preds[keep, None]).toarray())
    metric = OneHotPredictionAUROC(6)
    metric.update(torch.tensor(probs[keep]), torch.tensor(target[keep]))
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    perfect = OneHotPredictionAUROC(3)
    perfect.update(torch.eye(3)[[0, 1, 2, 1]], torch.tensor([0, 1, 2, 1]))
    assert float(perfect.compute()) == pytest.approx(1.0)


def test_sens_spec_and_ranking():
    sens, spec = threshold_sens_spec(torch.tensor([0.9, 0.8, 0.4, 0.95]), torch.tensor([0.3, 0.85, 0.5]), 0.6)
    assert sens == pytest.approx(0.75) and spec == pytest.approx(2 / 3)
    acc = {"1": 0.9, "2": 0.95, "3": 0.5, "4": 0.9, "5": 0.7, "6": 0.99, "7": 0.4, "8": 0.92}
    high, low = rank_groups(acc, top_k=0.85)  # floor(0.85 * 8) = 6 High
    assert high == ["6", "2", "8", "1", "4", "5"] and low == ["3", "7"]
    assert rank_groups(acc, low_count=3)[1] == ["5", "3", "7"]
    with pytest.raises(ValueError):
        rank_groups({"1": 0.5})


def test_learning_on_the_standin_beats_chance(tmp_path):
    """DGCNN-DE pooled on the concept-shift stand-in: the loss falls and the clean subjects' test accuracy beats
    chance (1/3) by far."""
    import pandas as pd

    from datamodules.standins.synthetic_emotion_shift import SyntheticConceptShiftDataModule

    torch.manual_seed(0)
    dm = SyntheticConceptShiftDataModule(n_subjects=4, windows_per_class=20, shifted_subjects=["4"],
                                         feature="de", input_layout="channels", batch_size=16)
    task = CoglierTask(DGCNN(3, num_electrodes=14), num_classes=3, max_lr=1e-2, warmup_epochs=1)
    trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, dm)
    history = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    val_loss = history["val/loss"].dropna().to_numpy()
    assert val_loss[-1] < 0.7 * val_loss[0]
    metrics = trainer.test(task, dm, verbose=False)[0]
    assert metrics["test/acc"] > 0.6 > 1 / 3
    assert 0.5 < metrics["test/auroc_onehot"] <= 1


@pytest.mark.slow
def test_the_whole_analysis_runs_as_one_study(tmp_path):
    """Subject runs -> groups -> ODM -> baseline / ID model / RP through ``run.py study`` (DGCNN, 4 subjects, 3
    epochs): the concept-shifted subject lands in the Low Group and the tables are written."""
    import yaml

    import study

    demo = {"seed_everything": 42, "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 3, "logger": False},
            "model": {"class_path": "lightning_modules.coglier.CoglierTask", "init_args": {
                "network": {"class_path": "lightning_modules.coglier.DGCNN", "init_args": {"num_electrodes": 14}},
                "num_classes": 3, "max_lr": 0.01, "warmup_epochs": 1, "odm_thresholds": [0.6, 0.9]}},
            "data": {"class_path": "datamodules.standins.synthetic_emotion_shift.SyntheticConceptShiftDataModule",
                     "init_args": {"n_subjects": 4, "windows_per_class": 20, "shifted_subjects": ["4"],
                                   "feature": "de", "input_layout": "channels", "batch_size": 16, "low_count": 1}}}
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(demo))
    spec = {"study": {"runs": [
        {"name": "subject{sub}", "config": str(config), "repeat": {"sub": ["1", "2", "3", "4"]},
         "args": {"data.init_args.stage": "subject", "data.init_args.subject": "{sub}"}},
        {"name": "odm", "config": str(config),
         "args": {"data.init_args.stage": "odm", "data.init_args.groups_from": "{study_dir}"}},
        {"name": "baseline", "config": str(config),
         "args": {"data.init_args.odm_checkpoint": "{ckpt:odm}", "data.init_args.eval_thresholds": [0.6]}},
        {"name": "id", "config": str(config),
         "args": {"data.init_args.odm_checkpoint": "{ckpt:odm}", "data.init_args.threshold": 0.6}},
        {"name": "rp", "config": str(config), "args": {"data.init_args.potato_z": 1.5}}],
        "analysis": "lightning_modules.coglier:coglier_tables"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = study.run_study(path, "s", runs_dir=str(tmp_path / "runs"))
    summary = json.loads((study_dir / "coglier_tables.json").read_text())
    assert summary["groups"]["low"] == ["4"]
    assert 0 <= summary["id"]["test/rr"] < 1 and summary["id"]["test/acc"] > 1 / 3
    assert "Table 2" in (study_dir / "coglier_tables.md").read_text()


@pytest.mark.parametrize("base, electrodes, samples", [("seed", 62, 400), ("gameemo_valence", 14, 256)])
def test_each_settings_network_takes_its_inputs(repo_root, base, electrodes, samples):
    """Every model setting on a base switches the network class: with the base's shared init args kept (as
    jsonargparse keeps them), the network must take the input layout its data setting asks for."""
    import importlib
    import inspect

    import yaml

    root = repo_root / "experiments" / "coglier"
    base_cfg = yaml.safe_load((root / f"{base}.yaml").read_text())
    base_net = base_cfg["model"]["init_args"]["network"]
    shapes = {"grid": (4, 9, 9), "channels": (electrodes, 4), "raw": (electrodes, samples)}
    for path in sorted((root / base).glob("*_odm.yaml")):
        setting = yaml.safe_load(path.read_text())
        net_cfg = setting["model"]["init_args"]["network"]
        module, name = net_cfg["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        accepted = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in base_net["init_args"].items() if k in accepted}
        kwargs.update(net_cfg["init_args"], num_classes=base_cfg["model"]["init_args"]["num_classes"])
        layout = setting["data"]["init_args"]["input_layout"]
        with torch.no_grad():
            out = cls(**kwargs).eval()(torch.randn(2, *shapes[layout]))
        assert out.shape == (2, kwargs["num_classes"]), path.name
