"""SFRSeg-Net Table 3's classical methods: each finds a dark disc in speckle; FCM against its update rules."""
import numpy as np
import pytest

from lightning_modules.classical_segmentation import (METHODS, dice_iou, fcm_dark, fuzzy_cmeans, kmeans_dark,
                                                      otsu_dark)


@pytest.fixture(scope="module")
def dark_disc():
    """A dark (anechoic) disc on brighter tissue, Rayleigh speckle as the stand-in's (strength 0.35) plus noise."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:96, :96]
    disc = (rows - 40) ** 2 + (cols - 55) ** 2 < 18 ** 2
    base = np.where(disc, 0.15, 0.6)
    speckle = rng.rayleigh(np.sqrt(2 / np.pi), base.shape)  # unit mean
    image = np.clip(base * (1 + 0.35 * (speckle - 1)) + rng.normal(0, 0.03, base.shape), 0, 1)
    return (image * 255).astype(np.uint8), disc


# Chance level: all-foreground scores 2p / (1 + p) = 0.20 for the disc's share p = 0.11.
BOUNDS = {"ACM": 0.85, "FCM": 0.75, "K-means": 0.75, "Level set": 0.85, "Otsu": 0.75, "Watershed": 0.85}


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_finds_the_dark_disc(name, dark_disc):
    image, disc = dark_disc
    chance = 2 * disc.mean() / (1 + disc.mean())
    prediction = METHODS[name](image)
    assert prediction.dtype == bool and prediction.shape == disc.shape
    dice = dice_iou(prediction, disc)[0]
    assert dice > BOUNDS[name] > chance + 0.5, (name, dice)
    # The fluid is the dark side: the bright complement scores far lower.
    assert dice_iou(~prediction, disc)[0] < 0.3


def test_methods_ignore_the_intensity_scale(dark_disc):
    image, _ = dark_disc
    for name in ("Otsu", "K-means", "FCM", "Watershed"):
        np.testing.assert_array_equal(METHODS[name](image), METHODS[name](image.astype(np.float64) / 255 * 3 - 1))


@pytest.mark.parametrize("name", list(METHODS))
def test_a_flat_image_has_no_fluid_and_bad_input_raises(name):
    assert not METHODS[name](np.full((32, 32), 7.0)).any()
    with pytest.raises(ValueError, match="2D"):
        METHODS[name](np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="finite"):
        METHODS[name](np.full((8, 8), np.nan))


# -- fuzzy c-means ---------------------------------------------------------------------------------------------
def test_fcm_one_step_matches_bezdeks_updates_by_hand():
    """From given memberships, one iteration gives the centres v_i = sum u^2 x / sum u^2 and the memberships
    u_ik = 1 / sum_j (d_ik / d_jk)^2 (m = 2), computed here by hand for three 1D points."""
    x = np.array([0.0, 1.0, 4.0])
    u0 = np.array([[0.8, 0.6, 0.1], [0.2, 0.4, 0.9]])
    centres, u, objective = fuzzy_cmeans(x, c=2, memberships=u0, max_iter=1)
    w = u0 ** 2
    v = (w @ x) / w.sum(1)
    np.testing.assert_allclose(centres[:, 0], v)
    d = np.abs(x[None] - v[:, None])
    expected = 1 / ((d[:, None] / d[None]) ** 2).sum(1)
    np.testing.assert_allclose(u, expected)
    assert objective[0] == pytest.approx((w * d ** 2).sum())


def test_fcm_memberships_objective_and_two_separated_clusters():
    rng = np.random.default_rng(1)
    a, b = rng.normal([0, 0], 0.5, (60, 2)), rng.normal([8, 8], 0.5, (40, 2))
    data = np.concatenate([a, b])
    centres, u, objective = fuzzy_cmeans(data, c=2, seed=3)
    np.testing.assert_allclose(u.sum(0), 1.0)
    assert (u >= 0).all() and (u <= 1).all()
    assert all(later <= earlier + 1e-9 for earlier, later in zip(objective, objective[1:])), objective
    labels = u.argmax(0)
    truth = np.r_[np.zeros(60, int), np.ones(40, int)]
    assert (labels == truth).all() or (labels == 1 - truth).all()
    order = np.argsort(centres[:, 0])
    np.testing.assert_allclose(centres[order], [a.mean(0), b.mean(0)], atol=0.1)
    assert u.max(0).min() > 0.9  # well separated: nearly crisp memberships


def test_fcm_agrees_with_kmeans_and_handles_points_on_a_centre(dark_disc):
    image, _ = dark_disc
    agreement = (fcm_dark(image) == kmeans_dark(image)).mean()
    assert agreement > 0.97
    # Two identical points per cluster: the centres land on them, memberships stay finite and crisp.
    centres, u, _ = fuzzy_cmeans(np.array([0.0, 0.0, 5.0, 5.0]), c=2, seed=0)
    assert np.isfinite(u).all()
    np.testing.assert_allclose(np.sort(centres[:, 0]), [0.0, 5.0], atol=1e-9)


def test_fcm_and_metric_errors():
    with pytest.raises(ValueError, match="c >= 2"):
        fuzzy_cmeans(np.arange(5.0), c=1)
    with pytest.raises(ValueError, match="m > 1"):
        fuzzy_cmeans(np.arange(5.0), c=2, m=1.0)
    with pytest.raises(ValueError, match="N >= c"):
        fuzzy_cmeans(np.arange(2.0), c=3)
    with pytest.raises(ValueError, match="memberships"):
        fuzzy_cmeans(np.arange(4.0), c=2, memberships=np.ones((3, 4)))
    with pytest.raises(ValueError, match="shape"):
        dice_iou(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    assert dice_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == (1.0, 1.0)
    target = np.zeros((4, 4), bool)
    target[:2] = True
    prediction = np.zeros((4, 4), bool)
    prediction[1:3] = True
    assert dice_iou(prediction, target) == pytest.approx((0.5, 1 / 3))
    assert dice_iou(np.zeros((4, 4), bool), target) == (0.0, 0.0)  # missed lesion
    assert not otsu_dark(np.zeros((4, 4))).any()
