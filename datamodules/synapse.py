"""Synapse multi-organ CT (TransUNet's preprocessed release) as 2-D slices; the shared slice dataset of the
volume readers (also ``datamodules.acdc``).

TransUNet (Chen et al. 2021) preprocessed the 30 BTCV abdominal CT cases: intensities clipped to [-125, 275] and
scaled to [0, 1], 8 organs relabelled 1-8 (aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen,
stomach); the 18 training cases as axial slices ``train_npz/case<id>_slice<z>.npz`` ({image, label}, 512x512),
the 12 test cases as volumes ``test_vol_h5/case<id>.npy.h5`` ({image, label}, (D, 512, 512)), and the lists
``lists/lists_Synapse/{train.txt, test_vol.txt}``. Slices are resized to ``image_size`` (bilinear image, nearest
labels).

Validation and test items carry ``volume`` (the case), ``slice_index`` and ``spacing``, so the segmentation task
restacks them per case and scores each 3-D volume (Dice and HD95 per case and organ, then the mean: TransUNet's
protocol, ``test/dice_3d``, ``test/hd95_3d``). The release holds no voxel size: ``spacing`` is the size of a resized
pixel in original voxels (512 / ``image_size``), so HD95 is in 512x512 voxel units as TransUNet's (medpy's ``hd95``
without spacing); TransUNet upsamples each prediction to 512x512 before scoring, here the labels are resized to
``image_size`` instead (nearest), a small difference (see docs/papers/harmss.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError
from datamodules.seeded_transform import SeededTransform
from datamodules.segmentation import resolve_augmentation
from lightning_modules.batch import IMAGE, MASK, NAME, SLICE_INDEX, SPACING, VOLUME

SYNAPSE_CLASSES = ("background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas",
                   "spleen", "stomach")

SYNAPSE_LAYOUT = """<data_dir>/                      (TransUNet's preprocessed Synapse release)
  train_npz/case0005_slice000.npz  ...       training slices {image (512, 512) float in [0, 1], label (512, 512) 0-8}
  test_vol_h5/case0001.npy.h5 ...            test volumes {image (D, 512, 512), label (D, 512, 512)}
  lists/lists_Synapse/train.txt, test_vol.txt   optional: slice / case names (default: every file present)"""


class SliceDataset(Dataset):
    """2-D images from ``loaders`` (each ``() -> (image (H, W) or (H, W, C) float32 in [0, 1], labels (H, W) int)``),
    resized, augmented, as ``{image (C, H, W) float, mask (1, H, W) long, name}``.

    ``volume_slices`` (one ``(volume name, slice index, voxel size (H, W, D) or None)`` per item) marks the items as
    slices of volumes: they also carry ``volume``, ``slice_index`` and ``spacing`` (the voxel size of the resized
    slice grid; without a voxel size: in original voxels), so the segmentation task scores restacked volumes."""

    def __init__(self, loaders: Sequence[Callable[[], tuple[np.ndarray, np.ndarray]]], names: Sequence[str],
                 image_size: tuple[int, int], augmentation: Sequence = (),
                 volume_slices: Optional[Sequence[tuple[str, int, Optional[Sequence[float]]]]] = None):
        self.loaders, self.names = list(loaders), list(names)
        self.image_size = tuple(image_size)
        self.volume_slices = None if volume_slices is None else list(volume_slices)
        if self.volume_slices is not None and len(self.volume_slices) != len(self.loaders):
            raise ValueError(f"{len(self.volume_slices)} volume_slices for {len(self.loaders)} slices")
        self.transform = SeededTransform(A.Compose([
            A.Resize(*image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
            *augmentation]))

    def __len__(self) -> int:
        return len(self.loaders)

    def __getitem__(self, index: int) -> dict:
        image, labels = self.loaders[index]()
        out = self.transform(image=np.asarray(image, dtype=np.float32), mask=np.asarray(labels, dtype=np.uint8))
        image = out["image"] if out["image"].ndim == 3 else out["image"][..., None]  # (H, W[, C]) -> (C, H, W)
        item = {IMAGE: torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float(),
                MASK: torch.from_numpy(np.ascontiguousarray(out["mask"]))[None].long(), NAME: self.names[index]}
        if self.volume_slices is not None:
            volume, slice_index, voxel = self.volume_slices[index]
            voxel = (1.0, 1.0, 1.0) if voxel is None else tuple(float(v) for v in voxel)
            scale = (labels.shape[0] / self.image_size[0], labels.shape[1] / self.image_size[1], 1.0)
            item.update({VOLUME: volume, SLICE_INDEX: int(slice_index),
                         SPACING: torch.tensor([v * f for v, f in zip(voxel, scale)], dtype=torch.float32)})
        return item


def _npz_loader(path: Path) -> Callable:
    def load():
        with np.load(path) as data:
            return data["image"], data["label"]
    return load


def _h5_slice_loader(path: Path, z: int) -> Callable:
    def load():
        import h5py

        with h5py.File(path, "r") as data:
            return data["image"][z], data["label"][z]
    return load


class SynapseDataModule(BaseDataModule):
    """Synapse (TransUNet release): training slices from ``train_npz``, test slices from ``test_vol_h5``.

    Args:
        data_dir: the release root (``train_npz/``, ``test_vol_h5/``, optional ``lists/lists_Synapse``).
        image_size: slice size fed to the network (224).
        augmentation: a preset of ``datamodules.segmentation`` (``unext``: random rot90 + flips).
        val_cases: training cases held out for validation (model selection); 0 = validate on the test slices.
        split_seed: which training cases are held out.
    """

    layout = SYNAPSE_LAYOUT
    standin_config = "experiments/harmss_demo.yaml"
    num_labels = len(SYNAPSE_CLASSES)

    def __init__(self, data_dir: str, image_size: Union[int, Sequence[int]] = 224, augmentation: str = "unext",
                 val_cases: int = 2, split_seed: int = 0, batch_size: int = 8, num_workers: int = 4,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.augmentation, self.val_cases, self.split_seed = augmentation, val_cases, split_seed
        resolve_augmentation(augmentation)

    def error(self, problem: str, path=None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config)

    def _list(self, name: str) -> Optional[list[str]]:
        for folder in (self.data_dir / "lists" / "lists_Synapse", self.data_dir / "lists_Synapse"):
            if (folder / name).is_file():
                return [line.strip() for line in (folder / name).read_text().splitlines() if line.strip()]
        return None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_dir, test_dir = self.data_dir / "train_npz", self.data_dir / "test_vol_h5"
        for folder in (train_dir, test_dir):
            if not folder.is_dir():
                raise self.error("folder not found", folder)
        slices = self._list("train.txt") or sorted(p.stem for p in train_dir.glob("*.npz"))
        cases = self._list("test_vol.txt") or sorted(p.name.split(".")[0] for p in test_dir.glob("*.npy.h5"))
        if not slices or not cases:
            raise self.error("no training slices or no test volumes", self.data_dir)
        for name in slices:
            if not (train_dir / f"{name}.npz").is_file():
                raise self.error("training slice not found", train_dir / f"{name}.npz")
        train_cases = sorted({name.split("_slice")[0] for name in slices})
        rng = np.random.default_rng(self.split_seed)
        held = set(rng.permutation(train_cases)[:self.val_cases].tolist()) if self.val_cases else set()
        augmentation = resolve_augmentation(self.augmentation)

        def slice_set(names, aug):
            volume_slices = [(n.split("_slice")[0], int(n.split("_slice")[1]), None) for n in names]
            return SliceDataset([_npz_loader(train_dir / f"{n}.npz") for n in names], names, self.image_size, aug,
                                volume_slices)

        self.train_set = slice_set([n for n in slices if n.split("_slice")[0] not in held], augmentation)
        self.test_set = self._volume_slices(test_dir, cases)
        self.val_set = slice_set([n for n in slices if n.split("_slice")[0] in held], ()) if held else self.test_set
        self.predict_set = self.test_set

    def _volume_slices(self, folder: Path, cases: Sequence[str]) -> SliceDataset:
        import h5py

        loaders, names, volume_slices = [], [], []
        for case in cases:
            path = folder / f"{case}.npy.h5"
            if not path.is_file():
                raise self.error("test volume not found", path)
            with h5py.File(path, "r") as data:
                if "image" not in data or "label" not in data:
                    raise self.error("test volume without 'image' and 'label' datasets", path)
                depth = data["label"].shape[0]
            loaders += [_h5_slice_loader(path, z) for z in range(depth)]
            names += [f"{case}_slice{z:03d}" for z in range(depth)]
            volume_slices += [(case, z, None) for z in range(depth)]
        return SliceDataset(loaders, names, self.image_size, volume_slices=volume_slices)
