"""MDC, the Multi-Dimensional Choledoch dataset (Zhang et al. 2019): 538 microscopic hyperspectral scenes of
cholangiocarcinoma pathology (20x, 60 bands 550-1000 nm) with binary cancer masks.

Read in the layout of the preprocessed Kaggle copy ("mhsi-choledoch-dataset-preprocessed-dataset") as the
Dual-Stream-MHSI code reads it: ENVI cubes under ``MHSI/`` (``spectral.envi.open``), PNG masks (0/255) under
``Mask/`` with the same stem, and a split file ``train_val_test.json`` (keys train / val / test listing ``.hdr``
names: 305 / 108 / 125 scenes). Without the split file, a seeded split grouped by the name prefix before
``-20x`` (one patient's scenes stay together; 3:1:1 like the paper's patient-centric split).

Each cube is resized to ``image_size`` (bilinear per band; masks nearest), z-scored per scene and band
(choice), and augmented in training with albumentations Rotate / HorizontalFlip / VerticalFlip, p = 0.2 each
(the Dual-Stream recipe). Items: ``image`` (C, H, W) float32, ``mask`` (1, H, W) float32 0/1, ``name``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError
from datamodules.seeded_transform import SeededTransform
from lightning_modules.batch import IMAGE, MASK, NAME

CUBE_DIR, MASK_DIR, SPLIT_FILE = "MHSI", "Mask", "train_val_test.json"
LAYOUT = f"""<data_dir>/
  {CUBE_DIR}/<scene>.hdr + <scene>.img|.raw|.dat (ENVI header + binary, 60 bands, e.g. 256 x 320)
  {MASK_DIR}/<scene>.png                (binary cancer mask, 0/255, same stem)
  {SPLIT_FILE}           (optional) {{"train": ["<scene>.hdr", ...], "val": [...], "test": [...]}}"""
STANDIN = "experiments/ss_convlstm_demo.yaml"


def read_cube(hdr: Path) -> np.ndarray:
    """(H, W, C) float32 from an ENVI header (its binary next to it)."""
    import spectral.io.envi as envi

    return np.asarray(envi.open(str(hdr)).load(), dtype=np.float32)


def zscore_bands(cube: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-band z-score of one (H, W, C) scene."""
    mean = cube.mean((0, 1), keepdims=True)
    std = cube.std((0, 1), keepdims=True)
    return (cube - mean) / (std + eps)


def hsi_augmentation(p: float = 0.2, limit: int = 90) -> A.Compose:
    return A.Compose([A.Rotate(limit=limit, p=p), A.HorizontalFlip(p=p), A.VerticalFlip(p=p)])


class HyperspectralDataset(Dataset):
    """Cubes (H, W, C) and masks (H, W) given by ``load(i)`` -> (cube, mask, name); resize, z-score, augment."""

    def __init__(self, load, length: int, image_size: Optional[Sequence[int]] = None,
                 augment: Optional[A.Compose] = None, normalize: bool = True):
        self.load, self.length = load, length
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        # seeded from torch's per-process/per-worker seed: reproducible under seed_everything
        self.augment = None if augment is None else SeededTransform(augment)
        self.normalize = normalize

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        cube, mask, name = self.load(index)
        if self.image_size is not None and cube.shape[:2] != self.image_size:
            size = (self.image_size[1], self.image_size[0])
            cube = np.stack([cv2.resize(cube[..., i], size, interpolation=cv2.INTER_LINEAR)
                             for i in range(cube.shape[-1])], -1)
        if self.image_size is not None and mask.shape[:2] != cube.shape[:2]:
            mask = cv2.resize(mask, (cube.shape[1], cube.shape[0]), interpolation=cv2.INTER_NEAREST)
        if self.normalize:
            cube = zscore_bands(cube)
        if self.augment is not None:
            out = self.augment(image=cube, mask=mask)
            cube, mask = out["image"], out["mask"]
        return {IMAGE: torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1))).float(),
                MASK: torch.from_numpy((np.ascontiguousarray(mask) > 0).astype(np.float32))[None],
                NAME: name}


def group_split(names: Sequence[str], fractions=(0.6, 0.2, 0.2), seed: int = 0) -> dict[str, list[str]]:
    """Seeded split of scene names grouped by the prefix before ``-20x`` (else the whole stem)."""
    groups = sorted({n.split("-20x")[0] for n in names})
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: [n for n in names if n.split("-20x")[0] in set(v)] for k, v in parts.items()}


class MDCDataModule(BaseDataModule):
    """MDC hyperspectral choledoch scenes (layout in the module docstring).

    Args:
        data_dir: the folder holding ``MHSI/``, ``Mask/`` and optionally ``train_val_test.json``.
        image_size: (H, W) every cube is resized to (paper: 256 x 320); None keeps the stored size.
        augment: training augmentation (rotate, flips, p = ``augment_p`` each).
        split_seed: seed of the grouped split used when the split file is missing.
        cache: keep the loaded cubes in memory (a 60 x 256 x 320 float32 scene is 19.7 MB).
    """

    layout = LAYOUT

    def __init__(self, data_dir: str, image_size: Optional[Sequence[int]] = (256, 320), augment: bool = True,
                 augment_p: float = 0.2, split_seed: int = 0, cache: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.augment, self.augment_p = augment, augment_p
        self.split_seed, self.cache = split_seed, cache
        self._cache: dict[str, tuple] = {}

    def error(self, problem: str, path) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=STANDIN)

    def scenes(self) -> dict[str, list[str]]:
        """Scene stems per split."""
        cubes = self.data_dir / CUBE_DIR
        if not cubes.is_dir():
            raise self.error("MDC cube folder not found", cubes)
        stems = sorted(p.stem for p in cubes.glob("*.hdr"))
        if not stems:
            raise self.error("no ENVI headers (*.hdr) in the cube folder", cubes)
        split_file = self.data_dir / SPLIT_FILE
        if split_file.is_file():
            try:
                listed = json.loads(split_file.read_text())
                split = {k: [Path(n).stem for n in listed[k]] for k in ("train", "val", "test")}
            except (KeyError, ValueError, TypeError) as err:
                raise self.error(f"split file unreadable or without train/val/test lists ({err})", split_file)
            for names in split.values():
                for n in names:
                    if n not in stems:
                        raise self.error(f"scene {n!r} of the split file has no header", cubes / f"{n}.hdr")
            return split
        return group_split(stems, seed=self.split_seed)

    def _loader_fn(self, names: list[str]):
        def load(i: int):
            name = names[i]
            if name in self._cache:
                return self._cache[name]
            hdr = self.data_dir / CUBE_DIR / f"{name}.hdr"
            mask_path = self.data_dir / MASK_DIR / f"{name}.png"
            if not mask_path.is_file():
                raise self.error(f"scene {name!r} without a mask", mask_path)
            try:
                cube = read_cube(hdr)
            except Exception as err:  # spectral raises several types for a missing/corrupt binary
                raise self.error(f"unreadable ENVI cube ({err})", hdr) from err
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise self.error("unreadable mask", mask_path)
            item = (cube, mask, name)
            if self.cache:
                self._cache[name] = item
            return item

        return load

    def setup(self, stage: Optional[str] = None) -> None:
        split = self.scenes()
        aug = hsi_augmentation(self.augment_p) if self.augment else None
        self.train_set = HyperspectralDataset(self._loader_fn(split["train"]), len(split["train"]), self.image_size, aug)
        self.val_set = HyperspectralDataset(self._loader_fn(split["val"]), len(split["val"]), self.image_size)
        self.test_set = HyperspectralDataset(self._loader_fn(split["test"]), len(split["test"]), self.image_size)
