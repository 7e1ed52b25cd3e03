"""SFRSeg-Net's data: rheumatoid-arthritis finger/wrist ultrasound with synovial-fluid masks.

The 49 images come from ultrasoundcases.info; the authors' masks are not public, so a user supplies
them in this layout (card's choice)::

    <data_dir>/images/<id>.png|.jpg|.jpeg|.bmp    RGB-palette ultrasound
    <data_dir>/masks/<id>.png                     binary synovial-fluid mask (white > 127 = fluid)
    <data_dir>/split.csv                          optional: columns id,split with split in {train,test}

Without ``split.csv`` the images are split at random into train and test (39 / 10 of 49: seed 42).
The paper then augments each subset OFFLINE (before training) with deterministic copies
(``offline_variants``): horizontal and vertical flip, 13 rotations and 2 zooms, giving 741 train and
180 test images (741 = 39 x 19, 180 = 10 x 18; the 19th train copy is the "rescaled 1/255" one,
i.e. an identical copy). Training images are split 4:1 into train/validation by base image (so no
augmented copy of a validation image is trained on; the paper's text does not say which). Test
metrics are over the augmented test copies, as in the paper.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError
from lightning_modules.batch import IMAGE, MASK, NAME

LAYOUT = """<data_dir>/images/<id>.png|.jpg|.jpeg|.bmp   RGB ultrasound images
<data_dir>/masks/<id>.png                    binary masks (fluid > 127), same <id>
<data_dir>/split.csv                         optional: header id,split; split = train | test"""
STANDIN_CONFIG = "experiments/sfrseg_net_demo.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ROTATIONS = (30, 45, 75, 90, 115, 135, 150, 175, 200, 225, 250, 270, 315)  # degrees, paper Sect. 4.1
ZOOMS = (0.3, 0.5)  # Keras zoom_range values of the paper


def offline_variants(image: np.ndarray, mask: np.ndarray, rescaled_copy: bool = False
                     ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The paper's deterministic augmentation of one image: 18 variants (19 with the rescaled copy).

    original, h-flip, v-flip, rotations by ``ROTATIONS`` (black corners), and zooms ``ZOOMS`` read as
    Keras zoom factors 1 - z (0.7, 0.5) on the sampling grid, i.e. magnifications 1/0.7 and 2 about the
    centre. Masks follow with nearest interpolation.
    """
    out = [("orig", image, mask)]
    if rescaled_copy:
        out.append(("rescaled", image, mask))  # "rescaling 1/255": identical after our [0, 1] scaling
    ops: list[tuple[str, A.BasicTransform]] = [("hflip", A.HorizontalFlip(p=1.0)), ("vflip", A.VerticalFlip(p=1.0))]
    ops += [(f"rot{angle}", A.Rotate(limit=(angle, angle), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                                       p=1.0)) for angle in ROTATIONS]
    ops += [(f"zoom{zoom}", A.Affine(scale=1.0 / (1.0 - zoom), border_mode=cv2.BORDER_CONSTANT, fill=0,
                                     fill_mask=0, p=1.0)) for zoom in ZOOMS]
    for tag, op in ops:
        result = A.Compose([op])(image=image, mask=mask)
        out.append((tag, result["image"], result["mask"]))
    return out


def add_noise(images: np.ndarray, mode: str, seed: int, variance: float = 0.01) -> np.ndarray:
    """uint8 images with ``skimage.util.random_noise`` noise (on [0, 1] values), reproducible from ``seed``."""
    from skimage.util import random_noise

    kwargs = {"var": variance} if mode in ("gaussian", "speckle") else {"amount": variance} if mode == "s&p" else {}
    rng = np.random.default_rng(seed)
    noisy = [random_noise(image, mode=mode, rng=rng, **kwargs) for image in images]
    return np.stack([np.clip(np.round(n * 255), 0, 255).astype(np.uint8) for n in noisy])


class ImageMaskArrays(Dataset):
    """In-memory (H, W, 3) uint8 images and (H, W) {0, 1} masks -> ``{"image", "mask", "name"}``.

    ``image`` is (3, H, W) float in [0, 1] (the paper's 1/255 rescaling), ``mask`` (1, H, W) float.
    """

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], names: Sequence[str]):
        if not len(images) == len(masks) == len(names):
            raise ValueError("images, masks and names differ in length")
        self.images = np.stack(images)
        self.masks = np.stack(masks).astype(np.float32)
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div_(255.0)
        return {IMAGE: image, MASK: torch.from_numpy(self.masks[index])[None], NAME: self.names[index]}


