"""SMDGC's graph cut: the 26-neighbourhood, Eq. 14 against a loop-by-loop reference, every α-β swap move against
brute force (it is the optimal move, so the energy never increases), the deep-learned swap's fixed voxels, the
shape template's distance function, the Gaussian intensity models and the post-processor's region of interest."""
import itertools

import numpy as np
import pytest
from scipy import ndimage

from lightning_modules.graphcut import alpha_beta_swap, confident_nodes, grid_edges, half_neighbourhood, swap_move
from lightning_modules.smdgc import (GaussianIntensityModel, GraphCutEnergy, GraphCutPostprocessor,
                                     boundary_distance)


def test_26_neighbourhood_edges():
    assert len(half_neighbourhood(3)) == 13 and len(half_neighbourhood(3, 1)) == 3 and len(half_neighbourhood(2)) == 4
    i, j, distance = grid_edges((3, 3, 3), np.ones((3, 3, 3), bool))
    # 3 axis offsets x 18 pairs + 6 face diagonals x 12 + 4 space diagonals x 8
    assert len(i) == 3 * 18 + 6 * 12 + 4 * 8 == 158
    degree = np.bincount(np.concatenate([i, j]), minlength=27)
    assert degree[13] == 26  # the centre voxel
    assert sorted(set(np.round(distance, 6))) == pytest.approx([1.0, np.sqrt(2), np.sqrt(3)])
    assert len({(a, b) for a, b in zip(i, j)} | {(b, a) for a, b in zip(i, j)}) == 2 * 158  # each pair once
    _, _, scaled = grid_edges((2, 2, 1), np.ones((2, 2, 1), bool), spacing=(0.5, 2.0, 1.0))
    assert sorted(scaled) == pytest.approx(sorted([0.5, 2.0, 2.0, 0.5, np.sqrt(4.25), np.sqrt(4.25)]))
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 0] = True
    i, j, _ = grid_edges((4, 4, 4), mask)
    assert len(i) == 1  # only the (1,1,1)-(2,2,2) diagonal joins two nodes


def random_problem(shape=(2, 2, 3), labels=4, seed=0, shape_term=True):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(labels) * 0.7, size=shape).astype(np.float64)  # (*S, L)
    image = rng.normal(size=shape)
    distance_map = rng.uniform(0, 3, size=shape)
    nodes = np.ones(shape, bool)
    i, j, d = grid_edges(shape, nodes)
    unary = -np.log(np.clip(probabilities, 1e-6, 1)).reshape(-1, labels)
    energy = GraphCutEnergy(unary, i, j, d, image.ravel(), image.std(), probabilities.reshape(-1, labels), "dgc",
                            distance_map.ravel() if shape_term else None)
    return energy, probabilities, image, distance_map, rng


def reference_energy(labels, probabilities, image, distance_map, shape_term=True):
    """Eq. 14 voxel by voxel: sum over unordered 26-neighbour pairs with f_x != f_y of B + eta S, plus -ln P."""
    shape = image.shape
    sigma = image.std()
    f = labels.reshape(shape)
    total = sum(-np.log(max(probabilities[x][f[x]], 1e-6)) for x in np.ndindex(shape))
    for x in np.ndindex(shape):
        for offset in itertools.product((-1, 0, 1), repeat=3):
            y = tuple(np.add(x, offset))
            if offset == (0, 0, 0) or not all(0 <= c < s for c, s in zip(y, shape)) or y < x:
                continue
            a, b = f[x], f[y]
            if a == b:
                continue
            alpha, beta = min(a, b), max(a, b)
            Px, Py = probabilities[x], probabilities[y]
            K = 1 - abs(Px[alpha] - Py[alpha])
            delta = max(abs(Px[alpha] - Py[alpha]) + abs(Px[beta] - Py[beta]), 1e-3)
            B = K * np.exp(-(image[x] - image[y]) ** 2 / (2 * sigma ** 2)) / np.linalg.norm(offset) / delta
            S = 0.5 * (distance_map[x] + distance_map[y]) if shape_term else 0.0
            total += B + np.exp(-(Px[a] - Py[b]) ** 2) * S
    return total


