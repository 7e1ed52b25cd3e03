"""Shared base for 3D volume segmentation datasets: splits by subject, training patches, NIfTI/MINC reading with a
decoded-volume ``.npy`` cache.

- ``VolumeSegmentationDataModule``: a subclass says where its volumes come from (``volumes()`` -> ``VolumeCollection``:
  (image (C, *S) float32, labels (*S) integer) per sample, with a name and a group, the subject); the base splits
  them (grouped k-fold, every sample of a subject on one side, a validation share of the training subjects; or a
  predefined split) and serves whole volumes for validation/test (the task infers larger-than-patch volumes by
  sliding windows) and random patches for training (``patch_size``; a patch centred on a random foreground voxel
  with probability ``foreground_probability``, else anywhere, as MONAI's ``RandCropByPosNegLabel``).
- ``NiftiVolumeDataModule``: volumes read with nibabel (NIfTI or MINC), reoriented to the closest RAS axes, turned
  into samples by the subclass (``samples_from_subject``: crops, hemispheres, ...) and cached once, in
  ``prepare_data``, as ``<cache_dir>/<settings>/<subject>/<sample>_{image,label}.npy`` (memory-mapped by the
  datasets; rebuilt when a source is newer or the preprocessing settings change).

Items are dicts: ``image`` (C, *S) float32, ``mask`` (1, *S) int64, ``name``.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError, writable_dir
from datamodules.oasis import NpyCacheSubjects
from datamodules.registration import InMemorySubjects
from datamodules.splits import group_kfold_split
from lightning_modules.batch import IMAGE, MASK, NAME


@dataclass
class VolumeCollection:
    """Samples: ``store[k]`` -> (image (C, *S), labels (*S)); ``names``/``groups`` per sample; ``splits``: an
    optional predefined ``{"train": [...], "val": [...], "test": [...]}`` of sample indices."""

    store: Union[InMemorySubjects, NpyCacheSubjects]
    names: list[str]
    groups: list[str]
    splits: Optional[dict[str, list[int]]] = None


def sample_patch_start(labels: np.ndarray, patch_size: Sequence[int], foreground_probability: float,
                       rng: np.random.Generator) -> tuple[int, ...]:
    """The corner of a random patch inside ``labels`` (already at least ``patch_size``): centred on a random
    foreground voxel with probability ``foreground_probability`` (when there is foreground), else uniform."""
    shape = labels.shape
    if rng.random() < foreground_probability:
        foreground = np.flatnonzero(np.asarray(labels).ravel() > 0)
        if foreground.size:
            centre = np.unravel_index(foreground[rng.integers(foreground.size)], shape)
            return tuple(int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch_size, shape))
    return tuple(int(rng.integers(0, s - p + 1)) for p, s in zip(patch_size, shape))


def pad_to(array: np.ndarray, size: Sequence[int], value: float = 0.0) -> np.ndarray:
    """Pad the trailing ``len(size)`` axes at their end up to ``size`` (no-op where already as large)."""
    lead = array.ndim - len(size)
    widths = [(0, 0)] * lead + [(0, max(0, s - n)) for n, s in zip(array.shape[lead:], size)]
    return np.pad(array, widths, constant_values=value) if any(w[1] for w in widths) else array


class VolumeDataset(Dataset):
    """Samples ``indices`` of ``store``: whole volumes, or ``samples_per_volume`` random patches per volume and
    epoch (patch positions drawn from torch's generator, so ``seed_everything`` makes them reproducible)."""

    def __init__(self, store, indices: Sequence[int], names: Sequence[str],
                 patch_size: Optional[Sequence[int]] = None, samples_per_volume: int = 1,
                 foreground_probability: float = 0.5) -> None:
        self.store, self.indices, self.names = store, list(indices), list(names)
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        self.samples_per_volume = samples_per_volume if patch_size is not None else 1
        self.foreground_probability = foreground_probability

    def __len__(self) -> int:
        return len(self.indices) * self.samples_per_volume

    def __getitem__(self, k: int) -> dict:
        index = self.indices[k // self.samples_per_volume]
        image, labels = self.store[index]
        if self.patch_size is not None:
            image, labels = pad_to(image, self.patch_size), pad_to(labels, self.patch_size)
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,)).item()))
            start = sample_patch_start(labels, self.patch_size, self.foreground_probability, rng)
            window = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
            image, labels = image[(slice(None),) + window], labels[window]
        return {IMAGE: torch.from_numpy(np.array(image, dtype=np.float32)),
                MASK: torch.from_numpy(np.array(labels, dtype=np.int64))[None], NAME: self.names[index]}