class RAUltrasoundBase(BaseDataModule):
    """Split, offline augmentation and loaders; subclasses supply the base images (``load_samples``).

    Args:
        image_size: network input (128 x 128 in the paper); images bilinear, masks nearest.
        test_fraction: test share when there is no split.csv (10 / 49 as the paper).
        val_fraction: validation share of the training base images (4:1 as the paper).
        offline_augmentation: the paper's 19 (train) / 18 (test) deterministic copies per image.
        seed: split seed (and the test-noise seed).
        test_noise: the paper's Table 6 robustness test: ``gaussian``, ``poisson``, ``s&p`` or
            ``speckle`` noise added to the test images (``skimage.util.random_noise``; variance 0.01,
            for salt & pepper an amount of 0.01 of the pixels); None: clean test images.
    """

    NOISE_MODES = ("gaussian", "poisson", "s&p", "speckle")

    def __init__(self, image_size: Sequence[int] = (128, 128), test_fraction: float = 10 / 49,
                 val_fraction: float = 0.2, offline_augmentation: bool = True, seed: int = 42,
                 test_noise: Optional[str] = None, batch_size: int = 16, num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if not 0 < test_fraction < 1 or not 0 < val_fraction < 1:
            raise ValueError("test_fraction and val_fraction must be in (0, 1)")
        self.image_size = tuple(int(s) for s in image_size)
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.offline_augmentation = offline_augmentation
        self.seed = seed
        if test_noise is not None and test_noise not in self.NOISE_MODES:
            raise ValueError(f"test_noise must be one of {self.NOISE_MODES} or None, got {test_noise!r}")
        self.test_noise = test_noise
        self.split_names: dict[str, list[str]] = {}

    def load_samples(self) -> tuple[list[str], list[np.ndarray], list[np.ndarray], dict[str, str]]:
        """(ids, RGB uint8 images, {0,1} uint8 masks, {id: "train"|"test"} for fixed splits or {})."""
        raise NotImplementedError

    def _resize(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.image_size
        return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
                cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST))

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        ids, images, masks, fixed_split = self.load_samples()
        rng = np.random.default_rng(self.seed)
        if fixed_split:
            train_ids = [i for i in ids if fixed_split[i] == "train"]
            test_ids = [i for i in ids if fixed_split[i] == "test"]
        else:
            order = [ids[k] for k in rng.permutation(len(ids))]
            num_test = max(1, round(self.test_fraction * len(ids)))
            test_ids, train_ids = sorted(order[:num_test]), sorted(order[num_test:])
        shuffled = [train_ids[k] for k in rng.permutation(len(train_ids))]
        num_val = max(1, round(self.val_fraction * len(train_ids)))
        val_ids, train_ids = sorted(shuffled[:num_val]), sorted(shuffled[num_val:])
        if not train_ids or not test_ids:
            raise DatasetError(f"{len(ids)} images are too few for a train/val/test split", layout=LAYOUT,
                               standin_config=STANDIN_CONFIG)
        self.split_names = {"train": train_ids, "val": val_ids, "test": test_ids}
        lookup = {i: self._resize(image, mask) for i, image, mask in zip(ids, images, masks)}
        self.train_set = self._build(train_ids, lookup, rescaled_copy=True)
        self.val_set = self._build(val_ids, lookup, rescaled_copy=True)
        self.test_set = self._build(test_ids, lookup, rescaled_copy=False)
        if self.test_noise is not None:
            self.test_set.images = add_noise(self.test_set.images, self.test_noise, self.seed)

    def _build(self, names: list[str], lookup: dict, rescaled_copy: bool) -> ImageMaskArrays:
        images, masks, out_names = [], [], []
        for name in names:
            image, mask = lookup[name]
            variants = (offline_variants(image, mask, rescaled_copy) if self.offline_augmentation
                        else [("orig", image, mask)])
            for tag, variant_image, variant_mask in variants:
                images.append(variant_image)
                masks.append(variant_mask)
                out_names.append(f"{name}_{tag}")
        return ImageMaskArrays(images, masks, out_names)


def _read(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(f"cannot read image ({error})", path=path, layout=LAYOUT,
                           standin_config=STANDIN_CONFIG) from None


class RAUltrasoundDataModule(RAUltrasoundBase):
    """The RA finger/wrist ultrasound set in the layout of this module's docstring."""

    def __init__(self, data_dir: str = "data/ra_usg", **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)

    def _list(self) -> tuple[list[str], dict[str, Path], dict[str, Path], dict[str, str]]:
        root = self.data_dir
        if not (root / "images").is_dir() or not (root / "masks").is_dir():
            missing = root / ("images" if not (root / "images").is_dir() else "masks")
            raise DatasetError("RA ultrasound folder not found", path=missing, layout=LAYOUT,
                               standin_config=STANDIN_CONFIG)
        images = {p.stem: p for p in sorted((root / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        masks = {p.stem: p for p in sorted((root / "masks").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        if not images:
            raise DatasetError("no images found", path=root / "images", layout=LAYOUT, standin_config=STANDIN_CONFIG)
        without_mask = sorted(set(images) - set(masks))
        if without_mask:
            raise DatasetError(f"{len(without_mask)} image(s) have no mask, e.g. '{without_mask[0]}'",
                               path=root / "masks" / f"{without_mask[0]}.png", layout=LAYOUT,
                               standin_config=STANDIN_CONFIG)
        split: dict[str, str] = {}
        split_file = root / "split.csv"
        if split_file.is_file():
            with open(split_file, newline="") as f:
                rows = list(csv.DictReader(f))
            if not rows or not {"id", "split"} <= set(rows[0]):
                raise DatasetError("split.csv needs a header 'id,split'", path=split_file, layout=LAYOUT)
            split = {row["id"].strip(): row["split"].strip().lower() for row in rows}
            bad = sorted(k for k, v in split.items() if v not in ("train", "test") or k not in images)
            unlisted = sorted(set(images) - set(split))
            if bad or unlisted:
                example = (bad or unlisted)[0]
                raise DatasetError(f"split.csv: id '{example}' " + ("has no image or a split other than train/test"
                                   if bad else "is not listed"), path=split_file, layout=LAYOUT)
        ids = sorted(images)
        return ids, images, {i: masks[i] for i in ids}, split

    def prepare_data(self) -> None:
        self._list()

    def load_samples(self):
        ids, image_paths, mask_paths, split = self._list()
        images, masks = [], []
        for name in ids:
            image, mask = _read(image_paths[name], "RGB"), _read(mask_paths[name], "L")
            if image.shape[:2] != mask.shape:
                raise DatasetError(f"mask size {mask.shape} differs from image size {image.shape[:2]}",
                                   path=mask_paths[name], layout=LAYOUT, standin_config=STANDIN_CONFIG)
            images.append(image)
            masks.append((mask > 127).astype(np.uint8))
        return ids, images, masks, split
