"""SIIM-ISIC 2020 training set (33,126 dermoscopic images of 2,056 patients), in the ISIC archive's download layout,
its diagnoses mapped to ISIC 2019's classes as the challenge winner did (Ha et al. 2020, the paper's [21]).

Download: https://challenge.isic-archive.com/data/#2020 (``ISIC_2020_Training_JPEG.zip`` -> ``train/*.jpg``,
``ISIC_2020_Training_GroundTruth.csv`` or ``_v2.csv``, ``ISIC_2020_Training_Duplicates.csv``), or Kaggle's
``siim-isic-melanoma-classification`` (``jpeg/train/*.jpg``, ``train.csv``: the same columns). Rows:
image_name, patient_id, sex, age_approx, anatom_site_general_challenge, diagnosis, benign_malignant, target.
The second image of each pair in the duplicates list is dropped (the paper's de-duplication, [50]).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from datamodules.debasing import DebasedDataModule, DermoscopyItem
from datamodules.image_classification import ClassificationItem
from datamodules.isic2019 import ISIC_CLASSES, ISICDataModule, read_csv_rows

#: 2020 diagnosis -> ISIC 2019 class (Ha et al.'s mapping)
DIAGNOSIS_TO_CLASS = {
    "melanoma": "MEL", "nevus": "NV",
    "seborrheic keratosis": "BKL", "lichenoid keratosis": "BKL", "solar lentigo": "BKL", "lentigo nos": "BKL",
    "cafe-au-lait macule": "UNK", "atypical melanocytic proliferation": "UNK", "unknown": "UNK",
}
GROUND_TRUTHS = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv", "train.csv")
IMAGE_DIRS = ("train", "ISIC_2020_Training_JPEG/train", "ISIC_2020_Training_JPEG", "jpeg/train")
DUPLICATES = "ISIC_2020_Training_Duplicates.csv"


def isic2020_class(diagnosis: str) -> Optional[int]:
    """The ISIC 2019 class index of a 2020 ``diagnosis`` (case and '_' insensitive), None if unknown."""
    name = DIAGNOSIS_TO_CLASS.get(diagnosis.strip().lower().replace("_", " "))
    return None if name is None else ISIC_CLASSES.index(name)


def isic2020_items(module: DebasedDataModule, root: Path, masks_dir: Optional[Path] = None) -> list[DermoscopyItem]:
    """Every image of an ISIC 2020 training-set folder ``root`` except the listed duplicates."""
    module.require_dir(root, "ISIC 2020 folder")
    truth = next((root / name for name in GROUND_TRUTHS if (root / name).is_file()), None)
    if truth is None:
        raise module.error(f"ground truth not found (one of {', '.join(GROUND_TRUTHS)})", root)
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images is None:
        raise module.error(f"image folder not found (one of {', '.join(IMAGE_DIRS)})", root)
    rows = read_csv_rows(module, truth, ("image_name", "patient_id", "diagnosis"))
    dropped = set()
    if (root / DUPLICATES).is_file():
        pairs = read_csv_rows(module, root / DUPLICATES, ("image_name_1", "image_name_2"))
        dropped = {r["image_name_2"] for r in pairs}
    masks_dir = root / "masks" if masks_dir is None else masks_dir
    items = []
    for line, row in enumerate(rows, start=2):
        name = row["image_name"]
        if name in dropped:
            continue
        label = isic2020_class(row["diagnosis"])
        if label is None:
            raise module.error(f"line {line}: diagnosis {row['diagnosis']!r} of {name} has no ISIC 2019 class "
                               f"(known: {', '.join(sorted(DIAGNOSIS_TO_CLASS))})", truth)
        image = images / f"{name}.jpg"
        if not image.is_file():
            raise module.error(f"line {line}: image {name} not found", image)
        items.append(DermoscopyItem(image, label, group=f"2020:{row['patient_id'] or name}", name=name,
                                    mask=masks_dir / f"{name}.png"))
    return items


class ISIC2020DataModule(ISICDataModule):
    """The ISIC 2020 training set alone, 9 ISIC 2019 classes (present: MEL, NV, BKL, UNK); patient-grouped splits
    with ``split: group``.

    Args:
        data_dir: the folder holding the ground-truth CSV and ``train/``.
        masks_dir: lesion masks ``<image_name>.png`` (default ``<data_dir>/masks``).
        **kwargs: ``DebasedDataModule`` 's.
    """

    layout = f"""<data_dir>/
  train/ISIC_2637011.jpg, ...              the 33,126 training JPEGs (or ISIC_2020_Training_JPEG/train/, jpeg/train/)
  ISIC_2020_Training_GroundTruth.csv       image_name,patient_id,...,diagnosis,benign_malignant,target
                                           (or ..._GroundTruth_v2.csv, or Kaggle's train.csv)
  {DUPLICATES}        optional: image_name_1,image_name_2 (image_name_2 dropped)
  masks/ISIC_2637011.png, ...              lesion masks (nonzero = lesion): only for the mask-based debasings"""
    def list_items(self) -> list[ClassificationItem]:
        return isic2020_items(self, self.data_dir, self.masks_dir)
