"""FER-2013 (Goodfellow et al. 2013; 35,887 grey 48 x 48 faces, 7 emotions) and the base of the facial expression
datasets of FER Grad-CAM (RAF-DB: ``datamodules/rafdb.py``, AffectNet: ``datamodules/affectnet.py``).

``FacialExpressionDataModule``: the paper's protocol for all three: every image pooled (official splits ignored),
labels in the unified order ``EMOTIONS``, a stratified 80 / 20 train / test split and 30 % of the training part for
validation (56 / 24 / 20), inputs resized to 48 x 48, RGB (grey replicated), divided by 255.

FER-2013 is read from either distribution:

- ``fer2013.csv`` (Kaggle): columns ``emotion`` (0 Angry .. 6 Neutral, the unified order), ``pixels`` (2,304
  space-separated grey levels, row-major 48 x 48) and ``Usage`` (ignored: pooled);
- the image-folder re-export ``train|test/<class>/*.{jpg,png}`` (class folders ``angry``, ``disgust``, ``fear``,
  ``happy``, ``sad``, ``surprise``, ``neutral``; both splits pooled).
"""
from __future__ import annotations

import csv
from pathlib import Path
import albumentations as A
import cv2
import numpy as np

from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule

#: The paper's unified label order.
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")



def fer_augmentation() -> list:
    """The card's choice for the paper's unspecified augmentation: horizontal flips and a shift-scale-rotate (shift
    10 %, scale +-10 %, rotation +-10 degrees; edges replicated, Keras's ``fill_mode='nearest'``)."""
    return [A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-10, 10),
                     border_mode=cv2.BORDER_REPLICATE, p=0.5)]


class FacialExpressionDataModule(ImageClassificationDataModule):
    """The FER Grad-CAM protocol's defaults (48 px RGB in [0, 1], stratified 56 / 24 / 20 split, ``EMOTIONS``)."""

    classes = EMOTIONS
    standin_config = "experiments/fer_gradcam_demo.yaml"

    def __init__(self, data_dir: str, image_size: int = 48, channels: int = 3, normalization: str = "unit",
                 test_size: float = 0.2, val_fraction: float = 0.3, **kwargs):
        super().__init__(data_dir, image_size=image_size, channels=channels, normalization=normalization,
                         test_size=test_size, val_fraction=val_fraction, **kwargs)


class FER2013DataModule(FacialExpressionDataModule):
    """FER-2013 from ``fer2013.csv`` or the ``train|test/<class>/`` image folders (module docstring)."""

    layout = """<data_dir>/
  fer2013.csv                   emotion,pixels,Usage (emotion 0-6 = angry, disgust, fear, happy, sad, surprise,
                                neutral; pixels = 2304 space-separated grey levels of a 48x48 image)
or
  train/<class>/*.jpg|png       class folders angry, disgust, fear, happy, sad, surprise, neutral
  test/<class>/*.jpg|png        (train and test are pooled, then re-split 56/24/20)"""

    def list_items(self) -> list[ClassificationItem]:
        table = self.data_dir / "fer2013.csv"
        if table.is_file():
            return self.csv_items(table)
        splits = [self.data_dir / s for s in ("train", "test") if (self.data_dir / s).is_dir()]
        if not splits:
            raise self.error("neither fer2013.csv nor train/ and test/ image folders found", self.data_dir)
        return [item for split in splits for item in self.folder_items(split, EMOTIONS)]

    def csv_items(self, table: Path) -> list[ClassificationItem]:
        items: list[ClassificationItem] = []
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"emotion", "pixels"} - set(reader.fieldnames or [])
            if missing:
                raise self.error(f"fer2013.csv lacks the column(s) {sorted(missing)}", table)
            for row_number, row in enumerate(reader, start=2):
                try:
                    label = int(row["emotion"])
                    pixels = np.array(row["pixels"].split(), dtype=np.int64)
                except (TypeError, ValueError):
                    raise self.error(f"unreadable emotion or pixels at line {row_number}", table) from None
                if not 0 <= label < len(EMOTIONS):
                    raise self.error(f"emotion {label} at line {row_number} is not in 0-6", table)
                if pixels.size != 48 * 48 or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
                    raise self.error(f"line {row_number}: pixels must be 2304 values in 0-255, got {pixels.size}",
                                     table)
                items.append(ClassificationItem(pixels.astype(np.uint8).reshape(48, 48), label,
                                                name=f"fer{row_number - 2:05d}"))
        if not items:
            raise self.error("fer2013.csv holds no rows", table)
        return items

