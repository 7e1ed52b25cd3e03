"""2D slices of labelled volumes with point labels and distance maps, for weakly supervised segmentation (PointBL).

``PointSliceDataModule`` is the shared part of every such dataset (ACDC, the synthetic cardiac stand-in, ...): a
subclass returns its volumes per split from ``load_volumes(split)`` as dicts
``{"name": str, "image": (H, W, D) float (0-255), "mask": (H, W, D) int labels, "spacing": (3,) floats}``; this
class draws the point labels of the training volumes slice by slice (``point_labels.sample_points``, seeded),
computes their signed distance maps (``point_labels.signed_distance_maps``: ``euc|geo|int|mbd``, on the 0-255
slice), caches them per volume (``cache_dir``, ``.npz``; parallel over ``prepare_workers`` processes) and serves
items ``{image (1, H, W) float in [0, 1], mask (1, H, W) int64, points (1, H, W) int64, distance_maps (K, H, W),
volume, slice_index, spacing}`` (batch.py). Validation and test sets are dense (no points); the task restacks their
slices per volume for 3D scores.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal, Optional

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


def volume_distance_maps(volume: dict, points: np.ndarray, num_classes: int, distance: str,
                         absent_value: float = 0.0, mbd_step: int = 1) -> np.ndarray:
    """(K, H, W, D) float16 signed distance maps of a volume's point labels, per 2D slice."""
    image = np.asarray(volume["image"])
    return np.stack([signed_distance_maps(image[..., z], points[..., z], num_classes, distance, absent_value,
                                          mbd_step)
                     for z in range(image.shape[-1])], axis=-1).astype(np.float16)


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
        item = {keys.IMAGE: torch.from_numpy(np.asarray(volume["image"][..., z], dtype=np.float32)[None] / 255.0),
                keys.MASK: torch.from_numpy(np.asarray(volume["mask"][..., z], dtype=np.int64)[None]),
                keys.VOLUME: volume["name"], keys.SLICE_INDEX: z, keys.NAME: f"{volume['name']}_slice{z:02d}",
                keys.SPACING: torch.tensor(np.asarray(volume["spacing"], dtype=np.float32))}
        if self.points is not None:
            item[keys.POINTS] = torch.from_numpy(self.points[v][..., z].astype(np.int64)[None])
        if self.maps is not None:
            item[keys.DISTANCE_MAPS] = torch.from_numpy(self.maps[v][..., z].astype(np.float32))
        return item


class PointSliceDataModule(BaseDataModule):
    """Shared loader of 2D slices with point labels (see the module docstring); subclasses define
    ``load_volumes(split)`` (``split`` in train/val/test) and may set ``cache_dir``.

    Args:
        num_classes: labels including background (ACDC: 4).
        distance: ``euc|geo|int|mbd``, or ``none`` (no maps: partial CE alone or full supervision).
        point_width: diameter of the point disks in pixels (paper: 4); point_seed: their seed (paper: 0).
        per_component: a point per connected component rather than per class and slice.
        absent_value: distance-map value of a class absent from a slice (ACDC: 0; POEM: 1).
        mbd_step: MBD lower levels tried every ``mbd_step`` (1: exact; s: at most s - 1 too large, s times faster).
        cache_dir: where distance maps are cached (``None``: not cached); prepare_workers: processes computing them.
    """

    spatial_dims = 2

    def __init__(self, num_classes: int = 4, distance: Literal["euc", "geo", "int", "mbd", "none"] = "mbd",
                 point_width: int = 4, point_seed: int = 0, per_component: bool = False, absent_value: float = 0.0,
                 mbd_step: int = 1, cache_dir: Optional[str] = None, prepare_workers: int = 1, batch_size: int = 8,
                 num_workers: int = 0, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if distance not in (*DISTANCES, "none"):
            raise ValueError(f"distance must be one of {DISTANCES} or none, got {distance!r}")
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
        tag = f"{self.distance}{step}_w{self.point_width}_s{self.point_seed}{'_cc' if self.per_component else ''}"
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
        jobs = [(volumes[i], points[i], self.num_classes, self.distance, self.absent_value, self.mbd_step)
                for i in todo]
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

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            volumes = self.load_volumes("train")
            points, maps = self._train_labels(volumes)
            self.train_set = PointSliceDataset(volumes, points, maps)
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = PointSliceDataset(self.load_volumes("val"))
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = PointSliceDataset(self.load_volumes("test"))

    def point_statistics(self) -> dict[str, float]:
        """Fraction of training pixels annotated (the supervision the points give)."""
        points = self.train_set.points
        total = sum(p.size for p in points)
        return {"annotated_fraction": float(sum((p != IGNORE).sum() for p in points) / max(total, 1))}
