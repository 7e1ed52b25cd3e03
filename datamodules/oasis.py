"""OASIS-1 as preprocessed by neurite-oasis v1.0 (Hoopes & Dalca), the layout FNOReg used.

Download: https://github.com/adalca/medical-datasets/blob/master/neurite-oasis.md
(``neurite-oasis.2d.v1.0.tar``, 24 MB, for 2D; ``neurite-oasis.v1.0.tar``, 6.6 GB, for 3D).

Pairs follow the official FNOReg code (github anac0der/fnoreg, ``deep_fourier_reg/dataloaders.py``):
subjects are split by their order in ``subjects.txt`` and each pair is ``(moving, fixed)``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.base import BaseDataModule, DatasetError, writable_dir
from datamodules.registration import InMemorySubjects, RegistrationPairDataset

STANDIN_CONFIG = "experiments/fnoreg_demo.yaml"
DOWNLOAD_URL = "https://github.com/adalca/medical-datasets/blob/master/neurite-oasis.md"

#: (train, val, test) subject counts of the FNOReg code, taken in subjects.txt order (414 subjects).
PAPER_SPLIT_SIZES = {2: (201, 12, 201), 3: (384, 10, 20)}

Pair = tuple[int, int]  # (moving index, fixed index) into subjects.txt


# --------------------------------------------------------------------------------------------
# Pairing: pure functions of the subject count, so the paper's counts can be checked without data
# --------------------------------------------------------------------------------------------


def all_ordered_pairs(indices: Sequence[int]) -> list[Pair]:
    """Every ordered pair (i, j), i != j: n(n-1) pairs (2D train: 201 subjects -> 40,200).

    The official TrainOasis2d also has n(n-1) items but its index arithmetic never uses the last
    subject as moving and repeats (i, i+1); we take the intended set of all ordered pairs.
    """
    return [(i, j) for i in indices for j in indices if i != j]


def consecutive_pairs(indices: Sequence[int], both_directions: bool) -> list[Pair]:
    """(i, i+1) for consecutive subjects, then, if ``both_directions``, (i+1, i) from the end backwards.

    Same order as the official code: forward n-1 pairs (ValidationOasis3d), or 2(n-1) pairs with
    the reversed ones appended (ValidationOasis2d, TrainOasis3d).
    """
    indices = list(indices)
    forward = list(zip(indices[:-1], indices[1:]))
    if not both_directions:
        return forward
    return forward + [(f, m) for m, f in reversed(forward)]


def resolve_split_sizes(
    num_subjects: int, spatial_dims: int, split_sizes: Optional[Sequence[int]] = None
) -> tuple[int, int, int]:
    """(train, val, test) subject counts.

    ``split_sizes=None``: the paper's counts when there are enough subjects (extra subjects are
    unused, as in the code); for a smaller index the paper's proportions, each split >= 2 subjects.
    Raises ``ValueError`` if the sizes do not fit (the DataModule turns it into a DatasetError).
    """
    paper = PAPER_SPLIT_SIZES[spatial_dims]
    if split_sizes is None:
        if num_subjects >= sum(paper):
            return paper
        total = sum(paper)
        val = max(2, round(num_subjects * paper[1] / total))
        test = max(2, round(num_subjects * paper[2] / total))
        sizes = (num_subjects - val - test, val, test)
    else:
        sizes = tuple(int(s) for s in split_sizes)
        if len(sizes) != 3:
            raise ValueError(f"split_sizes must be (train, val, test), got {split_sizes}")
    if min(sizes) < 2 or sum(sizes) > num_subjects:
        raise ValueError(
            f"cannot split {num_subjects} subjects into (train, val, test) = {sizes}: "
            "every split needs at least 2 subjects (so at least 6 subjects in all)"
        )
    return sizes


def oasis_pairs(
    num_subjects: int, spatial_dims: int, split_sizes: Optional[Sequence[int]] = None
) -> dict[str, list[Pair]]:
    """Pairs of each split, as (moving, fixed) indices into subjects.txt.

    With 414 subjects and the paper's sizes:
    2D: train 0-200 all ordered pairs (40,200); val 201-212 and test 213-413 consecutive pairs in
        both directions (22 and 400).
    3D: train 0-383 consecutive pairs in both directions (766); val 384-393 and test 394-413
        consecutive pairs forward only (9 and 19), as ValidationOasis3d in the code.
    """
    n_train, n_val, n_test = resolve_split_sizes(num_subjects, spatial_dims, split_sizes)
    train = range(0, n_train)
    val = range(n_train, n_train + n_val)
    test = range(n_train + n_val, n_train + n_val + n_test)
    if spatial_dims == 2:
        return {
            "train": all_ordered_pairs(train),
            "val": consecutive_pairs(val, both_directions=True),
            "test": consecutive_pairs(test, both_directions=True),
        }
    if spatial_dims == 3:
        return {
            "train": consecutive_pairs(train, both_directions=True),
            "val": consecutive_pairs(val, both_directions=False),
            "test": consecutive_pairs(test, both_directions=False),
        }
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


# --------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------


class _OASISDataModule(BaseDataModule):
    """Common part of the 2D and 3D OASIS modules: layout checks, reading, splits."""

    image_file: str
    seg_file: str
    seg_description: str
    archive: str

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        num_workers: int,
        pin_memory: Optional[bool],
        eval_batch_size: Optional[int],
        split_sizes: Optional[Sequence[int]],
        image_shape: Sequence[int],
        subjects_file: str,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.split_sizes = None if split_sizes is None else tuple(split_sizes)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.subjects_file = subjects_file
        self.subjects: list[str] = []
        self.pairs: dict[str, list[Pair]] = {}

    # ---- layout and errors ----

    def expected_layout(self) -> str:
        shape = "x".join(map(str, self.image_shape)) + ("x1" if self.spatial_dims == 2 else "")
        return (
            f"{self.data_dir}/   ({self.archive}, {DOWNLOAD_URL})\n"
            f"  {self.subjects_file:<26}one subject folder per line, e.g. OASIS_OAS1_0001_MR1\n"
            "  OASIS_OAS1_0001_MR1/\n"
            f"    {self.image_file:<24}image {shape}, intensities in [0,1]\n"
            f"    {self.seg_file:<24}labels {shape}, {self.seg_description}\n"
            "  OASIS_OAS1_0002_MR1/\n"
            "  ..."
        )

    def _error(self, problem: str, path=None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(
            f"OASIS-1 {self.spatial_dims}D: {problem}",
            path=path,
            layout=self.expected_layout(),
            standin_config=STANDIN_CONFIG,
            hint=hint,
        )

    def _read_subjects(self) -> list[str]:
        if not self.data_dir.is_dir():
            raise self._error("data_dir does not exist or is not a directory", self.data_dir)
        index = self.data_dir / self.subjects_file
        if not index.is_file():
            raise self._error("subject list not found", index)
        try:
            names = [line.strip() for line in index.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise self._error(f"cannot read the subject list ({exc})", index) from exc
        if not names:
            raise self._error("the subject list is empty", index)
        return names

    def _resolve_pairs(self, names: list[str]) -> dict[str, list[Pair]]:
        try:
            return oasis_pairs(len(names), self.spatial_dims, self.split_sizes)
        except ValueError as exc:
            raise self._error(f"too few subjects: {exc}", self.data_dir / self.subjects_file) from exc

    def _used_subjects(self) -> list[int]:
        return sorted({i for pairs in self.pairs.values() for pair in pairs for i in pair})

    def _source_paths(self, name: str) -> tuple[Path, Path]:
        folder = self.data_dir / name
        return folder / self.image_file, folder / self.seg_file

    def _check_files_exist(self, indices: Sequence[int]) -> None:
        missing = [p for i in indices for p in self._source_paths(self.subjects[i]) if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more missing files)" if len(missing) > 1 else ""
            raise self._error(f"file not found{more}", missing[0])

    def _read_subject(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Decode one subject: image float32 and labels uint8, both of shape ``image_shape``."""
        image_path, seg_path = self._source_paths(name)
        image = self._read_nifti(image_path).astype(np.float32)
        labels = self._read_nifti(seg_path)
        rounded = np.rint(labels)
        if (
            not np.allclose(labels, rounded)
            or rounded.min() < 0
            or rounded.max() >= self.num_labels
        ):
            raise self._error(
                f"label map is not integer labels in 0..{self.num_labels - 1}", seg_path
            )
        return image, rounded.astype(np.uint8)

    def _read_nifti(self, path: Path) -> np.ndarray:
        import nibabel as nib

        try:
            array = np.asarray(nib.load(str(path)).dataobj)
        except Exception as exc:  # nibabel, gzip and zlib raise many types for corrupt files
            raise self._error(
                "corrupt or truncated NIfTI file",
                path,
                hint=f"nibabel: {type(exc).__name__}: {exc}\nRe-extract it from {self.archive}.",
            ) from exc
        # 2D slices are stored as HxWx1 and read [:, :, 0], as in the official code.
        if self.spatial_dims == 2 and array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.shape != self.image_shape:
            raise self._error(
                f"wrong shape {tuple(array.shape)}, expected {self.image_shape}", path
            )
        return array


