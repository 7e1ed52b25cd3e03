"""Offline stand-in of LLDif: the 7-class synthetic expression faces of ``synthetic_fer`` (shared renderer: each
class an action-unit geometry, random identity, pose, light, background), darkened by LLDif's Lightroom law
(``datamodules.low_light``), with the renderer's 68 landmarks as the batch's ``landmarks`` (B, 68, 2) for DLNet (x, y
normalised to the image; a chin point may fall just outside where the face leaves the frame). The clear
(normal-light) test images are the further test set ``normal_light``.

Landmarks are exact only without geometric augmentation, so the stand-in takes none (``augmentation: none``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.image_classification import ClassificationItem
from datamodules.low_light import LowLight
from lightning_modules.batch import LANDMARKS
from datamodules.standins.synthetic_fer import CLASSES, SyntheticFERDataModule, render_expressions



class WithLandmarks(Dataset):
    """A dataset's items with their landmarks added under ``landmarks``."""

    def __init__(self, dataset: Dataset, landmarks: list[np.ndarray]):
        self.dataset, self.landmarks = dataset, landmarks

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], LANDMARKS: torch.from_numpy(self.landmarks[index])}


class SyntheticLowLightFERDataModule(LowLight, SyntheticFERDataModule):
    """``num_per_class`` low-light synthetic faces per class (``CLASSES``, the unified order), stratified
    hold-out split (``test_size``, then ``val_fraction`` of the rest).

    Args:
        num_per_class, size, seed: the renderer's (images per class, side, seed).
        landmarks: add the 68 landmarks to the batch.
        low_light, low_light_seed, noise_std, clear_test, standardize: ``datamodules.low_light.LowLight`` 's.
        **kwargs: ``ImageClassificationDataModule`` 's (image_size, normalization, batch_size, ...).
    """

    classes = CLASSES
    standin_config = "experiments/lldif_demo_laclip.yaml"

    def __init__(self, num_per_class: int = 300, size: int = 64, seed: int = 0, landmarks: bool = True,
                 low_light: bool = True, low_light_seed: int = 0, noise_std: float = 0.0, clear_test: bool = True,
                 standardize: bool = True, image_size: int = 64, normalization: str = "unit", test_size: float = 0.25,
                 val_fraction: float = 0.15, augmentation: str = "none", **kwargs):
        if landmarks and augmentation != "none":
            raise ValueError("the stand-in's landmarks follow no geometric augmentation: use augmentation 'none' "
                             "or landmarks: false")
        super().__init__(num_per_class=num_per_class, size=size, seed=seed, image_size=image_size,
                         normalization=normalization, test_size=test_size, val_fraction=val_fraction,
                         augmentation=augmentation, **kwargs)
        self.with_landmarks = landmarks
        self._landmarks: dict[str, np.ndarray] = {}
        self.init_low_light(low_light, low_light_seed, noise_std, clear_test, standardize)

    def list_items(self) -> list[ClassificationItem]:
        labels = np.repeat(np.arange(len(CLASSES)), self.num_per_class)
        images, _, landmarks = render_expressions(labels, self.size, self.seed, return_landmarks=True)
        names = [f"{CLASSES[y]}_{i:05d}" for i, y in enumerate(labels)]
        self._landmarks = dict(zip(names, landmarks))
        return [ClassificationItem(image, int(y), name=name) for image, y, name in zip(images, labels, names)]

    def preprocess(self, image: np.ndarray, item: ClassificationItem) -> np.ndarray:
        return self.darken(image, item)  # the image alone (synthetic_fer's region masks are not needed)

    def make_dataset(self, items, train: bool) -> Dataset:
        dataset = super().make_dataset(items, train)
        if not self.with_landmarks:
            return dataset
        return WithLandmarks(dataset, [self._landmarks[item.name] for item in items])
