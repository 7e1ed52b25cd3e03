"""Dataset-B (UDIAT, Yap et al. 2018): 163 breast ultrasound images, 110 benign and 53 malignant.

Layout as distributed by the authors (Manchester Metropolitan University, on request)::

    <data_dir>/original/000001.png ... 000163.png    B-mode images
    <data_dir>/GT/000001.png ...                       lesion masks (> 127), same names
    <data_dir>/DatasetB.xlsx                           optional: a row per image, columns
                                                       Image (number), Type (Benign/Malignant), ...

The class list stratifies UNet-GCN's 4-fold CV by benign/malignant; without it the folds are plain
shuffled K-fold. There are no normal images, so no lesion/normal-stratified batches (the card).
The ``.xlsx`` is read with the standard library (an .xlsx is zipped XML), so openpyxl is not needed.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Optional
from xml.etree import ElementTree

from datamodules.segmentation import SegmentationDataModule, SegmentationItem, find_image, list_images

_NS = {"s": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


def read_xlsx_rows(path: Path) -> list[list[str]]:
    """Cell texts of the first worksheet, row by row (columns by letter; gaps as '')."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        shared = []
        if "xl/sharedStrings.xml" in names:
            root = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in si.iter(f"{{{_NS['s']}}}t")) for si in root.findall("s:si", _NS)]
        sheet = "xl/worksheets/sheet1.xml"
        if sheet not in names:
            sheet = sorted(n for n in names if n.startswith("xl/worksheets/sheet"))[0]
        root = ElementTree.fromstring(archive.read(sheet))
    rows = []
    for row in root.iter(f"{{{_NS['s']}}}row"):
        cells: dict[int, str] = {}
        for cell in row.findall("s:c", _NS):
            letters = re.match(r"[A-Z]+", cell.get("r", "A")).group(0)
            column = 0
            for letter in letters:
                column = column * 26 + ord(letter) - 64
            kind = cell.get("t")
            if kind == "inlineStr":
                text = "".join(t.text or "" for t in cell.iter(f"{{{_NS['s']}}}t"))
            else:
                value = cell.find("s:v", _NS)
                text = "" if value is None else value.text or ""
                if kind == "s" and text:
                    text = shared[int(text)]
            cells[column - 1] = text.strip()
        if cells:
            rows.append([cells.get(i, "") for i in range(max(cells) + 1)])
    return rows


class UDIATDataModule(SegmentationDataModule):
    """Dataset-B for UNet-GCN: grey-scale, [0, 1], 256 x 256, stratified 4-fold CV by default."""

    layout = """<data_dir>/
  original/<nnnnnn>.png     B-mode images (000001.png ... 000163.png)
  GT/<nnnnnn>.png           binary lesion masks (> 127), same file names
  DatasetB.xlsx             optional: Image number, Type (Benign / Malignant) per row"""
    standin_config = "experiments/unet_gcn_demo.yaml"
    classes = ("benign", "malignant")

    def __init__(self, data_dir: str = "data/Dataset_B", image_size=256, channels: int = 1,
                 normalization: str = "unit", augmentation: str = "datamodules.ultrasound_augment:ultrasound_augmentation",
                 split: str = "kfold", labels_file: Optional[str] = "DatasetB.xlsx", **kwargs) -> None:
        super().__init__(data_dir, image_size=image_size, channels=channels, normalization=normalization,
                         augmentation=augmentation, split=split, **kwargs)
        self.labels_file = labels_file

    def read_labels(self) -> dict[str, str]:
        """{image stem: 'benign' | 'malignant'} from the class list, {} when there is none."""
        if not self.labels_file:
            return {}
        path = self.data_dir / self.labels_file
        if not path.is_file():
            return {}
        try:
            rows = read_xlsx_rows(path)
        except (zipfile.BadZipFile, ElementTree.ParseError, KeyError, IndexError) as error:
            raise self.error(f"cannot read the class list ({type(error).__name__})", path) from None
        header = [cell.lower() for cell in rows[0]] if rows else []
        type_column = next((i for i, name in enumerate(header) if "type" in name or "class" in name), 1)
        labels = {}
        for row in rows[1:]:
            if len(row) <= type_column or not row[0]:
                continue
            number = row[0].split(".")[0]  # numeric cells may come as '1' or '1.0'
            stem = number.zfill(6) if number.isdigit() else number
            kind = row[type_column].lower()
            if kind not in self.classes:
                raise self.error(f"row of image {row[0]}: type '{row[type_column]}' is not Benign/Malignant", path)
            labels[stem] = kind
        return labels

    def list_items(self) -> list[SegmentationItem]:
        images = self.require_dir(self.data_dir / "original", "images folder")
        masks = self.require_dir(self.data_dir / "GT", "ground-truth folder")
        labels = self.read_labels()
        items = []
        for image in list_images(images):
            mask = find_image(masks, image.stem)
            if mask is None:
                raise self.error(f"image without a mask (looked for {masks / image.stem}.png)", image)
            if labels and image.stem not in labels:
                raise self.error(f"image {image.name} is missing from the class list", self.data_dir / self.labels_file)
            items.append(SegmentationItem(image, (mask,), labels.get(image.stem)))
        return items
