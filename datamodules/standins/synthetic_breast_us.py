"""POCUS-OOD stand-in: synthetic breast ultrasound (normal: layered echogenic bands; benign: smooth oval,
wider-than-tall hypoechoic lesion with posterior enhancement; malignant: irregular spiculated taller-than-wide
hypoechoic lesion with posterior shadow), all with Rayleigh speckle over a depth-dependent gain; OOD sets:
sklearn digits upsampled, synthetic longitudinal carotids, and CorruptPOCUS of the synthetic test set."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

from datamodules.ood_sets import corrupt_pocus

CLASSES = ("normal", "benign", "malignant")


def _speckle(rng, tissue: np.ndarray) -> np.ndarray:
    h = tissue.shape[0]
    gain = np.linspace(1.0, 0.55, h)[:, None]
    x = tissue * gain * rng.rayleigh(0.8, size=tissue.shape)
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def breast_image(label: int, seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = 0.45 + 0.15 * np.sin(2 * np.pi * (yy * rng.uniform(3, 6) + rng.uniform(0, 1)))
    if label == 0:
        t = t + 0.2 * (np.sin(2 * np.pi * yy * rng.uniform(8, 12)) > 0.6)
    else:
        cy, cx = rng.uniform(0.35, 0.6), rng.uniform(0.3, 0.7)
        if label == 1:
            ry, rx = rng.uniform(0.08, 0.12), rng.uniform(0.15, 0.22)
            r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        else:
            ry, rx = rng.uniform(0.15, 0.22), rng.uniform(0.08, 0.12)
            ang = np.arctan2(yy - cy, xx - cx)
            r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) * (1 + 0.25 * np.sin(rng.integers(5, 9) * ang))
        lesion = r <= 1
        t = np.where(lesion, 0.12, t)
        below = (yy > cy) & (np.abs(xx - cx) < rx) & ~lesion
        t = np.where(below, t * (1.5 if label == 1 else 0.3), t)
    return _speckle(rng, np.clip(t, 0, 1))


def carotid_image(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.mgrid[0:size, 0:size][0] / size
    c, half = rng.uniform(0.35, 0.65), rng.uniform(0.08, 0.14)
    t = np.full((size, size), 0.4)
    t = np.where(np.abs(yy - c) < half, 0.03, t)
    t = np.where(np.abs(np.abs(yy - c) - half - 0.02) < 0.02, 0.95, t)
    return _speckle(rng, t)


def digits_images(size: int = 64) -> np.ndarray:
    from sklearn.datasets import load_digits
    d = load_digits().images  # (1797, 8, 8), 0..16
    return np.stack([(np.clip(zoom(im / 16.0, size / 8, order=1), 0, 1) * 255).astype(np.uint8) for im in d])


def make_split(n: int, seed: int, size: int = 64) -> tuple[list[np.ndarray], list[int]]:
    labels = [i % 3 for i in range(n)]
    return [breast_image(l, seed * 100_000 + i, size) for i, l in enumerate(labels)], labels


def corrupted(images: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    return [corrupt_pocus(im, seed * 100_000 + i) for i, im in enumerate(images)]


# ---------------------------------------------------------------- the DataModule
from datamodules.image_classification import ClassificationItem  # noqa: E402
from datamodules.pocus import POCUSDataModule  # noqa: E402


class SyntheticBreastUSDataModule(POCUSDataModule):
    """The stand-in: ``train``/``test`` synthetic images (balanced), OOD sets ``mnist`` (sklearn digits),
    ``corrupt`` (CorruptPOCUS of the test set) and ``cca`` (synthetic carotids); ``train_eval_set``: the
    training split without augmentation (training-score quantiles)."""

    def __init__(self, n_train: int = 300, n_test: int = 150, n_cca: int = 84, n_digits: int = 1797,
                 source_size: int = 64, seed: int = 0, ood_sets: tuple[str, ...] = ("mnist", "corrupt", "cca"),
                 **kwargs):
        super().__init__(data_dir="", use_us=False, **kwargs)
        self.n_train, self.n_test, self.n_cca, self.n_digits = n_train, n_test, n_cca, n_digits
        self.source_size, self.seed, self.ood_names = source_size, seed, tuple(ood_sets)

    def prepare_data(self) -> None:
        pass

    def list_items(self) -> list[ClassificationItem]:
        tr, ytr = make_split(self.n_train, self.seed * 2 + 1, self.source_size)
        te, yte = make_split(self.n_test, self.seed * 2 + 2, self.source_size)
        self._test_images = te
        return [ClassificationItem(im, y, "pocus/train", f"train{i}") for i, (im, y) in enumerate(zip(tr, ytr))] + \
               [ClassificationItem(im, y, "pocus/test", f"test{i}") for i, (im, y) in enumerate(zip(te, yte))]

    def ood_items(self) -> dict[str, list[ClassificationItem]]:
        ood = {}
        if "mnist" in self.ood_names:
            ood["mnist"] = [ClassificationItem(im, -1, "", f"digit{i}")
                            for i, im in enumerate(digits_images(self.source_size)[:self.n_digits])]
        if "corrupt" in self.ood_names:
            ood["corrupt"] = [ClassificationItem(im, -1, "", f"corrupt{i}")
                              for i, im in enumerate(corrupted(self._test_images, self.seed))]
        if "cca" in self.ood_names:
            ood["cca"] = [ClassificationItem(carotid_image(10_000_000 + i, self.source_size), -1, "", f"cca{i}")
                          for i in range(self.n_cca)]
        return ood
