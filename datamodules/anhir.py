"""ANHIR (Borovec et al., IEEE TMI 2020): automatic non-rigid histological image registration challenge.

Two layouts are read (UnFeMa card):

raw, as the challenge distributes it (https://anhir.grand-challenge.org)::

    <data_dir>/dataset_medium.csv        (or dataset.csv; --data.csv_name)
        columns: Source image, Source landmarks, Target image, Target landmarks, Image diagonal [pixels],
                 Image size [pixels], status (training | evaluation)
    <data_dir>/images/<set>/scale-<k>pc/<stain>.jpg|png       (paths in the CSV are relative to images/ ...)
    <data_dir>/landmarks/<set>/scale-<k>pc/<stain>.csv         (... and landmarks/; columns ",X,Y")

preprocessed, as the UnFeMa code reads it (SimpleITK)::

    <data_dir>/{training,evaluation}/<case>/source.mha, target.mha
    <data_dir>/{training,evaluation}/<case>/source_landmarks.csv, target_landmarks.csv   (",X,Y")

Preprocessing (paper Sec. 3.1): grey, inverted, normalised to [0, 1], longest side resized to ``image_size``
(512 for training and validation, ``eval_image_size`` 1024 for the test), both padded (top-left) to a square.
Landmarks follow the resize; the evaluation pairs' target landmarks are private (server-side), so those pairs
have NaN target landmarks and no local rTRE. ``diagonal`` is the CSV's "Image diagonal [pixels]" (the target's,
as in BIRL) scaled like the target, else the diagonal of the target image before padding.
Scenario (e) trains on the evaluation pairs and tests on the training pairs; (t) the reverse.
"""
from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError
from datamodules.seeded_transform import SeededTransform
from lightning_modules.batch import DIAGONAL, FIXED, FIXED_LANDMARKS, MOVING, MOVING_LANDMARKS, NAME

STANDIN_CONFIG = "experiments/unfema_demo.yaml"
CSV_NAMES = ("dataset_medium.csv", "dataset.csv")
REQUIRED_COLUMNS = ("Source image", "Source landmarks", "Target image", "Target landmarks")
DIAGONAL_COLUMN = "Image diagonal [pixels]"
RAW_LAYOUT = """<data_dir>/dataset_medium.csv (or dataset.csv): Source image, Source landmarks, Target image,
    Target landmarks, Image diagonal [pixels], Image size [pixels], status
<data_dir>/images/<set>/scale-<k>pc/<stain>.jpg|png
<data_dir>/landmarks/<set>/scale-<k>pc/<stain>.csv   (columns ,X,Y)"""
MHA_LAYOUT = """<data_dir>/{training,evaluation}/<case>/{source,target}.mha
<data_dir>/{training,evaluation}/<case>/{source,target}_landmarks.csv   (columns ,X,Y)"""
LAYOUT = f"raw (the challenge's):\n{RAW_LAYOUT}\nor preprocessed (the UnFeMa code's):\n{MHA_LAYOUT}"


@dataclass(frozen=True)
class ANHIRPair:
    """One registration pair: image and landmark paths (landmarks None when absent), status, CSV diagonal."""

    name: str
    source: Path
    target: Path
    source_landmarks: Optional[Path]
    target_landmarks: Optional[Path]
    status: str
    diagonal: Optional[float] = None


def read_landmarks(path: Path) -> np.ndarray:
    """(K, 2) float32 (x, y) from an ANHIR landmark CSV (an index column, then X and Y)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        header = [h.strip() for h in rows[0]]
        x, y = header.index("X"), header.index("Y")
        return np.array([[float(r[x]), float(r[y])] for r in rows[1:] if r], dtype=np.float32).reshape(-1, 2)
    except (OSError, ValueError, IndexError) as error:
        raise DatasetError(f"unreadable landmark file ({error})", path=path, layout=LAYOUT,
                           standin_config=STANDIN_CONFIG) from error


def _read_image(path: Path) -> np.ndarray:
    """Float32 grey image in [0, 1], inverted (tissue bright on a dark background) and min-max normalised."""
    if path.suffix.lower() == ".mha":
        try:
            import SimpleITK as sitk
        except ImportError as error:
            raise DatasetError("the preprocessed .mha layout needs SimpleITK (pip install SimpleITK)",
                               path=path) from error
        try:
            image = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
        except RuntimeError as error:
            raise DatasetError(f"unreadable image ({error})", path=path, layout=LAYOUT,
                               standin_config=STANDIN_CONFIG) from error
        if image.ndim == 3:  # a colour .mha: channels last
            image = image.mean(-1)
        low, high = float(image.min()), float(image.max())
        return (image - low) / max(high - low, 1e-6)  # already inverted by the code's preprocessing
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DatasetError("unreadable image", path=path, layout=LAYOUT, standin_config=STANDIN_CONFIG)
    image = 1.0 - image.astype(np.float32) / 255.0
    low, high = float(image.min()), float(image.max())
    return (image - low) / max(high - low, 1e-6)


@functools.lru_cache(maxsize=64)
def load_resized(path: str, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(image with longest side ``size``, scale factor, original (h, w)); cached per process."""
    image = _read_image(Path(path))
    h, w = image.shape
    scale = size / max(h, w)
    resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return resized, scale, (h, w)


