"""GER-STGAT: parameter count, the GAT layer against a per-node reference, the graphs of Eq. 3-10, Eq. 8's pseudo
nodes, the fusion of Eq. 15 and the two-loss training (Eq. 13, 14), the baselines, and learning on the stand-in
through run.py (metrics checked against scikit-learn on the reloaded checkpoint)."""
import json

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, recall_score

from lightning_modules.blocks.gat import DenseGAT, DenseGATLayer
from lightning_modules.ger_stgat import (GERSTGAT, FaceMeanLSTM, GroupEmotionTask, facial_adjacency,
                                         holistic_adjacency)
from lightning_modules.utils import count_parameters


def test_parameter_count():
    """The paper gives none; the card derives 8,407,046 for heads = 1 in PyG's GATConv layout (W without bias, a_src,
    a_dst, bias): GAT_f 4,197,376 + 1,051,648 + W 3,075, GAT_h 2,100,224 + 1,051,648 + P 3,075. Exact."""
    with torch.device("meta"):
        net = GERSTGAT()
    assert count_parameters(net) == 8_407_046
    assert count_parameters(net.facial.gat.layers[0]) == 4_197_376
    assert count_parameters(net.holistic.gat.layers[0]) == 2_100_224
    assert count_parameters(net.facial.gat.layers[1]) == count_parameters(net.holistic.gat.layers[1]) == 1_051_648
    assert count_parameters(net.facial.classifier) == 3_075
    assert set(dict(net.facial.gat.layers[0].named_parameters())) == {"lin.weight", "att_src", "att_dst", "bias"}


def _reference_gat(layer: DenseGATLayer, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    """Veličković et al.'s Eq. 1-4, node by node: softmax over each node's in-neighbours (self included)."""
    heads, c = layer.heads, layer.out_channels
    outs = []
    for i in range(x.shape[0]):
        neighbours = [j for j in range(x.shape[0]) if adjacency[i, j] or i == j]
        per_head = []
        for h in range(heads):
            wh = x @ layer.lin.weight[h * c:(h + 1) * c].T
            e = torch.stack([F.leaky_relu(wh[i] @ layer.att_dst[0, 0, h] + wh[j] @ layer.att_src[0, 0, h], 0.2)
                             for j in neighbours])
            a = torch.softmax(e, 0)
            per_head.append(sum(a[k] * wh[j] for k, j in enumerate(neighbours)))
        outs.append(torch.cat(per_head) if layer.concat else torch.stack(per_head).mean(0))
    return torch.stack(outs) + layer.bias


@pytest.mark.parametrize("heads,concat", [(1, True), (2, True), (3, False)])
def test_gat_layer_matches_the_per_node_formula(heads, concat):
    torch.manual_seed(0)
    layer = DenseGATLayer(5, 4, heads=heads, concat=concat).eval()
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(7, 5)
    adjacency = torch.rand(7, 7) > 0.5
    out, alpha = layer(x[None], adjacency, return_attention=True)
    assert torch.allclose(out[0], _reference_gat(layer, x, adjacency), atol=1e-5)
    assert torch.allclose(alpha.sum(-1), torch.ones(1, heads, 7))  # a distribution over each node's neighbours
    assert (alpha[0, :, ~(adjacency | torch.eye(7, dtype=torch.bool))] == 0).all()


def test_serial_and_parallel_graphs():
    t, n = 3, 2
    serial = facial_adjacency(t, n, "serial")
    per = n + 1
    expected = torch.zeros(t * per, t * per, dtype=torch.bool)
    for f in range(t):  # Eq. 3-7 written out
        s, g = f * per, f * per + n
        expected[s:s + n, s:s + n] = True  # A^t = 1 (faces, self loops)
        expected[g, s:g + 1] = True  # x^t -> g^t, g^t -> g^t
        if f + 1 < t:
            expected[g + 1:g + 1 + n, g] = True  # g^t -> x^{t+1}
    assert torch.equal(serial, expected)
    parallel = facial_adjacency(t, n, "parallel")
    assert torch.equal(parallel, serial | torch.ones_like(serial).tril())  # Eq. 9's phi
    last = t * per - 1
    assert parallel[last].all()  # g^T sees every node
    for f in range(t):  # individuals at t never receive from g^t (larger index), only from earlier g's
        g = f * per + n
        assert not parallel[f * per:g, g].any()
    no_pseudo = facial_adjacency(t, n, "parallel_no_pseudo")
    assert no_pseudo.shape == (t * n, t * n) and torch.equal(no_pseudo, facial_adjacency(t, n, "parallel_no_pseudo"))
    assert torch.equal(holistic_adjacency(4), torch.ones(4, 4, dtype=torch.bool).tril())
    with pytest.raises(ValueError):
        facial_adjacency(2, 2, "ring")


def _inputs(b=3, t=4, n=3, df=6, dh=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, n, generator=g) > 0.3
    mask[0, 1] = False  # a frame without faces
    return {"faces": torch.randn(b, t, n, df, generator=g), "face_mask": mask,
            "frames": torch.randn(b, t, dh, generator=g)}


def test_pseudo_nodes_are_the_face_means_and_absent_faces_do_not_matter():
    torch.manual_seed(0)
    net = GERSTGAT(face_dim=6, frame_dim=5, hidden=8, dropout=0.0).eval()
    x = _inputs()
    nodes, node_mask = net.facial.nodes(x["faces"], x["face_mask"])
    m = x["face_mask"].float().unsqueeze(-1)
    means = (x["faces"] * m).sum(2) / m.sum(2).clamp_min(1)
    assert torch.allclose(nodes.view(3, 4, 4, 6)[:, :, -1], means)  # Eq. 8
    assert torch.equal(nodes.view(3, 4, 4, 6)[0, 1, -1], torch.zeros(6))  # no faces: g^t = 0
    assert node_mask.view(3, 4, 4)[:, :, -1].all()
    changed = dict(x, faces=torch.where(x["face_mask"].unsqueeze(-1), x["faces"], 100 * torch.randn_like(x["faces"])))
    for mode in ("parallel", "serial", "parallel_no_pseudo"):
        torch.manual_seed(0)
        net = GERSTGAT(face_dim=6, frame_dim=5, hidden=8, dropout=0.0, graph_mode=mode).eval()
        assert torch.allclose(net(x), net(changed), atol=1e-5), mode


def test_fusion_and_the_two_losses():
    torch.manual_seed(0)
    net = GERSTGAT(face_dim=6, frame_dim=5, hidden=8, dropout=0.0, alpha=0.3).eval()
    x = _inputs()
    logits = net.branch_logits(x)
    fused = 0.3 * logits["facial"].softmax(-1) + 0.7 * logits["holistic"].softmax(-1)  # Eq. 15
    assert torch.allclose(net(x).softmax(-1), fused, atol=1e-6)
    assert torch.allclose(net(x).exp(), fused, atol=1e-6)
    task = GroupEmotionTask(network=net, num_classes=3)
    y = torch.tensor([0, 1, 2])
    loss = task.training_step({"group_video": x, "label": y}, 0)
    expected = F.cross_entropy(logits["facial"], y) + F.cross_entropy(logits["holistic"], y)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)  # L_f + L_h (Eq. 13, 14)
    loss.backward()  # each branch's gradient is its own loss's: L_h does not reach GAT_f
    facial_grad = net.facial.classifier.weight.grad.clone()
    net.zero_grad()
    F.cross_entropy(net.branch_logits(x)["facial"], y).backward()
    assert torch.allclose(facial_grad, net.facial.classifier.weight.grad, atol=1e-6)
    for single in ("facial", "holistic"):
        alone = GERSTGAT(face_dim=6, frame_dim=5, hidden=8, branches=single).eval()
        assert set(alone.branch_logits(x)) == {single}
        assert torch.allclose(alone(x).exp().sum(-1), torch.ones(3))
    with pytest.raises(ValueError):
        GERSTGAT(alpha=1.5)


