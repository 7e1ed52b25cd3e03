"""CMRxRecon 2023 (MICCAI challenge, Wang et al. 2023) as released, prepared as DiffCMR prepares it.

Layout of the release (MATLAB v7.3 = HDF5 files; complex k-space stored as a compound of
``real``/``imag``; h5py sees MATLAB's (kx, ky, coil, slice, frame) as (frame, slice, coil, ky, kx))::

    <data_dir>/                                  (the ChallengeData folder, or a folder holding it)
      MultiCoil/ SingleCoil/
        Cine/TrainingSet/        FullSample/ AccFactor04/ AccFactor08/ AccFactor10/
          P001/ ... P120/        cine_lax.mat, cine_sax.mat
        Mapping/TrainingSet/     (same sub-folders)
          P001/ ... P120/        T1map.mat, T2map.mat

Keys: ``kspace_full``, ``kspace_sub04/08/10`` (multi-coil, [t, s, c, ky, kx]);
``kspace_single_full``, ``kspace_single_sub04/08/10`` (single-coil, [t, s, ky, kx]).

Preprocessing (DiffCMR Sec. 2.2 and 3.1, its data notebooks): zero-pad k-space (centred) to 512x512,
centred iFFT, root-sum-of-squares over coils, magnitude, divide each slice by its maximum, resize to
128x128 (bilinear). Every (frame, slice) is one sample; single- and multi-coil slices are pooled.
Results are cached once as .npy (one file per case and .mat file: (n, 2, H, W) = input, target).
Split: cases P001-P110 train, P111-P120 validation; the validation slices are shuffled with
``random.Random(666)`` and the first 240 kept (the paper's test numbers are on these 240).
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError
from lightning_modules.batch import IMAGE, TARGET
from lightning_modules.blocks.kspace import ifft2c, root_sum_of_squares, zero_pad_kspace

STANDIN_CONFIG = "experiments/diffcmr_demo.yaml"
TASK_FOLDERS = {"cine": ("Cine", ("cine_lax.mat", "cine_sax.mat")), "mapping": ("Mapping", ("T1map.mat", "T2map.mat"))}
COIL_FOLDERS = {"single": "SingleCoil", "multi": "MultiCoil"}
ACCELERATIONS = (4, 8, 10)

LAYOUT = """\
<data_dir>/                          the release's ChallengeData folder (or its parent)
  MultiCoil/Cine/TrainingSet/FullSample/P001/cine_lax.mat, cine_sax.mat   (key kspace_full)
  MultiCoil/Cine/TrainingSet/AccFactor04/P001/cine_lax.mat, ...           (key kspace_sub04)
  SingleCoil/Cine/TrainingSet/...                                          (keys kspace_single_full, kspace_single_sub04)
  {Multi,Single}Coil/Mapping/TrainingSet/{FullSample,AccFactor04,08,10}/P001/T1map.mat, T2map.mat
  cases P001-P120; .mat v7.3 (HDF5), complex k-space as a compound of real/imag"""


def kspace_key(coil: str, acceleration: Optional[int]) -> str:
    """The .mat key: ``kspace_full`` / ``kspace_sub04`` (multi-coil), ``kspace_single_...`` (single-coil)."""
    prefix = "kspace_single_" if coil == "single" else "kspace_"
    return prefix + ("full" if acceleration is None else f"sub{acceleration:02d}")


def acceleration_folder(acceleration: Optional[int]) -> str:
    return "FullSample" if acceleration is None else f"AccFactor{acceleration:02d}"


def kspace_to_images(kspace: np.ndarray, multicoil: bool, kspace_size: int = 512) -> np.ndarray:
    """k-space [..., (c,) ky, kx] -> magnitude images [..., kspace_size, kspace_size], each slice / its max."""
    padded = zero_pad_kspace(kspace, (kspace_size, kspace_size))
    images = ifft2c(padded)
    images = root_sum_of_squares(images, coil_axis=-3) if multicoil else np.abs(images)
    peak = images.max(axis=(-2, -1), keepdims=True)
    return (images / np.where(peak > 0, peak, 1.0)).astype(np.float32)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [..., H, W] to [..., size, size] (no antialiasing, as cv2/torch bilinear)."""
    shape = images.shape
    tensor = torch.from_numpy(np.ascontiguousarray(images.reshape(-1, 1, *shape[-2:])))
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return resized.reshape(*shape[:-2], size, size).numpy()


