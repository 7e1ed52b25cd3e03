"""Shared base for 2D image classification datasets (breast ultrasound, brain MRI, dermoscopy, skin photos,
microscopy ...) and their stand-ins.

A dataset module only lists its items from its on-disk layout (``list_items`` ->
``ClassificationItem(source, label, group)``, where ``source`` is a file or, for stand-ins, a uint8 array);
this module does the rest:

- reading (PIL, grey or RGB; 16-bit and float files scaled to 0-255) with errors that name the file;
- a per-item ``preprocess`` hook (edge maps, cue removal ...) applied once and cached with ``preload``; it may
  return ``(image, mask)`` (a uint8 (H, W) lesion/ROI mask), which then follows the image through every
  geometric transform and is in the batch as ``mask`` (B, 1, H, W) float 0/1;
- albumentations pipelines: resize to ``image_size`` -> the paper's augmentation (train only) ->
  normalisation (ImageNet mean/std or [0, 1]), seeded from torch's process seed (reproducible runs);
- deterministic splits: stratified hold-out, hold-out grouped by patient/section, stratified k-fold,
  stratified group k-fold, or the dataset's own (``predefined``, a subclass's ``make_splits``), each with a
  stratified validation fraction taken from the training part (grouped when the split is);
- ``epoch_multiplier``: k freshly augmented passes over the training set per epoch (Keras-style
  "expanded k-fold" training sets);
- the class counts of the training split, for balanced class weights (``ClassificationTask``).

Items are dicts: ``image`` (C, H, W) float32, ``label`` int64 (-1 when unlabelled, e.g. OOD sets),
``group`` int64 (index of the item's group string in ``group_names``) and ``name`` (file stem).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from datamodules.base import BaseDataModule, DatasetError
from datamodules.seeded_transform import SeededTransform
from datamodules.segmentation import (AUGMENTATIONS, IMAGE_EXTENSIONS, build_transform, list_images, read_image,
                                      resolve_augmentation)
from datamodules.splits import group_kfold_split, holdout_split, kfold_split
from lightning_modules.batch import GROUP, IMAGE, LABEL, MASK, NAME

Split = Literal["stratified", "group", "kfold", "group_kfold", "predefined"]


def flips_rot90_augmentation() -> list:
    """Random 90-degree rotations and flips (the dihedral group): orientation-free images (dermoscopy, microscopy)."""
    return [A.RandomRotate90(p=1.0), A.HorizontalFlip(p=0.5)]


AUGMENTATIONS.setdefault("flips_rot90", flips_rot90_augmentation)


@dataclass(frozen=True)
class ClassificationItem:
    """One image: a file or a uint8 array (H, W) / (H, W, C); its class index (-1: none); its group (patient,
    tissue section, subject: group splits and pooling); its name (default: the file stem)."""

    source: Union[Path, np.ndarray]
    label: int
    group: str = ""
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.source, np.ndarray):
            object.__setattr__(self, "source", Path(self.source))
            if not self.name:
                object.__setattr__(self, "name", self.source.stem)
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "group", str(self.group))


class ImageClassificationDataset(Dataset):
    """Items -> batch dicts through ``load`` (uint8 H x W x C, preprocessed; or ``(image, mask)``: the mask is
    transformed with the image and returned as ``mask``) and an albumentations pipeline."""

    def __init__(self, items: Sequence[ClassificationItem], load: Callable[[int], Union[np.ndarray, tuple]],
                 transform: A.Compose,
                 group_index: dict[str, int]):
        self.items = list(items)
        self.load = load
        self.transform = SeededTransform(transform)
        self.group_index = group_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        loaded = self.load(index)
        mask = None
        if isinstance(loaded, tuple):
            out = self.transform(image=loaded[0], mask=loaded[1])
            image, mask = out["image"], out["mask"]
        else:
            image = self.transform(image=loaded)["image"]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        batch = {IMAGE: image, LABEL: torch.tensor(item.label, dtype=torch.long),
                 GROUP: torch.tensor(self.group_index.get(item.group, -1), dtype=torch.long),
                 NAME: item.name or f"item{index}"}
        if mask is not None:
            batch[MASK] = torch.from_numpy(np.ascontiguousarray(mask > 0)).float()[None]
        return batch


class ImageClassificationDataModule(BaseDataModule):
    """Base of the 2D image classification DataModules: subclasses implement ``list_items`` and set
    ``layout``, ``classes`` and ``standin_config``.

    Args:
        data_dir: the dataset's root folder (as distributed); stand-ins ignore it.
        image_size: output size, an int (square) or [height, width].
        channels: 3 (RGB; grey files replicated) or 1 (grey).
        normalization: ``imagenet`` (mean/std) or ``unit`` ([0, 1]).
        augmentation: training augmentation: a preset (``none``, ``hflip``, ``flips_rot90``, ``unext``) or
            ``package.module:function`` returning a list of albumentations transforms.
        split: ``stratified`` hold-out (``test_size``, ``split_seed``, stratified by class), ``group`` hold-out
            (whole groups on one side: patient-wise), ``kfold`` (stratified, ``folds``/``fold``),
            ``group_kfold`` (stratified group k-fold), ``predefined`` (the subclass's ``make_splits``).
        test_size: test fraction of the hold-out splits.
        val_fraction: fraction of the training part held out for validation (stratified; grouped for the
            group splits). 0 = validate on the test split (only where a paper has no validation set).
        split_seed: seed of every split.
        epoch_multiplier: passes over the (augmented) training set per epoch.
        preload: decode and preprocess every image once in ``setup`` (threads), keep them in memory.
        standin_config: the offline demo that errors point to (default: the class's).
    """

    layout: str = ""
    standin_config: str = ""
    classes: tuple[str, ...] = ()

    def __init__(self, data_dir: str = "", image_size: Union[int, Sequence[int]] = 224, channels: int = 3,
                 normalization: Literal["imagenet", "unit"] = "imagenet", augmentation: str = "none",
                 split: Split = "stratified", test_size: float = 0.2, val_fraction: float = 0.1,
                 split_seed: int = 0, folds: int = 5, fold: int = 0, epoch_multiplier: int = 1,
                 preload: bool = True, batch_size: int = 32, num_workers: int = 2,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None,
                 standin_config: Optional[str] = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or [height, width], got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if split not in ("stratified", "group", "kfold", "group_kfold", "predefined"):
            raise ValueError(f"split must be stratified, group, kfold, group_kfold or predefined, got {split!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if epoch_multiplier < 1:
            raise ValueError(f"epoch_multiplier must be >= 1, got {epoch_multiplier}")
        if standin_config:
            self.standin_config = standin_config
        self.data_dir = Path(os.path.expanduser(str(data_dir))) if data_dir else None
        self.image_size, self.channels, self.normalization = size, channels, normalization
        self.augmentation = augmentation
        self.split, self.test_size, self.val_fraction, self.split_seed = split, test_size, val_fraction, split_seed
        self.folds, self.fold = folds, fold
        self.epoch_multiplier, self.preload = epoch_multiplier, preload
        self.items: list[ClassificationItem] = []
        self.split_indices: dict[str, list[int]] = {}
        self.group_names: list[str] = []
        self.group_index: dict[str, int] = {}
        self._cache: dict[int, np.ndarray] = {}
        resolve_augmentation(augmentation)  # fail early on a wrong name

    # ---- what a subclass provides ----
    def list_items(self) -> list[ClassificationItem]:
        """Every item of the dataset, read from ``self.data_dir`` in its layout."""
        raise NotImplementedError

    def read_image(self, item: ClassificationItem) -> np.ndarray:
        """H x W x C uint8 (C = ``channels``) at the file's own size."""
        if isinstance(item.source, np.ndarray):
            image = item.source
            if image.dtype != np.uint8:
                raise ValueError(f"in-memory images must be uint8, got {image.dtype} ({item.name})")
            image = image[..., None] if image.ndim == 2 else image
            if image.shape[-1] != self.channels:
                image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image.mean(-1, keepdims=True).astype(np.uint8)
            return image
        return read_image(item.source, self.channels, lambda problem, path: self.error(problem, path))

    def preprocess(self, image: np.ndarray, item: ClassificationItem) -> Union[np.ndarray, tuple]:
        """A per-item transform applied once before the (random) transforms, cached with ``preload``. It may
        return ``(image, mask)`` with a uint8 (H, W) mask, which the batch then carries as ``mask``."""
        return image

    # ---- errors and layout helpers ----
    def error(self, problem: str, path: Optional[Path] = None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config or None,
                            hint=hint)

    def require_dir(self, path: Path, what: str = "folder") -> Path:
        if not Path(path).is_dir():
            raise self.error(f"{what} not found", path)
        return Path(path)

    def require_file(self, path: Path, what: str = "file") -> Path:
        if not Path(path).is_file():
            raise self.error(f"{what} not found", path)
        return Path(path)

    def folder_items(self, root: Path, classes: Sequence[str], aliases: Optional[dict[str, str]] = None,
                     extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[ClassificationItem]:
        """``root/<class>/*.<ext>`` (ImageFolder). ``aliases`` maps a folder name to a class name (e.g.
        ``{"Herpes Simplex": "herpes_simplex"}``); every class needs a folder with at least one image."""
        folders = {}
        for folder in sorted(p for p in self.require_dir(root, "dataset folder").iterdir() if p.is_dir()):
            name = (aliases or {}).get(folder.name, folder.name)
            if name in classes:
                folders.setdefault(name, []).append(folder)
        items = []
        for index, name in enumerate(classes):
            if name not in folders:
                raise self.error(f"class folder '{name}' not found", root / name)
            files = [f for folder in folders[name] for f in list_images(folder, extensions)]
            if not files:
                raise self.error(f"class folder '{name}' holds no images ({', '.join(extensions)})", folders[name][0])
            items += [ClassificationItem(f, index) for f in files]
        return items

    # ---- splits ----
    def _labels(self, indices: Sequence[int]) -> Optional[list[int]]:
        """Labels to stratify by, or None where stratifying is impossible (a class with < 2 items)."""
        labels = [self.items[i].label for i in indices]
        counts = np.unique(labels, return_counts=True)[1]
        return labels if len(counts) > 1 and counts.min() >= 2 else None

    def _holdout(self, indices: list[int], fraction: float, grouped: bool) -> tuple[list[int], list[int]]:
        if grouped:
            groups = [self.items[i].group for i in indices]
            unique = sorted(set(groups))
            if len(unique) < 2:
                raise self.error(f"a group split needs at least 2 groups, found {len(unique)}", self.data_dir)
            train_groups, _ = holdout_split(len(unique), fraction, self.split_seed)
            keep = {unique[g] for g in train_groups}
            return [i for i, g in zip(indices, groups) if g in keep], [i for i, g in zip(indices, groups) if g not in keep]
        labels = self._labels(indices)
        if labels is not None and min(fraction, 1 - fraction) * len(indices) < len(set(labels)):
            labels = None
        train, test = holdout_split(len(indices), fraction, self.split_seed, stratify=labels)
        return [indices[i] for i in train], [indices[i] for i in test]

    def make_splits(self) -> dict[str, list[int]]:
        """{"train", "val", "test"} index lists into ``self.items`` (override for ``predefined``)."""
        everything = list(range(len(self.items)))
        grouped = self.split in ("group", "group_kfold")
        if self.split == "predefined":
            raise NotImplementedError(f"{type(self).__name__} has no predefined split: override make_splits")
        if self.split in ("stratified", "group"):
            train, test = self._holdout(everything, self.test_size, grouped)
        elif self.split == "kfold":
            train, test = kfold_split([item.label for item in self.items], self.folds, self.fold, self.split_seed)
        else:
            train, test = group_kfold_split([item.group for item in self.items], self.folds, self.fold,
                                            labels=[item.label for item in self.items], random_state=self.split_seed)
        val = test
        if self.val_fraction > 0:
            train, val = self._holdout(list(train), self.val_fraction, grouped)
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}

    @property
    def class_counts(self) -> list[int]:
        """Items per class in the training split (balanced class weights N / (K N_c))."""
        labels = [self.items[i].label for i in self.split_indices["train"]]
        return np.bincount(labels, minlength=len(self.classes) or (max(labels) + 1)).tolist()

    # ---- datasets ----
    def _load_uncached(self, item: ClassificationItem) -> Union[np.ndarray, tuple]:
        return self.preprocess(self.read_image(item), item)

    def make_dataset(self, items: Sequence[ClassificationItem], train: bool) -> ImageClassificationDataset:
        """A dataset of ``items`` with this module's (train or eval) transforms; preloaded when ``preload``."""
        items = list(items)
        augmentation = resolve_augmentation(self.augmentation) if train else []
        transform = build_transform(self.image_size, self.channels, self.normalization, augmentation)
        if self.preload:
            resize = A.Resize(*self.image_size, mask_interpolation=cv2.INTER_NEAREST)

            def decode(item):  # PIL/OpenCV release the GIL: threads decode in parallel
                loaded = self._load_uncached(item)
                if isinstance(loaded, tuple):
                    out = resize(image=loaded[0], mask=loaded[1])
                    return out["image"], out["mask"]
                return resize(image=loaded)["image"]

            with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
                cache = list(pool.map(decode, items))

            def load(index: int) -> np.ndarray:
                return cache[index]
        else:
            def load(index: int) -> np.ndarray:
                return self._load_uncached(items[index])
        return ImageClassificationDataset(items, load, transform, self.group_index)

    # ---- Lightning hooks ----
    def prepare_data(self) -> None:
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise self.error("dataset folder not found", self.data_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.items:
            return
        self.prepare_data()
        items = self.list_items()
        if len(items) < 3:
            raise self.error(f"found {len(items)} images, need at least 3", self.data_dir)
        self.items = items
        self.group_names = sorted({item.group for item in items})
        self.group_index = {name: i for i, name in enumerate(self.group_names)}
        self.split_indices = self.make_splits()
        for split in ("train", "val", "test"):
            if not self.split_indices[split]:
                raise self.error(f"the {split} split is empty ({len(items)} items, split={self.split!r})", self.data_dir)
        train = self.make_dataset([self.items[i] for i in self.split_indices["train"]], train=True)
        self.train_set = train if self.epoch_multiplier == 1 else ConcatDataset([train] * self.epoch_multiplier)
        self.val_set = self.make_dataset([self.items[i] for i in self.split_indices["val"]], train=False)
        self.test_set = self.make_dataset([self.items[i] for i in self.split_indices["test"]], train=False)
        self.predict_set = self.test_set


class ImageFolderDataModule(ImageClassificationDataModule):
    """The ImageFolder layout ``<data_dir>/<class>/*.<ext>``: a dataset re-exported as one folder per class.

    Args:
        classes: class names in index order (the folder names, or their ``aliases`` targets).
        aliases: folder name -> class name.
    """

    layout = """<data_dir>/
  <class 1>/*.png|jpg|...       the images of each class, one folder per class
  <class 2>/...                 (class names as given in `classes`, or mapped by `aliases`)"""

    def __init__(self, data_dir: str, classes: Sequence[str], aliases: Optional[dict[str, str]] = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        if len(classes) < 2:
            raise ValueError(f"classes needs at least 2 names, got {list(classes)}")
        self.classes = tuple(classes)
        self.aliases = dict(aliases or {})

    def list_items(self) -> list[ClassificationItem]:
        return self.folder_items(self.data_dir, self.classes, self.aliases)
