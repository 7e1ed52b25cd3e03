"""Shared base for 2D image/mask segmentation datasets (ISIC 2018, BUSI, CVC-ClinicDB, COVID-19, ...).

A dataset module only says how to list its items from its on-disk layout
(``SegmentationDataModule.list_items`` -> ``SegmentationItem(image, masks, label)``); this module does
the rest:

- reading (PIL): RGB or grayscale images; masks binarised at > 127 and OR-merged when an image has
  several (BUSI's ``_mask``, ``_mask_1``, ...), or read as label maps for multi-class data;
- checks that raise ``DatasetError`` naming the file: an image without mask, a mask whose size differs
  from its image's (before resizing), an unreadable file;
- albumentations pipelines applied to image and mask together: resize to ``image_size`` first
  (bilinear image, nearest mask), then the paper's augmentation (train only), then normalisation
  (ImageNet mean/std or [0, 1]). Resizing first is cheaper and, for square outputs, equivalent to
  UNeXt's augment-then-resize (90-degree rotations and flips commute with a square resize);
- splits: a holdout split ``train_test_split(test_size=0.2, random_state=41)`` (the UNeXt code's), or
  stratified K-fold (``StratifiedKFold(folds, shuffle=True, random_state=42)``, test = fold ``fold``),
  each with a validation fraction taken from the training part;
- an optional class-stratified sampler (equal counts per stratum in every batch, e.g. lesion/normal).

Items are dicts: ``image`` (C, H, W) float32, ``mask`` (1, H, W) float32 0/1 (binary) or int64 labels,
``name`` (file stem) and ``label`` (class index, -1 when the dataset has no classes).
"""
from __future__ import annotations

import importlib
import math
from concurrent.futures import ThreadPoolExecutor
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence, Union

import albumentations as A
import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from datamodules.base import BaseDataModule, DatasetError
from datamodules.seeded_transform import SeededTransform
from datamodules.splits import holdout_split, kfold_split
from lightning_modules.batch import IMAGE, LABEL, MASK, NAME

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class SegmentationItem:
    """One image with its mask file(s) (OR-merged) and an optional class name (for stratification)."""

    image: Path
    masks: tuple[Path, ...]
    label: Optional[str] = None
    name: str = field(default="")

    def __post_init__(self):
        object.__setattr__(self, "image", Path(self.image))
        object.__setattr__(self, "masks", tuple(Path(m) for m in self.masks))
        if not self.name:
            object.__setattr__(self, "name", self.image.stem)


# --------------------------------------------------------------------------------------------
# Augmentations: named presets, or "package.module:function" returning a list of albumentations
# transforms (so another paper can add its own without editing this file).
# --------------------------------------------------------------------------------------------


def unext_augmentation() -> list:
    """The UNeXt code's training augmentation: ``RandomRotate90()``, ``Flip()`` (albumentations 1.x).

    albumentations 2 dropped ``Flip`` (with p=0.5: a horizontal, vertical or both-axes flip, each 1/3);
    the OneOf below is the same distribution.
    """
    both = A.Sequential([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)], p=1.0)
    return [A.RandomRotate90(p=0.5), A.OneOf([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0), both], p=0.5)]


def hflip_augmentation() -> list:
    return [A.HorizontalFlip(p=0.5)]


AUGMENTATIONS: dict[str, Callable[[], list]] = {
    "none": lambda: [],
    "unext": unext_augmentation,
    "hflip": hflip_augmentation,
}


def resolve_augmentation(name: str) -> list:
    if name in AUGMENTATIONS:
        return AUGMENTATIONS[name]()
    if ":" in name:
        module, function = name.split(":", 1)
        return list(getattr(importlib.import_module(module), function)())
    raise ValueError(f"unknown augmentation {name!r}: one of {sorted(AUGMENTATIONS)} or 'package.module:function'")


def build_transform(image_size: tuple[int, int], channels: int, normalization: str,
                    augmentation: Sequence = ()) -> A.Compose:
    """Resize (bilinear image, nearest mask) -> augmentation -> normalisation."""
    if normalization == "imagenet":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (
            (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),))
    elif normalization == "unit":
        mean, std = (0.0,) * channels, (1.0,) * channels
    else:
        raise ValueError(f"normalization must be 'imagenet' or 'unit', got {normalization!r}")
    return A.Compose([
        A.Resize(*image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
        *augmentation,
        A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
    ])


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class TransformedSegmentationDataset(Dataset):
    """Applies an albumentations pipeline to (image uint8 HxWxC, mask uint8 HxW) pairs from ``load``."""

    def __init__(self, transform: A.Compose, binary: bool = True):
        self.transform = SeededTransform(transform)  # reproducible under seed_everything
        self.binary = binary

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        image, mask, name, label = self.load(index)
        out = self.transform(image=image, mask=mask)
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32))
        mask = torch.from_numpy(np.ascontiguousarray(out["mask"]))[None]
        mask = mask.float() if self.binary else mask.long()
        return {IMAGE: image, MASK: mask, NAME: name, LABEL: label}


