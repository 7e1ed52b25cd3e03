"""Shared base of the scanpath datasets (GazeCom, MIT1003 / WherePeopleLook, DOVES and the synthetic stand-in):
raw gaze recordings, one viewer on one stimulus each, classified by viewer (``task: subject``) or by stimulus
(``task: stimulus``).

A dataset module only reads its layout into ``Scanpath``s (``read_scanpaths``); this base, on the time-series base
(``datamodules.timeseries``):

- drops invalid samples (NaN: blinks, track loss, off-screen values that the reader marks), so the angles join
  across the gap (the card's choice: no filtering beyond that); crops to ``max_samples`` (None: whole recordings);
  drops recordings shorter than ``min_samples``;
- labels each recording by its subject or its stimulus (class names: the sorted ids);
- pads every recording with NaN to the longest one, so a batch ``signal`` is (B, T, 2) and the networks see where a
  recording ends (the angle-fern layer never counts a window that touches a NaN; the RNNs drop those steps);
- splits as the paper (Sect. 4.1): 50 % / 50 % train / test, **subject task by stimulus** (no stimulus on both
  sides), **stimulus task by subject** (no subject on both sides), both seeded (``split_seed``); validation: a
  random ``val_fraction`` (20 %) of the training recordings.

Coordinates are kept as recorded (no normalisation: angles do not depend on the scale, and a per-axis z-score would
change them).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule

Task = Literal["subject", "stimulus"]


@dataclass
class Scanpath:
    """One recording: ``xy`` (T, 2) gaze samples (NaN where invalid), who (``subject``) looked at what
    (``stimulus``)."""

    xy: np.ndarray
    subject: str
    stimulus: str
    name: str = ""


class ScanpathDataModule(TimeSeriesDataModule):
    """Scanpath classification by subject or stimulus with the paper's disjoint 50/50 splits (module docstring).

    Args:
        data_dir: the dataset's root ("" for stand-ins).
        task: "subject" (classes: viewers; split by stimulus) or "stimulus" (classes: stimuli; split by subject).
        test_size: fraction of the stimuli (subject task) or subjects (stimulus task) held out for testing.
        val_fraction: random fraction of the training recordings for validation / checkpoint selection.
        max_samples: crop recordings to their first ``max_samples`` valid samples (None: whole).
        min_samples: drop recordings with fewer valid samples (too short for one fern window).
        exclude_subjects: subject ids left out (GazeCom: V01, which has a single recording).
        split_seed, batch_size, num_workers, ...: ``TimeSeriesDataModule``'s.
    """

    def __init__(self, data_dir: str = "", task: Task = "subject", test_size: float = 0.5, val_fraction: float = 0.2,
                 max_samples: Optional[int] = None, min_samples: int = 16,
                 exclude_subjects: Optional[list[str]] = None, split_seed: int = 0, batch_size: int = 32,
                 sample_rate: Optional[float] = None, num_workers: int = 0, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        if task not in ("subject", "stimulus"):
            raise ValueError(f"task must be 'subject' or 'stimulus', got {task!r}")
        super().__init__(data_dir=data_dir, window_length=None, normalization="none", signal_layout="time_first",
                         split="group", split_key="stimulus" if task == "subject" else "subject", test_size=test_size,
                         val_fraction=val_fraction, val_by="window", split_seed=split_seed, group_by="subject",
                         batch_size=batch_size, sample_rate=sample_rate, num_workers=num_workers,
                         pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        if max_samples is not None and max_samples < 2:
            raise ValueError(f"max_samples must be >= 2, got {max_samples}")
        self.task, self.max_samples, self.min_samples = task, max_samples, max(2, min_samples)
        self.exclude_subjects = [str(s) for s in exclude_subjects or []]

    # ---- what a subclass provides ----
    def read_scanpaths(self) -> list[Scanpath]:
        raise NotImplementedError

    # ---- recordings ----
    def list_recordings(self) -> list[Recording]:
        scanpaths = list(self.read_scanpaths())
        if self.exclude_subjects:
            absent = sorted(set(self.exclude_subjects) - {s.subject for s in scanpaths})
            if absent:
                warnings.warn(f"{type(self).__name__}: exclude_subjects {absent} not in the data", stacklevel=2)
            scanpaths = [s for s in scanpaths if s.subject not in self.exclude_subjects]
        kept = []
        for scanpath in scanpaths:
            xy = np.asarray(scanpath.xy, dtype=np.float32)
            if xy.ndim != 2 or xy.shape[1] != 2:
                raise self.error(f"gaze samples must be (T, 2), got {xy.shape} in {scanpath.name}", self.data_dir)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if self.max_samples is not None:
                xy = xy[:self.max_samples]
            if len(xy) >= self.min_samples:
                kept.append(Scanpath(xy, scanpath.subject, scanpath.stimulus, scanpath.name))
        if not kept:
            raise self.error(f"no recording with at least {self.min_samples} valid gaze samples", self.data_dir)
        if len(kept) < len(scanpaths):
            warnings.warn(f"{type(self).__name__}: {len(scanpaths) - len(kept)} of {len(scanpaths)} recordings have "
                          f"fewer than {self.min_samples} valid samples and are left out", stacklevel=2)
        key = "subject" if self.task == "subject" else "stimulus"
        self.classes = tuple(sorted({getattr(s, key) for s in kept}))
        lookup = {name: i for i, name in enumerate(self.classes)}
        length = max(len(s.xy) for s in kept)
        recordings = []
        for i, scanpath in enumerate(kept):
            padded = np.full((length, 2), np.nan, dtype=np.float32)
            padded[:len(scanpath.xy)] = scanpath.xy
            recordings.append(Recording(padded, lookup[getattr(scanpath, key)], subject=scanpath.subject,
                                        trial=scanpath.stimulus, name=scanpath.name or f"{scanpath.subject}_{i}",
                                        extra={"stimulus": scanpath.stimulus, "samples": len(scanpath.xy)}))
        return recordings

    @property
    def num_channels(self) -> int:
        return 2

    @property
    def recording_lengths(self) -> np.ndarray:
        """Valid samples per recording (before padding)."""
        return np.array([r.extra["samples"] for r in self.recordings])
