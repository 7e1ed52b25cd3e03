"""BTSeg: the figshare brain tumour release (Cheng et al., article 1512427) as binary tumour segmentation
(HarmonizedSS Table 1): 3064 T1-CE slices ``<n>.mat`` (MATLAB v7.3, ``cjdata.image``, ``cjdata.tumorMask``,
``cjdata.PID``; read with ``datamodules.figshare_brain_tumor.read_cjdata``), anywhere below ``data_dir``.
Split "roughly 80:20" (paper): patients (PID) shuffled with ``split_seed``, 80 % of them for training (of which
``val_fraction`` of the patients validate), the rest for test. Images min-max scaled to [0, 1] per slice.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from datamodules.base import BaseDataModule, DatasetError
from datamodules.figshare_brain_tumor import read_cjdata
from datamodules.segmentation import resolve_augmentation
from datamodules.synapse import SliceDataset

BTSEG_LAYOUT = """<data_dir>/            (the four unzipped brainTumorDataPublic_* folders, or all files in one)
  brainTumorDataPublic_1-766/1.mat ... 3064.mat    cjdata: image (int16), tumorMask, label, PID"""


def _loader(path: Path):
    def load():
        data = read_cjdata(path)
        image = data["image"].astype(np.float32)
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        return image, (data["tumorMask"] > 0).astype(np.uint8)
    return load


class BTSegDataModule(BaseDataModule):
    """Figshare brain tumour slices with their tumour masks, split by patient."""

    layout = BTSEG_LAYOUT
    standin_config = "experiments/harmss_demo.yaml"

    def __init__(self, data_dir: str, image_size: Union[int, Sequence[int]] = 224, augmentation: str = "unext",
                 train_fraction: float = 0.8, val_fraction: float = 0.1, split_seed: int = 0, batch_size: int = 8,
                 num_workers: int = 4, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.augmentation, self.split_seed = augmentation, split_seed
        self.train_fraction, self.val_fraction = train_fraction, val_fraction
        resolve_augmentation(augmentation)

    def error(self, problem: str, path=None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if not self.data_dir.is_dir():
            raise self.error("dataset folder not found", self.data_dir)
        files = sorted((p for p in self.data_dir.rglob("*.mat") if p.stem.isdigit()), key=lambda p: int(p.stem))
        if len(files) < 3:
            raise self.error(f"found {len(files)} <n>.mat files, need at least 3", self.data_dir)
        pids = []
        for path in files:
            try:
                data = read_cjdata(path)
            except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError on bad files
                raise self.error(f"cannot read cjdata ({type(exc).__name__}: {exc})", path) from exc
            if data["tumorMask"] is None:
                raise self.error("cjdata without tumorMask", path)
            pids.append(data["PID"])
        patients = sorted(set(pids))
        order = [patients[i] for i in np.random.default_rng(self.split_seed).permutation(len(patients))]
        n_train = min(max(1, int(round(self.train_fraction * len(patients)))), len(patients) - 1)
        n_val = int(round(self.val_fraction * n_train)) if n_train > 1 else 0
        val, train, test = set(order[:n_val]), set(order[n_val:n_train]), set(order[n_train:])
        make = lambda group, aug: SliceDataset(  # noqa: E731
            [_loader(f) for f, p in zip(files, pids) if p in group], [f.stem for f, p in zip(files, pids) if p in group],
            self.image_size, aug)
        self.train_set = make(train, resolve_augmentation(self.augmentation))
        self.test_set = make(test, ())
        self.val_set = make(val, ()) if val else self.test_set
        self.predict_set = self.test_set
