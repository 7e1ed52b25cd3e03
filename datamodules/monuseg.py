"""MoNuSeg 2018 (Kumar et al.): H&E 1000x1000 tissue images with nucleus outlines as XML polygons, rasterised to
binary nuclei masks (HarmonizedSS Table 1: 30 training / 14 test images).

Layout as distributed: ``MoNuSeg 2018 Training Data/Tissue Images/*.tif`` + ``Annotations/*.xml``, and
``MoNuSegTestData/*.tif`` with ``*.xml`` beside them. Each ``<Region>``'s ``<Vertex X Y>`` polygon is filled
(``cv2.fillPoly``); overlapping nuclei merge (binary). Images are scaled to [0, 1] RGB.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image

from datamodules.base import BaseDataModule, DatasetError
from datamodules.segmentation import resolve_augmentation
from datamodules.synapse import SliceDataset

TRAIN_DIR, TEST_DIR = "MoNuSeg 2018 Training Data", "MoNuSegTestData"
MONUSEG_LAYOUT = f"""<data_dir>/
  {TRAIN_DIR}/Tissue Images/TCGA-*.tif     30 H&E images (1000x1000)
  {TRAIN_DIR}/Annotations/TCGA-*.xml       nucleus polygons (<Region><Vertices><Vertex X= Y=/>...)
  {TEST_DIR}/TCGA-*.tif, TCGA-*.xml        14 test images with their annotations"""


def rasterise_xml(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Binary (H, W) uint8 mask with every region polygon of a MoNuSeg XML filled."""
    mask = np.zeros(shape, np.uint8)
    for region in ET.parse(path).getroot().iter("Region"):
        points = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(points) >= 3:
            cv2.fillPoly(mask, [np.round(np.array(points)).astype(np.int32)], 1)
    return mask


def _loader(image_path: Path, xml_path: Path):
    def load():
        image = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0
        return image, rasterise_xml(xml_path, image.shape[:2])
    return load


class MoNuSegDataModule(BaseDataModule):
    """MoNuSeg: the training folder (minus ``val_images`` seeded for validation) and the test folder.

    Args:
        data_dir: the folder holding both release folders.
        image_size: the network's input (224 in the paper: whole images resized).
        val_images: training images held out for validation.
    """

    layout = MONUSEG_LAYOUT
    standin_config = "experiments/harmss_demo.yaml"

    def __init__(self, data_dir: str, image_size: Union[int, Sequence[int]] = 224, augmentation: str = "unext",
                 val_images: int = 3, split_seed: int = 0, batch_size: int = 8, num_workers: int = 4,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.augmentation, self.val_images, self.split_seed = augmentation, val_images, split_seed
        resolve_augmentation(augmentation)

    def error(self, problem: str, path=None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config)

    def pairs(self, images: Path, annotations: Path) -> list[tuple[Path, Path]]:
        if not images.is_dir():
            raise self.error("image folder not found", images)
        out = []
        for image in sorted(p for p in images.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")):
            xml = annotations / f"{image.stem}.xml"
            if not xml.is_file():
                raise self.error(f"image without its annotation (expected {xml.name})", image)
            out.append((image, xml))
        if not out:
            raise self.error("no .tif images", images)
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train = self.pairs(self.data_dir / TRAIN_DIR / "Tissue Images", self.data_dir / TRAIN_DIR / "Annotations")
        test = self.pairs(self.data_dir / TEST_DIR, self.data_dir / TEST_DIR)
        held = set(np.random.default_rng(self.split_seed).permutation(len(train))[:self.val_images].tolist())
        make = lambda pairs, aug: SliceDataset([_loader(*p) for p in pairs], [p[0].stem for p in pairs],  # noqa: E731
                                               self.image_size, aug)
        self.train_set = make([p for i, p in enumerate(train) if i not in held], resolve_augmentation(self.augmentation))
        self.val_set = make([p for i, p in enumerate(train) if i in held], ()) if held else None
        self.test_set = make(test, ())
        self.val_set = self.val_set or self.test_set
        self.predict_set = self.test_set