@pytest.mark.parametrize("shape_term", [True, False])
def test_energy_is_eq14(shape_term):
    energy, probabilities, image, distance_map, rng = random_problem(shape_term=shape_term)
    for _ in range(3):
        labels = rng.integers(0, 4, energy.num_nodes)
        assert energy.energy(labels) == pytest.approx(reference_energy(labels, probabilities, image, distance_map,
                                                                      shape_term), rel=1e-10)


def brute_force_move(energy, labels, alpha, beta, movable=None):
    free = np.flatnonzero(((labels == alpha) | (labels == beta)) & (True if movable is None else movable))
    best = np.inf
    for choice in itertools.product((alpha, beta), repeat=len(free)):
        candidate = labels.copy()
        candidate[free] = choice
        best = min(best, energy.energy(candidate))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_swap_move_is_the_brute_force_optimum(seed):
    energy, probabilities, *_ , rng = random_problem(seed=seed)
    labels = rng.integers(0, 4, energy.num_nodes)
    for alpha, beta in itertools.combinations(range(4), 2):
        movable = rng.random(energy.num_nodes) > 0.2
        moved, free = swap_move(energy, labels, alpha, beta, movable)
        assert free == int((((labels == alpha) | (labels == beta)) & movable).sum())
        assert energy.energy(moved) == pytest.approx(brute_force_move(energy, labels, alpha, beta, movable), abs=1e-8)
        assert np.array_equal(moved[~movable], labels[~movable])  # nodes out of the move keep their labels
        assert np.array_equal(moved[(labels != alpha) & (labels != beta)], labels[(labels != alpha) & (labels != beta)])
        assert energy.energy(moved) <= energy.energy(labels) + 1e-9
        assert energy.delta(labels, moved) == pytest.approx(energy.energy(moved) - energy.energy(labels), abs=1e-9)
        labels = moved


def test_swap_never_increases_the_energy_and_the_deep_swap_keeps_confident_voxels():
    energy, probabilities, *_ , rng = random_problem(shape=(4, 4, 3), seed=3)
    P = probabilities.reshape(-1, 4)
    start = P.argmax(1)
    plain, info = alpha_beta_swap(energy, start, max_cycles=5)
    assert info["energies"][-1] == pytest.approx(energy.energy(plain))  # the tracked energy is the labelling's
    assert np.all(np.diff(info["energies"]) <= 1e-9) and info["energies"][-1] < info["energies"][0]
    # a local minimum: no single move lowers it further
    for alpha, beta in itertools.combinations(range(4), 2):
        assert energy.energy(swap_move(energy, plain, alpha, beta)[0]) >= info["energies"][-1] - 1e-8
    confident = confident_nodes(P, tau=0.3)
    seen = []

    def recording(alpha, beta, labels):
        keep = confident(alpha, beta, labels)
        seen.append((labels.copy(), keep))
        return keep

    deep, deep_info = alpha_beta_swap(energy, start, confident=recording, max_cycles=1)
    assert np.all(np.diff(deep_info["energies"]) <= 1e-9)
    assert deep_info["free_nodes"] < info["free_nodes"] / max(1, info["cycles"])  # smaller cuts than a plain cycle
    margin_kept = [(P[:, a] - P[:, b]) for a, b in itertools.combinations(range(4), 2)]
    for (labels_before, keep), margin, (a, b) in zip(seen, margin_kept, itertools.combinations(range(4), 2)):
        assert np.all(np.abs(margin[keep]) > 0.3)  # only confident voxels are fixed...
        assert np.all(np.isin(labels_before[keep], (a, b)))
    # ... and frozen nodes never change
    frozen = rng.random(energy.num_nodes) < 0.3
    result, _ = alpha_beta_swap(energy, start, frozen=frozen)
    assert np.array_equal(result[frozen], start[frozen])


def test_boundary_distance_of_a_cube():
    probabilities = np.zeros((2, 9, 9, 9))
    probabilities[1, 2:7, 2:7, 2:7] = 0.9
    probabilities[0] = 1 - probabilities[1]
    distance = boundary_distance(probabilities, kappa=0.5)
    assert distance[2, 4, 4] == 0 and distance[1, 4, 4] == 0  # inner boundaries of the cube and of the background
    assert distance[4, 4, 4] == pytest.approx(2.0) and distance[3, 4, 4] == pytest.approx(1.0)
    assert distance[0, 4, 4] == pytest.approx(1.0)
    assert np.allclose(boundary_distance(np.stack([np.ones((4, 4, 4)), np.zeros((4, 4, 4))])), 0)  # no boundary
    halved = boundary_distance(probabilities, 0.5, spacing=(0.5, 0.5, 0.5))
    assert halved[4, 4, 4] == pytest.approx(1.0)


