"""POCUS-OOD: CNN parameter counts, multi-exit shapes and loss, scores and metrics against hand-computed numpy /
sklearn values, a short fit on toy data."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_modules import pocus_ood as po


@pytest.mark.parametrize("padding,count", [("same", 2_028_291), ("valid", 979_715)])
def test_parameter_counts(padding, count):
    net = po.POCUSCNN(input_size=180, padding=padding)
    assert sum(p.numel() for p in net.parameters()) == count


def test_keras_init_glorot_uniform_zero_bias():
    net = po.POCUSCNN(input_size=64, exit_after=[2])
    for layer in net.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = layer.weight[0].numel()
            fan_out = layer.weight.shape[0] * (layer.weight[0, 0].numel() if layer.weight.ndim == 4 else 1)
            limit = (6 / (fan_in + fan_out)) ** 0.5
            assert float(layer.weight.abs().max()) <= limit and float(layer.weight.abs().max()) > 0.9 * limit
            assert not layer.bias.any()
    torch_init = po.POCUSCNN(input_size=64, init="torch")
    assert torch_init.blocks[0][0].bias.any()


def test_multi_exit_shapes_and_loss_gradients():
    net = po.POCUSCNN(input_size=64, exit_after=[2, 4])
    x = torch.randn(2, 1, 64, 64)
    outs = net.forward_exits(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3)] * 3
    assert torch.equal(net.eval()(x), net.forward_exits(x)[-1])
    net.train()
    y = torch.tensor([0, 2])
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = po.multi_exit_loss(net.forward_exits(x), y, [0.5, 0.5, 1.0], w)
    loss.backward()
    assert all(p.grad is not None for p in net.exits.parameters())


def test_scores_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = torch.tensor(logits)
    np.testing.assert_allclose(po.softmax_score(t).numpy(), p.max(1), rtol=1e-6)
    for T in (1.0, 1e-3):
        m = logits.max(1)
        ref = T * (m / T + np.log(np.exp((logits - m[:, None]) / T).sum(1)))
        np.testing.assert_allclose(po.energy_score(t, T).numpy(), ref, rtol=1e-6)
    f = rng.dirichlet(np.ones(3), size=(4, 6))  # N members, B, C
    F = f.mean(0)
    var = ((f - F) ** 2).mean(0)
    ft = torch.tensor(f)
    np.testing.assert_allclose(po.ensemble_uncertainty(ft, "var").numpy(), var.sum(1), rtol=1e-6)
    np.testing.assert_allclose(po.ensemble_uncertainty(ft, "wvar").numpy(), (F * var).sum(1), rtol=1e-6)
    epi = -(F * np.log(F)).sum(1) + (f * np.log(f)).sum(2).mean(0)
    np.testing.assert_allclose(po.ensemble_uncertainty(ft, "epi").numpy(), epi, rtol=1e-6)


def test_multi_level_and_metrics():
    rng = np.random.default_rng(1)
    train = [torch.tensor(rng.normal(size=200)) for _ in range(3)]
    test = [torch.tensor(rng.normal(size=50)) for _ in range(3)]
    ref = np.min([[np.mean(tr.numpy() <= s) for s in te.numpy()] for tr, te in zip(train, test)], axis=0)
    np.testing.assert_allclose(po.multi_level_score(test, train).numpy(), ref, rtol=1e-6)
    id_s, ood_s, tr = torch.tensor(rng.normal(1, 1, 100)), torch.tensor(rng.normal(0, 1, 80)), torch.tensor(rng.normal(1, 1, 300))
    for tpr in (0.95, 0.8):
        thr = np.quantile(tr.numpy(), 1 - tpr)
        assert po.fpr_at_train_tpr(tr, ood_s, tpr) == pytest.approx(np.mean(ood_s.numpy() >= thr))
    auc = roc_auc_score(np.r_[np.ones(100), np.zeros(80)], np.r_[id_s.numpy(), ood_s.numpy()])
    assert po.ood_auroc(id_s, ood_s) == pytest.approx(auc, abs=1e-5)
    lo, hi = po.bootstrap_auroc_ci(id_s, ood_s, n=100, seed=0)
    assert lo < auc < hi and po.bootstrap_auroc_ci(id_s, ood_s, n=100, seed=0) == (lo, hi)
    labels = torch.tensor(rng.integers(0, 3, 100))
    pm = torch.tensor(rng.random(100))
    keep = id_s.numpy() >= np.quantile(tr.numpy(), 0.2)
    ref = roc_auc_score(labels.numpy()[keep] == 2, pm.numpy()[keep])
    assert po.leave_out_cancer_auc(pm, labels, id_s, tr, 0.2) == pytest.approx(ref, abs=1e-5)


def test_ensemble_loads_checkpoints(tmp_path):
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        net = po.POCUSCNN(input_size=32)
        torch.save({"state_dict": {"network." + k: v for k, v in net.state_dict().items()}}, tmp_path / f"m{i}.ckpt")
        paths.append(str(tmp_path / f"m{i}.ckpt"))
    ens = po.DeepEnsemble(checkpoints=paths, input_size=32).eval()
    x = torch.randn(3, 1, 32, 32)
    probs = ens.member_probs(x)
    assert probs.shape == (2, 3, 3)
    torch.testing.assert_close(ens(x).exp(), probs.mean(0))
    assert ens.from_checkpoints and len(po.DeepEnsemble(checkpoints=json.dumps(paths), input_size=32).members) == 2
    untrained = po.DeepEnsemble(n_members=4, input_size=32)
    assert len(untrained.members) == 4 and not untrained.from_checkpoints
    with pytest.raises(ValueError, match="n_members 3"):
        po.DeepEnsemble(checkpoints=paths, n_members=3, input_size=32)
    task = po.POCUSOODTask(network=untrained, num_classes=3, scorer="ens_var")
    with pytest.raises(ValueError, match="trained members"):
        task.on_test_start()
    with pytest.raises(ValueError, match="trained one by one"):
        task.on_fit_start()


def test_ensemble_study_members_follow_the_table2_sampling():
    """experiments/pocus_ood/pocus_ensemble_study.yaml writes out sample_member_hparams(0..19)."""
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(po.__file__).parents[1] / "experiments" / "pocus_ood" / "pocus_ensemble_study.yaml")
                          .read_text())["study"]
    members = spec["runs"][0]["repeat"]
    assert [m["member"] for m in members] == list(range(20))
    for m in members:
        h = po.sample_member_hparams(m["member"])
        assert (m["optimizer"], m["epochs"], m["batch_size"]) == (h["optimizer"], h["epochs"], h["batch_size"])
        assert m["lr"] == pytest.approx(h["lr"], abs=1e-6) and m["leave_out"] == pytest.approx(h["leave_out"], abs=1e-4)
    assert spec["runs"][1]["args"]["model.init_args.network.init_args.checkpoints"] == "{ckpts:member*}"


def test_short_fit_lowers_loss():
    torch.manual_seed(0)
    x = torch.rand(48, 1, 32, 32)
    y = torch.arange(48) % 3
    x[y == 1, :, 8:16] += 1.0
    x[y == 2, :, :, 8:16] += 1.0
    net = po.POCUSCNN(input_size=32, exit_after=[2, 4], conv_dropout=0.0, fc_dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = po.multi_exit_loss(net.forward_exits(x), y, [0.5, 0.5, 1.0])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (net.eval()(x).argmax(1) == y).float().mean() > 0.5


def test_corruption_deterministic_and_mnist_reader(tmp_path):
    from datamodules.base import DatasetError
    from datamodules.ood_sets import corrupt_pocus, read_mnist_idx
    img = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    a, b = corrupt_pocus(img, 3), corrupt_pocus(img, 3)
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    assert not np.array_equal(a, corrupt_pocus(img, 4))
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(b"".join(int(v).to_bytes(4, "big") for v in (2051, 2, 28, 28)) + arr.tobytes())
    assert np.array_equal(read_mnist_idx(p), arr)
    with pytest.raises(DatasetError, match="not found"):
        read_mnist_idx(tmp_path / "missing")


def test_standin_shapes():
    from datamodules.standins import synthetic_breast_us as s
    ims, labels = s.make_split(6, seed=0, size=64)
    assert len(ims) == 6 and ims[0].shape == (64, 64) and ims[0].dtype == np.uint8 and labels[:3] == [0, 1, 2]
    assert s.carotid_image(0).shape == (64, 64)
    assert np.array_equal(s.breast_image(2, 5), s.breast_image(2, 5))


def test_pocus_reader_layout(tmp_path):
    from PIL import Image
    from datamodules.base import DatasetError
    from datamodules.pocus import POCUSDataModule, pocus_augmentation
    rng = np.random.default_rng(0)
    for source, split in [("pocus", "train"), ("pocus", "test"), ("us", "train")]:
        for c in ("normal", "benign", "malignant"):
            d = tmp_path / source / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(d / f"{c}{i}.png")
    dm = POCUSDataModule(str(tmp_path), image_size=32, val_fraction=0.2, num_workers=0,
                         augmentation="datamodules.pocus:pocus_augmentation")
    dm.setup()
    assert len(dm.split_indices["test"]) == 9 and len(dm.split_indices["train"]) + len(dm.split_indices["val"]) == 18
    x = dm.train_set[0]
    assert tuple(x["image"].shape) == (1, 32, 32) and 0 <= float(x["image"].min()) and float(x["image"].max()) <= 1
    assert len(pocus_augmentation()) == 2
    assert set(dm.ood_test_sets) == {"corrupt"} and len(dm.train_eval_set) == len(dm.split_indices["train"])
    # the OOD sets: MNIST idx file, a CCA folder (nested), CorruptPOCUS of the test images; a member's leave-out
    mnist = tmp_path / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    digits = (rng.random((5, 28, 28)) * 255).astype(np.uint8)
    (mnist / "t10k-images-idx3-ubyte").write_bytes(b"".join(v.to_bytes(4, "big") for v in (2051, 5, 28, 28))
                                                   + digits.tobytes())
    (tmp_path / "cca" / "volunteer1").mkdir(parents=True)
    for i in range(2):
        Image.fromarray((rng.random((33, 39)) * 255).astype(np.uint8)).save(tmp_path / "cca" / "volunteer1" / f"{i}.png")
    kwargs = dict(image_size=32, val_fraction=0.2, num_workers=0, mnist_file=str(mnist / "t10k-images-idx3-ubyte"),
                  cca_dir=str(tmp_path / "cca"), corrupt_seed=3)
    full = POCUSDataModule(str(tmp_path), **kwargs)
    full.setup()
    assert {k: len(v) for k, v in full.ood_test_sets.items()} == {"mnist": 5, "corrupt": 9, "cca": 2}
    assert full.test_loader_names == ["test", "mnist", "corrupt", "cca"]
    from datamodules.ood_sets import corrupt_pocus
    first = full.items[full.split_indices["test"][0]]
    np.testing.assert_array_equal(full.ood_test_sets["corrupt"].items[0].source,
                                  corrupt_pocus(full.read_image(first)[..., 0], 3 * 100_000))
    assert tuple(full.ood_test_sets["mnist"][0]["image"].shape) == (1, 32, 32)
    member = POCUSDataModule(str(tmp_path), train_leave_out=0.15, leave_out_seed=4, **kwargs)
    member.setup()
    kept = member.split_indices["train"]
    assert len(kept) == len(full.split_indices["train"]) - 2 and set(kept) < set(full.split_indices["train"])
    assert member.split_indices["val"] == full.split_indices["val"]
    with pytest.raises(DatasetError, match="t10k"):
        POCUSDataModule(str(tmp_path), **{**kwargs, "mnist_file": str(mnist / "missing")}).setup()
    (tmp_path / "us").rename(tmp_path / "us_gone")
    with pytest.raises(DatasetError):
        POCUSDataModule(str(tmp_path), image_size=32, num_workers=0).setup()


def test_member_hparams_deterministic_in_table2_ranges():
    hs = [po.sample_member_hparams(i) for i in range(20)]
    assert hs == [po.sample_member_hparams(i) for i in range(20)] and len({h["lr"] for h in hs}) == 20
    for h in hs:
        assert 0 <= h["leave_out"] <= 0.15 and 1e-4 <= h["lr"] <= 1e-3 and 25 <= h["epochs"] <= 85
        assert h["batch_size"] in (8, 16, 32, 64, 128) and h["optimizer"] in ("torch.optim.Adam", "torch.optim.RMSprop")


def test_demo_config_learns_on_a_small_standin_and_scores_the_ood_sets(tmp_path):
    """experiments/pocus_ood_demo.yaml through run.py at 32 px on 96 / 48 images: the loss falls, the test
    accuracy beats the prior (1/3), and every OOD metric of Table 3/5 is written."""
    import csv
    from pathlib import Path

    import run

    torch.set_num_threads(1)
    run.main(["--config", str(Path(run.__file__).parent / "experiments" / "pocus_ood_demo.yaml"),
              "--data.init_args.n_train", "96", "--data.init_args.n_test", "48", "--data.init_args.n_digits", "60",
              "--data.init_args.n_cca", "20", "--data.init_args.image_size", "32",
              "--model.init_args.network.init_args.input_size", "32", "--model.init_args.bootstrap", "20",
              "--data.init_args.batch_size", "16", "--trainer.max_epochs", "8", "--trainer.log_every_n_steps", "1",
              "--trainer.enable_progress_bar", "false",
              "--trainer.logger", "[{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: "
              f"{tmp_path}, name: csv, version: ''}}}}]",
              "--runs_dir", str(tmp_path), "--run_id", "a"])
    results = json.loads((tmp_path / "pocus_ood_demo" / "a" / "results.json").read_text())
    assert results["test/acc"] > results["test/acc_prior"] + 0.2, results["test/acc"]
    losses = [float(r["train/loss"]) for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv"))
              if r.get("train/loss")]
    assert np.mean(losses[-6:]) < 0.95 * np.mean(losses[:6]), losses  # last vs first epoch (6 steps each)
    for name in ("mnist", "corrupt", "cca"):
        for key in ("auroc_train", "auroc_ci_low", "auroc_ci_high", "fpr95_train", "fpr80_train"):
            assert 0.0 <= results[f"test/{name}/{key}"] <= 1.0, (name, key)
    assert all(0.0 <= results[f"test/cancer_auc_lo{lo}"] <= 1.0 for lo in (0, 5, 20))


def test_score_exit_scores_one_exit_and_classifies_with_the_last():
    torch.manual_seed(0)
    net = po.POCUSCNN(input_size=32, exit_after=[2, 4]).eval()
    task = po.POCUSOODTask(network=net, num_classes=3, scorer="energy", score_exit=0, temperature=1.0)
    x = torch.rand(4, 1, 32, 32)
    logits, raw = task.raw_scores(x)
    outs = net.forward_exits(x)
    torch.testing.assert_close(logits, outs[-1])
    torch.testing.assert_close(raw[0], po.energy_score(outs[0], 1.0))
    with pytest.raises(ValueError, match="score_exit"):
        po.POCUSOODTask(network=net, num_classes=3, scorer="softmax", score_exit=0)
