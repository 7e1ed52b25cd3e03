"""RIGA+ (Zenodo record 6325549, prepared for DCAC; read as the CCSDG/ProSFDA code reads it): optic disc (OD) and
optic cup (OC) in colour fundus crops from five domains, for single-source domain generalisation (SAPM, CCSDG).

Layout (``data_dir``)::

    BinRushed.csv  Magrabia.csv  MESSIDOR_Base1.csv  MESSIDOR_Base2.csv  MESSIDOR_Base3.csv
    (also *_train.csv, *_test.csv and MESSIDOR_Base{k}_unlabeled.csv, not needed here)
    BinRushed/...  Magrabia/...  MESSIDOR/...      the images (.tif) and the rater masks the CSVs point to

A CSV has a header line and rows ``image,mask`` with paths relative to ``data_dir``. Every image has six raters'
masks: rater r's file is the CSV's mask path with ``.tif`` replaced by ``-<r>.tif`` (the paper and the CCSDG code
use rater 1). Mask values: 0 background, 255 disc rim, 128 cup; so OD = mask > 0 (the cup lies inside the disc) and
OC = mask == 128. Images are RGB (any PIL format is read).

Protocol (the paper's Tables 1-3): train on every row of one source CSV (``BinRushed`` or ``Magrabia``), test on the
labelled MESSIDOR Base1/Base2/Base3 CSVs, Dice per target domain for OD and OC. The test loaders: every target image
together first (``test/...``), then each target domain (``test/Base1/...``, ...). The paper selects no checkpoint on
the source: ``val_fraction: 0`` validates on the (un-augmented) training images, for monitoring only; ``> 0`` holds
out that share of the source images instead.

Items: ``image`` (3, S, S) float in [0, 1] (the paper's normalisation), ``mask`` (2, S, S) float multi-hot (OD, OC),
``name``. Training augmentation (the paper states none; card's choice): horizontal flip and a mild affine (scale
0.75-1.25, rotation +-15 degrees), albumentations, per sample.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from datamodules.base import BaseDataModule, DatasetError
from datamodules.seeded_transform import SeededTransform
from datamodules.splits import holdout_split
from lightning_modules.batch import IMAGE, MASK, NAME

SOURCES = ("BinRushed", "Magrabia")
TARGETS = ("MESSIDOR_Base1", "MESSIDOR_Base2", "MESSIDOR_Base3")
LABELS = ("OD", "OC")
STANDIN_CONFIG = "experiments/sapm_demo.yaml"
LAYOUT = """<data_dir>/
  BinRushed.csv, Magrabia.csv, MESSIDOR_Base1.csv, MESSIDOR_Base2.csv, MESSIDOR_Base3.csv
      header line, then rows "image,mask" relative to <data_dir>
  <image path>                      RGB fundus crop (.tif in the release)
  <mask path with .tif -> -<r>.tif> rater r's mask: 0 background, 255 disc, 128 cup (r = 1..6)
"""

ArrayOrPath = Union[np.ndarray, Path]


@dataclass(frozen=True)
class FundusItem:
    """One image and its label map (0 background, 255 disc, 128 cup): files, or arrays (stand-ins)."""

    image: ArrayOrPath
    label: ArrayOrPath
    name: str


def od_oc_channels(label: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 multi-hot from a RIGA+ label map: OD = label > 0, OC = label == 128."""
    return np.stack([label > 0, label == 128]).astype(np.float32)


def fundus_augmentation() -> list:
    """The card's training augmentation: ``HorizontalFlip``, ``Affine(scale 0.75-1.25, rotate +-15)``."""
    return [A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.75, 1.25), rotate=(-15, 15), interpolation=cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST, p=0.5)]


class FundusDataset(Dataset):
    """Reads (or takes) image and label map, resizes to ``image_size`` (bilinear / nearest), augments, and returns
    ``{"image": (3, S, S) [0, 1], "mask": (2, S, S) OD/OC multi-hot, "name"}``."""

    def __init__(self, items: Sequence[FundusItem], image_size: int, augment: bool = False,
                 standin_config: Optional[str] = STANDIN_CONFIG):
        self.items = list(items)
        self.standin_config = standin_config
        self.transform = SeededTransform(A.Compose([
            A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
            *(fundus_augmentation() if augment else [])]))

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, source: ArrayOrPath, rgb: bool) -> np.ndarray:
        if isinstance(source, np.ndarray):
            return source
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source) as pil:
                array = np.asarray(pil.convert("RGB")) if rgb else np.asarray(pil)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
            raise DatasetError(f"cannot read {'image' if rgb else 'mask'} ({type(error).__name__})", path=source,
                               layout=LAYOUT, standin_config=self.standin_config) from error
        return array if rgb or array.ndim == 2 else array[..., 0]

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image, label = self._read(item.image, True), self._read(item.label, False)
        if image.shape[:2] != label.shape[:2]:
            raise DatasetError(f"mask of size {label.shape[:2]} for an image of size {image.shape[:2]}",
                               path=item.label if isinstance(item.label, Path) else None, layout=LAYOUT,
                               standin_config=self.standin_config)
        out = self.transform(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(label.astype(np.uint8)))
        tensor = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32) / 255.0)
        return {IMAGE: tensor, MASK: torch.from_numpy(od_oc_channels(out["mask"])), NAME: item.name}


