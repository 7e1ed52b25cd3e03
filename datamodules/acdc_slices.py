"""ACDC cine cardiac MRI (Bernard et al. 2018) as 2-D slices with their full labels: RV 1, MYO 2, LV 3
(HarmonizedSS / TransUNet setting; PointBL's point-label reader is ``datamodules.acdc_points``).

Raw release (https://www.creatis.insa-lyon.fr/Challenge/acdc/): ``training/patient001 ... patient100``, each with
the two annotated frames (end-diastole, end-systole) ``patientXXX_frameYY.nii.gz`` and their labels
``patientXXX_frameYY_gt.nii.gz``. Every short-axis slice of both frames is one sample; each frame is scaled to
[0, 1] by its 0.5th-99.5th intensity percentiles. Patients are split 70/10/20 (train/val/test) with a seeded
permutation (TransUNet's split; its lists are not in the release). Items carry ``volume`` (the frame,
``patientXXX_frameYY``), ``slice_index`` and ``spacing`` (mm, from the NIfTI header, scaled to the resized grid), so
the segmentation task scores each restacked frame volume in 3-D (``test/dice_3d``, ``test/hd95_3d`` in mm).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from datamodules.acdc import LAYOUT, labelled_frames, patient_dirs
from datamodules.base import BaseDataModule, DatasetError
from datamodules.segmentation import resolve_augmentation
from datamodules.synapse import SliceDataset

ACDC_CLASSES = ("background", "RV", "MYO", "LV")


def _frame_loader(image_path: Path, label_path: Path, z: int):
    def load():
        import nibabel as nib

        image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
        labels = np.asarray(nib.load(str(label_path)).dataobj).astype(np.uint8)
        lo, hi = np.percentile(image, (0.5, 99.5))
        return np.clip((image[..., z] - lo) / max(hi - lo, 1e-6), 0, 1), labels[..., z]
    return load


class ACDCSliceDataModule(BaseDataModule):
    """ACDC training release, patients split 70/10/20 (``fractions``) by ``split_seed``.

    Args:
        data_dir: the release root (holding ``training/``) or ``training/`` itself.
        image_size: slice size (224); augmentation: a preset of ``datamodules.segmentation``.
    """

    layout = LAYOUT
    standin_config = "experiments/harmss_demo.yaml"
    num_labels = len(ACDC_CLASSES)

    def __init__(self, data_dir: str, image_size: Union[int, Sequence[int]] = 224, augmentation: str = "unext",
                 fractions: Sequence[float] = (0.7, 0.1, 0.2), split_seed: int = 0, batch_size: int = 8,
                 num_workers: int = 4, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.augmentation, self.fractions, self.split_seed = augmentation, tuple(fractions), split_seed
        resolve_augmentation(augmentation)

    def error(self, problem: str, path=None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config)

    def patients(self) -> list[Path]:
        patients = patient_dirs(self.data_dir, self.standin_config)
        if len(patients) < 3:
            raise self.error(f"found {len(patients)} patientXXX folders, need at least 3", patients[0].parent)
        return patients

    def frame_slices(self, patient: Path):
        import nibabel as nib

        loaders, names, volume_slices = [], [], []
        for image, label in labelled_frames(patient, self.standin_config):
            header = nib.load(str(label))
            depth, voxel = header.shape[2], tuple(float(v) for v in header.header.get_zooms()[:3])
            frame = image.name.split(".")[0]
            loaders += [_frame_loader(image, label, z) for z in range(depth)]
            names += [f"{frame}_slice{z:02d}" for z in range(depth)]
            volume_slices += [(frame, z, voxel) for z in range(depth)]
        return loaders, names, volume_slices

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        patients = self.patients()
        order = np.random.default_rng(self.split_seed).permutation(len(patients))
        n_train = int(round(self.fractions[0] * len(patients)))
        n_val = max(1, int(round(self.fractions[1] * len(patients))))
        n_train = min(n_train, len(patients) - n_val - 1)  # at least one test patient
        parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        augmentation = resolve_augmentation(self.augmentation)
        for split, indices in parts.items():
            loaders, names, volume_slices = [], [], []
            for i in sorted(indices.tolist()):
                more_loaders, more_names, more_slices = self.frame_slices(patients[i])
                loaders += more_loaders
                names += more_names
                volume_slices += more_slices
            setattr(self, f"{split}_set", SliceDataset(loaders, names, self.image_size,
                                                       augmentation if split == "train" else (), volume_slices))
        self.predict_set = self.test_set
