"""ESC-50 (Piczak, 2015): 2,000 5-s clips, 50 classes, 5 official folds, in the GitHub release layout.

Download: https://github.com/karolpiczak/ESC-50 (``ESC-50-master.zip``). Clips are 44.1 kHz and are
resampled to 16 kHz on loading. Cross-validation: ``fold`` k is the test (and validation, as in the
official ASDA/EAT code) fold, the other four train; the paper's number is the mean over k = 1..5.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from datamodules.audio_io import AudioClipDataset
from datamodules.base import BaseDataModule, DatasetError

STANDIN_CONFIG = "experiments/asda_demo.yaml"
LAYOUT = """\
<data_dir>/                    (ESC-50-master)
  meta/esc50.csv               filename,fold,target,category,esc10,src_file,take
  audio/<fold>-<src>-<take>-<target>.wav   2,000 clips, 5 s, 44.1 kHz"""


class ESC50DataModule(BaseDataModule):
    num_classes = 50

    def __init__(self, data_dir: str = "data/ESC-50-master", fold: int = 1, clip_seconds: float = 5.0,
                 sample_rate: int = 16000, batch_size: int = 48, num_workers: int = 8,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if fold not in (1, 2, 3, 4, 5):
            raise ValueError(f"fold must be 1..5, got {fold}")
        self.save_hyperparameters()
        self.data_dir, self.fold = Path(data_dir), fold
        self.clip_seconds, self.sample_rate = clip_seconds, sample_rate

    def _error(self, problem: str, path) -> DatasetError:
        return DatasetError(problem, path=path, layout=LAYOUT, standin_config=STANDIN_CONFIG)

    def read_meta(self) -> list[dict]:
        path = self.data_dir / "meta" / "esc50.csv"
        if not path.is_file():
            raise self._error("ESC-50 metadata not found", path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"filename", "fold", "target"} <= set(rows[0]):
            raise self._error("ESC-50 metadata lacks the filename, fold and target columns", path)
        for row in rows:
            if not (self.data_dir / "audio" / row["filename"]).is_file():
                raise self._error("ESC-50 clip listed in meta/esc50.csv not found", self.data_dir / "audio" / row["filename"])
        return rows

    def _dataset(self, rows: list[dict]) -> AudioClipDataset:
        return AudioClipDataset([str(self.data_dir / "audio" / r["filename"]) for r in rows],
                                [int(r["target"]) for r in rows], self.sample_rate, self.clip_seconds,
                                layout=LAYOUT, standin_config=STANDIN_CONFIG)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_set is not None:
            return
        rows = self.read_meta()
        self.train_set = self._dataset([r for r in rows if int(r["fold"]) != self.fold])
        self.val_set = self.test_set = self._dataset([r for r in rows if int(r["fold"]) == self.fold])
