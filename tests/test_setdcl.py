"""Guided-SET-DCL: the two-branch sSE U-Net (size against the released layout's closed form, shapes, guidance,
refinement), InfoNCE against its reference formula, the task's losses and slice-to-slice inference, the MRF pipeline
(EM against scikit-learn, thresholds, graph cut, rectum seed, initial label on the stand-in)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture

from datamodules.standins.synthetic_ct_colon import synthetic_ct_colon
from lightning_modules import batch as keys
from lightning_modules.setdcl import SETDCLNet, infonce, masked_average
from lightning_modules.setdcl_mrf import (HUMixture, detect_rectum, em_thresholds, fit_hu_mixture, graph_cut_slice,
                                          mrf_initial_label, potts_gamma)
from lightning_modules.tasks.episodic_segmentation import EpisodicSegmentationTask
from lightning_modules.utils import count_parameters

SMALL = (4, 8, 16, 32, 64)


def setdcl_parameters(f1, f2, f3, f4, f5, in_q=3, classes=2):
    """Closed form of the released AAS_DCL_w_ini layout: 5x5 convolutions with bias and BN (2 per channel)."""
    conv = lambda cin, cout, k=5: k * k * cin * cout + cout + 2 * cout  # noqa: E731  (+ BN)
    block = lambda cin, cout, n=2: conv(cin, cout) + (n - 1) * conv(cout, cout)  # noqa: E731
    total = block(in_q, f1) + block(in_q + 1, f1) + block(f1, f2) + block(f2, f3) + block(f3, f4) + block(f4, f5, 1)
    total += sum(c + 1 for c in (f1, f2, f3, f4, f5))  # sSE 1x1 convolutions
    for high, low in ((f5, f4), (f4, f3), (f3, f2), (f2, f1)):
        total += block(high, low, 3) + block(2 * low, low)  # up_conv (3 convs), conv_block after the skip
    total += block(2 * f5 + 1, f5, 1) + block(2 * f1, f1, 1) + block(2 * f1 + 1, f1, 1)  # fusion, CorrConv, fusion_
    return total + 9 * f1 * f1 + f1 + f1 * classes + classes  # head: 3x3 + ReLU + 1x1


def test_network_size_matches_the_released_layout():
    # the paper gives no parameter count: the released widths are checked exactly against the closed form
    with torch.device("meta"):
        full = SETDCLNet()
    assert count_parameters(full) == setdcl_parameters(32, 64, 128, 256, 512) == 35_038_247
    assert count_parameters(SETDCLNet(features=SMALL)) == setdcl_parameters(*SMALL)


def episode(b=2, n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, 8:20, 10:22] = 1
    return dict(support_image=torch.rand(b, 1, size, size, generator=g), support_mask=mask,
                query_image=torch.rand(b, 1, size, size, generator=g), query_prior=mask.roll(2, -1),
                negative_image=torch.rand(b, n, 1, size, size, generator=g),
                negative_mask=(torch.rand(b, n, 1, size, size, generator=g) > 0.6).float())


def test_forward_shapes_losses_and_gradients():
    torch.manual_seed(0)
    network = SETDCLNet(features=SMALL)
    out = network(**episode())
    assert out["probabilities"].shape == (2, 2, 32, 32)
    assert torch.allclose(out["probabilities"].sum(1), torch.ones(2, 32, 32), atol=1e-5)
    assert set(out["losses"]) == {"cpcl", "ppcl", "ccl"} and all(torch.isfinite(v) for v in out["losses"].values())
    sum(out["losses"].values()).backward()
    assert network.Conv1.__getitem__(0).weight.grad.abs().sum() > 0  # negatives and query reach the query encoder
    no_negatives = network(**{**episode(), "negative_image": None, "negative_mask": None})
    assert "losses" not in no_negatives


def test_guidance_pools_the_query_prototype_under_the_prior():
    torch.manual_seed(0)
    guided, plain = SETDCLNet(features=SMALL, guidance="mrf"), SETDCLNet(features=SMALL, guidance="none")
    plain.load_state_dict(guided.state_dict())
    guided.eval(), plain.eval()
    x5_sq = torch.randn(2, 64, 4, 4)
    prior = torch.zeros(2, 1, 32, 32)
    prior[0, :, :8, :8] = 1  # sample 0: the top-left cell; sample 1: empty prior -> global average pooling
    query = guided.query_prototype(x5_sq, prior)
    assert torch.allclose(query[0], x5_sq[0, :, 0, 0], atol=1e-4)
    assert torch.allclose(query[1], x5_sq[1].mean((1, 2)))
    assert torch.allclose(plain.query_prototype(x5_sq, prior), x5_sq.mean((2, 3)))
    inputs = episode()
    with torch.no_grad():
        a, b = guided(**inputs)["losses"]["cpcl"], plain(**inputs)["losses"]["cpcl"]
        c = guided(**{**inputs, "query_prior": torch.ones_like(inputs["query_prior"])})["losses"]["cpcl"]
    assert not torch.isclose(a, b) and torch.isclose(c, b, atol=1e-4)  # a full prior = global average pooling


def test_masked_average_and_sim_prior():
    features = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2, :2] = 1
    expected = features[:, :, :2, :2].mean((2, 3))
    assert torch.allclose(masked_average(features, mask), expected, atol=1e-3)
    network = SETDCLNet(features=(4, 8, 16, 32, 3))
    prior = network.sim_prior(features, features.flip(-1), mask)
    assert prior.shape == (2, 4, 4, 4) and prior[:, 0].min() >= 0 and prior[:, 0].max() <= 1 + 1e-6
    fg, bg = network.prototypes(features, mask)
    assert torch.allclose(prior[:, 1:, 0, 0], fg + bg)  # the code's broadcast prototype: colon + background


def reference_infonce(q, p, n, tau):
    q, p, n = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (q, p, n))
    values = []
    for i in range(len(q)):
        negatives = n if n.ndim == 2 else n[i]
        logits = np.concatenate([[q[i] @ p[i]], negatives @ q[i]]) / tau
        values.append(-logits[0] + math.log(np.exp(logits).sum()))
    return float(np.mean(values))


@pytest.mark.parametrize("mode", ["unpaired", "paired"])
def test_infonce_matches_the_reference_formula(mode):
    # info-nce-pytorch's definition: -q.p/tau + log(exp(q.p/tau) + sum_i exp(q.n_i/tau)) on unit vectors
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    n = rng.normal(size=(7, 8)) if mode == "unpaired" else rng.normal(size=(5, 7, 8))
    value = infonce(*(torch.from_numpy(x) for x in (q, p, n)), temperature=0.1, negative_mode=mode)
    assert value.item() == pytest.approx(reference_infonce(q, p, n, 0.1), rel=1e-9)
    # a query equal to its positive and orthogonal to every negative: the loss is log(1 + M exp(-1/tau))... -> small
    e = torch.eye(8, dtype=torch.float64)
    assert infonce(e[:1], e[:1], e[1:4], 0.1).item() == pytest.approx(math.log(1 + 3 * math.exp(-10.0)), rel=1e-9)


@pytest.mark.parametrize("mode", ["unpaired", "paired"])
def test_infonce_equals_info_nce_pytorch(mode):
    # the library itself where it is installed (not a dependency; checked equal with info-nce-pytorch 0.1.4)
    info_nce = pytest.importorskip("info_nce")
    torch.manual_seed(0)
    q, p = torch.randn(5, 8), torch.randn(5, 8)
    n = torch.randn(7, 8) if mode == "unpaired" else torch.randn(5, 7, 8)
    expected = info_nce.InfoNCE(temperature=0.1, negative_mode=mode)(q, p, n)
    assert torch.isclose(infonce(q, p, n, 0.1, mode), expected, atol=1e-6)


def test_refinement_keeps_the_most_consistent_prediction():
    torch.manual_seed(1)
    refined = SETDCLNet(features=SMALL, refine_iters=5).eval()
    single = SETDCLNet(features=SMALL, refine_iters=0).eval()
    single.load_state_dict(refined.state_dict())
    inputs = {**episode(), "negative_image": None, "negative_mask": None}
    with torch.no_grad():
        assert (refined(**inputs)["consistency_mse"] <= single(**inputs)["consistency_mse"] + 1e-7).all()


# -- the task -------------------------------------------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """A stand-in network: the query's foreground is its image > 0.5 where the support mask's row band overlaps."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, support_image, support_mask, query_image, query_prior=None, negative_image=None,
                negative_mask=None):
        self.calls.append(query_prior is not None)
        p = (query_image[:, :1] > 0.5).float() * (support_mask.sum() > 0)
        p = p.clamp(0.01, 0.99) + 0 * self.weight
        out = {"probabilities": torch.cat([1 - p, p], 1)}
        if negative_image is not None:
            out["losses"] = {"cpcl": torch.tensor(2.0), "ppcl": torch.tensor(3.0), "ccl": torch.tensor(4.0),
                             "other": torch.tensor(100.0)}
        return out


