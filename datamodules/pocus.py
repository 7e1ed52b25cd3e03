"""POCUS-OOD data: the private POCUS and standard-US sets in ``root/<pocus|us>/<train|test>/{normal,benign,
malignant}/*.png``. Training = POCUS train + US train (validation carved from it), test = POCUS test
(``split: predefined``). Also the paper's augmentation (Keras ImageDataGenerator ranges of 10 %)."""
from __future__ import annotations

import albumentations as A

from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule


def pocus_augmentation() -> list:
    """Zoom, shift and shear of 10 % (shear read as 0.1 rad = 5.7 deg) and a random horizontal flip."""
    return [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), shear=(-5.7, 5.7), p=1.0),
            A.HorizontalFlip(p=0.5)]


class POCUSDataModule(ImageClassificationDataModule):
    layout = ("<data_dir>/pocus/train/{normal,benign,malignant}/*.png, <data_dir>/pocus/test/{...}/*.png, "
              "<data_dir>/us/train/{normal,benign,malignant}/*.png")
    standin_config = "experiments/pocus_ood_demo.yaml"
    classes = ("normal", "benign", "malignant")

    def __init__(self, data_dir: str = "", use_us: bool = True, image_size: int = 180, channels: int = 1,
                 normalization: str = "unit", split: str = "predefined", **kwargs):
        super().__init__(data_dir=data_dir, image_size=image_size, channels=channels, normalization=normalization,
                         split=split, **kwargs)
        self.use_us = use_us

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
        return {"train": train, "val": val, "test": test}
