"""Shared base for multichannel time-series classification (wearable HAR, EEG emotion, gaze) and its stand-ins.

A dataset module only lists its recordings from its on-disk layout (``list_recordings`` -> ``Recording``);
this module does the rest, once, in ``setup``:

- **windows**: sliding windows of ``window_length`` samples (or seconds with ``window_unit: seconds`` and
  ``sample_rate``) every ``window_step``; ``window_length: null`` takes each recording whole as one window
  (datasets released pre-windowed, such as UCI-HAR's 128-sample windows). A window's label is the recording's
  label, or from per-sample labels the ``majority`` / ``last`` / ``centre`` one (``label_mode``); windows that
  cross a label change are dropped with ``drop_mixed_windows``; windows labelled -1 (unlabelled, transient)
  are always dropped.
- **normalisation**: ``zscore`` per channel (each feature element of ``signal.shape[1:]``) with the mean and
  standard deviation of the samples the training windows cover; ``recording``: each recording with its own
  statistics; ``none``.
- **splits**, deterministic given ``split_seed`` (indices into the windows):
  ``random`` (window-level stratified hold-out of ``test_size``, what many HAR papers do; overlapping windows
  then leak across the split), ``kfold`` (window-level stratified k-fold), ``subject`` (``test_subjects`` or a
  seeded ``test_size`` fraction of the subjects held out), ``subject_kfold`` (k-fold over subjects,
  ``splits.group_kfold_split``), ``loso`` (leave-one-subject-out: ``fold`` k holds out the k-th subject in sorted
  order, ``splits.leave_one_group_out``), ``trial`` (``test_trials`` held out, e.g. SEED's last 6 of 15
  trials), ``group`` (the recordings' ``split_key`` value, "subject", "trial" or a key of ``Recording.extra`` such
  as the stimulus: ``test_groups`` or a seeded ``test_size`` fraction of the values held out, so no value is on
  both sides), ``predefined`` (each recording's ``partition``, "train"/"test": the dataset's own split).
  ``subjects`` keeps only the recordings of those subjects (subject-dependent protocols: one model per subject).
  A ``val_fraction`` of the training part becomes the validation set: by subject for the subject splits (when
  the training part has >= 2 subjects), by window otherwise (``val_by`` overrides); ``val_fraction: 0``
  validates on the test set (as ImageClassificationDataModule does; model selection then sees the test set).
- **batches**: ``signal`` float32, (C, T) with ``signal_layout: channels_first`` (Conv1d input; (*F, T) for
  multi-dimensional features), (T, C) with ``time_first``; ``label`` int64; ``group`` int64 (index into
  ``group_names``: the subject, recording or trial of the window, ``group_by``) for
  ``ClassificationTask(group_key="group", group_pooling=...)``; ``name`` "<recording name>@<start sample>".

The normalised signals of all recordings are concatenated into one float32 array; a window is a slice of it
(no per-item work beyond indexing and a transpose).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError
from datamodules.splits import group_kfold_split, holdout_split, kfold_split, leave_one_group_out
from lightning_modules.batch import GROUP, LABEL, NAME, SIGNAL

Split = Literal["random", "kfold", "subject", "subject_kfold", "loso", "trial", "group", "predefined"]
LabelMode = Literal["majority", "last", "centre"]
Normalization = Literal["zscore", "recording", "none"]
SignalLayout = Literal["channels_first", "time_first"]
GroupBy = Literal["subject", "recording", "trial"]

SUBJECT_SPLITS = ("subject", "subject_kfold", "loso")


@dataclass(frozen=True, eq=False)
class Recording:
    """One continuous recording.

    Args:
        signal: float array **time first**, (T, C) (samples x channels, as sensor files store columns) or
            (T, *F) for per-time-step feature maps (e.g. EEG differential entropy, (T, channels, bands)).
        label: the recording's class index, or per-sample class indices (T,) int (-1: unlabelled sample).
        subject: subject id (subject splits, pooling).
        trial: trial / session id (trial splits).
        name: identifier (item names); default "rec<i>".
        partition: "train" / "test" for ``split: predefined`` (the dataset's own split), else "".
    """

    signal: np.ndarray
    label: Union[int, np.ndarray]
    subject: str = ""
    trial: str = ""
    name: str = ""
    partition: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        signal = np.asarray(self.signal)
        if signal.ndim < 2:
            raise ValueError(f"Recording {self.name!r}: signal must be (T, C, ...), got shape {signal.shape}")
        if not np.issubdtype(signal.dtype, np.floating) or signal.dtype != np.float32:
            signal = signal.astype(np.float32)
        object.__setattr__(self, "signal", signal)
        if isinstance(self.label, (np.ndarray, list, tuple)):
            label = np.asarray(self.label).astype(np.int64).reshape(-1)
            if len(label) != len(signal):
                raise ValueError(f"Recording {self.name!r}: {len(label)} per-sample labels for {len(signal)} samples")
            object.__setattr__(self, "label", label)
        else:
            object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "subject", str(self.subject))
        object.__setattr__(self, "trial", str(self.trial))
        if self.partition not in ("", "train", "test"):
            raise ValueError(f"Recording {self.name!r}: partition must be '', 'train' or 'test', got {self.partition!r}")

    @property
    def num_samples(self) -> int:
        return len(self.signal)


class TimeSeriesWindows(Dataset):
    """Windows as slices of one concatenated (N, *F) tensor: ``starts`` index it, all windows ``length`` long."""

    def __init__(self, data: torch.Tensor, starts: np.ndarray, length: int, labels: np.ndarray, groups: np.ndarray,
                 names: Sequence[str], offsets: np.ndarray, channels_first: bool):
        self.data, self.length, self.channels_first = data, int(length), channels_first
        self.starts = np.asarray(starts, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.groups = torch.as_tensor(np.asarray(groups, dtype=np.int64))
        self.names, self.offsets = names, offsets  # per window: recording name and start within the recording

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        start = int(self.starts[index])
        window = self.data[start:start + self.length]
        if self.channels_first:
            window = window.movedim(0, -1).contiguous()
        return {SIGNAL: window, LABEL: self.labels[index], GROUP: self.groups[index],
                NAME: f"{self.names[index]}@{int(self.offsets[index])}"}


class TimeSeriesDataModule(BaseDataModule):
    """Windows, normalisation and subject/trial splits of multichannel recordings (see the module docstring).

    Args:
        data_dir: the dataset's root folder ("" for stand-ins).
        window_length, window_step: window and hop in ``window_unit``; None: each recording is one window (all
            recordings equally long), step None: non-overlapping windows.
        window_unit: "samples" or "seconds" (then ``sample_rate`` converts).
        sample_rate: samples per second of the recordings (None: the class attribute ``default_sample_rate``).
        label_mode: window label from per-sample labels: "majority", "last" or "centre" sample.
        drop_mixed_windows: drop windows whose per-sample labels are not all the same.
        normalization: "zscore" (training statistics per channel), "recording" (per recording) or "none".
        signal_layout: batch ``signal`` as (C, T) ("channels_first") or (T, C) ("time_first").
        split, test_size, test_subjects, test_trials, folds, fold: the test split (module docstring).
        split_key, test_groups: ``split: group``'s recording key ("subject", "trial" or a key of ``extra``) and
            its held-out values (None: a seeded ``test_size`` fraction of them).
        subjects: keep only these subjects' recordings (None: all).
        val_fraction: fraction of the training part used for validation (0: validate on the test set).
        val_by: "window" or "subject" (None: by subject for subject splits, else by window).
        split_seed: seed of every random split.
        group_by: what ``group`` indexes: "subject", "recording" or "trial".
    """

    #: the on-disk layout (shown in errors), the stand-in config, class names; set by subclasses.
    layout: str = ""
    standin_config: str = ""
    classes: tuple[str, ...] = ()
    default_sample_rate: Optional[float] = None

    def __init__(self, data_dir: str = "", window_length: Optional[float] = None, window_step: Optional[float] = None,
                 window_unit: Literal["samples", "seconds"] = "samples", sample_rate: Optional[float] = None,
                 label_mode: LabelMode = "majority", drop_mixed_windows: bool = False,
                 normalization: Normalization = "zscore", signal_layout: SignalLayout = "channels_first",
                 split: Split = "random", test_size: float = 0.2, test_subjects: Optional[list[str]] = None,
                 test_trials: Optional[list[str]] = None, folds: int = 5, fold: int = 0,
                 subjects: Optional[list[str]] = None, val_fraction: float = 0.1,
                 val_by: Optional[Literal["window", "subject"]] = None, split_seed: int = 0,
                 group_by: GroupBy = "subject", batch_size: int = 64, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None,
                 split_key: str = "subject", test_groups: Optional[list[str]] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        checks = {"window_unit": (window_unit, ("samples", "seconds")),
                  "label_mode": (label_mode, ("majority", "last", "centre")),
                  "normalization": (normalization, ("zscore", "recording", "none")),
                  "signal_layout": (signal_layout, ("channels_first", "time_first")),
                  "split": (split, ("random", "kfold", "subject", "subject_kfold", "loso", "trial", "group",
                                    "predefined")),
                  "group_by": (group_by, ("subject", "recording", "trial")),
                  "val_by": (val_by, (None, "window", "subject"))}
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0 < test_size < 1:
            raise ValueError(f"test_size must be in (0, 1), got {test_size}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if split == "trial" and not test_trials:
            raise ValueError("split: trial needs test_trials (the trial ids held out for testing)")
        self.data_dir = Path(os.path.expanduser(data_dir)) if data_dir else None
        self.sample_rate = sample_rate if sample_rate is not None else self.default_sample_rate
        if window_unit == "seconds" and (window_length is not None or window_step is not None) and not self.sample_rate:
            raise ValueError("window_unit: seconds needs sample_rate")
        scale = self.sample_rate if window_unit == "seconds" else 1
        self.window_length = None if window_length is None else int(round(window_length * scale))
        self.window_step = None if window_step is None else int(round(window_step * scale))
        if self.window_length is not None and self.window_length < 1:
            raise ValueError(f"window_length must be at least one sample, got {window_length} {window_unit}")
        if self.window_step is not None and self.window_step < 1:
            raise ValueError(f"window_step must be at least one sample, got {window_step} {window_unit}")
        self.label_mode, self.drop_mixed_windows = label_mode, drop_mixed_windows
        self.normalization, self.signal_layout = normalization, signal_layout
        self.split, self.test_size, self.folds, self.fold = split, test_size, folds, fold
        self.test_subjects = None if test_subjects is None else [str(s) for s in test_subjects]
        self.test_trials = None if test_trials is None else [str(t) for t in test_trials]
        self.subjects = None if subjects is None else [str(s) for s in subjects]
        self.split_key = split_key
        self.test_groups = None if test_groups is None else [str(g) for g in test_groups]
        self.val_fraction, self.val_by, self.split_seed, self.group_by = val_fraction, val_by, split_seed, group_by
        self.recordings: list[Recording] = []

    # ---- what a subclass provides ----
    def list_recordings(self) -> list[Recording]:
        raise NotImplementedError

    def error(self, problem: str, path: Optional[Path] = None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout or None, standin_config=self.standin_config or None,
                            hint=hint)

    def require_dir(self, path: Path, what: str = "folder") -> Path:
        if not path.is_dir():
            raise self.error(f"{what} not found", path)
        return path

    def require_file(self, path: Path, what: str = "file") -> Path:
        if not path.is_file():
            raise self.error(f"{what} not found", path)
        return path

    # ---- derived sizes ----
    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return int(self.window_labels.max()) + 1

    @property
    def num_channels(self) -> int:
        """C of the batch signal (channels_first: the first axis; for (T, *F) recordings, F[0])."""
        return int(self.recordings[0].signal.shape[1])

    @property
    def class_counts(self) -> list[int]:
        """Training windows per class (balanced class weights N / (K N_c))."""
        labels = self.window_labels[self.split_indices["train"]]
        return np.bincount(labels, minlength=self.num_classes).tolist()

    # ---- windows ----
    def _window_recording(self, recording: Recording) -> tuple[np.ndarray, np.ndarray]:
        """(starts within the recording, labels) of the recording's kept windows."""
        total = recording.num_samples
        length = self.window_length or total
        step = self.window_step or length
        if total < length:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        starts = np.arange(0, total - length + 1, step, dtype=np.int64)
        if isinstance(recording.label, int):
            labels = np.full(len(starts), recording.label, dtype=np.int64)
            return starts[labels >= 0], labels[labels >= 0]
        per_sample = recording.label
        values, codes = np.unique(per_sample, return_inverse=True)  # -1 is a value like any other here
        cumulative = np.zeros((total + 1, len(values)), dtype=np.int64)
        np.add.at(cumulative, (np.arange(total) + 1, codes), 1)
        cumulative = cumulative.cumsum(axis=0)
        counts = cumulative[starts + length] - cumulative[starts]  # (windows, values)
        if self.label_mode == "majority":
            labels = values[counts.argmax(axis=1)]
        elif self.label_mode == "last":
            labels = per_sample[starts + length - 1]
        else:
            labels = per_sample[starts + length // 2]
        keep = labels >= 0
        if self.drop_mixed_windows:
            keep &= counts.max(axis=1) == length
        return starts[keep], labels[keep].astype(np.int64)

    def _build_windows(self) -> None:
        recordings = self.recordings
        shapes = {r.signal.shape[1:] for r in recordings}
        if len(shapes) > 1:
            raise self.error(f"recordings differ in channel shape: {sorted(shapes)}", self.data_dir)
        if self.window_length is None:
            lengths = {r.num_samples for r in recordings}
            if len(lengths) > 1:
                raise self.error(f"window_length: null takes each recording as one window, but the recordings "
                                 f"have {len(lengths)} different lengths ({min(lengths)}..{max(lengths)} samples): "
                                 f"give window_length", self.data_dir)
        self.offsets = np.concatenate([[0], np.cumsum([r.num_samples for r in recordings])]).astype(np.int64)
        starts, labels, owners, local = [], [], [], []
        for index, recording in enumerate(recordings):
            rec_starts, rec_labels = self._window_recording(recording)
            starts.append(rec_starts + self.offsets[index])
            local.append(rec_starts)
            labels.append(rec_labels)
            owners.append(np.full(len(rec_starts), index, dtype=np.int64))
        self.window_starts = np.concatenate(starts)
        self.window_offsets = np.concatenate(local)
        self.window_labels = np.concatenate(labels)
        self.window_recording = np.concatenate(owners)
        self.length = self.window_length or recordings[0].num_samples
        if len(self.window_starts) == 0:
            raise self.error(f"no labelled window of {self.length} samples in {len(recordings)} recordings",
                             self.data_dir)
        if self.classes and self.window_labels.max() >= len(self.classes):
            raise self.error(f"label {int(self.window_labels.max())} outside the {len(self.classes)} classes "
                             f"{list(self.classes)}", self.data_dir)
        subject = np.array([r.subject for r in recordings], dtype=object)
        trial = np.array([r.trial for r in recordings], dtype=object)
        self.window_subject = subject[self.window_recording]
        self.window_trial = trial[self.window_recording]

    # ---- splits ----
    def _stratify(self, indices: np.ndarray, fraction: float) -> Optional[np.ndarray]:
        labels = self.window_labels[indices]
        values, counts = np.unique(labels, return_counts=True)
        if len(values) < 2 or counts.min() < 2 or min(fraction, 1 - fraction) * len(indices) < len(values):
            return None
        return labels

    def _window_holdout(self, indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        train, test = holdout_split(len(indices), fraction, self.split_seed, stratify=self._stratify(indices, fraction))
        return indices[np.sort(train)], indices[np.sort(test)]

    def _subject_holdout(self, indices: np.ndarray, fraction: float,
                         held_out: Optional[Sequence[str]] = None) -> tuple[np.ndarray, np.ndarray]:
        return self._group_holdout(indices, fraction, self.window_subject, held_out, "subject")

    def _group_holdout(self, indices: np.ndarray, fraction: float, keys: np.ndarray,
                       held_out: Optional[Sequence[str]] = None, what: str = "group") -> tuple[np.ndarray, np.ndarray]:
        """(kept, held out) windows of ``indices``: every window whose ``keys`` value is held out (``held_out``,
        or a seeded ``fraction`` of the values among ``indices``, at least one, never all)."""
        values = keys[indices]
        unique = sorted(set(values))
        if held_out is None:
            if len(unique) < 2:
                raise self.error(f"a {what} split needs at least 2 {what} values, found {len(unique)}", self.data_dir)
            count = min(len(unique) - 1, max(1, int(round(fraction * len(unique)))))
            order = np.random.default_rng(self.split_seed).permutation(len(unique))
            held_out = [unique[i] for i in order[:count]]
        missing = sorted(set(held_out) - set(unique))
        if missing:
            raise self.error(f"held-out {what} values {missing} not among {unique}", self.data_dir)
        mask = np.isin(values, list(held_out))
        return indices[~mask], indices[mask]

    def recording_key(self, key: str) -> np.ndarray:
        """Per window: its recording's ``key`` ("subject", "trial", "name" or a key of ``Recording.extra``), as str."""
        if key in ("subject", "trial"):
            return self.window_subject if key == "subject" else self.window_trial
        if key == "name":
            per_recording = self.recording_names
        else:
            absent = [r.name for r in self.recordings if key not in r.extra]
            if absent:
                raise self.error(f"split_key {key!r}: recordings {absent[:3]} have no such key (subject, trial, name "
                                 f"or a key of Recording.extra)", self.data_dir)
            per_recording = [str(r.extra[key]) for r in self.recordings]
        return np.array(per_recording, dtype=object)[self.window_recording]

    def make_splits(self) -> dict[str, np.ndarray]:
        """{"train", "val", "test"}: sorted window indices (override for a dataset's own protocol)."""
        everything = np.arange(len(self.window_starts))
        if self.split == "random":
            train, test = self._window_holdout(everything, self.test_size)
        elif self.split == "kfold":
            train, test = (np.asarray(i, dtype=np.int64) for i in
                           kfold_split(self.window_labels, self.folds, self.fold, self.split_seed))
        elif self.split == "subject":
            train, test = self._subject_holdout(everything, self.test_size, self.test_subjects)
        elif self.split == "subject_kfold":
            train, test = (np.asarray(i, dtype=np.int64) for i in
                           group_kfold_split(self.window_subject.tolist(), self.folds, self.fold,
                                             random_state=self.split_seed))
        elif self.split == "loso":
            unique = sorted(set(self.window_subject))
            if not 0 <= self.fold < len(unique):
                raise ValueError(f"split: loso has {len(unique)} folds (one per subject), got fold {self.fold}")
            train, test = (np.asarray(i, dtype=np.int64) for i in
                           leave_one_group_out(self.window_subject.tolist(), unique[self.fold]))
        elif self.split == "trial":
            mask = np.isin(self.window_trial, self.test_trials)
            if not mask.any():
                raise self.error(f"no window in test_trials {self.test_trials} (trials: "
                                 f"{sorted(set(self.window_trial))})", self.data_dir)
            train, test = everything[~mask], everything[mask]
        elif self.split == "group":
            train, test = self._group_holdout(everything, self.test_size, self.recording_key(self.split_key),
                                              self.test_groups, self.split_key)
        else:
            partition = np.array([r.partition for r in self.recordings])[self.window_recording]
            if not set(partition) <= {"train", "test"}:
                raise self.error("split: predefined needs every recording's partition ('train' or 'test')",
                                 self.data_dir)
            train, test = everything[partition == "train"], everything[partition == "test"]
        val = test
        if self.val_fraction > 0:
            by_subject = self.val_by == "subject" or (self.val_by is None and self.split in SUBJECT_SPLITS)
            if by_subject and len(set(self.window_subject[train])) >= 2:
                train, val = self._subject_holdout(train, self.val_fraction)
            else:
                train, val = self._window_holdout(train, self.val_fraction)
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    # ---- normalisation ----
    def _training_mask(self) -> np.ndarray:
        """Per concatenated sample: covered by a training window."""
        total = int(self.offsets[-1])
        delta = np.zeros(total + 1, dtype=np.int64)
        starts = self.window_starts[self.split_indices["train"]]
        np.add.at(delta, starts, 1)
        np.add.at(delta, starts + self.length, -1)
        return delta.cumsum()[:total] > 0

    def _normalised_signal(self) -> np.ndarray:
        data = np.concatenate([r.signal for r in self.recordings], axis=0)
        if self.normalization == "zscore":
            train = data[self._training_mask()]
            self.mean = train.mean(axis=0, dtype=np.float64).astype(np.float32)
            self.std = train.std(axis=0, dtype=np.float64).astype(np.float32)
            data = (data - self.mean) / np.maximum(self.std, 1e-8)
        elif self.normalization == "recording":
            for start, stop in zip(self.offsets[:-1], self.offsets[1:]):
                part = data[start:stop]
                data[start:stop] = (part - part.mean(axis=0)) / np.maximum(part.std(axis=0), 1e-8)
        return np.ascontiguousarray(data, dtype=np.float32)

    # ---- datasets ----
    def make_dataset(self, indices: np.ndarray) -> TimeSeriesWindows:
        names = [self.recording_names[r] for r in self.window_recording[indices]]
        return TimeSeriesWindows(self.data, self.window_starts[indices], self.length, self.window_labels[indices],
                                 self.window_group[indices], names, self.window_offsets[indices],
                                 channels_first=self.signal_layout == "channels_first")

    # ---- Lightning hooks ----
    def prepare_data(self) -> None:
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise self.error("dataset folder not found", self.data_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.recordings:
            return
        self.prepare_data()
        recordings = list(self.list_recordings())
        if self.subjects is not None:
            recordings = [r for r in recordings if r.subject in self.subjects]
        if not recordings:
            raise self.error("found no recordings" + (f" of subjects {self.subjects}" if self.subjects else ""),
                             self.data_dir)
        self.recordings = recordings
        self.recording_names = [r.name or f"rec{i}" for i, r in enumerate(recordings)]
        self._build_windows()
        key = {"subject": self.window_subject, "trial": self.window_trial,
               "recording": np.array(self.recording_names, dtype=object)[self.window_recording]}[self.group_by]
        self.group_names = sorted(set(key.tolist()))
        lookup = {name: i for i, name in enumerate(self.group_names)}
        self.window_group = np.array([lookup[k] for k in key.tolist()], dtype=np.int64)
        self.split_indices = self.make_splits()
        for split in ("train", "val", "test"):
            if len(self.split_indices[split]) == 0:
                raise self.error(f"the {split} split is empty ({len(self.window_starts)} windows, "
                                 f"split={self.split!r})", self.data_dir)
        train_classes = set(self.window_labels[self.split_indices["train"]].tolist())
        if len(train_classes) < self.num_classes:
            warnings.warn(f"{type(self).__name__}: the training split lacks classes "
                          f"{sorted(set(range(self.num_classes)) - train_classes)}", stacklevel=2)
        self.data = torch.from_numpy(self._normalised_signal())
        self.train_set = self.make_dataset(self.split_indices["train"])
        self.val_set = self.make_dataset(self.split_indices["val"])
        self.test_set = self.make_dataset(self.split_indices["test"])
        self.predict_set = self.test_set


class ArrayTimeSeriesDataModule(TimeSeriesDataModule):
    """Recordings handed over in memory (tests, notebooks): ``recordings`` is a list of ``Recording``."""

    def __init__(self, recordings: Sequence[Recording], classes: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self._given = list(recordings)
        if classes:
            self.classes = tuple(classes)

    def list_recordings(self) -> list[Recording]:
        return self._given