def read_kspace(path: Path, key: str) -> "h5py.Dataset":  # noqa: F821
    """Open ``key`` of a v7.3 .mat file; raises DatasetError if the file or the key is unreadable."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(f"Cannot read the .mat file as MATLAB v7.3/HDF5 ({error})", path=path, layout=LAYOUT,
                           standin_config=STANDIN_CONFIG) from None
    if key not in handle:
        keys = sorted(handle.keys())
        handle.close()
        raise DatasetError(f"Key {key!r} not in the .mat file (it has {keys})", path=path, layout=LAYOUT,
                           standin_config=STANDIN_CONFIG)
    dataset = handle[key]
    names = dataset.dtype.names or ()
    if "real" not in names or "imag" not in names:
        handle.close()
        raise DatasetError(f"{key!r} is not complex k-space (a compound of real/imag), dtype {dataset.dtype}",
                           path=path, layout=LAYOUT, standin_config=STANDIN_CONFIG)
    return dataset


def load_slices(path: Path, key: str, multicoil: bool, kspace_size: int, image_size: int) -> np.ndarray:
    """All (frame, slice) images of one .mat file, preprocessed: (t * s, image_size, image_size) float32."""
    dataset = read_kspace(path, key)
    expected_ndim = 5 if multicoil else 4
    try:
        if dataset.ndim != expected_ndim:
            raise DatasetError(f"{key!r} has shape {dataset.shape}, expected {expected_ndim} axes "
                               f"({'[t, s, c, ky, kx]' if multicoil else '[t, s, ky, kx]'})", path=path,
                               layout=LAYOUT, standin_config=STANDIN_CONFIG)
        frames = []
        for frame in range(dataset.shape[0]):  # one frame at a time: a multi-coil file holds ~1 GB of k-space
            raw = dataset[frame]
            kspace = raw["real"].astype(np.float32) + 1j * raw["imag"].astype(np.float32)
            images = kspace_to_images(kspace, multicoil, kspace_size)
            frames.append(resize_images(images, image_size))
    finally:
        dataset.file.close()
    return np.concatenate(frames, axis=0)


def case_number(name: str) -> Optional[int]:
    return int(name[1:]) if len(name) == 4 and name[0] == "P" and name[1:].isdigit() else None


class ReconstructionPairDataset(Dataset):
    """Items ``{"image", "target"}`` (lightning_modules/batch.py): the zero-filled input I^u and the fully sampled
    I^f, (1, H, W) float32, from a list of (input, target) array sources.

    ``sources[i]`` is an array (n_i, 2, H, W) (memory-mapped or in memory); ``index`` lists
    (source, slice) pairs. ``augment``: the paper's random horizontal and vertical flips (p = 0.5
    each), applied identically to input and target (albumentations, reproducible under ``seed_everything``).
    """

    def __init__(self, sources: Sequence, index: Sequence[tuple[int, int]], augment: bool = False):
        self.sources = sources
        self.index = list(index)
        self.transform = None
        if augment:
            import albumentations as A

            from datamodules.seeded_transform import SeededTransform

            self.transform = SeededTransform(A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)],
                                                       additional_targets={"target": "image"}))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        source, position = self.index[item]
        pair = np.array(self.sources[source][position], dtype=np.float32)  # a copy: caches are read-only maps
        image, target = pair[0], pair[1]
        if self.transform is not None:
            out = self.transform(image=image, target=target)
            image, target = out["image"], out["target"]
        return {IMAGE: torch.from_numpy(np.ascontiguousarray(image))[None],
                TARGET: torch.from_numpy(np.ascontiguousarray(target))[None]}


class CMRxReconDataModule(BaseDataModule):
    """CMRxRecon 2023 training cases as DiffCMR pairs (zero-filled input, fully sampled target).

    Args:
        data_dir: the ``ChallengeData`` folder of the release (or a folder holding it).
        task: ``"cine"`` (Task 1: cine_lax/cine_sax) or ``"mapping"`` (Task 2: T1map/T2map).
        acceleration: 4, 8 or 10 (the AccFactor folder and the ``kspace_sub`` key).
        coils: which coil types to pool: ``["single", "multi"]`` (the paper) or one of them.
        image_size: side of the network's images (paper: 128).
        kspace_size: side to which k-space is zero-padded (paper: 512).
        cache_dir: where the preprocessed slices are cached; ``None``: ``<data_dir>/.cache_diffcmr``.
        train_cases, val_cases: inclusive case-number ranges (paper: 1-110 and 111-120).
        val_num_slices: the validation slices kept after shuffling (paper: 240; ``None``: all).
        val_shuffle_seed: seed of ``random.Random`` that shuffles the validation slices (code: 666).
        augment: random flips of training pairs.
    """

    def __init__(self, data_dir: str = "data/CMRxRecon/ChallengeData", task: Literal["cine", "mapping"] = "cine",
                 acceleration: int = 4, coils: Sequence[str] = ("single", "multi"), image_size: int = 128,
                 kspace_size: int = 512, cache_dir: Optional[str] = None,
                 train_cases: tuple[int, int] = (1, 110), val_cases: tuple[int, int] = (111, 120),
                 val_num_slices: Optional[int] = 240, val_shuffle_seed: int = 666, augment: bool = True,
                 batch_size: int = 6, num_workers: int = 4, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if task not in TASK_FOLDERS:
            raise ValueError(f"task must be one of {sorted(TASK_FOLDERS)}, got {task!r}")
        if acceleration not in ACCELERATIONS:
            raise ValueError(f"acceleration must be one of {ACCELERATIONS}, got {acceleration}")
        unknown = set(coils) - set(COIL_FOLDERS)
        if unknown or not coils:
            raise ValueError(f"coils must be a non-empty subset of {sorted(COIL_FOLDERS)}, got {list(coils)}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.task = task
        self.acceleration = acceleration
        self.coils = list(coils)
        self.image_size = image_size
        self.kspace_size = kspace_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.train_cases = tuple(train_cases)
        self.val_cases = tuple(val_cases)
        self.val_num_slices = val_num_slices
        self.val_shuffle_seed = val_shuffle_seed
        self.augment = augment
        self.entries: Optional[list[dict]] = None

    # -- layout -----------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        nested = self.data_dir / "ChallengeData"
        return nested if nested.is_dir() else self.data_dir

    def _error(self, problem: str, path: Path) -> DatasetError:
        return DatasetError(problem, path=path, layout=LAYOUT, standin_config=STANDIN_CONFIG)

    def find_files(self) -> list[dict]:
        """Every (coil, case, file) of the selected cases with its fully sampled and under-sampled paths."""
        if not self.data_dir.is_dir():
            raise self._error("CMRxRecon folder not found", self.data_dir)
        task_folder, file_names = TASK_FOLDERS[self.task]
        lowest, highest = min(self.train_cases + self.val_cases), max(self.train_cases + self.val_cases)
        entries = []
        for coil in self.coils:
            base = self.root / COIL_FOLDERS[coil] / task_folder / "TrainingSet"
            full_dir, sub_dir = base / acceleration_folder(None), base / acceleration_folder(self.acceleration)
            for folder in (full_dir, sub_dir):
                if not folder.is_dir():
                    raise self._error("Folder missing from the CMRxRecon release", folder)
            cases = sorted(p.name for p in full_dir.iterdir() if p.is_dir() and case_number(p.name) is not None
                           and lowest <= case_number(p.name) <= highest)
            for case in cases:
                for file_name in file_names:
                    full_path = full_dir / case / file_name
                    if not full_path.is_file():
                        continue  # some cases lack a view (e.g. no long-axis cine)
                    sub_path = sub_dir / case / file_name
                    if not sub_path.is_file():
                        raise self._error(f"Under-sampled file missing (the fully sampled one exists: {full_path})",
                                          sub_path)
                    entries.append({"coil": coil, "case": case, "file": file_name, "full": full_path, "sub": sub_path})
        if not entries:
            raise self._error(f"No {', '.join(file_names)} files for cases P{lowest:03d}-P{highest:03d} "
                              f"with coils {self.coils}", self.root)
        return entries

    # -- cache ------------------------------------------------------------------------------------
    def cache_path(self, entry: dict) -> Path:
        settings = f"k{self.kspace_size}_i{self.image_size}"
        root = self.cache_dir or (self.data_dir / ".cache_diffcmr")
        stem = Path(entry["file"]).stem
        tag = hashlib.sha1(str(entry["full"].resolve()).encode()).hexdigest()[:8]  # distinct per release copy
        return root / settings / f"acc{self.acceleration:02d}" / entry["coil"] / f"{entry['case']}_{stem}_{tag}.npy"

    def build_cache(self, entry: dict) -> Path:
        path = self.cache_path(entry)
        if path.is_file():
            return path
        multicoil = entry["coil"] == "multi"
        target = load_slices(entry["full"], kspace_key(entry["coil"], None), multicoil, self.kspace_size,
                             self.image_size)
        source = load_slices(entry["sub"], kspace_key(entry["coil"], self.acceleration), multicoil,
                             self.kspace_size, self.image_size)
        if source.shape != target.shape:
            raise self._error(f"Under-sampled slices {source.shape} do not match the fully sampled {target.shape}",
                              entry["sub"])
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{random.getrandbits(32)}.npy")
        np.save(temporary, np.stack([source, target], axis=1))
        temporary.replace(path)  # atomic: a crashed or concurrent run never leaves half a cache file
        return path

    def prepare_data(self) -> None:
        for entry in self.find_files():
            self.build_cache(entry)

    # -- splits -----------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.entries is None:
            self.entries = self.find_files()
            self.sources = [np.load(self.build_cache(entry), mmap_mode="r") for entry in self.entries]
        train_index, val_index = [], []
        for source, entry in enumerate(self.entries):
            number = case_number(entry["case"])
            pairs = [(source, position) for position in range(len(self.sources[source]))]
            if self.train_cases[0] <= number <= self.train_cases[1]:
                train_index += pairs
            elif self.val_cases[0] <= number <= self.val_cases[1]:
                val_index += pairs
        random.Random(self.val_shuffle_seed).shuffle(val_index)
        if self.val_num_slices is not None:
            val_index = val_index[:self.val_num_slices]
        if not train_index or not val_index:
            raise self._error(f"Empty split: {len(train_index)} training slices (cases {self.train_cases}), "
                              f"{len(val_index)} validation slices (cases {self.val_cases})", self.root)
        self.train_set = ReconstructionPairDataset(self.sources, train_index, augment=self.augment)
        self.val_set = ReconstructionPairDataset(self.sources, val_index)
        self.test_set = self.val_set  # the paper reports on its local validation split