class FileSegmentationDataset(TransformedSegmentationDataset):
    """Reads ``SegmentationItem``s from disk (or from a preloaded in-memory copy)."""

    def __init__(self, items: Sequence[SegmentationItem], transform: A.Compose, channels: int = 3,
                 binary: bool = True, classes: Sequence[str] = (), layout: Optional[str] = None,
                 standin_config: Optional[str] = None, preloaded: Optional[list] = None,
                 release_sizes: frozenset = frozenset()):
        super().__init__(transform, binary)
        self.release_sizes = release_sizes
        self.items = list(items)
        self.channels = channels
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.layout = layout
        self.standin_config = standin_config
        self.preloaded = preloaded

    def __len__(self) -> int:
        return len(self.items)

    def _error(self, problem: str, path: Path) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image HxWxC uint8, mask HxW uint8 in {0, 1} or labels), at the file's own size."""
        item = self.items[index]
        if not item.masks:
            raise self._error("image without a mask", item.image)
        image = read_image(item.image, self.channels, self._error)
        mask = None
        for path in item.masks:
            values = read_image(path, 1, self._error)[..., 0]
            if (image.shape[:2], values.shape) in self.release_sizes:  # a documented size difference
                values = cv2.resize(values, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            if values.shape != image.shape[:2]:
                raise self._error(f"mask of size {values.shape[1]}x{values.shape[0]} (WxH) for an image of size "
                                  f"{image.shape[1]}x{image.shape[0]} ({item.image.name})", path)
            values = (values > 127).astype(np.uint8) if self.binary else values
            mask = values if mask is None else np.maximum(mask, values)  # OR-merge several masks
        return image, mask

    def load(self, index: int):
        item = self.items[index]
        image, mask = self.preloaded[index] if self.preloaded is not None else self.read(index)
        return image, mask, item.name, self.class_index.get(item.label, -1)


def read_image(path: Path, channels: int, error: Callable[[str, Path], Exception]) -> np.ndarray:
    """HxWxC uint8 (C = 1 or 3) with PIL; 16-bit or float images are scaled to 0-255."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode in ("I;16", "I;16B", "I", "F"):
                array = np.asarray(pil, dtype=np.float32)
                array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-6)).astype(np.uint8)
                pil = Image.fromarray(array)
            array = np.asarray(pil.convert("RGB" if channels == 3 else "L"))
    except FileNotFoundError:
        raise error("file not found", path) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise error(f"cannot read image ({type(exc).__name__}: {exc})", path) from None
    return array if array.ndim == 3 else array[..., None]


# --------------------------------------------------------------------------------------------
# The stratified sampler (splits: datamodules/splits.py)
# --------------------------------------------------------------------------------------------


class StratifiedBatchSampler(DistributedSampler):
    """Index sampler whose every ``batch_size`` chunk holds equal counts of each stratum (e.g. 8 lesion +
    8 normal images for a batch of 16), reshuffled each epoch from ``seed + epoch``.

    An epoch has ``len(data) // batch_size`` batches (per process); smaller strata are cycled through
    (oversampled). It subclasses ``DistributedSampler`` so that Lightning does not wrap it under DDP
    (which would mix strata across processes): each process takes every ``world_size``-th batch itself.
    """

    def __init__(self, strata: Sequence, batch_size: int, seed: int = 0):  # noqa: D107 (no super().__init__: no process group needed)
        groups: dict = {}
        for index, stratum in enumerate(strata):
            groups.setdefault(stratum, []).append(index)
        self.groups = [groups[key] for key in sorted(groups, key=str)]
        if batch_size % len(self.groups):
            raise ValueError(f"batch_size {batch_size} is not divisible by the {len(self.groups)} strata")
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.num_items = len(strata)

    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def _num_batches(self) -> int:
        world, _ = self._world()
        return max(1, self.num_items // self.batch_size // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._num_batches() * self.batch_size

    def __iter__(self) -> Iterator[int]:
        world, rank = self._world()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        per_group = self.batch_size // len(self.groups)
        total_batches = self._num_batches() * world
        streams = []
        for group in self.groups:  # each stratum: shuffled, repeated until long enough
            needed = total_batches * per_group
            repeats = math.ceil(needed / len(group))
            order = torch.cat([torch.randperm(len(group), generator=generator) for _ in range(repeats)])[:needed]
            streams.append(torch.tensor(group)[order].view(total_batches, per_group))
        batches = torch.cat(streams, dim=1)  # (batches, batch_size): strata side by side
        within = torch.argsort(torch.rand(batches.shape, generator=generator), dim=1)
        batches = torch.gather(batches, 1, within)[rank::world]
        return iter(batches.reshape(-1).tolist())


# --------------------------------------------------------------------------------------------
# The DataModule base
# --------------------------------------------------------------------------------------------


class SegmentationDataModule(BaseDataModule):
    """Base of the 2D segmentation DataModules: subclasses implement ``list_items`` and set ``layout``.

    Args:
        data_dir: the dataset's root folder (as distributed).
        image_size: output size, an int (square) or [height, width].
        channels: 3 (RGB) or 1 (grayscale); grayscale files are replicated to RGB when channels == 3.
        normalization: ``imagenet`` (mean/std) or ``unit`` ([0, 1]).
        augmentation: training augmentation: a preset (``unext``, ``hflip``, ``none``) or
            ``package.module:function`` returning a list of albumentations transforms.
        split: ``holdout`` (``test_size``, ``split_seed``) or ``kfold`` (``folds``, ``fold``, ``kfold_seed``,
            stratified by class).
        val_fraction: fraction of the training part held out for validation (stratified by class when
            the dataset has classes). 0 = validate on the test split (what the UNeXt code does: it has
            only a train/val split and reports the best validation epoch; not recommended).
        stratified_batches: equal counts per stratum (``stratum``) in each training batch.
        preload: decode every image once in ``setup`` and keep it resized in memory (uint8).
        num_classes: 1 = binary masks (> 127); > 1 = the mask files hold label values 0..K-1.
        standin_config: the offline demo that errors point to; default: the class's ``standin_config``
            (a dataset several papers use names the demo of the paper the config is for).
    """

    #: the on-disk layout, shown in errors.
    layout: str = ""
    #: the offline stand-in config named in errors.
    standin_config: str = "experiments/saca_unet_demo.yaml"
    #: class names of the dataset (for stratification and the ``label`` key); () if it has none.
    classes: tuple[str, ...] = ()
    #: ((image H, W), (mask H, W)) pairs that the release has by design: the mask is resized to the image.
    release_sizes: frozenset = frozenset()

    def __init__(self, data_dir: str, image_size: Union[int, Sequence[int]] = 256, channels: int = 3,
                 normalization: Literal["imagenet", "unit"] = "imagenet", augmentation: str = "unext",
                 split: Literal["holdout", "kfold"] = "holdout", test_size: float = 0.2, split_seed: int = 41,
                 folds: int = 4, fold: int = 0, kfold_seed: int = 42, val_fraction: float = 0.1,
                 stratified_batches: bool = False, preload: bool = False, num_classes: int = 1,
                 batch_size: int = 8, num_workers: int = 4, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None, standin_config: Optional[str] = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if standin_config:
            self.standin_config = standin_config
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or [height, width], got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if split not in ("holdout", "kfold"):
            raise ValueError(f"split must be 'holdout' or 'kfold', got {split!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.image_size = size
        self.channels = channels
        self.normalization = normalization
        self.augmentation = augmentation
        self.split = split
        self.test_size = test_size
        self.split_seed = split_seed
        self.folds = folds
        self.fold = fold
        self.kfold_seed = kfold_seed
        self.val_fraction = val_fraction
        self.stratified_batches = stratified_batches
        self.preload = preload
        self.num_classes = num_classes
        self.items: list[SegmentationItem] = []
        self.split_indices: dict[str, list[int]] = {}
        resolve_augmentation(augmentation)  # fail early on a wrong name

    # ---- what a subclass provides ----
    def list_items(self) -> list[SegmentationItem]:
        """Every (image, masks, class) of the dataset, read from ``self.data_dir`` in its layout."""
        raise NotImplementedError

    def stratum(self, item: SegmentationItem):
        """What the stratified sampler balances (default: the class name)."""
        return item.label

    # ---- errors ----
    def error(self, problem: str, path: Optional[Path] = None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config, hint=hint)

    def checked_classes(self, use_classes: Sequence[str]) -> tuple[str, ...]:
        """``use_classes`` as a tuple, checked to be a non-empty subset of the dataset's ``classes``."""
        if not use_classes or set(use_classes) - set(self.classes):
            raise ValueError(f"use_classes must be a non-empty subset of {self.classes}, got {list(use_classes)}")
        return tuple(use_classes)

    def release_root(self, folder_name: str) -> Path:
        """The release's top folder: ``data_dir`` itself, or ``data_dir/folder_name`` when given its parent."""
        nested = self.data_dir / folder_name
        return nested if nested.is_dir() else self.data_dir

    def require_dir(self, path: Path, what: str = "folder") -> Path:
        if not path.is_dir():
            raise self.error(f"{what} not found", path)
        return path

    # ---- splits ----
    def _split_labels(self, indices: Sequence[int], fraction: Optional[float] = None) -> Optional[list]:
        """Class names to stratify by, or None where stratifying is impossible (no classes, one class,
        a class with fewer than 2 items, or fewer held-out items than classes)."""
        labels = [self.items[i].label for i in indices]
        counts = {label: labels.count(label) for label in set(labels)}
        if any(label is None for label in labels) or len(counts) < 2 or min(counts.values()) < 2:
            return None
        if fraction is not None and min(fraction * len(labels), (1 - fraction) * len(labels)) < len(counts):
            return None
        return labels

    def make_splits(self) -> dict[str, list[int]]:
        n = len(self.items)
        if self.split == "holdout":
            train, test = holdout_split(n, self.test_size, self.split_seed)
        else:
            labels = self._split_labels(range(n)) or [0] * n
            train, test = kfold_split(labels, self.folds, self.fold, self.kfold_seed)
        val = test
        if self.val_fraction > 0:
            labels = self._split_labels(train, self.val_fraction)
            rel_train, rel_val = holdout_split(len(train), self.val_fraction, self.split_seed, stratify=labels)
            train, val = [train[i] for i in rel_train], [train[i] for i in rel_val]
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}

    # ---- Lightning hooks ----
    def prepare_data(self) -> None:
        if not self.data_dir.is_dir():
            raise self.error("dataset folder not found", self.data_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.items:
            return
        if not self.data_dir.is_dir():
            raise self.error("dataset folder not found", self.data_dir)
        items = sorted(self.list_items(), key=lambda item: str(item.image))
        if len(items) < 3:
            raise self.error(f"found {len(items)} image/mask pairs, need at least 3", self.data_dir)
        self.items = items
        self.split_indices = self.make_splits()
        augmentation = resolve_augmentation(self.augmentation)
        train_transform = build_transform(self.image_size, self.channels, self.normalization, augmentation)
        eval_transform = build_transform(self.image_size, self.channels, self.normalization)
        for split, transform in (("train", train_transform), ("val", eval_transform), ("test", eval_transform)):
            dataset = self.make_dataset([self.items[i] for i in self.split_indices[split]], transform)
            setattr(self, f"{split}_set", dataset)
        self.predict_set = self.test_set

    def make_dataset(self, items: Sequence[SegmentationItem], transform: A.Compose) -> FileSegmentationDataset:
        dataset = FileSegmentationDataset(items, transform, self.channels, binary=self.num_classes == 1,
                                          classes=self.classes, layout=self.layout,
                                          standin_config=self.standin_config,
                                          release_sizes=frozenset(self.release_sizes))
        if self.preload:
            resize = A.Compose([A.Resize(*self.image_size, interpolation=cv2.INTER_LINEAR,
                                         mask_interpolation=cv2.INTER_NEAREST)])

            def load_resized(index: int):
                image, mask = dataset.read(index)
                out = resize(image=image, mask=mask)
                return out["image"], out["mask"]

            # PIL decoding and OpenCV resizing release the GIL: threads decode in parallel
            with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
                dataset.preloaded = list(pool.map(load_resized, range(len(items))))
        return dataset

    def train_sampler(self, dataset):
        if not self.stratified_batches:
            return None
        return StratifiedBatchSampler([self.stratum(item) for item in dataset.items], self.batch_size,
                                      seed=self.split_seed)


def find_image(folder: Path, stem: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Optional[Path]:
    """``folder/stem.<ext>`` for the first extension that exists (case-insensitive), else None."""
    for extension in extensions:
        for candidate in (folder / f"{stem}{extension}", folder / f"{stem}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


class ImageMaskFolderDataModule(SegmentationDataModule):
    """The UNeXt code's generic layout: ``<data_dir>/images/<id>.<ext>`` + ``<data_dir>/masks/0/<id>.png``.

    (``inputs/<dataset>/`` in the UNeXt repository; ``masks/<k>/`` holds class k's masks, and only
    ``masks/0`` is read here: binary segmentation.) Any image extension of ``IMAGE_EXTENSIONS``.
    """

    layout = """<data_dir>/
  images/<id>.png|jpg|...      the images
  masks/0/<id>.png             binary mask of each image (foreground > 127), same size as its image"""

    def list_items(self) -> list[SegmentationItem]:
        images = self.require_dir(self.data_dir / "images", "images folder")
        masks = self.require_dir(self.data_dir / "masks" / "0", "masks folder")
        items = []
        for image in list_images(images):
            mask = find_image(masks, image.stem)
            if mask is None:
                raise self.error(f"image without a mask (looked for {masks / image.stem}.png)", image)
            items.append(SegmentationItem(image, (mask,)))
        return items