def make_task(**kwargs):
    return EpisodicSegmentationTask(Oracle(), aux_term_weights={"cpcl": 0.08, "ppcl": 0.12, "ccl": 0.06}, **kwargs)


def test_episode_loss_is_weighted_nll_plus_weighted_dcl():
    task = make_task()
    probabilities = torch.softmax(torch.randn(2, 2, 8, 8), 1)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.05, 1.0]))(torch.log(probabilities), mask[:, 0].long())
    assert torch.isclose(task.cross_entropy(probabilities, mask), reference)
    literal = make_task(ce_on_probs=True).cross_entropy(probabilities, mask)
    assert torch.isclose(literal, F.cross_entropy(probabilities, mask[:, 0].long(), weight=torch.tensor([0.05, 1.0])))
    out = task.episode_losses({"probabilities": probabilities, "losses": {"cpcl": torch.tensor(2.0),
                                                                        "ppcl": torch.tensor(3.0),
                                                                        "ccl": torch.tensor(4.0)}}, mask)
    dcl = 0.08 * 2 + 0.12 * 3 + 0.06 * 4
    assert torch.isclose(out["loss"], 0.9 * reference + 0.1 * torch.tensor(dcl))


def scan(depth=12, gap=(6,)):
    """A (1, 1, 8, 8, depth) scan whose image equals its mask: a square in every slice but the ``gap`` slices."""
    mask = torch.zeros(1, 1, 8, 8, depth)
    mask[:, :, 2:6, 2:6, :] = 1
    for z in gap:
        mask[..., z] = 0
    return mask.clone(), mask


