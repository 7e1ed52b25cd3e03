"""What every detection dataset shares: the item list, mammogram preprocessing, bbox-aware augmentation, the
collate function for per-image box lists, and a patient-level split.

A reader lists ``DetectionItem``s (an image source, its boxes in that image's pixel (x1, y1, x2, y2), the patient
id); ``DetectionDataset`` reads, crops to the breast, resizes to ``input_hw``, standardises, replicates to 3
channels and (train) augments, and writes ``image`` (3, H, W), ``boxes`` (N, 4), ``box_labels`` (N,) and ``name``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from datamodules.base import BaseDataModule
from lightning_modules import batch as keys

ImageSource = Union[str, np.ndarray, Callable[[], np.ndarray]]


@dataclass
class DetectionItem:
    """One image: a path (read by the dataset's ``reader``), an array, or a callable returning the array;
    its boxes (N, 4) float pixel (x1, y1, x2, y2) in that image's frame; class indices; patient id; name."""

    source: ImageSource
    boxes: np.ndarray
    patient: str
    name: str
    labels: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        if self.labels is None:
            self.labels = np.zeros(len(self.boxes), dtype=np.int64)


def detection_collate(items: Sequence[dict]) -> dict:
    """Stacks the images (and any other equal-shape tensors); boxes, box labels, names and patients stay lists."""
    listed = (keys.BOXES, keys.BOX_LABELS, keys.NAME, keys.PATIENT)
    batch = {key: [item[key] for item in items] for key in listed if key in items[0]}
    rest = [{k: v for k, v in item.items() if k not in listed} for item in items]
    batch.update(default_collate(rest))
    return batch


def breast_bbox(image: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the largest connected region above Otsu's threshold (the breast); the
    whole image when nothing stands out. The card's choice: the paper names no segmentation method."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    small = image[::4, ::4].astype(np.float32)
    if float(small.max()) <= float(small.min()):
        return 0, image.shape[0], 0, image.shape[1]
    mask = small > threshold_otsu(small)
    labelled, count = ndimage.label(mask)
    if count == 0:
        return 0, image.shape[0], 0, image.shape[1]
    sizes = ndimage.sum(mask, labelled, range(1, count + 1))
    rows, cols = np.nonzero(labelled == (int(np.argmax(sizes)) + 1))
    r0, r1 = rows.min() * 4, min(image.shape[0], (rows.max() + 1) * 4)
    c0, c1 = cols.min() * 4, min(image.shape[1], (cols.max() + 1) * 4)
    return int(r0), int(r1), int(c0), int(c1)


def preprocess(image: np.ndarray, boxes: np.ndarray, input_hw: Optional[Sequence[int]], crop_breast: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """Breast crop (boxes clipped to it), resize to ``input_hw`` (H, W; boxes scaled), z-score.
    Returns float32 (H, W) and the boxes in the new frame."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:  # RGB PNG of a grey image
        image = image.mean(axis=-1)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    if crop_breast:
        r0, r1, c0, c1 = breast_bbox(image)
        image = image[r0:r1, c0:c1]
        boxes -= np.array([c0, r0, c0, r0], dtype=np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.shape[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.shape[0])
    if input_hw is not None and tuple(image.shape) != tuple(input_hw):
        height, width = image.shape
        tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
        image = F.interpolate(tensor, size=tuple(input_hw), mode="bilinear", align_corners=False,
                              antialias=True)[0, 0].numpy()
        boxes *= np.array([input_hw[1] / width, input_hw[0] / height] * 2, dtype=np.float32)
    std = float(image.std())
    image = (image - float(image.mean())) / (std if std > 0 else 1.0)
    return image.astype(np.float32), boxes


class DiscreteIntensity:
    """The paper's intensity augmentation: with probability ``p`` multiply the contrast (about the mean) by a
    factor drawn from ``contrast``, and with probability ``p`` the brightness by one from ``brightness`` (on the
    [0, 1]-rescaled image, mapped back). The card's reading of "contrast factor from {0.4, 0.8, 1.5}; brightness
    factor from {0.3, 0.7, 1.3}"."""

    def __init__(self, p: float = 0.5, contrast: Sequence[float] = (0.4, 0.8, 1.5),
                 brightness: Sequence[float] = (0.3, 0.7, 1.3)):
        self.p, self.contrast, self.brightness = p, list(contrast), list(brightness)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low, high = float(image.min()), float(image.max())
        if high <= low:
            return image
        x = (image - low) / (high - low)
        if rng.random() < self.p:
            x = (x - x.mean()) * self.contrast[rng.integers(len(self.contrast))] + x.mean()
        if rng.random() < self.p:
            x = x * self.brightness[rng.integers(len(self.brightness))]
        return (x * (high - low) + low).astype(np.float32)


class DetectionDataset(Dataset):
    """Items -> dict batches (``image`` (3, H, W) float, ``boxes``, ``box_labels``, ``name``, ``patient``).

    Args:
        items: the images and their boxes.
        reader: ``path -> (H, W) array`` for string sources (DICOM, PNG).
        input_hw: output (H, W); ``None`` keeps the (cropped) size.
        crop_breast: crop to the Otsu breast region first.
        augment: bbox-aware training augmentation (albumentations): horizontal flip and a bbox-safe random crop
            of 0.8-1.0 of the side resized back, each with probability ``aug_p``, then the discrete
            contrast/brightness factors.
        aug_p: probability of each augmentation (the paper: 0.5; 0.6 for Swin-B and ResNet-101).
        channels: output channels (the grey image replicated).
        seed: kept for reproducible subclasses; the augmentation draws from torch's global RNG
            (seed_everything fixes it; each loader worker differs).
    """

    def __init__(self, items: Sequence[DetectionItem], reader: Optional[Callable[[str], np.ndarray]] = None,
                 input_hw: Optional[Sequence[int]] = (1280, 800), crop_breast: bool = True, augment: bool = False,
                 aug_p: float = 0.5, channels: int = 3, seed: int = 0):
        self.items = list(items)
        self.reader = reader
        self.input_hw = None if input_hw is None else tuple(int(v) for v in input_hw)
        self.crop_breast, self.augment, self.aug_p, self.channels = crop_breast, augment, aug_p, channels
        self.intensity = DiscreteIntensity(aug_p)
        self._geometric = None

    def __len__(self) -> int:
        return len(self.items)

    def load(self, item: DetectionItem) -> np.ndarray:
        if isinstance(item.source, np.ndarray):
            return item.source
        if callable(item.source):
            return item.source()
        if self.reader is None:
            raise ValueError(f"no reader for the path source {item.source!r}")
        return self.reader(item.source)

    def geometric(self):
        if self._geometric is None:
            import albumentations as A

            height, width = self.input_hw if self.input_hw is not None else (None, None)
            crop = []
            if height is not None:
                crop = [A.RandomSizedBBoxSafeCrop(height=height, width=width, erosion_rate=0.0, p=self.aug_p)]
            self._geometric = A.Compose(
                [A.HorizontalFlip(p=self.aug_p), *crop],
                bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3))
        return self._geometric

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image, boxes = preprocess(self.load(item), item.boxes, self.input_hw, self.crop_breast)
        labels = item.labels.copy()
        keep = (boxes[:, 2] > boxes[:, 0] + 0.5) & (boxes[:, 3] > boxes[:, 1] + 0.5)
        boxes, labels = boxes[keep], labels[keep]
        if self.augment:
            geometric = self.geometric()
            # albumentations 2 seeds itself from the OS unless told: draw its seed from torch's RNG (seed_everything)
            geometric.set_random_seed(int(torch.randint(0, 2 ** 31 - 1, (1,))))
            out = geometric(image=image, bboxes=boxes, labels=labels)
            image = np.asarray(out["image"], dtype=np.float32)
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
            # A generator per call from torch's RNG: differs across workers and epochs, fixed by seed_everything.
            image = self.intensity(image, np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,)))))
        tensor = torch.from_numpy(np.ascontiguousarray(image))[None].expand(self.channels, -1, -1).clone()
        return {keys.IMAGE: tensor, keys.BOXES: torch.from_numpy(boxes.copy()),
                keys.BOX_LABELS: torch.from_numpy(labels.astype(np.int64)), keys.NAME: item.name,
                keys.PATIENT: str(item.patient)}


