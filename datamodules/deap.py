"""DEAP (Koelstra et al. 2012), preprocessed Python release, as DE-feature windows (ConTL's DEAP protocol).

``data_preprocessed_python/s01.dat .. s32.dat``: pickles (``encoding='latin1'``) of ``data`` (40 trials, 40 channels,
8064 samples = 63 s at 128 Hz) and ``labels`` (40, 4: valence, arousal, dominance, liking, ratings 1-9).
ConTL's card: EEG channels 0-31; no baseline, so the first 3 s (384 samples) are dropped; DE per channel and band
from 1 s Hann windows with a 256-point FFT (``datamodules.eeg_features``, the paper's bands) -> 60 windows x
(32, 5) per trial; the rating of ``label_dim`` binned into ``bins`` (default [1, 3, 6, 9]: low [1, 3), medium
[3, 6), high [6, 9], the last bin closed); the 160 features cyclically repeated to 310 (``resize_to``, the
code's ``np.resize``) so the network keeps its 4864-wide Linear.

Splits: ``stratified`` (default; the paper does not describe it and the public code has no DEAP loader): per
``subject`` (None pools all, still split per subject), a stratified 70/30 trial-level train/test split
(``test_size``, ``split_seed``), then 30 % of the training windows -> validation; ``loso``: one subject out.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
from sklearn.model_selection import train_test_split

from datamodules.seed_eeg import EEGFeatureDataModule, EEGTrial

_FILE_RE = re.compile(r"^s(\d{2})\.dat$")


def bin_ratings(ratings: np.ndarray, bins: list[float]) -> np.ndarray:
    """Ratings -> class indices: half-open bins [b_i, b_{i+1}), the last closed ([1, 3), [3, 6), [6, 9])."""
    edges = np.asarray(bins, dtype=float)
    return np.clip(np.searchsorted(edges, np.asarray(ratings, dtype=float), side="right") - 1, 0, len(edges) - 2)


def k_class_bins(k: int) -> list[float]:
    """The paper's Fig. 3 rule for k classes: offset 9 / k, first bin [1, offset], each next bin adds the offset."""
    offset = 9.0 / k
    return [1.0] + [offset * i for i in range(1, k)] + [9.0]


class DEAPDataModule(EEGFeatureDataModule):
    """DEAP valence (``label_dim`` 0) or arousal (1) in ``len(bins) - 1`` classes, DE windows of 32 channels.

    Args:
        label_dim: 0 valence, 1 arousal, 2 dominance, 3 liking.
        bins: the class edges on the 1-9 ratings.
        drop_baseline_s: seconds dropped from each trial's start (3: the 3 s pre-trial baseline).
        eeg_channels: the EEG channels of the 40 (the first 32).
        test_size, split_seed: the stratified trial-level train/test split per subject.
        Other arguments: ``EEGFeatureDataModule``'s (``feature`` is always raw DE here; ``resize_to`` 310).
    """

    layout = """data_preprocessed_python/
  s01.dat ... s32.dat   pickle (encoding latin1): {'data': (40 trials, 40 channels, 8064) at 128 Hz,
                                                    'labels': (40, 4) valence/arousal/dominance/liking in 1-9}"""
    standin_config = "experiments/contl_demo.yaml"
    splits = ("stratified", "loso")

    def __init__(self, data_dir: str = "", label_dim: int = 0, bins: Optional[list[float]] = None,
                 drop_baseline_s: float = 3.0, eeg_channels: int = 32, test_size: float = 0.3, split_seed: int = 0,
                 split: Literal["stratified", "loso"] = "stratified", subject: Optional[Union[int, str]] = None,
                 sample_rate: float = 128.0, window_s: float = 1.0, de_method: Literal["stft", "bandpass"] = "stft",
                 lds: bool = False, fold: int = 0, val_fraction: float = 0.3, val_seed: int = 7,
                 normalization: Literal["band", "none"] = "band", resize_to: Optional[int] = 310,
                 shuffle_train: bool = False, batch_size: int = 128, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        self.bins = list(bins or [1.0, 3.0, 6.0, 9.0])
        self.classes = tuple(f"bin{i}" for i in range(len(self.bins) - 1))
        super().__init__(data_dir=data_dir, feature="raw", sample_rate=sample_rate, window_s=window_s,
                         de_method=de_method, lds=lds, subject=None if subject is None else f"{int(subject):02d}",
                         split=split, fold=fold, val_fraction=val_fraction, val_seed=val_seed,
                         normalization=normalization, resize_to=resize_to, shuffle_train=shuffle_train,
                         batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if not 0 <= label_dim <= 3:
            raise ValueError(f"label_dim must be 0..3, got {label_dim}")
        self.label_dim, self.drop_baseline_s, self.eeg_channels = label_dim, drop_baseline_s, eeg_channels
        self.test_size, self.split_seed = test_size, split_seed

    def load_trials(self) -> list[EEGTrial]:
        folder = self.data_dir / "data_preprocessed_python"
        if not folder.is_dir():
            raise self.error("Missing folder", folder)
        files = sorted(p for p in folder.iterdir() if _FILE_RE.match(p.name))
        if not files:
            raise self.error("No s01.dat ... s32.dat files", folder)
        trials = []
        for path in files:
            subject = _FILE_RE.match(path.name).group(1)
            if self.subject is not None and self.split != "loso" and subject != self.subject:
                continue
            record = self._read(path)
            data, labels = np.asarray(record["data"]), np.asarray(record["labels"])
            if data.ndim != 3 or labels.ndim != 2 or len(data) != len(labels) or data.shape[1] < self.eeg_channels:
                raise self.error(f"Unexpected shapes data {data.shape}, labels {labels.shape}", path)
            start = int(round(self.drop_baseline_s * self.sample_rate))
            classes = bin_ratings(labels[:, self.label_dim], self.bins)
            for trial, (x, label) in enumerate(zip(data, classes), start=1):
                trials.append(EEGTrial(subject, 1, trial, int(label),
                                       self.raw_to_features(x[:self.eeg_channels, start:])))
        return trials

    def _read(self, path: Path) -> dict:
        try:
            with open(path, "rb") as file:
                record = pickle.load(file, encoding="latin1")
        except Exception as error:  # truncated or not a pickle
            raise self.error(f"Unreadable DEAP pickle ({type(error).__name__}: {error})", path) from error
        if not isinstance(record, dict) or "data" not in record or "labels" not in record:
            raise self.error("The pickle holds no 'data' / 'labels'", path)
        return record

    def split_trials(self, trials, subjects):
        if self.split == "loso":
            return super().split_trials(trials, subjects)
        trials = self.subject_trials(trials, subjects)
        train, test = [], []
        for subject in sorted({t.subject for t in trials}):
            own = [t for t in trials if t.subject == subject]
            labels = [t.label for t in own]
            stratify = labels if min(np.bincount(labels)[np.unique(labels)]) >= 2 else None
            tr, te = train_test_split(own, test_size=self.test_size, random_state=self.split_seed, stratify=stratify)
            train += tr
            test += te
        return train, test