def test_propagation_from_the_start_slice_stops_after_empty_predictions():
    image, mask = scan(depth=12, gap=(7, 8, 9))
    task = make_task(stop_after_empty=3)
    prior = torch.zeros_like(mask)
    prior[..., 2] = mask[..., 2]
    prediction = task.segment_volume(image, prior, start_slice=2)
    covered = prediction[0, 0].flatten(0, 1).amax(0)
    # slices 0-6 reached from slice 2, then 3 empty predictions (7-9) stop the upward pass before 10-11
    assert covered.tolist() == [1] * 7 + [0] * 5
    moved = task.segment_volume(image, prior, start_slice=9)  # no initial label at slice 9: start at slice 2
    assert torch.equal(moved, prediction)
    tolerant = make_task(stop_after_empty=4).segment_volume(image, prior, start_slice=2)
    assert tolerant[0, 0].flatten(0, 1).amax(0).tolist() == [1] * 7 + [0] * 3 + [1] * 2
    # the released validation protocol: each slice with its lower neighbour's ground truth
    oracle = make_task(inference_support="gt_neighbour").segment_volume(image, prior, 0, mask)
    assert oracle[0, 0].flatten(0, 1).amax(0).tolist() == [1] * 7 + [0] * 4 + [1]  # slice 10's support (9) is empty
    assert make_task(use_prior=False).network.calls == []