class FundusDomainsDataModule(BaseDataModule):
    """Single-source domain generalisation: train (and validate) on one domain, test on every target domain
    together (``test/``) and on each alone (``test/<domain>/``). Subclasses implement ``list_domains``."""

    def __init__(self, image_size: int = 512, val_fraction: float = 0.0, seed: int = 0, batch_size: int = 8,
                 num_workers: int = 2, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.image_size, self.val_fraction, self.seed = image_size, val_fraction, seed
        self.standin_config: Optional[str] = STANDIN_CONFIG

    def list_domains(self) -> tuple[list[FundusItem], dict[str, list[FundusItem]]]:
        """(source items, {target test-set name: items})."""
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        source, targets = self.list_domains()
        train, val = source, source
        if self.val_fraction > 0:
            train_idx, val_idx = holdout_split(len(source), self.val_fraction, random_state=self.seed)
            train, val = [source[i] for i in train_idx], [source[i] for i in val_idx]
        make = lambda items, augment=False: FundusDataset(items, self.image_size, augment,  # noqa: E731
                                                          self.standin_config)
        self.train_set, self.val_set = make(train, True), make(val)
        self.test_sets = {name: make(items) for name, items in targets.items()}
        self.test_set = ConcatDataset(list(self.test_sets.values()))


class RIGAPlusDataModule(FundusDomainsDataModule):
    """RIGA+ (see the module docstring).

    Args:
        data_dir: the folder holding the CSVs.
        source: the training domain's CSV stem (``BinRushed`` or ``Magrabia``).
        targets: the test domains' CSV stems (MESSIDOR Base1-3); test sets are named without ``MESSIDOR_``.
        rater: whose masks (1-6; the paper: 1).
        image_size: resize to this square size (the paper: 512).
        val_fraction: 0 = validate on the training images (monitoring only); else a source hold-out.
    """

    def __init__(self, data_dir: str = "data/riga_plus", source: str = "BinRushed",
                 targets: Sequence[str] = TARGETS, rater: int = 1, image_size: int = 512, val_fraction: float = 0.0,
                 seed: int = 0, batch_size: int = 8, num_workers: int = 4, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(image_size, val_fraction, seed, batch_size, num_workers, pin_memory, eval_batch_size)
        if not 1 <= rater <= 6:
            raise ValueError(f"RIGA+ has raters 1-6, got {rater}")
        self.data_dir, self.source, self.targets, self.rater = Path(data_dir), source, list(targets), rater

    def _error(self, problem: str, path: Path) -> DatasetError:
        return DatasetError(problem, path=path, layout=LAYOUT, standin_config=STANDIN_CONFIG)

    def read_csv(self, stem: str) -> list[FundusItem]:
        path = self.data_dir / f"{stem}.csv"
        if not path.is_file():
            raise self._error(f"RIGA+ domain list {stem}.csv not found", path)
        with open(path, newline="") as file:
            rows = [row for row in csv.reader(file) if row and any(cell.strip() for cell in row)][1:]
        items = []
        for row in rows:
            if len(row) < 2:
                raise self._error(f"{stem}.csv: a row without a mask column ({','.join(row)}); unlabeled lists "
                                  "cannot be used for training or testing", path)
            image = self.data_dir / row[0].strip()
            label = self.data_dir / row[-1].strip().replace(".tif", f"-{self.rater}.tif")
            for file, what in ((image, "image"), (label, f"rater-{self.rater} mask")):
                if not file.is_file():
                    raise self._error(f"{stem}.csv lists a missing {what}", file)
            items.append(FundusItem(image, label, f"{stem}_{image.stem}"))
        if not items:
            raise self._error(f"{stem}.csv lists no images", path)
        return items

    def list_domains(self):
        if not self.data_dir.is_dir():
            raise self._error("RIGA+ folder not found", self.data_dir)
        targets = {stem.replace("MESSIDOR_", ""): self.read_csv(stem) for stem in self.targets}
        return self.read_csv(self.source), targets

    def prepare_data(self) -> None:
        self.list_domains()  # fails early, with the layout, when a file is missing