class OASIS2DDataModule(_OASISDataModule):
    """OASIS-1 2D slices (neurite-oasis v1.0): ``slice_norm.nii.gz`` and ``slice_seg24.nii.gz``.

    All slices are decoded once in ``setup`` and kept in memory (about 40 KB per subject).

    Args:
        data_dir: folder holding ``subjects.txt`` and the subject folders.
        batch_size: 8 in the paper.
        split_sizes: (train, val, test) subject counts in subjects.txt order; ``None`` = the paper's
            (201, 12, 201), or its proportions when the index has fewer than 414 subjects.
        image_shape: stored slice shape (the trailing singleton axis is dropped when read).
        subjects_file: name of the subject list inside ``data_dir``.
    """

    spatial_dims = 2
    num_labels = 25  # 0 + 24 labels
    image_file = "slice_norm.nii.gz"
    seg_file = "slice_seg24.nii.gz"
    seg_description = "0 = background + 24 labels"
    archive = "neurite-oasis.2d.v1.0.tar"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: Optional[bool] = None,
        eval_batch_size: Optional[int] = None,
        split_sizes: Optional[tuple[int, int, int]] = None,
        image_shape: tuple[int, int] = (160, 192),
        subjects_file: str = "subjects.txt",
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, pin_memory, eval_batch_size, split_sizes, image_shape, subjects_file
        )
        self.save_hyperparameters()
        self._subject_arrays: Optional[InMemorySubjects] = None

    def prepare_data(self) -> None:
        # Cheap layout check on one process so errors surface before workers or DDP start.
        self.subjects = self._read_subjects()
        self.pairs = self._resolve_pairs(self.subjects)
        self._check_files_exist(self._used_subjects())

    def setup(self, stage: Optional[str] = None) -> None:
        if self._subject_arrays is None:
            self.subjects = self._read_subjects()
            self.pairs = self._resolve_pairs(self.subjects)
            used = self._used_subjects()
            self._check_files_exist(used)
            images = np.zeros((len(self.subjects), *self.image_shape), np.float32)
            labels = np.zeros((len(self.subjects), *self.image_shape), np.uint8)
            for i in used:
                images[i], labels[i] = self._read_subject(self.subjects[i])
            self._subject_arrays = InMemorySubjects(images, labels)
        self.train_set = RegistrationPairDataset(self._subject_arrays, self.pairs["train"])
        self.val_set = RegistrationPairDataset(self._subject_arrays, self.pairs["val"])
        self.test_set = RegistrationPairDataset(self._subject_arrays, self.pairs["test"])