def test_heads_and_baseline_shapes():
    x = _inputs()
    assert GERSTGAT(face_dim=6, frame_dim=5, hidden=8, heads=2)(x).shape == (3, 3)
    lstm = FaceMeanLSTM(face_dim=6, hidden=8)
    assert lstm(x).shape == (3, 3) and set(lstm.branch_logits(x)) == {"facial"}
    with pytest.raises(ValueError):
        DenseGAT(4, 6, 4, heads=4)


def test_learning_on_the_standin(tmp_path):
    """The demo recipe, smaller (a less noisy holistic cue, lr 3e-3): the fused accuracy beats the majority baseline
    (1/3) by far, the training loss falls from chance level (2 ln 3 for the two losses), and the reloaded checkpoint's
    predictions give the logged accuracy and per-class recalls (scikit-learn)."""
    import run
    from datamodules.standins.synthetic_group_emotion import SyntheticGroupEmotionDataModule

    sizes = dict(train_per_class=40, val_per_class=8, test_per_class=20, num_frames=16, max_faces=6, frame_noise=0.5)
    args = ["--config", "experiments/ger_stgat_demo.yaml", "--run_id", "t", "--trainer.max_epochs", "10",
            "--model.init_args.optimizer.init_args.lr", "0.003",
            "--trainer.logger", "false", "--runs_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.init_args.network.init_args.hidden", "32"]
    for key, value in sizes.items():
        args += [f"--data.init_args.{key}", str(value)]
    run.main(args)
    result = json.loads((tmp_path / "ger_stgat_demo" / "t" / "results.json").read_text())
    print({k: round(v, 3) for k, v in result.items() if "acc" in k})
    assert result["test/acc_prior"] == pytest.approx(1 / 3)
    assert result["test/acc"] > 0.55 and result["test/acc_facial"] > 0.45 and result["test/acc_holistic"] > 0.36
    data = SyntheticGroupEmotionDataModule(**sizes, num_workers=0)
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.train_set, batch_size=len(data.train_set))))
    torch.manual_seed(0)
    fresh = GERSTGAT(face_dim=128, frame_dim=64, hidden=32, dropout=0.2).eval()
    task = GroupEmotionTask.load_from_checkpoint(tmp_path / "ger_stgat_demo" / "t" / "checkpoints" / "best.ckpt",
                                                 map_location="cpu").eval()
    y = batch["label"]
    with torch.no_grad():
        before = sum(F.cross_entropy(v, y) for v in fresh.branch_logits(batch["group_video"]).values()).item()
        after = sum(F.cross_entropy(v, y) for v in task.network.branch_logits(batch["group_video"]).values()).item()
        test = next(iter(torch.utils.data.DataLoader(data.test_set, batch_size=len(data.test_set))))
        pred = task(test["group_video"]).argmax(1).numpy()
    print("training loss (both branches) before", round(before, 3), "after", round(after, 3))
    assert before > 1.8 and after < 0.8 * before, (before, after)
    assert accuracy_score(test["label"], pred) == pytest.approx(result["test/acc"], abs=1e-6)
    recalls = recall_score(test["label"], pred, average=None)
    for name, value in zip(("positive", "neutral", "negative"), recalls):
        assert result[f"test/recall/{name}"] == pytest.approx(value, abs=1e-6)