def _pad(image: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    out[: image.shape[0], : image.shape[1]] = image[:size, :size]
    return out


def _pad_points(points: Optional[np.ndarray], count: int) -> np.ndarray:
    out = np.full((count, 2), np.nan, np.float32)
    if points is not None:
        out[: min(len(points), count)] = points[:count]
    return out


def paper_augmentation(size: int):
    """The UnFeMa code's training augmentation, one draw for both images (albumentations additional_targets)."""
    import albumentations as A

    return A.Compose([A.Affine(scale=(0.8, 1.2), translate_percent=(0.0, 0.1), rotate=(-30, 30), fill=0,
                               border_mode=cv2.BORDER_CONSTANT, keep_ratio=True, p=1.0),
                      A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], additional_targets={"target": "image"})


class ANHIRPairs(Dataset):
    """Pairs as ``{moving, fixed, moving_landmarks, fixed_landmarks, diagonal, name}`` at ``size`` px (square)."""

    def __init__(self, pairs: list[ANHIRPair], size: int, max_landmarks: int = 256, augment: bool = False,
                 swap_probability: float = 0.0, seed: int = 0):
        self.pairs, self.size, self.max_landmarks = pairs, size, max_landmarks
        # seeded from torch's per-process/per-worker seed: reproducible under seed_everything
        self.augmentation = SeededTransform(paper_augmentation(size)) if augment else None
        self.swap_probability, self.seed = swap_probability, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        source, source_scale, _ = load_resized(str(pair.source), self.size)
        target, target_scale, target_hw = load_resized(str(pair.target), self.size)
        source, target = _pad(source, self.size), _pad(target, self.size)
        source_points = target_points = None
        if pair.source_landmarks is not None:
            source_points = read_landmarks(pair.source_landmarks) * source_scale
        if pair.target_landmarks is not None:
            target_points = read_landmarks(pair.target_landmarks) * target_scale
        if source_points is not None and target_points is not None:  # BIRL: the first min(K_s, K_t) are paired
            common = min(len(source_points), len(target_points))
            source_points, target_points = source_points[:common], target_points[:common]
        if pair.diagonal is not None:
            diagonal = pair.diagonal * target_scale
        else:
            diagonal = math.hypot(*target_hw) * target_scale
        if self.augmentation is not None:  # training: no landmarks (unsupervised), a shared random transform
            out = self.augmentation(image=source, target=target)
            source, target = out["image"], out["target"]
            if torch.rand(()).item() < self.swap_probability:  # torch's stream, like the transform's seed
                source, target = target, source
        return {
            MOVING: torch.from_numpy(np.ascontiguousarray(source, np.float32))[None],
            FIXED: torch.from_numpy(np.ascontiguousarray(target, np.float32))[None],
            MOVING_LANDMARKS: torch.from_numpy(_pad_points(source_points, self.max_landmarks)),
            FIXED_LANDMARKS: torch.from_numpy(_pad_points(target_points, self.max_landmarks)),
            DIAGONAL: torch.tensor(diagonal, dtype=torch.float32),
            NAME: pair.name,
        }


def _resolve(root: Path, relative: str, folder: str) -> Path:
    """A CSV path: relative to ``folder`` (images/ or landmarks/) or, failing that, to the data folder."""
    for candidate in (root / folder / relative, root / relative):
        if candidate.exists():
            return candidate
    return root / folder / relative


def list_raw_pairs(root: Path, csv_name: Optional[str] = None) -> list[ANHIRPair]:
    names = [csv_name] if csv_name else list(CSV_NAMES)
    table = next((root / n for n in names if (root / n).is_file()), None)
    if table is None:
        raise DatasetError(f"no ANHIR cover table ({' or '.join(names)})", path=root, layout=LAYOUT,
                           standin_config=STANDIN_CONFIG)
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise DatasetError("empty ANHIR cover table", path=table, layout=LAYOUT, standin_config=STANDIN_CONFIG)
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise DatasetError(f"ANHIR cover table lacks columns {missing}", path=table, layout=LAYOUT,
                           standin_config=STANDIN_CONFIG)
    pairs = []
    for k, row in enumerate(rows):
        source = _resolve(root, row["Source image"], "images")
        target = _resolve(root, row["Target image"], "images")
        for image in (source, target):
            if not image.is_file():
                raise DatasetError(f"image of row {k} of {table.name} missing", path=image, layout=LAYOUT,
                                   standin_config=STANDIN_CONFIG)
        landmarks = []
        for column in ("Source landmarks", "Target landmarks"):
            value = (row.get(column) or "").strip()
            path = _resolve(root, value, "landmarks") if value else None
            landmarks.append(path if path is not None and path.is_file() else None)
        diagonal = row.get(DIAGONAL_COLUMN)
        pairs.append(ANHIRPair(name=f"{k:03d}_{Path(row['Source image']).stem}-{Path(row['Target image']).stem}",
                               source=source, target=target, source_landmarks=landmarks[0],
                               target_landmarks=landmarks[1], status=(row.get("status") or "training").strip(),
                               diagonal=float(diagonal) if diagonal not in (None, "") else None))
    return pairs


def list_mha_pairs(root: Path) -> list[ANHIRPair]:
    pairs = []
    for status in ("training", "evaluation"):
        folder = root / status
        if not folder.is_dir():
            continue
        for case in sorted(p for p in folder.iterdir() if p.is_dir()):
            source, target = case / "source.mha", case / "target.mha"
            for image in (source, target):
                if not image.is_file():
                    raise DatasetError("case without its image", path=image, layout=MHA_LAYOUT,
                                       standin_config=STANDIN_CONFIG)
            found = [case / f"{side}_landmarks.csv" for side in ("source", "target")]
            pairs.append(ANHIRPair(name=f"{status}_{case.name}", source=source, target=target,
                                   source_landmarks=found[0] if found[0].is_file() else None,
                                   target_landmarks=found[1] if found[1].is_file() else None, status=status))
    return pairs


class ANHIRDataModule(BaseDataModule):
    """ANHIR pairs in the raw or the preprocessed layout (see the module docstring).

    Args:
        data_dir: the dataset folder. layout: ``raw``, ``mha`` or ``auto`` (the cover table if present).
        csv_name: the cover table's name in the raw layout (default: dataset_medium.csv, then dataset.csv).
        train_status, val_status, test_status: which subset each split takes (``training`` | ``evaluation``);
            scenario (e): train evaluation, validate and test on training (the code validates on the landmark
            pairs); (t): the reverse. val_status None = test_status.
        image_size: longest side for training and validation (512); eval_image_size: for the test (1024).
        augment: the code's shared affine/flip augmentation of training pairs; swap_probability: swap source and
            target (0.5). max_landmarks: landmark rows per item (NaN-padded).
    """

    def __init__(self, data_dir: str = "data/anhir", layout: Literal["auto", "raw", "mha"] = "auto",
                 csv_name: Optional[str] = None, train_status: str = "evaluation",
                 val_status: Optional[str] = None, test_status: str = "training", image_size: int = 512,
                 eval_image_size: int = 1024, augment: bool = True, swap_probability: float = 0.5,
                 max_landmarks: int = 256, batch_size: int = 16, num_workers: int = 4,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = 1):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        self.data_dir = Path(data_dir)
        self.layout, self.csv_name = layout, csv_name
        self.statuses = {"train": train_status, "val": val_status or test_status, "test": test_status}
        self.image_size, self.eval_image_size = image_size, eval_image_size
        self.augment, self.swap_probability, self.max_landmarks = augment, swap_probability, max_landmarks

    def list_pairs(self) -> list[ANHIRPair]:
        root = self.data_dir
        if not root.is_dir():
            raise DatasetError("ANHIR folder not found", path=root, layout=LAYOUT, standin_config=STANDIN_CONFIG)
        layout = self.layout
        if layout == "auto":
            has_table = any((root / n).is_file() for n in ([self.csv_name] if self.csv_name else CSV_NAMES))
            layout = "raw" if has_table else "mha"
        if layout == "raw":
            return list_raw_pairs(root, self.csv_name)
        pairs = list_mha_pairs(root)
        if not pairs:
            raise DatasetError("no ANHIR cover table and no preprocessed cases", path=root, layout=LAYOUT,
                               standin_config=STANDIN_CONFIG)
        return pairs

    def setup(self, stage: Optional[str] = None) -> None:
        pairs = self.list_pairs()
        split = {}
        for name, status in self.statuses.items():
            split[name] = [p for p in pairs if p.status == status]
            if not split[name]:
                raise DatasetError(f"no '{status}' pairs for the {name} split", path=self.data_dir, layout=LAYOUT,
                                   standin_config=STANDIN_CONFIG)
        self.train_set = ANHIRPairs(split["train"], self.image_size, self.max_landmarks, augment=self.augment,
                                    swap_probability=self.swap_probability)
        self.val_set = ANHIRPairs(split["val"], self.image_size, self.max_landmarks)
        self.test_set = ANHIRPairs(split["test"], self.eval_image_size, self.max_landmarks)
