"""Labelled volumes with point labels and distance maps, for weakly supervised segmentation (PointBL), served as
2D slices (a 2D network, the paper's setting) or as 3D patches and whole volumes (a 3D network).

``PointSliceDataModule`` is the shared part of every such dataset (ACDC, POEM-like NIfTI volumes, the synthetic
stand-ins, ...): a subclass returns its volumes per split from ``load_volumes(split)`` as dicts
``{"name": str, "image": (H, W, D) or (C, H, W, D) (0-255 per channel), "mask": (H, W, D) int labels,
"spacing": (3,) floats}``; this class draws the point labels of the training volumes slice by slice
(``point_labels.sample_points``, seeded; slices along the last axis), computes their signed distance maps
(``point_labels.signed_distance_maps``: ``euc|geo|int|mbd``) on channel ``distance_channel``, either per 2D slice
(``distance_dim: 2d``, ACDC and POEM "in 2D") or once on the whole volume from all its slice-wise points
(``distance_dim: 3d``, 26-connectivity, POEM "in 3D", Table 3), caches them per volume (``cache_dir``, ``.npz``;
parallel over ``prepare_workers`` processes) and serves, with ``network_dims: 2``, items
``{image (C, H, W) float in [0, 1], mask (1, H, W) int64, points (1, H, W) int64, distance_maps (K, H, W), volume,
slice_index, spacing}`` (batch.py); validation and test sets are dense (no points) and the task restacks their slices
per volume for 3D scores. With ``network_dims: 3`` training items are random ``patch_size`` patches
(``samples_per_volume`` per volume and epoch, a share ``foreground_probability`` centred on an annotated voxel) with
the same keys in 3D, and validation/test items whole volumes ``{image (C, H, W, D), mask (1, H, W, D), name,
spacing}`` (the task infers them by sliding windows, ``roi_size``).
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, writable_dir
from datamodules.point_labels import DISTANCES, IGNORE, sample_points, signed_distance_maps
from lightning_modules import batch as keys


def volume_points(volume: dict, num_classes: int, width: int, seed: int, per_component: bool) -> np.ndarray:
    """Point labels of one volume, slice by slice, from a generator seeded by (seed, volume name): (H, W, D) int8."""
    digest = int(hashlib.sha256(volume["name"].encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([seed, digest])
    mask = np.asarray(volume["mask"])
    return np.stack([sample_points(mask[..., z], num_classes, width, rng, per_component)
                     for z in range(mask.shape[-1])], axis=-1).astype(np.int8)


def distance_image(volume: dict, channel: int = 0) -> np.ndarray:
    """The (H, W, D) image the distance maps are computed on: the volume's only channel, or channel ``channel`` of
    a (C, H, W, D) image (POEM: the fat channel)."""
    image = np.asarray(volume["image"])
    return image if image.ndim == 3 else image[channel]


def volume_distance_maps(volume: dict, points: np.ndarray, num_classes: int, distance: str,
                         absent_value: float = 0.0, mbd_step: int = 1, dim: Literal["2d", "3d"] = "2d",
                         channel: int = 0) -> np.ndarray:
    """(K, H, W, D) float16 signed distance maps of a volume's point labels: per 2D slice (``2d``), or on the whole
    volume from all its slice-wise points with 26-connectivity (``3d``; voxel steps 1, sqrt 2, sqrt 3)."""
    image = distance_image(volume, channel)
    if dim == "3d":
        return signed_distance_maps(image, points, num_classes, distance, absent_value, mbd_step).astype(np.float16)
    return np.stack([signed_distance_maps(image[..., z], points[..., z], num_classes, distance, absent_value,
                                          mbd_step)
                     for z in range(image.shape[-1])], axis=-1).astype(np.float16)


def _channels_first(image: np.ndarray) -> np.ndarray:
    """(H, W, ...) -> (1, H, W, ...) for a single-channel volume; (C, H, W, D) volumes pass through."""
    return image[None] if image.ndim == 3 else image


def _maps_job(args):
    return volume_distance_maps(*args)


class PointSliceDataset(Dataset):
    """Every slice of every volume; point labels and distance maps where given (training)."""

    def __init__(self, volumes: list[dict], points: Optional[list[np.ndarray]] = None,
                 distance_maps: Optional[list[np.ndarray]] = None) -> None:
        self.volumes, self.points, self.maps = volumes, points, distance_maps
        self.index = [(v, z) for v, volume in enumerate(volumes) for z in range(np.asarray(volume["mask"]).shape[-1])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, z = self.index[i]
        volume = self.volumes[v]
        image = _channels_first(np.asarray(volume["image"]))[..., z]
        item = {keys.IMAGE: torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0),
                keys.MASK: torch.from_numpy(np.asarray(volume["mask"][..., z], dtype=np.int64)[None]),
                keys.VOLUME: volume["name"], keys.SLICE_INDEX: z, keys.NAME: f"{volume['name']}_slice{z:02d}",
                keys.SPACING: torch.tensor(np.asarray(volume["spacing"], dtype=np.float32))}
        if self.points is not None:
            item[keys.POINTS] = torch.from_numpy(self.points[v][..., z].astype(np.int64)[None])
        if self.maps is not None:
            item[keys.DISTANCE_MAPS] = torch.from_numpy(self.maps[v][..., z].astype(np.float32))
        return item


class PointVolumeDataset(Dataset):
    """Whole volumes (validation, test), or ``samples_per_volume`` random ``patch_size`` patches per volume and
    epoch with their point labels and distance maps (training; patch corners from torch's generator, so
    ``seed_everything`` makes them reproducible; a share ``foreground_probability`` of the patches is centred on an
    annotated voxel, the only foreground a point-supervised run may look at)."""

    def __init__(self, volumes: list[dict], points: Optional[list[np.ndarray]] = None,
                 distance_maps: Optional[list[np.ndarray]] = None, patch_size: Optional[tuple[int, ...]] = None,
                 samples_per_volume: int = 1, foreground_probability: float = 0.5) -> None:
        self.volumes, self.points, self.maps = volumes, points, distance_maps
        self.patch_size = patch_size
        self.samples_per_volume = samples_per_volume if patch_size is not None else 1
        self.foreground_probability = foreground_probability

    def __len__(self) -> int:
        return len(self.volumes) * self.samples_per_volume

    def __getitem__(self, i: int) -> dict:
        from datamodules.volume import pad_to, sample_patch_start

        v = i // self.samples_per_volume
        volume = self.volumes[v]
        arrays = {keys.IMAGE: _channels_first(np.asarray(volume["image"])), keys.MASK: np.asarray(volume["mask"])[None]}
        if self.points is not None:
            arrays[keys.POINTS] = self.points[v][None]
        if self.maps is not None:
            arrays[keys.DISTANCE_MAPS] = self.maps[v]
        if self.patch_size is not None:  # crop the stored arrays first, convert only the patch
            fill = {keys.POINTS: IGNORE}
            arrays = {k: pad_to(a, self.patch_size, fill.get(k, 0)) for k, a in arrays.items()}
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,)).item()))
            centre_on = arrays[keys.POINTS][0] > 0 if self.points is not None else arrays[keys.MASK][0]
            start = sample_patch_start(centre_on, self.patch_size, self.foreground_probability, rng)
            window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
            arrays = {k: a[window] for k, a in arrays.items()}
        dtypes = {keys.IMAGE: np.float32, keys.DISTANCE_MAPS: np.float32}
        item = {k: torch.from_numpy(np.ascontiguousarray(a, dtype=dtypes.get(k, np.int64))) for k, a in arrays.items()}
        item[keys.IMAGE] = item[keys.IMAGE] / 255.0
        item[keys.NAME] = volume["name"]
        item[keys.SPACING] = torch.tensor(np.asarray(volume["spacing"], dtype=np.float32))
        return item


class PointSliceDataModule(BaseDataModule):
    """Shared loader of volumes with point labels, as 2D slices or 3D patches (see the module docstring); subclasses
    define ``load_volumes(split)`` (``split`` in train/val/test) and may set ``cache_dir``.

    Args:
        num_classes: labels including background (ACDC: 4).
        distance: ``euc|geo|int|mbd``, or ``none`` (no maps: partial CE alone or full supervision).
        point_width: diameter of the point disks in pixels (paper: 4); point_seed: their seed (paper: 0).
        per_component: a point per connected component rather than per class and slice.
        absent_value: distance-map value of a class absent from a slice (ACDC: 0; POEM: 1).
        mbd_step: MBD lower levels tried every ``mbd_step`` (1: exact; s: at most s - 1 too large, s times faster).
        cache_dir: where distance maps are cached (``None``: not cached); prepare_workers: processes computing them.
        distance_dim: maps per 2D slice (``2d``) or on the whole volume (``3d``, from all its slice-wise points).
        distance_channel: the image channel the maps are computed on (multi-channel volumes; POEM: fat).
        network_dims: 2 (slices for a 2D network) or 3 (patches and whole volumes for a 3D network).
        patch_size, samples_per_volume, foreground_probability: the 3D training patches (``network_dims: 3``);
            ``patch_size`` ``None``: whole volumes.
    """

    spatial_dims = 2

    def __init__(self, num_classes: int = 4, distance: Literal["euc", "geo", "int", "mbd", "none"] = "mbd",
                 point_width: int = 4, point_seed: int = 0, per_component: bool = False, absent_value: float = 0.0,
                 mbd_step: int = 1, cache_dir: Optional[str] = None, prepare_workers: int = 1, batch_size: int = 8,
                 num_workers: int = 0, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None, distance_dim: Literal["2d", "3d"] = "2d",
                 distance_channel: int = 0, network_dims: Literal[2, 3] = 2,
                 patch_size: Optional[Sequence[int]] = None, samples_per_volume: int = 1,
                 foreground_probability: float = 0.5) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if distance not in (*DISTANCES, "none"):
            raise ValueError(f"distance must be one of {DISTANCES} or none, got {distance!r}")
        if distance_dim not in ("2d", "3d") or network_dims not in (2, 3):
            raise ValueError(f"distance_dim must be 2d or 3d and network_dims 2 or 3, got {distance_dim!r}, "
                             f"{network_dims!r}")
        if patch_size is not None and (network_dims != 3 or len(patch_size) != 3):
            raise ValueError(f"patch_size needs network_dims 3 and three sizes, got {patch_size}")
        self.distance_dim, self.distance_channel = distance_dim, int(distance_channel)
        self.spatial_dims = network_dims
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        self.samples_per_volume, self.foreground_probability = int(samples_per_volume), float(foreground_probability)
        self.num_labels = self.num_classes = num_classes
        self.distance, self.point_width, self.point_seed = distance, point_width, point_seed
        self.per_component, self.absent_value, self.mbd_step = per_component, absent_value, int(mbd_step)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.prepare_workers = max(1, prepare_workers)

    def load_volumes(self, split: str) -> list[dict]:
        raise NotImplementedError

    def _cache_file(self, name: str) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        step = f"_step{self.mbd_step}" if self.distance == "mbd" and self.mbd_step > 1 else ""
        tag = (f"{self.distance}{step}_w{self.point_width}_s{self.point_seed}{'_cc' if self.per_component else ''}"
               f"{'_3d' if self.distance_dim == '3d' else ''}"
               f"{f'_ch{self.distance_channel}' if self.distance_channel else ''}"
               f"{f'_absent{self.absent_value:g}' if self.absent_value else ''}")
        return self.cache_dir / tag / f"{name}.npz"

    def _train_labels(self, volumes: list[dict]) -> tuple[list[np.ndarray], Optional[list[np.ndarray]]]:
        points = [volume_points(v, self.num_classes, self.point_width, self.point_seed, self.per_component)
                  for v in volumes]
        if self.distance == "none":
            return points, None
        maps: list[Optional[np.ndarray]] = [None] * len(volumes)
        todo = []
        for i, volume in enumerate(volumes):
            path = self._cache_file(volume["name"])
            if path is not None and path.exists():
                with np.load(path) as cached:
                    if np.array_equal(cached["points"], points[i]):
                        maps[i] = cached["maps"]
                        continue
            todo.append(i)
        jobs = [(volumes[i], points[i], self.num_classes, self.distance, self.absent_value, self.mbd_step,
                 self.distance_dim, self.distance_channel) for i in todo]
        if self.prepare_workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(self.prepare_workers) as pool:
                results = list(pool.map(_maps_job, jobs))
        else:
            results = [_maps_job(job) for job in jobs]
        for i, result in zip(todo, results):
            maps[i] = result
            path = self._cache_file(volumes[i]["name"])
            if path is not None and writable_dir(path.parent):
                np.savez_compressed(path, points=points[i], maps=result)
        return points, maps

    def _dataset(self, volumes: list[dict], points=None, maps=None, train: bool = False) -> Dataset:
        if self.spatial_dims == 2:
            return PointSliceDataset(volumes, points, maps)
        if not train:
            return PointVolumeDataset(volumes)
        return PointVolumeDataset(volumes, points, maps, self.patch_size, self.samples_per_volume,
                                  self.foreground_probability)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            volumes = self.load_volumes("train")
            points, maps = self._train_labels(volumes)
            self.train_set = self._dataset(volumes, points, maps, train=True)
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self._dataset(self.load_volumes("val"))
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = self._dataset(self.load_volumes("test"))

    def point_statistics(self) -> dict[str, float]:
        """Fraction of training pixels annotated (the supervision the points give)."""
        points = self.train_set.points
        total = sum(p.size for p in points)
        return {"annotated_fraction": float(sum((p != IGNORE).sum() for p in points) / max(total, 1))}