def test_test_step_scores_the_network_the_prior_and_all_background(tmp_path):
    import lightning as L

    image, mask = scan(depth=6, gap=())
    prior = mask.clone()
    prior[..., 3:] = 0
    batch = {keys.IMAGE: image, keys.MASK: mask, keys.PRIOR: prior, keys.START_SLICE: torch.tensor([0]),
             keys.NAME: ["scan0"]}

    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {k: (v[0] if torch.is_tensor(v) else v[0]) for k, v in batch.items()}

    task = make_task()
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.test(task, torch.utils.data.DataLoader(One(), batch_size=1), verbose=False)[0]
    assert results["test/dice"] == pytest.approx(1.0)
    assert results["test/prior/dice"] == pytest.approx(2 * 3 / (3 + 6))
    assert results["test/dice_all_background"] == 0.0


# -- the MRF pipeline ----------------------------------------------------------------------------------------------
def test_em_recovers_the_four_hu_modes_like_sklearn():
    rng = np.random.default_rng(0)
    truth = np.array([-940.0, -100.0, 40.0, 450.0])  # inside the histogram range (-1000, 1000)
    sizes = [5000, 10000, 7500, 1500]
    samples = np.concatenate([rng.normal(m, s, n) for m, s, n in zip(truth, (15, 25, 20, 60), sizes)])
    mixture = fit_hu_mixture(samples)
    assert np.allclose(mixture.means, truth, atol=15)
    assert np.allclose(mixture.weights, np.array(sizes) / sum(sizes), atol=0.02)
    reference = GaussianMixture(4, means_init=np.array([[-950.0], [-100.0], [100.0], [500.0]]), random_state=0)
    reference.fit(samples[(samples > -1000) & (samples < 1000), None])
    assert np.allclose(np.sort(reference.means_.ravel()), mixture.means, atol=15)
    th1, th2 = em_thresholds(mixture)
    assert truth[0] < th1 < truth[1] and truth[2] < th2 < truth[3]


def test_thresholds_are_where_the_weighted_densities_cross():
    mixture = HUMixture(np.array([0.25] * 4), np.array([-1000.0, -100.0, 40.0, 500.0]), np.array([50.0, 50, 50, 50]))
    th1, th2 = em_thresholds(mixture)
    assert th1 == pytest.approx(-550, abs=1) and th2 == pytest.approx(270, abs=1)  # equal weights and widths: midpoints


def test_graph_cut_smooths_isolated_pixels_and_keeps_regions():
    p = np.full((20, 20), 0.2)
    p[5:15, 5:15] = 0.8
    p[2, 2] = 0.7  # an isolated noisy pixel
    p[9, 9] = 0.3  # a hole
    labels = graph_cut_slice(p, gamma=1.0)
    assert labels[5:15, 5:15].all() and not labels[2, 2] and labels.sum() == 100
    assert (graph_cut_slice(p, gamma=0.0) == (p > 0.5)).all()
    # the same MAP labelling as PyMaxflow's grid graph built directly
    import maxflow

    rng = np.random.default_rng(0)
    noisy = np.clip(p + rng.normal(0, 0.25, p.shape), 0.01, 0.99)
    graph = maxflow.Graph[float]()
    grid = graph.add_grid_nodes(noisy.shape)
    graph.add_grid_edges(grid, weights=0.8, symmetric=True)
    graph.add_grid_tedges(grid, -np.log(noisy), -np.log(1 - noisy))
    graph.maxflow()
    assert (graph_cut_slice(noisy, gamma=0.8) == graph.get_grid_segments(grid)).all()
    assert 0.1 <= potts_gamma(labels) <= 5.0


def test_mrf_finds_the_rectum_and_labels_the_stand_in_colon():
    hu, colon, _ = synthetic_ct_colon(np.random.default_rng(0), stool_probability=0.0)
    result = mrf_initial_label(hu, erosion_iterations=1, dilation_iterations=1)
    z, y, x = result.seed
    assert z < 6 and colon[z, y, x]  # in the lowest slices, inside the tube
    dice = 2 * (result.mask & (colon > 0)).sum() / (result.mask.sum() + colon.sum())
    assert dice > 0.85
    assert detect_rectum(np.zeros_like(colon, bool), hu) is None
