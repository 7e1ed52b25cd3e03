"""Multiphoton microscopy (MPM) RoIs of thyroid nodule capsules, FA vs FTC (ThyroidFAE, ICPR 2024; the dataset
of the Bucharest group, private).

Layout of the official code: one folder per RoI named ``<sectionID>-<roiID>`` under the class folder, holding
the backward and forward SHG images at 10 linear polarisations (0-180 degrees in 20-degree steps) and one TPEF
image. BSHG and FSHG are the mean of the 9 polarisations 0-160 degrees (180 = 0); TPEF is used as is.

Each item is the stack of the chosen modalities, ``image`` float32 (C, H, W) in ``modalities`` order, with
``label`` (0 FA, 1 FTC), ``group`` (the tissue section's index) and ``name`` (``<class>/<roi folder>``).

Split by tissue section (no section on two sides), 70:10:20 train:val:test, the training RoIs balanced between
the classes (``section_split``), deterministic given ``split_seed``; or the sections of a ``split.yaml``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError
from lightning_modules.batch import GROUP, IMAGE, LABEL, NAME

CLASSES = ("FA", "FTC")
MODALITIES = ("bshg", "fshg", "tpef")
POLARISATIONS = tuple(range(0, 181, 20))  # on disk: 0, 20, ..., 180
AVERAGED_POLARISATIONS = tuple(range(0, 161, 20))  # the 9 averaged (180 duplicates 0)
IntensityNorm = Literal["none", "minmax", "zscore"]

LAYOUT = """<data_dir>/
  FA/<sectionID>-<roiID>/                 one folder per RoI; the section ID is the name before '-'
      BSHG/BSHG_pol_lin_0.tif ... BSHG_pol_lin_180.tif   backward SHG, linear polarisation 0-180 deg, 20-deg steps
      FSHG/FSHG_pol_lin_0.tif ... FSHG_pol_lin_180.tif   forward SHG (0-160 are averaged; 180 = 0 is not read)
      TPEF.tif                                           two-photon excited fluorescence
  FTC/<sectionID>-<roiID>/...
  split.yaml                              optional (split: file): {train: [section IDs], val: [...], test: [...]},
                                          or a list of such settings (split_setting picks one)"""


@dataclass(frozen=True)
class MPMItem:
    """One RoI: its folder (or, for stand-ins, a (3, H, W) float array of BSHG, FSHG, TPEF), class, section."""

    source: Union[Path, np.ndarray]
    label: int
    section: str
    name: str


def section_of(roi_folder: str) -> str:
    """The tissue section of a RoI folder ``<sectionID>-<roiID>`` (the official code's split key)."""
    return roi_folder.split("-", 1)[0]


def section_split(section_labels: dict[str, int], section_sizes: dict[str, int], test_size: float = 0.2,
                  val_fraction: float = 0.1, seed: int = 0, balance_tolerance: float = 0.1,
                  candidates: int = 2000) -> dict[str, list[str]]:
    """Tissue sections -> {"train", "val", "test"}: round(test_size S) test (at least 2) and round(val_fraction S)
    validation sections (at least 1), the rest training; train and test hold both classes.

    Seeded random assignments are drawn in turn and the first whose training RoIs are balanced between the two
    classes (|n_0 - n_1| <= ``balance_tolerance`` x the training RoIs) and whose validation sections hold both
    classes (when it has 2 or more) is taken; if none of ``candidates`` is, the most balanced one.
    """
    sections = sorted(section_labels)
    count = len(sections)
    n_test = max(2, int(round(test_size * count)))  # both classes
    n_val = max(1, int(round(val_fraction * count))) if val_fraction > 0 else 0
    n_train = count - n_test - n_val
    if n_train < 2 or len(set(section_labels.values())) < 2:
        raise ValueError(f"a section split needs >= 2 training sections and both classes: {count} sections, "
                         f"{n_test} test, {n_val} validation, classes {sorted(set(section_labels.values()))}")
    rng = np.random.default_rng(seed)
    best, best_score = None, None
    for _ in range(candidates):
        order = [sections[i] for i in rng.permutation(count)]
        split = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        classes = {k: {section_labels[s] for s in v} for k, v in split.items()}
        if len(classes["train"]) < 2 or len(classes["test"]) < 2:
            continue
        rois = [sum(section_sizes[s] for s in split["train"] if section_labels[s] == c) for c in (0, 1)]
        imbalance = abs(rois[0] - rois[1]) / max(1, sum(rois))
        val_ok = n_val < 2 or len(classes["val"]) == 2
        if imbalance <= balance_tolerance and val_ok:
            best = split
            break
        score = (imbalance, not val_ok)
        if best_score is None or score < best_score:
            best, best_score = split, score
    if best is None:
        raise ValueError(f"no assignment of {count} sections puts both classes in train and test")
    return {k: sorted(v) for k, v in best.items()}


def normalise_intensity(image: np.ndarray, mode: IntensityNorm, eps: float = 1e-8) -> np.ndarray:
    """Per image and channel: raw values (``none``, the official code), [0, 1] (``minmax``) or zero mean and
    unit variance (``zscore``)."""
    if mode == "none":
        return image
    flat = image.reshape(image.shape[0], -1)
    if mode == "minmax":
        low, high = flat.min(1), flat.max(1)
        return (image - low[:, None, None]) / np.maximum(high - low, eps)[:, None, None]
    if mode == "zscore":
        return (image - flat.mean(1)[:, None, None]) / np.maximum(flat.std(1), eps)[:, None, None]
    raise ValueError(f"intensity_norm must be none, minmax or zscore, got {mode!r}")


class MPMDataset(Dataset):
    """Items -> batch dicts: the cached (C, H, W) float stack, normalised, flipped/rotated when training with
    ``flips`` (torch's RNG, so runs are reproducible)."""

    def __init__(self, items: Sequence[MPMItem], load, intensity_norm: IntensityNorm, augmentation: str,
                 group_index: dict[str, int]):
        self.items, self.load = list(items), load
        self.intensity_norm, self.augmentation = intensity_norm, augmentation
        self.group_index = group_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = torch.from_numpy(np.ascontiguousarray(
            normalise_intensity(self.load(index), self.intensity_norm), dtype=np.float32))
        if self.augmentation == "flips":
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
            image = torch.rot90(image, int(torch.randint(0, 4, ())), dims=(-2, -1))
        return {IMAGE: image, LABEL: torch.tensor(item.label, dtype=torch.long),
                GROUP: torch.tensor(self.group_index.get(item.section, -1), dtype=torch.long), NAME: item.name}


class ThyroidMPMDataModule(BaseDataModule):
    """The MPM thyroid RoIs in the official layout (``LAYOUT``).

    Args:
        data_dir: the root holding ``FA/`` and ``FTC/``.
        modalities: the channels of ``image``, in order (out of bshg, fshg, tpef); the FAE's must be the same.
        image_size: resize every modality to this square size (None: as stored, 512).
        intensity_norm: ``none`` (raw TIFF values: the official code, on whose scale alpha and beta were
            tuned), ``minmax`` per image and modality to [0, 1] (default, stable) or ``zscore``.
        split: ``section`` (``section_split``: seeded, balanced, 70:10:20 by default) or ``file``
            (``split_file``, default ``<data_dir>/split.yaml``; a list of settings picks ``split_setting``).
        test_size, val_fraction: the section fractions of ``section``.
        balance_tolerance: how unequal the classes' training RoIs may be (fraction of the training RoIs).
        exclude: RoI folders left out (the code skips ``494920-3``).
        augmentation: ``none`` (the code) or ``flips`` (random flips and 90-degree rotations, training only).
        preload: read and average every RoI once in ``setup`` (threads) and keep it in memory (float32).
    """

    layout = LAYOUT
    classes = CLASSES
    standin_config = "experiments/thyroid_fae_demo_fae.yaml"

    def __init__(self, data_dir: str = "", modalities: Sequence[str] = MODALITIES, image_size: Optional[int] = None,
                 intensity_norm: IntensityNorm = "minmax", split: Literal["section", "file"] = "section",
                 split_file: Optional[str] = None, split_setting: int = 0, test_size: float = 0.2,
                 val_fraction: float = 0.1, split_seed: int = 0, balance_tolerance: float = 0.1,
                 exclude: Sequence[str] = ("494920-3",), augmentation: Literal["none", "flips"] = "none",
                 preload: bool = True, batch_size: int = 1, num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None, standin_config: Optional[str] = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        modalities = tuple(str(m).lower() for m in modalities)
        if not modalities or len(set(modalities)) != len(modalities) or not set(modalities) <= set(MODALITIES):
            raise ValueError(f"modalities must be distinct names out of {list(MODALITIES)}, got {list(modalities)}")
        if intensity_norm not in ("none", "minmax", "zscore"):
            raise ValueError(f"intensity_norm must be none, minmax or zscore, got {intensity_norm!r}")
        if split not in ("section", "file"):
            raise ValueError(f"split must be 'section' or 'file', got {split!r}")
        if augmentation not in ("none", "flips"):
            raise ValueError(f"augmentation must be 'none' or 'flips', got {augmentation!r}")
        if standin_config:
            self.standin_config = standin_config
        self.data_dir = Path(os.path.expanduser(str(data_dir))) if data_dir else None
        self.modalities, self.image_size, self.intensity_norm = modalities, image_size, intensity_norm
        self.split, self.split_file, self.split_setting = split, split_file, split_setting
        self.test_size, self.val_fraction, self.split_seed = test_size, val_fraction, split_seed
        self.balance_tolerance = balance_tolerance
        self.exclude = {str(e) for e in exclude}
        self.augmentation, self.preload = augmentation, preload
        self.items: list[MPMItem] = []
        self.split_sections: dict[str, list[str]] = {}
        self.split_indices: dict[str, list[int]] = {}
        self.group_names: list[str] = []
        self.group_index: dict[str, int] = {}

    # ---- errors ----
    def error(self, problem: str, path: Optional[Path] = None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config, hint=hint)

    # ---- listing and reading ----
    def list_items(self) -> list[MPMItem]:
        if self.data_dir is None or not self.data_dir.is_dir():
            raise self.error("dataset folder not found", self.data_dir)
        items = []
        for label, name in enumerate(self.classes):
            folder = self.data_dir / name
            if not folder.is_dir():
                raise self.error(f"class folder '{name}' not found", folder)
            rois = sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in self.exclude)
            if not rois:
                raise self.error(f"class folder '{name}' holds no RoI folders <sectionID>-<roiID>", folder)
            for roi in rois:
                if "-" not in roi.name:
                    raise self.error("RoI folder not named <sectionID>-<roiID>", roi)
                items.append(MPMItem(roi, label, section_of(roi.name), f"{name}/{roi.name}"))
        return items

    def modality_files(self, roi: Path, modality: str) -> list[Path]:
        if modality == "tpef":
            return [roi / "TPEF.tif"]
        key = modality.upper()
        return [roi / key / f"{key}_pol_lin_{angle}.tif" for angle in AVERAGED_POLARISATIONS]

    def read_tiff(self, path: Path) -> np.ndarray:
        import tifffile

        if not path.is_file():
            raise self.error("image not found", path)
        try:
            image = np.asarray(tifffile.imread(path), dtype=np.float32)
        except Exception as error:  # tifffile raises several types for corrupt files
            raise self.error(f"unreadable TIFF ({type(error).__name__}: {error})", path) from error
        image = np.squeeze(image)
        if image.ndim != 2:
            raise self.error(f"expected a single-channel 2D image, got shape {image.shape}", path)
        return image

    def read_modality(self, item: MPMItem, modality: str) -> np.ndarray:
        """(H, W) float32: the mean of the 9 polarisations (SHG) or the image (TPEF)."""
        if isinstance(item.source, np.ndarray):
            return item.source[MODALITIES.index(modality)].astype(np.float32)
        images = [self.read_tiff(path) for path in self.modality_files(item.source, modality)]
        if len({image.shape for image in images}) != 1:
            raise self.error(f"{modality.upper()} polarisation images differ in size "
                             f"({sorted({image.shape for image in images})})", item.source / modality.upper())
        return np.mean(images, axis=0, dtype=np.float64).astype(np.float32)

    def read_item(self, item: MPMItem) -> np.ndarray:
        """(C, H, W) float32 in ``modalities`` order, resized to ``image_size``."""
        channels = [self.read_modality(item, m) for m in self.modalities]
        if len({c.shape for c in channels}) != 1:
            raise self.error(f"modalities differ in size ({[c.shape for c in channels]})",
                             item.source if isinstance(item.source, Path) else None)
        image = np.stack(channels)
        if self.image_size is not None and image.shape[-2:] != (self.image_size, self.image_size):
            tensor = torch.from_numpy(image)[None]
            image = F.interpolate(tensor, size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False, antialias=self.image_size < image.shape[-1])[0].numpy()
        return image

    # ---- splits ----
    def _read_split_file(self) -> dict[str, list[str]]:
        path = Path(self.split_file) if self.split_file else (self.data_dir or Path(".")) / "split.yaml"
        if not path.is_file():
            raise self.error("split file not found (split: file)", path)
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise self.error(f"unreadable split file ({error})", path) from error
        if isinstance(content, list):
            if not 0 <= self.split_setting < len(content):
                raise self.error(f"split_setting {self.split_setting} not in the file's {len(content)} settings", path)
            content = content[self.split_setting]
        if not isinstance(content, dict) or not {"train", "val", "test"} <= set(content):
            raise self.error("split file must map train, val and test to lists of section IDs", path)
        return {k: [str(s) for s in content[k]] for k in ("train", "val", "test")}

    def make_splits(self) -> dict[str, list[str]]:
        labels: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for item in self.items:
            if labels.setdefault(item.section, item.label) != item.label:
                raise self.error(f"section {item.section} has RoIs of both classes",
                                 self.data_dir, hint="a tissue section is either FA or FTC")
            sizes[item.section] = sizes.get(item.section, 0) + 1
        if self.split == "file":
            split = self._read_split_file()
            unknown = sorted({s for v in split.values() for s in v} - set(labels))
            if unknown:
                raise self.error(f"split file names sections without RoIs: {unknown}", self.split_file or self.data_dir)
            return split
        try:
            return section_split(labels, sizes, self.test_size, self.val_fraction, self.split_seed,
                                 self.balance_tolerance)
        except ValueError as error:
            raise self.error(str(error), self.data_dir) from error

    @property
    def class_counts(self) -> list[int]:
        labels = [self.items[i].label for i in self.split_indices["train"]]
        return np.bincount(labels, minlength=len(self.classes)).tolist()

    # ---- datasets ----
    def make_dataset(self, items: Sequence[MPMItem], train: bool) -> MPMDataset:
        items = list(items)
        if self.preload:
            with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
                cache = list(pool.map(self.read_item, items))

            def load(index: int) -> np.ndarray:
                return cache[index]
        else:
            def load(index: int) -> np.ndarray:
                return self.read_item(items[index])
        return MPMDataset(items, load, self.intensity_norm, self.augmentation if train else "none", self.group_index)

    def prepare_data(self) -> None:
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise self.error("dataset folder not found", self.data_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.items:
            return
        self.prepare_data()
        self.items = self.list_items()
        self.group_names = sorted({item.section for item in self.items})
        self.group_index = {name: i for i, name in enumerate(self.group_names)}
        self.split_sections = self.make_splits()
        self.split_indices = {k: [i for i, item in enumerate(self.items) if item.section in set(v)]
                              for k, v in self.split_sections.items()}
        for split, indices in self.split_indices.items():
            if not indices:
                raise self.error(f"the {split} split is empty ({len(self.items)} RoIs)", self.data_dir)
        sets = {k: self.make_dataset([self.items[i] for i in v], train=k == "train")
                for k, v in self.split_indices.items()}
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]
        self.predict_set = self.test_set


def write_roi(root: Union[str, Path], class_name: str, roi_folder: str, bshg: np.ndarray, fshg: np.ndarray,
              tpef: np.ndarray, polarisation_jitter: float = 0.0, seed: int = 0) -> Path:
    """Write one RoI in the official layout (10 polarisation files per SHG modality whose 0-160 mean is the
    given image when ``polarisation_jitter`` is 0; 180 = 0). For fixtures and for exporting the stand-in."""
    import tifffile

    rng = np.random.default_rng(seed)
    roi = Path(root) / class_name / roi_folder
    for key, image in (("BSHG", bshg), ("FSHG", fshg)):
        (roi / key).mkdir(parents=True, exist_ok=True)
        # Zero-mean per-angle modulations over the 9 averaged angles keep their mean equal to the image.
        modulation = rng.normal(0, polarisation_jitter, size=(len(AVERAGED_POLARISATIONS), *image.shape))
        modulation -= modulation.mean(axis=0, keepdims=True)
        for index, angle in enumerate(POLARISATIONS):
            layer = image + modulation[index % len(AVERAGED_POLARISATIONS)]
            tifffile.imwrite(roi / key / f"{key}_pol_lin_{angle}.tif", layer.astype(np.float32))
    tifffile.imwrite(roi / "TPEF.tif", np.asarray(tpef, dtype=np.float32))
    return roi