class NpyCacheSubjects:
    """Subjects as memory-mapped ``.npy`` files: only the pages a sample touches are read."""

    def __init__(self, image_paths: Sequence[str], label_paths: Sequence[str]) -> None:
        self.image_paths = list(image_paths)
        self.label_paths = list(label_paths)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # Opened per access (cheap) so no file handles cross into forked loader workers.
        return (
            np.load(self.image_paths[index], mmap_mode="r"),
            np.load(self.label_paths[index], mmap_mode="r"),
        )


class OASIS3DDataModule(_OASISDataModule):
    """OASIS-1 3D volumes (neurite-oasis v1.0): ``aligned_norm.nii.gz`` and ``aligned_seg35.nii.gz``.

    Decoding a ``.nii.gz`` volume takes about a second, so ``prepare_data`` decodes each volume once
    into ``cache_dir/<subject>/{aligned_norm,aligned_seg35}.npy`` (float32 image, uint8 labels; about
    34 MB per subject, 14 GB for all 414) and the datasets memory-map them. A cache file older than
    its source is rebuilt.

    Args:
        data_dir: folder holding ``subjects.txt`` and the subject folders.
        batch_size: 1 in the paper.
        split_sizes: (train, val, test) subject counts in subjects.txt order; ``None`` = the paper's
            (384, 10, 20), or its proportions when the index has fewer than 414 subjects.
        image_shape: stored volume shape.
        cache_dir: where the decoded ``.npy`` files go; ``None`` = ``<data_dir>/.cache_npy``
            (give another folder when ``data_dir`` is read-only).
        subjects_file: name of the subject list inside ``data_dir``.
    """

    spatial_dims = 3
    num_labels = 36  # 0 + 35 labels
    image_file = "aligned_norm.nii.gz"
    seg_file = "aligned_seg35.nii.gz"
    seg_description = "0 = background + 35 labels"
    archive = "neurite-oasis.v1.0.tar"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 1,
        num_workers: int = 2,
        pin_memory: Optional[bool] = None,
        eval_batch_size: Optional[int] = None,
        split_sizes: Optional[tuple[int, int, int]] = None,
        image_shape: tuple[int, int, int] = (160, 192, 224),
        cache_dir: Optional[str] = None,
        subjects_file: str = "subjects.txt",
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, pin_memory, eval_batch_size, split_sizes, image_shape, subjects_file
        )
        self.save_hyperparameters()
        self.cache_dir = (
            self.data_dir / ".cache_npy" if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))
        )
        self._cached_subjects: Optional[NpyCacheSubjects] = None

    def cache_paths(self, name: str) -> tuple[Path, Path]:
        folder = self.cache_dir / name
        return folder / "aligned_norm.npy", folder / "aligned_seg35.npy"

    def prepare_data(self) -> None:
        self.subjects = self._read_subjects()
        self.pairs = self._resolve_pairs(self.subjects)
        used = self._used_subjects()
        self._check_files_exist(used)
        self._build_cache(used)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._cached_subjects is None:
            self.subjects = self._read_subjects()
            self.pairs = self._resolve_pairs(self.subjects)
            used = self._used_subjects()
            self._check_files_exist(used)
            # Normally a no-op (prepare_data built it); covers direct use without a Trainer.
            self._build_cache(used)
            self._check_cache(used)
            image_paths, label_paths = zip(*(map(str, self.cache_paths(name)) for name in self.subjects))
            self._cached_subjects = NpyCacheSubjects(image_paths, label_paths)
        self.train_set = RegistrationPairDataset(self._cached_subjects, self.pairs["train"])
        self.val_set = RegistrationPairDataset(self._cached_subjects, self.pairs["val"])
        self.test_set = RegistrationPairDataset(self._cached_subjects, self.pairs["test"])

    def _is_cached(self, name: str) -> bool:
        sources = self._source_paths(name)
        caches = self.cache_paths(name)
        if not all(c.is_file() for c in caches):
            return False
        newest_source = max(s.stat().st_mtime for s in sources)
        return min(c.stat().st_mtime for c in caches) >= newest_source

    def _build_cache(self, indices: Sequence[int]) -> None:
        todo = [self.subjects[i] for i in indices if not self._is_cached(self.subjects[i])]
        if not todo:
            return
        if not writable_dir(self.cache_dir):
            raise self._error(
                "cannot write the decoded-volume cache",
                self.cache_dir,
                hint="Pass a writable folder with --data.cache_dir (about 34 MB per subject).",
            )
        from tqdm.auto import tqdm

        for name in tqdm(todo, desc="Decoding OASIS volumes to .npy", disable=len(todo) < 10):
            image, labels = self._read_subject(name)
            for array, path in zip((image, labels), self.cache_paths(name)):
                path.parent.mkdir(parents=True, exist_ok=True)
                # Write then rename: concurrent builders (one per node) never see a partial file.
                tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npy")
                np.save(tmp, array)
                os.replace(tmp, path)

    def _check_cache(self, indices: Sequence[int]) -> None:
        for i in indices:
            for path in self.cache_paths(self.subjects[i]):
                try:
                    shape = np.load(path, mmap_mode="r").shape
                except (OSError, ValueError) as exc:
                    raise self._error(
                        f"corrupt cache file ({exc})", path, hint=f"Delete {self.cache_dir} to rebuild it."
                    ) from exc
                if shape != self.image_shape:
                    raise self._error(
                        f"cached volume has shape {shape}, expected {self.image_shape}",
                        path,
                        hint=f"Delete {self.cache_dir} to rebuild it.",
                    )


__all__ = [
    "OASIS2DDataModule",
    "OASIS3DDataModule",
    "PAPER_SPLIT_SIZES",
    "all_ordered_pairs",
    "consecutive_pairs",
    "oasis_pairs",
    "resolve_split_sizes",
]
