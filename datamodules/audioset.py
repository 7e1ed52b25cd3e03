"""AudioSet (Gemmeke et al., 2017) in its common downloaded layout, plus the clip dataset that every
audio classification dataset here (AudioSet, Speech Commands V2, ESC-50) uses.

AudioSet is distributed as CSV segment lists of YouTube clips; the audio itself is fetched by users
(yt-dlp scripts, Hugging Face mirrors), so this module accepts the official CSVs plus one folder of clips
per split, each clip named by its YouTube id (``<YTID>.wav``, ``Y<YTID>.wav`` as in PANNs, or
``<YTID>_<start>[...].flac``; wav, flac or ogg). Clips that YouTube no longer serves are missing from
every copy: they are skipped with a warning that counts them (``missing_clips: error`` stops instead).
"""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from datamodules.audio_io import AudioClipDataset
from datamodules.base import BaseDataModule, DatasetError

STANDIN_CONFIG = "experiments/asda_demo.yaml"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

LAYOUT = """\
<data_dir>/
  class_labels_indices.csv          index,mid,display_name (527 rows)
  balanced_train_segments.csv       # YTID, start_seconds, end_seconds, positive_labels   (AS-20K)
  unbalanced_train_segments.csv     (only for train_split: full = AS-2M)
  eval_segments.csv
  audio/balanced_train/<YTID>.wav   (also Y<YTID>.wav, <YTID>_<start>_<end>.flac, ...)
  audio/unbalanced_train/<YTID>.wav
  audio/eval/<YTID>.wav"""

SPLIT_FILES = {"balanced_train": "balanced_train_segments.csv", "unbalanced_train": "unbalanced_train_segments.csv",
               "eval": "eval_segments.csv"}


def read_class_labels(path: Path) -> dict[str, int]:
    """class_labels_indices.csv -> {mid: index}."""
    with open(path, newline="") as f:
        return {row["mid"]: int(row["index"]) for row in csv.DictReader(f)}


def read_segments(path: Path) -> list[tuple[str, list[str]]]:
    """An official segments CSV (3 '#' header lines; ``YTID, start, end, "mid1,mid2"``) -> [(ytid, mids)]."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.reader((line for line in f if not line.startswith("#")), skipinitialspace=True):
            if len(row) >= 4:
                rows.append((row[0], [m for m in row[3].split(",") if m]))
    return rows


def index_clips(folder: Path, wanted: set[str]) -> dict[str, str]:
    """{ytid: path} for the audio files in ``folder`` whose name starts with a wanted YouTube id."""
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in AUDIO_EXTENSIONS:
                continue
            for ytid in (stem[:11], stem[1:12] if stem.startswith("Y") else None):
                if ytid in wanted:
                    found[ytid] = entry.path
                    break
    return found


def label_weights(targets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """AST/EAT sampling weights: a clip's weight is the sum over its labels of 1000 / (label count + 0.01)."""
    counts = np.zeros(num_classes)
    for labels in targets:
        counts[list(labels)] += 1
    per_label = 1000.0 / (counts + 0.01)
    return np.array([per_label[list(labels)].sum() for labels in targets])


class AudioSetDataModule(BaseDataModule):
    """AudioSet clips with multi-hot targets over the 527 classes; evaluation on the eval segments.

    Args:
        data_dir: see LAYOUT. audio_dir: the clip folders' parent, relative to data_dir (or absolute).
        train_split: "balanced" (AS-20K: balanced_train) or "full" (AS-2M: balanced + unbalanced).
        clip_seconds, sample_rate: clips are resampled and padded/cut to 10 s at 16 kHz.
        missing_clips: "skip" (warn, with the count) or "error" for listed clips without a file.
        weighted_samples_per_epoch: draw this many training clips per epoch with the label-balancing
            weights of AST/EAT (AS-2M fine-tuning: 200,000); None: plain shuffling.
    Validation and test both use the eval segments (AudioSet has no official validation split; the
    official code validates on eval too).
    """

    num_classes = 527

    def __init__(self, data_dir: str = "data/audioset", audio_dir: str = "audio",
                 train_split: Literal["balanced", "full"] = "balanced", clip_seconds: float = 10.0,
                 sample_rate: int = 16000, missing_clips: Literal["skip", "error"] = "skip",
                 weighted_samples_per_epoch: Optional[int] = None, batch_size: int = 12, num_workers: int = 8,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None, seed: int = 0):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.audio_dir = self.data_dir / audio_dir
        self.train_split, self.clip_seconds, self.sample_rate = train_split, clip_seconds, sample_rate
        self.missing_clips, self.weighted_samples_per_epoch, self.seed = missing_clips, weighted_samples_per_epoch, seed
        self.train_weights: Optional[np.ndarray] = None

    def _required_path(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise DatasetError(f"AudioSet {what} not found", path=path, layout=LAYOUT, standin_config=STANDIN_CONFIG)
        return path

    def _split(self, split: str, classes: dict[str, int]) -> tuple[list[str], list[list[int]]]:
        segments = read_segments(self._required_path(self.data_dir / SPLIT_FILES[split], "segments file"))
        clips = index_clips(self._required_path(self.audio_dir / split, "audio folder"), {ytid for ytid, _ in segments})
        paths, targets, missing = [], [], []
        for ytid, mids in segments:
            if ytid not in clips:
                missing.append(ytid)
                continue
            unknown = [m for m in mids if m not in classes]
            if unknown:
                raise DatasetError(f"Labels {unknown} of clip {ytid} are not in class_labels_indices.csv",
                                   path=self.data_dir / SPLIT_FILES[split], layout=LAYOUT, standin_config=STANDIN_CONFIG)
            paths.append(clips[ytid])
            targets.append([classes[m] for m in mids])
        if missing:
            message = (f"{len(missing)} of {len(segments)} clips listed in {SPLIT_FILES[split]} have no audio file "
                       f"in {self.audio_dir / split} (first: {', '.join(missing[:3])})")
            if self.missing_clips == "error" or not paths:
                raise DatasetError(message, layout=LAYOUT, standin_config=STANDIN_CONFIG)
            warnings.warn(message + "; they are skipped (YouTube no longer serves some clips)", stacklevel=2)
        return paths, targets

    def _dataset(self, paths, targets) -> AudioClipDataset:
        return AudioClipDataset(paths, targets, self.sample_rate, self.clip_seconds, self.num_classes,
                                layout=LAYOUT, standin_config=STANDIN_CONFIG)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_set is not None:
            return
        classes = read_class_labels(self._required_path(self.data_dir / "class_labels_indices.csv", "class list"))
        if len(classes) != self.num_classes:
            raise DatasetError(f"class_labels_indices.csv lists {len(classes)} classes, expected {self.num_classes}",
                               path=self.data_dir / "class_labels_indices.csv", layout=LAYOUT,
                               standin_config=STANDIN_CONFIG)
        splits = ["balanced_train"] + (["unbalanced_train"] if self.train_split == "full" else [])
        paths, targets = [], []
        for split in splits:
            p, t = self._split(split, classes)
            paths += p
            targets += t
        self.train_set = self._dataset(paths, targets)
        if self.weighted_samples_per_epoch:
            self.train_weights = label_weights(targets, self.num_classes)
        self.val_set = self.test_set = self._dataset(*self._split("eval", classes))

    def train_sampler(self, dataset):
        if self.train_weights is None:
            return None
        generator = torch.Generator().manual_seed(self.seed)
        return WeightedRandomSampler(torch.as_tensor(self.train_weights), self.weighted_samples_per_epoch,
                                     replacement=True, generator=generator)