def test_gaussian_intensity_model_matches_numpy():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (2, 1, 5, 5, 5))
    image = np.stack([mask[:, 0] * 1.0, -mask[:, 0] * 2.0], 1) + rng.normal(size=(2, 2, 5, 5, 5))
    model = GaussianIntensityModel(3).fit([{"image": image[:1], "mask": mask[:1]}, {"image": image[1:], "mask": mask[1:]}])
    for k in range(3):
        values = np.moveaxis(image, 1, -1)[mask[:, 0] == k]
        assert model.mean[k] == pytest.approx(values.mean(0))
        assert model.var[k] == pytest.approx(values.var(0))
    nll = model.negative_log_likelihood(image[0])
    x = image[0][:, 1, 2, 3]
    expected = 0.5 * (((x - model.mean[2]) ** 2) / model.var[2] + np.log(2 * np.pi * model.var[2])).sum()
    assert nll[2, 1, 2, 3] == pytest.approx(expected)
    with pytest.raises(ValueError, match="every class"):
        GaussianIntensityModel(4).fit([{"image": image, "mask": mask}])


def blob_probabilities(seed=0, size=14):
    """Noisy 4-class probabilities of a ball with three sectors; returns (probabilities, truth, image)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size) - size / 2 + 0.5] * 3, indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(0))
    truth = np.where(radius < 4.5, np.where(grid[0] > 0, 1, np.where(grid[1] > 0, 2, 3)), 0)
    logits = 3.0 * np.eye(4)[truth].transpose(3, 0, 1, 2) + rng.normal(scale=1.2, size=(4,) + truth.shape)
    probabilities = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    image = (truth * 0.2 + rng.normal(scale=0.1, size=truth.shape))[None]
    return probabilities.astype(np.float32), truth, image.astype(np.float32)


def test_postprocessor_region_of_interest_and_energy_decrease():
    probabilities, truth, image = blob_probabilities()
    for variant in ("smdgc", "dgc_swap", "dgc_deep_swap"):
        post = GraphCutPostprocessor(variant, roi_dilation=2)
        energy, labels, nodes, frozen, _ = post.build(probabilities, image)
        roi = ndimage.binary_dilation(probabilities.argmax(0) > 0, np.ones((3, 3, 3)), iterations=2)
        assert nodes[roi].all() and (nodes & ~roi).sum() == frozen.sum() > 0  # the ROI plus a frozen shell
        out, stats = post(probabilities, image)
        assert out.shape == truth.shape and not out[~roi].any()  # outside the ROI: background
        assert stats["energy_end"] <= stats["energy_start"]
        assert stats["nodes"] == nodes.sum()
    deep = GraphCutPostprocessor("dgc_deep_swap", roi_dilation=2)(probabilities, image)[1]
    plain = GraphCutPostprocessor("dgc_swap", roi_dilation=2)(probabilities, image)[1]
    assert deep["free_nodes"] / deep["moves"] < plain["free_nodes"] / plain["moves"]  # smaller graphs per move
    with pytest.raises(ValueError, match="variant"):
        GraphCutPostprocessor("expansion")


def test_intensity_variants_fit_on_training_labels():
    probabilities, truth, image = blob_probabilities(seed=1)
    post = GraphCutPostprocessor("gc_intensity")
    assert post.requires_fit and not GraphCutPostprocessor("smdgc").requires_fit
    with pytest.raises(RuntimeError, match="fit"):
        post(probabilities, image)
    train = [{"image": image[None], "mask": truth[None, None]}]
    post.fit(train)
    out, stats = post(probabilities, image)
    assert stats["energy_end"] <= stats["energy_start"] and out.shape == truth.shape
    wang = GraphCutPostprocessor("adaptive_shape_wang")
    wang.fit(train)
    out_wang, stats_wang = wang(probabilities, image)
    assert stats_wang["energy_end"] <= stats_wang["energy_start"] and stats_wang["nodes"] == truth.size
