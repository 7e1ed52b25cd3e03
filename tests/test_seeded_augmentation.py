"""Augmented samples follow torch's seed alone: a rerun under one ``torch.manual_seed`` gives the same pixels and
another seed gives others, whatever numpy's and Python's global generators hold (albumentations 2 seeds its own
generators from OS entropy unless told: ``datamodules.seeded_transform.SeededTransform``).

One case per augmentation path: the image classification family (FER stand-in with ``fer_augmentation``, the
dermoscopy stand-in with ``dermoscopy_augmentation`` after debasing, the POCUS stand-in with
``pocus_augmentation``), the segmentation family (ultrasound lesions with UNet-GCN's Table 1 RandAugment), the
MDC hyperspectral cubes (``hsi_augmentation``) and the ANHIR pairs (shared affine + random swap). Each "run"
builds its dataset afresh, as a new process would.
"""
import random

import cv2
import numpy as np
import pytest
import torch

NUM_SAMPLES = 6  # several items: one p=0.5 flip alone could coincide by chance


def _fer():
    from datamodules.standins.synthetic_fer import SyntheticFERDataModule

    data = SyntheticFERDataModule(num_per_class=4, augmentation="datamodules.fer2013:fer_augmentation",
                                  num_workers=0)
    data.setup("fit")
    return data.train_set


def _dermoscopy():
    from datamodules.standins.synthetic_lesions import SyntheticDermoscopyDataModule

    data = SyntheticDermoscopyDataModule(num_images=30, source_size=48, image_size=48, debase="asymmetry",
                                         augmentation="datamodules.debasing:dermoscopy_augmentation", num_workers=0)
    data.setup("fit")
    return data.train_set


def _pocus():
    from datamodules.standins.synthetic_breast_us import SyntheticBreastUSDataModule

    data = SyntheticBreastUSDataModule(n_train=12, n_test=6, n_cca=2, n_digits=10, source_size=32, image_size=32,
                                       augmentation="datamodules.pocus:pocus_augmentation", num_workers=0)
    data.setup("fit")
    return data.train_set


def _ultrasound_segmentation():
    from datamodules.standins.synthetic_lesions import SyntheticLesionDataModule

    data = SyntheticLesionDataModule(kind="ultrasound", image_size=32, num_train=NUM_SAMPLES, num_val=1, num_test=1,
                                     augmentation="datamodules.ultrasound_augment:ultrasound_augmentation")
    data.setup("fit")
    return data.train_set


def _hyperspectral():
    from datamodules.standins.synthetic_hyperspectral import SyntheticHyperspectralDataModule

    data = SyntheticHyperspectralDataModule(num_images=(NUM_SAMPLES, 1, 1), bands=8, image_size=(24, 32),
                                            augment_p=0.5, num_workers=0)
    data.setup("fit")
    return data.train_set


def _anhir(tmp_path):
    from datamodules.anhir import ANHIRPair, ANHIRPairs

    rng = np.random.default_rng(0)
    pairs = []
    for k in range(NUM_SAMPLES):
        paths = []
        for side in ("src", "tgt"):
            path = tmp_path / f"pair{k}_{side}.png"
            cv2.imwrite(str(path), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
            paths.append(path)
        pairs.append(ANHIRPair(f"pair{k}", paths[0], paths[1], None, None, "training"))
    return ANHIRPairs(pairs, size=32, augment=True, swap_probability=0.5)


DATASETS = {"fer": _fer, "dermoscopy": _dermoscopy, "pocus": _pocus, "ultrasound_segmentation": _ultrasound_segmentation,
            "hyperspectral": _hyperspectral, "anhir": _anhir}


def _augmented_run(name: str, tmp_path, seed: int, other_global_seed: int) -> list[torch.Tensor]:
    """A fresh dataset (a new run), torch seeded with ``seed``, numpy's and Python's global generators set to
    something unrelated; the tensors of the first ``NUM_SAMPLES`` items."""
    build = DATASETS[name]
    dataset = build(tmp_path) if name == "anhir" else build()
    torch.manual_seed(seed)
    np.random.seed(other_global_seed)
    random.seed(other_global_seed)
    return [value for index in range(NUM_SAMPLES) for value in dataset[index].values()
            if isinstance(value, torch.Tensor)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal; NaN (e.g. ANHIR's absent-landmark padding) equals NaN."""
    return a.shape == b.shape and a.dtype == b.dtype and (
        torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)))


@pytest.mark.parametrize("name", list(DATASETS))
def test_augmentation_follows_torch_seed_only(name, tmp_path):
    first = _augmented_run(name, tmp_path, seed=7, other_global_seed=1)
    rerun = _augmented_run(name, tmp_path, seed=7, other_global_seed=2)
    other_seed = _augmented_run(name, tmp_path, seed=8, other_global_seed=1)
    assert len(first) == len(rerun) == len(other_seed) >= NUM_SAMPLES
    assert all(_same(a, b) for a, b in zip(first, rerun)), f"{name}: same torch seed, different augmentation"
    assert not all(_same(a, b) for a, b in zip(first, other_seed)), f"{name}: the seed does not reach it"
