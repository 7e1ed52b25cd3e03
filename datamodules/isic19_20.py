"""ISIC19-20: ISIC 2019 + ISIC 2020 training sets combined (the ABCDE analysis' training data), each in its own
download layout (``datamodules.isic2019``, ``datamodules.isic2020``), plus an optional private test set.

The paper's preprocessing (``DebasedDataModule``): square centre crop of min(H, W), resize to 768, debasing, resize
to the network's size (300 EfficientNet-B3, 256 ResNet-152). Its "internal" split (46,379 train / 1,159 val / 10,426
test of 57,964) is unpublished; ours is seeded: ``split: group`` holds out whole patients (2020) or lesions (2019,
``lesion_id``) with ``test_size`` 0.18 and ``val_fraction`` 0.0244 (the paper's proportions), or ``stratified``.

The private Modena test set (25,849 images) is not public; any further test set in the generic layout
``<private_dir>/images/<image>.jpg|png`` + ``labels.csv`` (``image,label``, label an ISIC 2019 class name) +
``masks/<image>.png`` is tested as ``test/private/...``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from datamodules.debasing import DebasedDataModule, DermoscopyItem
from datamodules.image_classification import ClassificationItem
from datamodules.isic2019 import (GROUND_TRUTH, INPUT_DIR, ISIC_CLASSES, MASK_HINT, isic2019_items,
                                  read_csv_rows)
from datamodules.isic2020 import isic2020_items
from datamodules.segmentation import IMAGE_EXTENSIONS


class ISIC1920DataModule(DebasedDataModule):
    """ISIC 2019 + 2020 (duplicates of the 2020 list dropped), 9 classes, debased; optional private test set.

    Args:
        data_dir: the root holding both sets' folders.
        isic2019_subdir, isic2020_subdir: their folder names under ``data_dir``.
        private_dir: a further test set (``images/``, ``labels.csv``, ``masks/``), tested as ``private``; None: none.
        **kwargs: ``DebasedDataModule`` 's (debase, pre_size, with_mask, test_on_val, image_size, split, ...).
    """

    layout = f"""<data_dir>/
  ISIC2019/{INPUT_DIR}/ISIC_0000000.jpg, ...   ISIC 2019 (datamodules/isic2019.py)
  ISIC2019/{GROUND_TRUTH}, ISIC_2019_Training_Metadata.csv
  ISIC2019/masks/ISIC_0000000.png, ...                   lesion masks (mask-based debasings only)
  ISIC2020/train/ISIC_2637011.jpg, ...                   ISIC 2020 (datamodules/isic2020.py)
  ISIC2020/ISIC_2020_Training_GroundTruth.csv, ISIC_2020_Training_Duplicates.csv
  ISIC2020/masks/ISIC_2637011.png, ...
<private_dir>/ (optional further test set)
  images/<image>.jpg|png, labels.csv (image,label: MEL, NV, BCC, AK, BKL, DF, VASC, SCC or UNK), masks/<image>.png"""
    standin_config = "experiments/abcde_demo.yaml"
    classes = ISIC_CLASSES

    def __init__(self, data_dir: str = "", isic2019_subdir: str = "ISIC2019", isic2020_subdir: str = "ISIC2020",
                 private_dir: Optional[str] = None, **kwargs):
        kwargs.setdefault("split", "group")
        kwargs.setdefault("test_size", 0.18)
        kwargs.setdefault("val_fraction", 0.0244)
        super().__init__(data_dir, **kwargs)
        self.isic2019_subdir, self.isic2020_subdir = isic2019_subdir, isic2020_subdir
        self.private_dir = Path(private_dir).expanduser() if private_dir else None

    def mask_hint(self) -> str:
        return MASK_HINT

    def list_items(self) -> list[ClassificationItem]:
        items = isic2019_items(self, self.data_dir / self.isic2019_subdir)
        items += isic2020_items(self, self.data_dir / self.isic2020_subdir)
        return items

    def private_items(self) -> list[DermoscopyItem]:
        root = self.require_dir(self.private_dir, "private test set folder")
        images = self.require_dir(root / "images", "private images folder")
        rows = read_csv_rows(self, root / "labels.csv", ("image", "label"))
        items = []
        for line, row in enumerate(rows, start=2):
            label = row["label"].strip().upper()
            if label not in ISIC_CLASSES:
                raise self.error(f"line {line}: label {row['label']!r} is not one of {', '.join(ISIC_CLASSES)}",
                                 root / "labels.csv")
            stem = Path(row["image"].strip()).stem
            path = next((images / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS if (images / f"{stem}{ext}").is_file()),
                        None)
            if path is None:
                raise self.error(f"line {line}: image {row['image']} not found", images / row["image"])
            items.append(DermoscopyItem(path, ISIC_CLASSES.index(label), group=f"private:{stem}", name=stem,
                                        mask=root / "masks" / f"{stem}.png"))
        return items

    def setup(self, stage: Optional[str] = None) -> None:
        if self.items:
            return
        super().setup(stage)
        if self.private_dir is not None:
            self.test_sets = {"private": self.make_dataset(self.private_items(), train=False), **self.test_sets}