def patient_split(patients: Sequence[str], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
                  ) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) item indices with every patient on one side; patients shuffled by ``seed`` and cut by
    ``fractions`` of the patients (the card's choice: the paper's random 70/10/20 split, by patient)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three numbers summing to 1, got {fractions}")
    unique = sorted(set(patients), key=lambda p: hashlib.md5(str(p).encode()).hexdigest())
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    side = {}
    for rank, index in enumerate(order):
        side[unique[index]] = 0 if rank < n_train else 1 if rank < n_train + n_val else 2
    splits: tuple[list[int], list[int], list[int]] = ([], [], [])
    for i, patient in enumerate(patients):
        splits[side[patient]].append(i)
    return splits


class DetectionDataModule(BaseDataModule):
    """Loader plumbing for detection: ``detection_collate`` on every loader, and the shared dataset options.

    Subclasses implement ``list_items() -> list[DetectionItem]`` (and ``read`` for path sources); the base splits by
    patient (``split_fractions``, ``split_seed``) unless ``split_items`` is overridden, and builds the datasets.
    """

    standin_config = "experiments/swincalc_demo.yaml"

    def __init__(self, input_hw: Sequence[int] = (1280, 800), crop_breast: bool = True, aug_p: float = 0.5,
                 augment: bool = True, split_fractions: Sequence[float] = (0.7, 0.1, 0.2), split_seed: int = 0,
                 batch_size: int = 2, num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        self.input_hw = None if input_hw is None else [int(v) for v in input_hw]
        self.crop_breast, self.aug_p, self.augment = crop_breast, aug_p, augment
        self.split_fractions, self.split_seed = list(split_fractions), split_seed

    # -- hooks ----------------------------------------------------------------------------------------------
    def list_items(self) -> list[DetectionItem]:
        raise NotImplementedError

    def read(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def split_items(self, items: list[DetectionItem]) -> tuple[list[int], list[int], list[int]]:
        return patient_split([item.patient for item in items], self.split_fractions, self.split_seed)

    # -- datasets -------------------------------------------------------------------------------------------
    def dataset(self, items: Sequence[DetectionItem], train: bool) -> DetectionDataset:
        return DetectionDataset(items, reader=self.read, input_hw=self.input_hw, crop_breast=self.crop_breast,
                                augment=train and self.augment, aug_p=self.aug_p, seed=self.split_seed)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        items = self.list_items()
        train, val, test = self.split_items(items)
        self.train_set = self.dataset([items[i] for i in train], train=True) if train else None
        self.val_set = self.dataset([items[i] for i in val], train=False) if val else None
        self.test_set = self.dataset([items[i] for i in test], train=False) if test else None

    def _loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool, sampler: Optional[Sampler]) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                          sampler=sampler, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, collate_fn=detection_collate)


def read_dicom(path: str) -> np.ndarray:
    """A DICOM image as float32 (H, W): modality LUT applied, MONOCHROME1 inverted (bright = dense)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    dataset = pydicom.dcmread(path)
    pixels = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels


def read_image(path: str) -> np.ndarray:
    """A (16-bit) PNG or other image file as float32 (H, W) (colour averaged)."""
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise OSError(f"cannot read image {path}")
    pixels = pixels.astype(np.float32)
    return pixels.mean(axis=-1) if pixels.ndim == 3 else pixels