class VolumeSegmentationDataModule(BaseDataModule):
    """Splits, patches and loaders for 3D segmentation; subclasses implement ``volumes()``.

    Args:
        patch_size: training patches of this size (volumes smaller than it are zero-padded); ``None``: whole
            volumes (all of one shape, or batch_size 1).
        samples_per_volume: patches drawn per training volume and epoch.
        foreground_probability: share of patches centred on a foreground voxel.
        split: ``kfold``: grouped k-fold over the subjects, test = fold ``fold`` of ``folds`` (seeded by
            ``split_seed``), validation = ``val_groups`` training subjects drawn with the same seed;
            ``predefined``: the split the collection brings.
        batch_size, num_workers, pin_memory, eval_batch_size: loaders (evaluation defaults to 1 volume per batch).
    """

    spatial_dims = 3
    standin_config: Optional[str] = None

    def __init__(self, patch_size: Optional[Sequence[int]] = None, samples_per_volume: int = 1,
                 foreground_probability: float = 0.5, split: Literal["kfold", "predefined"] = "kfold",
                 folds: int = 5, fold: int = 0, val_groups: int = 1, split_seed: int = 42, batch_size: int = 2,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = 1) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if split not in ("kfold", "predefined"):
            raise ValueError(f"split must be 'kfold' or 'predefined', got {split!r}")
        if samples_per_volume < 1 or not 0 <= foreground_probability <= 1:
            raise ValueError("samples_per_volume must be >= 1 and foreground_probability in [0, 1]")
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        if self.patch_size is not None and len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"patch_size {self.patch_size} must have {self.spatial_dims} sizes")
        self.samples_per_volume = samples_per_volume
        self.foreground_probability = foreground_probability
        self.split, self.folds, self.fold, self.val_groups, self.split_seed = split, folds, fold, val_groups, split_seed
        self.collection: Optional[VolumeCollection] = None
        self.split_indices: dict[str, list[int]] = {}

    def volumes(self) -> VolumeCollection:
        raise NotImplementedError

    def make_splits(self, collection: VolumeCollection) -> dict[str, list[int]]:
        if self.split == "predefined":
            if collection.splits is None:
                raise ValueError(f"{type(self).__name__} brings no predefined split: use split='kfold'")
            return {name: list(indices) for name, indices in collection.splits.items()}
        train, test = group_kfold_split(collection.groups, self.folds, self.fold, random_state=self.split_seed)
        train_groups = sorted({collection.groups[i] for i in train})
        if not 1 <= self.val_groups < len(train_groups):
            raise ValueError(f"val_groups must be in [1, {len(train_groups) - 1}], got {self.val_groups}")
        chosen = set(np.random.default_rng(self.split_seed + self.fold).choice(train_groups, self.val_groups,
                                                                                 replace=False).tolist())
        return {"train": [i for i in train if collection.groups[i] not in chosen],
                "val": [i for i in train if collection.groups[i] in chosen], "test": list(test)}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.collection is None:
            self.collection = self.volumes()
            self.split_indices = self.make_splits(self.collection)
        collection = self.collection
        self.train_set = VolumeDataset(collection.store, self.split_indices["train"], collection.names,
                                       self.patch_size, self.samples_per_volume, self.foreground_probability)
        self.val_set = VolumeDataset(collection.store, self.split_indices["val"], collection.names)
        self.test_set = VolumeDataset(collection.store, self.split_indices["test"], collection.names)


@dataclass(frozen=True)
class VolumeSubject:
    """One subject's files: the image channels (same grid) and one or more label files (merged)."""

    name: str
    channels: tuple[Path, ...]
    labels: tuple[Path, ...] = field(default=())


