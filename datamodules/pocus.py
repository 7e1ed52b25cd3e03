"""POCUS-OOD data: the private POCUS and standard-US sets in ``root/<pocus|us>/<train|test>/{normal,benign,
malignant}/*.png``. Training = POCUS train + US train (validation carved from it), test = POCUS test
(``split: predefined``). Also the paper's augmentation (Keras ImageDataGenerator ranges of 10 %).

OOD test sets (``ood_test_sets``, scored by ``POCUSOODTask``): ``mnist`` (the MNIST test images,
``MNIST/raw/t10k-images-idx3-ubyte``), ``corrupt`` (CorruptPOCUS: every POCUS test image through
``datamodules.ood_sets.corrupt_pocus``, seeded per image) and ``cca`` (a folder of carotid B-mode images); each is
optional (None: left out). ``train_eval_set`` is the training split without augmentation (the training-score
quantiles of the FPR95/80 thresholds and the multi-level rule). ``train_leave_out``: a seeded random fraction of
the training images left out (the deep-ensemble members' diversity, Table 2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import albumentations as A
import numpy as np

from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule
from datamodules.ood_sets import corrupt_pocus, read_mnist_idx
from datamodules.segmentation import IMAGE_EXTENSIONS


def pocus_augmentation() -> list:
    """Zoom, shift and shear of 10 % (shear read as 0.1 rad = 5.7 deg) and a random horizontal flip."""
    return [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), shear=(-5.7, 5.7), p=1.0),
            A.HorizontalFlip(p=0.5)]


class POCUSDataModule(ImageClassificationDataModule):
    """POCUS + standard US (training), POCUS test, and the paper's OOD sets.

    Args:
        use_us: add the standard-US training images.
        mnist_file: the MNIST test idx file (``.../MNIST/raw/t10k-images-idx3-ubyte``, or ``.gz``); None: no MNIST set.
        cca_dir: a folder of carotid (CCA) images, searched recursively; None: no CCA set.
        corrupt_seed: seed of CorruptPOCUS (image i uses ``corrupt_seed * 100000 + i``); None: no CorruptPOCUS set.
        train_leave_out: fraction of the training images left out (seeded by ``leave_out_seed``), 0: none.
    """

    layout = ("<data_dir>/pocus/train/{normal,benign,malignant}/*.png, <data_dir>/pocus/test/{...}/*.png, "
              "<data_dir>/us/train/{normal,benign,malignant}/*.png; OOD: MNIST/raw/t10k-images-idx3-ubyte, "
              "a CCA image folder")
    standin_config = "experiments/pocus_ood_demo.yaml"
    classes = ("normal", "benign", "malignant")

    def __init__(self, data_dir: str = "", use_us: bool = True, image_size: int = 180, channels: int = 1,
                 normalization: str = "unit", split: str = "predefined", mnist_file: Optional[str] = None,
                 cca_dir: Optional[str] = None, corrupt_seed: Optional[int] = 0, train_leave_out: float = 0.0,
                 leave_out_seed: int = 0, **kwargs):
        super().__init__(data_dir=data_dir, image_size=image_size, channels=channels, normalization=normalization,
                         split=split, **kwargs)
        if not 0 <= train_leave_out < 1:
            raise ValueError(f"train_leave_out must be in [0, 1), got {train_leave_out}")
        self.use_us = use_us
        self.mnist_file, self.cca_dir, self.corrupt_seed = mnist_file, cca_dir, corrupt_seed
        self.train_leave_out, self.leave_out_seed = train_leave_out, leave_out_seed

    def list_items(self) -> list[ClassificationItem]:
        items = []
        parts = [("pocus", "train"), ("pocus", "test")] + ([("us", "train")] if self.use_us else [])
        for source, split in parts:
            for item in self.folder_items(self.data_dir / source / split, self.classes):
                items.append(ClassificationItem(item.source, item.label, group=f"{source}/{split}", name=item.name))
        return items

    def make_splits(self) -> dict[str, list[int]]:
        train = [i for i, it in enumerate(self.items) if it.group.endswith("/train")]
        test = [i for i, it in enumerate(self.items) if it.group == "pocus/test"]
        if self.val_fraction > 0:
            train, val = self._holdout(train, self.val_fraction, grouped=False)
        else:
            val = test
        if self.train_leave_out > 0:
            rng = np.random.default_rng(self.leave_out_seed)
            keep = len(train) - int(round(self.train_leave_out * len(train)))
            train = sorted(np.asarray(train)[rng.permutation(len(train))[:keep]].tolist())
        return {"train": train, "val": val, "test": test}

    # ---- OOD sets ----
    def ood_items(self) -> dict[str, list[ClassificationItem]]:
        """{name: unlabelled items} of the OOD test sets."""
        ood = {}
        if self.mnist_file:
            digits = read_mnist_idx(self.mnist_file)
            ood["mnist"] = [ClassificationItem(im, -1, "", f"mnist{i}") for i, im in enumerate(digits)]
        if self.corrupt_seed is not None:
            test = [self.items[i] for i in self.split_indices["test"]]
            ood["corrupt"] = [ClassificationItem(corrupt_pocus(self.read_image(it)[..., 0], self.corrupt_seed * 100_000 + i),
                                                 -1, "", f"corrupt_{it.name}") for i, it in enumerate(test)]
        if self.cca_dir:
            folder = self.require_dir(Path(self.cca_dir).expanduser(), "CCA image folder")
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise self.error("the CCA folder holds no images", folder)
            ood["cca"] = [ClassificationItem(f, -1, "", f.stem) for f in files]
        return ood

    def setup(self, stage: Optional[str] = None) -> None:
        if self.items:
            return
        super().setup(stage)
        self.train_eval_set = self.make_dataset([self.items[i] for i in self.split_indices["train"]], train=False)
        for name, items in self.ood_items().items():
            self.ood_test_sets[name] = self.make_dataset(items, train=False)
