"""BUSI, the Breast Ultrasound Images dataset (Al-Dhabyani et al. 2020), in its public layout.

Download: https://scholar.cu.edu.eg/?q=afahmy/pages/dataset (``Dataset_BUSI_with_GT``; also on
Kaggle). 780 images of three classes (437 benign, 210 malignant, 133 normal) with one or more masks
each (``<name>_mask.png``, ``<name>_mask_1.png``, ...: OR-merged here); normal images have empty masks.

- SACA-UNet: benign + malignant (647 images), holdout 80/20, 256x256.
- UNet-GCN: all three classes, stratified 4-fold CV, lesion/normal-balanced batches (``stratified_batches``).
"""
from __future__ import annotations

import re
from typing import Sequence

from datamodules.segmentation import SegmentationDataModule, SegmentationItem, list_images

BUSI_CLASSES = ("benign", "malignant", "normal")
ROOT_NAME = "Dataset_BUSI_with_GT"
MASK_PATTERN = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$")


class BUSIDataModule(SegmentationDataModule):
    """BUSI: ``<class>/<class> (N).png`` with masks ``<class> (N)_mask[_k].png`` (OR-merged).

    Args:
        data_dir: ``Dataset_BUSI_with_GT`` or the folder that contains it.
        use_classes: the classes used (SACA-UNet: benign, malignant; UNet-GCN: all three).
        (every other argument: ``SegmentationDataModule``; the k-fold split is stratified by class.)
    """

    classes = BUSI_CLASSES
    layout = f"""<data_dir> = {ROOT_NAME}/ (or its parent)
  benign/benign (1).png, benign (1)_mask.png, benign (1)_mask_1.png, ...   (437 images)
  malignant/malignant (1).png, malignant (1)_mask.png, ...                 (210 images)
  normal/normal (1).png, normal (1)_mask.png (empty mask), ...             (133 images)
  masks: 0/255, same size as their image; several masks of one image are merged"""

    def __init__(self, data_dir: str, use_classes: Sequence[str] = ("benign", "malignant"), **kwargs) -> None:
        kwargs.setdefault("image_size", 256)
        super().__init__(data_dir, **kwargs)
        self.use_classes = self.checked_classes(use_classes)

    def list_items(self) -> list[SegmentationItem]:
        root = self.release_root(ROOT_NAME)
        items = []
        for label in self.use_classes:
            folder = self.require_dir(root / label, f"class folder '{label}'")
            files = list_images(folder, (".png",))
            masks: dict[str, list] = {}
            images = []
            for path in files:
                match = MASK_PATTERN.match(path.stem)
                if match:
                    masks.setdefault(match.group("stem"), []).append(path)
                else:
                    images.append(path)
            for image in images:
                found = sorted(masks.get(image.stem, []), key=_mask_order)
                if not found:
                    raise self.error(f"image without a mask (expected '{image.stem}_mask.png')", image)
                items.append(SegmentationItem(image, tuple(found), label))
            orphans = set(masks) - {image.stem for image in images}
            if orphans:
                raise self.error(f"mask without an image ('{sorted(orphans)[0]}.png' missing)", folder)
        return items

    def stratum(self, item: SegmentationItem) -> str:
        """Stratified batches balance lesion and normal images (UNet-GCN)."""
        return "normal" if item.label == "normal" else "lesion"


def _mask_order(path) -> int:
    """``_mask`` first, then ``_mask_1``, ``_mask_2``, ..."""
    suffix = MASK_PATTERN.match(path.stem).group(2)
    return 0 if suffix is None else int(suffix[1:])


def busi_items_per_class(items: Sequence[SegmentationItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    return counts


