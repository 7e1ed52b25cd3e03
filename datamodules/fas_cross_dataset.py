"""Cross-dataset face anti-spoofing: train (and validate, which picks the checkpoint and the threshold) on the
source datasets, test on the target's test split; e.g. CASIA-FASD -> Replay-Attack, or leave-one-out
O&C&I -> M. Each dataset is its own ``FaceAntiSpoofingDataModule`` (its layout, caching and depth options); the
sources' training (validation) frames are pooled, videos kept apart (``group`` offset per dataset).
"""
from __future__ import annotations

from typing import Optional

from torch.utils.data import ConcatDataset, Dataset

from datamodules.base import BaseDataModule
from datamodules.face_antispoofing import FaceAntiSpoofingDataModule
from lightning_modules import batch as keys

_GROUP_OFFSET = 1_000_000


class _OffsetGroups(Dataset):
    def __init__(self, dataset: Dataset, offset: int):
        self.dataset, self.offset = dataset, offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item[keys.GROUP] = item[keys.GROUP] + self.offset
        return item


def pooled(datasets: list[Dataset]) -> Dataset:
    return ConcatDataset([_OffsetGroups(d, i * _GROUP_OFFSET) for i, d in enumerate(datasets)])


class CrossDatasetFASDataModule(BaseDataModule):
    """Train/val on ``sources`` (pooled), test on ``target``'s test split.

    Args:
        sources: the training datasets (their own batch sizes and workers are ignored: this module's are used).
        target: the test dataset.
    """

    def __init__(self, sources: list[FaceAntiSpoofingDataModule], target: FaceAntiSpoofingDataModule,
                 batch_size: int = 16, num_workers: int = 4, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if not sources:
            raise ValueError("give at least one source dataset")
        self.sources, self.target = list(sources), target

    def prepare_data(self) -> None:
        for datamodule in (*self.sources, self.target):
            datamodule.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in ("fit", "validate", None):
            for source in self.sources:
                source.setup("fit")
            self.train_set = pooled([s.train_set for s in self.sources])
            self.val_set = pooled([s.val_set for s in self.sources])
        if stage in ("test", "predict", None):
            self.target.setup("test")
            self.test_set = self.target.test_set
