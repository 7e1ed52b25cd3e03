"""ACDC (Automated Cardiac Diagnosis Challenge, MICCAI 2017) cine-MRI short-axis volumes, as distributed:

    <data_dir>/training/patient001/patient001_frame01.nii.gz      (ED or ES frame, H x W x D)
    <data_dir>/training/patient001/patient001_frame01_gt.nii.gz   (0 background, 1 RV, 2 Myo, 3 LV)
    <data_dir>/training/patient001/patient001_frame12.nii.gz (+ _gt), Info.cfg, patient001_4d.nii.gz (unused)
    ... patient100

Every frame with a ``_gt`` file is one volume (ED and ES). PointBL's preprocessing: each volume min-max to 0-255
(rounded, the paper's uint8), every slice resized to ``image_size`` (image bilinear, labels nearest); the voxel size
(from the NIfTI header, scaled by the resize) is kept for HD95 in mm. Split: the 100 training patients shuffled with
``split_seed`` (Python's ``random.shuffle``, as the official code) into 65 train / 10 val / 25 test patients. Slices,
point labels and distance maps: ``datamodules.point_slices``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from datamodules.acdc import LAYOUT, labelled_frames, patient_dirs, training_root
from datamodules.base import DatasetError
from datamodules.point_slices import PointSliceDataModule

STANDIN = "experiments/pointbl_demo.yaml"


def resize_volume(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices (H, W, D) to (size, size, D): image bilinear, labels nearest."""
    from skimage.transform import resize

    shape = (size, size, image.shape[-1])
    image = resize(image.astype(np.float64), shape, order=1, preserve_range=True, anti_aliasing=False)
    labels = resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False)
    return image, labels.astype(np.uint8)


def load_acdc_volume(image_path: Path, image_size: int) -> dict:
    """One frame: {name, image (S, S, D) float 0-255 rounded, mask (S, S, D) uint8, spacing (3,)}."""
    import nibabel as nib

    label_path = image_path.with_name(image_path.name.replace(".nii.gz", "_gt.nii.gz"))
    image_nii = nib.load(str(image_path))
    image = np.asarray(image_nii.dataobj, dtype=np.float64)
    labels = np.asarray(nib.load(str(label_path)).dataobj).astype(np.uint8)
    if image.shape != labels.shape or image.ndim != 3:
        raise DatasetError(f"image {image.shape} and labels {labels.shape} differ or are not 3D", path=image_path,
                           layout=LAYOUT, standin_config=STANDIN)
    zooms = [float(z) for z in image_nii.header.get_zooms()[:3]]
    spacing = (zooms[0] * image.shape[0] / image_size, zooms[1] * image.shape[1] / image_size, zooms[2])
    low, high = image.min(), image.max()
    image = (image - low) / max(high - low, 1e-8) * 255.0
    image, labels = resize_volume(image, labels, image_size)
    return {"name": image_path.name.replace(".nii.gz", ""), "image": np.round(image).astype(np.float32),
            "mask": labels, "spacing": spacing}


class ACDCDataModule(PointSliceDataModule):
    """ACDC slices with point labels (see the module docstring and ``PointSliceDataModule`` for the point and
    distance-map arguments). ``patients``: explicit (train, val, test) patient-id lists overriding the seeded
    65/10/25 split; ``cache_dir`` defaults to ``<data_dir>/pointbl_cache``."""

    def __init__(self, data_dir: str = "data/acdc", image_size: int = 256, split_sizes: Sequence[int] = (65, 10, 25),
                 split_seed: int = 0, patients: Optional[Sequence[Sequence[str]]] = None,
                 distance: Literal["euc", "geo", "int", "mbd", "none"] = "mbd", point_width: int = 4,
                 point_seed: int = 0, per_component: bool = False, mbd_step: int = 1,
                 cache_dir: Optional[str] = None, prepare_workers: int = 4, batch_size: int = 8,
                 num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None) -> None:
        super().__init__(4, distance, point_width, point_seed, per_component, 0.0, mbd_step,
                         cache_dir if cache_dir is not None else str(Path(data_dir) / "pointbl_cache"),
                         prepare_workers, batch_size, num_workers, pin_memory, eval_batch_size)
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.split_sizes = tuple(int(n) for n in split_sizes)
        self.split_seed = split_seed
        self.patients = None if patients is None else [list(p) for p in patients]

    def frames(self, patient: str) -> list[Path]:
        return [image for image, _ in labelled_frames(training_root(self.data_dir) / patient, STANDIN)]

    def split(self) -> dict[str, list[str]]:
        if self.patients is not None:
            return dict(zip(("train", "val", "test"), self.patients))
        patients = [p.name for p in patient_dirs(self.data_dir, STANDIN)]
        root = training_root(self.data_dir)
        if len(patients) < sum(self.split_sizes):
            raise DatasetError(f"{len(patients)} patient folders, the split needs {sum(self.split_sizes)}",
                               path=root, layout=LAYOUT, standin_config=STANDIN,
                               hint="set --data.init_args.split_sizes (train, val, test) for a smaller copy")
        random.Random(self.split_seed).shuffle(patients)
        n_train, n_val, n_test = self.split_sizes
        return {"train": sorted(patients[:n_train]), "val": sorted(patients[n_train:n_train + n_val]),
                "test": sorted(patients[n_train + n_val:n_train + n_val + n_test])}

    def prepare_data(self) -> None:
        self.split()  # fails early with the layout when the data is missing

    def load_volumes(self, split: str) -> list[dict]:
        return [load_acdc_volume(frame, self.image_size)
                for patient in self.split()[split] for frame in self.frames(patient)]