class NiftiVolumeDataModule(VolumeSegmentationDataModule):
    """Volumes on disk (NIfTI or MINC, via nibabel), decoded and preprocessed once into a ``.npy`` cache.

    Subclasses implement ``list_subjects()``, ``expected_layout()`` and, optionally, ``samples_from_subject`` (one
    sample per subject by default: the channels stacked and the labels) and ``cache_settings`` (the preprocessing
    settings that name the cache folder).

    Args:
        data_dir: the dataset's root folder.
        cache_dir: where the decoded samples go; ``None``: ``<data_dir>/.cache_npy`` (give another folder when
            ``data_dir`` is read-only).
        (others: ``VolumeSegmentationDataModule``)
    """

    def __init__(self, data_dir: str, cache_dir: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.cache_root = Path(os.path.expanduser(str(cache_dir))) if cache_dir else self.data_dir / ".cache_npy"

    # -- subclass hooks ----------------------------------------------------------------------------
    def list_subjects(self) -> list[VolumeSubject]:
        raise NotImplementedError

    def expected_layout(self) -> str:
        raise NotImplementedError

    def cache_settings(self) -> dict:
        """The preprocessing settings (JSON-serialisable) that ``samples_from_subject`` depends on."""
        return {}

    def samples_from_subject(self, subject: VolumeSubject, channels: list[np.ndarray], labels: np.ndarray,
                             spacing: tuple[float, ...]) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(sample name, image (C, *S) float32, labels (*S) uint8) for each sample of a subject."""
        return [(subject.name, np.stack(channels).astype(np.float32), labels.astype(np.uint8))]

    def map_labels(self, labels: np.ndarray, path: Path) -> np.ndarray:
        """Raw label values -> class indices (identity by default); raise ``self.error`` on unknown values."""
        return labels

    # -- errors and reading ------------------------------------------------------------------------
    def error(self, problem: str, path=None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(f"{type(self).__name__}: {problem}", path=path, layout=self.expected_layout(),
                            standin_config=self.standin_config, hint=hint)

    def read_volume(self, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
        """A NIfTI/MINC volume reoriented to the closest RAS axes (axis 0: left -> right), and its voxel size."""
        import nibabel as nib

        try:
            image = nib.load(str(path))
            if not isinstance(image, nib.Nifti1Image):  # MINC, Analyze, NIfTI-2: reorient through a NIfTI-1 copy
                image = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
            image = nib.as_closest_canonical(image)
            array = np.asarray(image.dataobj)
            spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
        except Exception as exc:  # nibabel, gzip, zlib and h5py raise many types for corrupt files
            raise self.error("corrupt or unreadable volume", path, hint=f"nibabel: {type(exc).__name__}: {exc}") from exc
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise self.error(f"expected a 3D volume, got shape {array.shape}", path)
        return array, spacing

    def read_subject(self, subject: VolumeSubject) -> tuple[list[np.ndarray], np.ndarray, tuple[float, ...]]:
        channels, spacing = [], None
        for path in subject.channels:
            array, zooms = self.read_volume(path)
            if channels and array.shape != channels[0].shape:
                raise self.error(f"image channels differ in shape: {array.shape} vs {channels[0].shape}", path,
                                 hint="all channels must be on one grid (use the co-registered volumes)")
            channels.append(array.astype(np.float32))
            spacing = spacing or zooms
        labels = np.zeros(channels[0].shape, np.uint8)
        for path in subject.labels:
            raw, _ = self.read_volume(path)
            if raw.shape != labels.shape:
                raise self.error(f"label map has shape {raw.shape}, the image {labels.shape}", path)
            rounded = np.rint(raw)
            if not np.allclose(raw, rounded):
                raise self.error("label map has non-integer values", path)
            mapped = self.map_labels(rounded.astype(np.int64), path)
            if ((labels > 0) & (mapped > 0)).any():
                raise self.error("label files overlap", path)
            labels = np.where(mapped > 0, mapped, labels).astype(np.uint8)
        return channels, labels, spacing

    # -- the cache ---------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        digest = hashlib.sha1(json.dumps(self.cache_settings(), sort_keys=True).encode()).hexdigest()[:10]
        return self.cache_root / digest

    def _manifest(self, subject: VolumeSubject) -> Path:
        return self.cache_dir / subject.name / "samples.json"

    def _is_cached(self, subject: VolumeSubject) -> bool:
        manifest = self._manifest(subject)
        if not manifest.is_file():
            return False
        newest = max(p.stat().st_mtime for p in (*subject.channels, *subject.labels))
        return manifest.stat().st_mtime >= newest

    def _build_cache(self, subjects: Sequence[VolumeSubject]) -> None:
        todo = [s for s in subjects if not self._is_cached(s)]
        if not todo:
            return
        if not writable_dir(self.cache_dir):
            raise self.error("cannot write the decoded-volume cache", self.cache_dir,
                             hint="Pass a writable folder with --data.cache_dir.")
        for subject in todo:
            channels, labels, spacing = self.read_subject(subject)
            samples = self.samples_from_subject(subject, channels, labels, spacing)
            folder = self.cache_dir / subject.name
            folder.mkdir(parents=True, exist_ok=True)
            for name, image, sample_labels in samples:
                for array, suffix in ((image.astype(np.float32), "image"), (sample_labels.astype(np.uint8), "label")):
                    path = folder / f"{name}_{suffix}.npy"
                    tmp = folder / f".{name}_{suffix}.{uuid.uuid4().hex}.tmp.npy"  # write then rename: no partial file
                    np.save(tmp, array)
                    os.replace(tmp, path)
            tmp = folder / f".samples.{uuid.uuid4().hex}.tmp"
            tmp.write_text(json.dumps([name for name, _, _ in samples]))
            os.replace(tmp, self._manifest(subject))

    def _subjects(self) -> list[VolumeSubject]:
        if not self.data_dir.is_dir():
            raise self.error("data_dir does not exist or is not a directory", self.data_dir)
        subjects = self.list_subjects()
        if not subjects:
            raise self.error("no subjects found", self.data_dir)
        return subjects

    def prepare_data(self) -> None:
        self._build_cache(self._subjects())

    def volumes(self) -> VolumeCollection:
        subjects = self._subjects()
        self._build_cache(subjects)  # normally done by prepare_data; covers direct use
        image_paths, label_paths, names, groups = [], [], [], []
        for subject in subjects:
            manifest = self._manifest(subject)
            try:
                sample_names = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise self.error(f"corrupt cache manifest ({exc})", manifest,
                                 hint=f"Delete {self.cache_dir} to rebuild it.") from exc
            for name in sample_names:
                image_paths.append(str(self.cache_dir / subject.name / f"{name}_image.npy"))
                label_paths.append(str(self.cache_dir / subject.name / f"{name}_label.npy"))
                names.append(name)
                groups.append(subject.name)
        for path in image_paths + label_paths:
            if not Path(path).is_file():
                raise self.error("cache file missing", path, hint=f"Delete {self.cache_dir} to rebuild it.")
        return VolumeCollection(NpyCacheSubjects(image_paths, label_paths), names, groups)
