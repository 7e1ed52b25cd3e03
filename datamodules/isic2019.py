"""ISIC 2019 training set (25,331 dermoscopic images, 8 diagnostic classes + UNK), in the challenge's download layout.

Download: https://challenge.isic-archive.com/data/#2019 (``ISIC_2019_Training_Input.zip``,
``ISIC_2019_Training_GroundTruth.csv``, ``ISIC_2019_Training_Metadata.csv``). Labels are the one-hot columns of the
ground-truth CSV, in ISIC's order MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK (no training image is UNK); the
metadata's ``lesion_id`` (when given) groups the images of one lesion for grouped splits.

The ABCDE analysis also needs a lesion mask per image for the mask-based debasings (``masks/<image>.png``, any
size; nonzero = lesion): the paper computed them with a DeepLabv3+ trained on ISIC 2017, which is not part of this
repository; any segmentation network's masks (e.g. ``python run.py predict`` of a ``SegmentationTask`` trained on
ISIC 2018, ``datamodules.isic2018``, with ``MaskPNGWriter``) can be placed there.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from datamodules.debasing import DebasedDataModule, DermoscopyItem
from datamodules.image_classification import ClassificationItem

#: ISIC 2019's classes, in its ground-truth columns' order (MEL = 0 is the positive class of the analysis)
ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
INPUT_DIR = "ISIC_2019_Training_Input"
GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
METADATA = "ISIC_2019_Training_Metadata.csv"

MASK_HINT = ("the mask-based debasings (asymmetry, borders, mask, diameter, occlusion) and the area baselines need "
             "masks/<image>.png (nonzero = lesion) beside the images' folder; the paper made them with DeepLabv3+ "
             "trained on ISIC 2017 (not included: bring your own segmentation network's masks)")


def read_csv_rows(module: DebasedDataModule, path: Path, required: tuple[str, ...]) -> list[dict]:
    """The rows of a CSV file with at least the ``required`` columns, as dicts; errors name the file."""
    module.require_file(path, path.name)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise module.error(f"cannot read CSV ({type(error).__name__}: {error})", path) from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise module.error(f"CSV lacks the columns {missing} (has {columns})", path)
    if not rows:
        raise module.error("CSV has no rows", path)
    return rows


def isic2019_items(module: DebasedDataModule, root: Path, masks_dir: Optional[Path] = None) -> list[DermoscopyItem]:
    """Every labelled image of an ISIC 2019 training-set folder ``root`` (errors through ``module``)."""
    images = module.require_dir(root / INPUT_DIR, "image folder")
    rows = read_csv_rows(module, root / GROUND_TRUTH, ("image", *ISIC_CLASSES))
    lesions = {}
    if (root / METADATA).is_file():
        lesions = {r["image"]: (r.get("lesion_id") or "").strip()
                   for r in read_csv_rows(module, root / METADATA, ("image",))}
    masks_dir = root / "masks" if masks_dir is None else masks_dir
    items = []
    for line, row in enumerate(rows, start=2):
        try:
            hot = [float(row[c]) for c in ISIC_CLASSES]
        except ValueError:
            raise module.error(f"line {line}: non-numeric class columns for {row['image']}",
                               root / GROUND_TRUTH) from None
        if sorted(hot) != [0.0] * (len(hot) - 1) + [1.0]:
            raise module.error(f"line {line}: {row['image']} is not one-hot over {', '.join(ISIC_CLASSES)}",
                               root / GROUND_TRUTH)
        image = images / f"{row['image']}.jpg"
        if not image.is_file():
            raise module.error(f"line {line}: image {row['image']} not found", image)
        group = lesions.get(row["image"]) or row["image"]
        items.append(DermoscopyItem(image, hot.index(1.0), group=f"2019:{group}", name=row["image"],
                                    mask=masks_dir / f"{row['image']}.png"))
    return items


class ISICDataModule(DebasedDataModule):
    """What the ISIC readers share: the 9 ISIC 2019 classes, an optional masks folder (default
    ``<data_dir>/masks``) and the hint for mask-based debasings. Subclasses give ``layout`` and ``list_items``."""

    standin_config = "experiments/abcde_demo.yaml"
    classes = ISIC_CLASSES

    def __init__(self, data_dir: str = "", masks_dir: Optional[str] = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        self.masks_dir = Path(masks_dir).expanduser() if masks_dir else None

    def mask_hint(self) -> str:
        return MASK_HINT


class ISIC2019DataModule(ISICDataModule):
    """The ISIC 2019 training set alone (the analysis trains on ISIC 2019 + 2020: ``datamodules.isic19_20``).

    Args:
        data_dir: the folder holding ``ISIC_2019_Training_Input/`` and the CSVs.
        masks_dir: lesion masks ``<id>.png`` (default ``<data_dir>/masks``).
        **kwargs: ``DebasedDataModule`` 's (debase, pre_size, with_mask, image_size, split, ...).
    """

    layout = f"""<data_dir>/
  {INPUT_DIR}/ISIC_0000000.jpg, ...   the 25,331 training images
  {GROUND_TRUTH}            image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot)
  {METADATA}                optional: image,...,lesion_id,... (lesion_id groups images)
  masks/ISIC_0000000.png, ...           lesion masks (nonzero = lesion): only for the mask-based debasings"""
    def list_items(self) -> list[ClassificationItem]:
        return isic2019_items(self, self.data_dir, self.masks_dir)
