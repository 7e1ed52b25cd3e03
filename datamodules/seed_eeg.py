"""SEED and SEED-IV (BCMI, SJTU) as differential-entropy feature windows: ConTL's input.

A sample is one window of one trial: its DE features (channels, bands) = (62, 5); ConTL flattens them
channel-major to 310 (the code's ``transpose`` + ``reshape``). Batches: ``signal`` float32 (62, 5), ``label``
int64, ``group`` int64 (the subject's index in sorted subject order), ``name`` ("<subject>_s<session>_t<trial>_w<i>").

Feature sources (``feature``):
- a released feature key prefix, ``de_LDS`` (default, the official ConTL code), ``de_movingAve``, ``psd_LDS``...:
  keys ``<feature><trial>`` of shape (62, n_windows, 5) in SEED ``ExtractedFeatures/`` or SEED-IV
  ``eeg_feature_smooth/<session>/``;
- ``raw``: DE recomputed from the preprocessed/raw EEG (``datamodules.eeg_features``: the paper's 256-point STFT,
  1 s Hann windows, bands 1-3/4-7/8-13/14-30/31-50 Hz), optionally LDS-smoothed (``lds: true``).

Splits (``split``):
- ``trial``: subject-dependent. ``train_trials`` / ``test_trials`` (1-based trial numbers; SEED-IV: 1-16 / 17-24,
  SEED: 1-9 / 10-15) within the chosen ``subject`` (None pools every subject, still by trial), sessions pooled;
- ``loso``: cross-subject, leave-one-subject-out: subject number ``fold`` (0-based, sorted order) is the test set.
Then ``val_fraction`` (0.3) of the training windows is the validation set (``train_test_split(test_size=0.3,
random_state=7)``, the code). ``normalization="band"`` z-scores each band with the mean/std over all training
windows and channels (5 means, 5 stds), applied to validation and test.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import scipy.io
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from datamodules.base import BaseDataModule, DatasetError
from datamodules.eeg_features import differential_entropy, lds_smooth
from lightning_modules.batch import GROUP, LABEL, NAME, SIGNAL

#: SEED-IV trial labels per session (ReadMe; 0 neutral, 1 sad, 2 fear, 3 happy), as the ConTL code lists them.
SEED_IV_LABELS: dict[int, tuple[int, ...]] = {
    1: (1, 2, 3, 0, 2, 0, 0, 1, 0, 1, 2, 1, 1, 1, 2, 3, 2, 2, 3, 3, 0, 3, 0, 3),
    2: (2, 1, 3, 0, 0, 2, 0, 2, 3, 3, 2, 3, 2, 0, 1, 1, 2, 1, 0, 3, 0, 1, 3, 1),
    3: (1, 2, 2, 1, 3, 3, 3, 1, 1, 2, 1, 0, 2, 3, 3, 0, 2, 3, 0, 0, 2, 0, 1, 0),
}
SEED_IV_CLASSES = ("neutral", "sad", "fear", "happy")
SEED_CLASSES = ("negative", "neutral", "positive")  # label.mat's -1, 0, 1 shifted by +1
_FILE_RE = re.compile(r"^(\d+)_(\d{8})\.mat$")


@dataclass
class EEGTrial:
    """One trial's windows: ``features`` (n_windows, channels, bands) float32."""
    subject: str
    session: int
    trial: int  # 1-based
    label: int
    features: np.ndarray


class _WindowDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str]):
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(y.astype(np.int64))
        self.groups = torch.from_numpy(groups.astype(np.int64))
        self.names = names

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {SIGNAL: self.x[i], LABEL: self.y[i], GROUP: self.groups[i], NAME: self.names[i]}


def load_mat(path: Path, layout: str, standin: str) -> dict:
    """``scipy.io.loadmat`` with the project's error on a missing or unreadable file."""
    if not path.is_file():
        raise DatasetError("Missing file", path=path, layout=layout, standin_config=standin)
    try:
        return scipy.io.loadmat(str(path))
    except Exception as error:  # MatReadError, v7.3 (HDF5) NotImplementedError, truncated files
        raise DatasetError(f"Unreadable .mat file ({type(error).__name__}: {error})", path=path, layout=layout,
                           standin_config=standin) from error


def _trial_key(mat: dict, prefix: str, trial: int, path: Path, layout: str, standin: str) -> np.ndarray:
    key = f"{prefix}{trial}"
    if key not in mat:
        raise DatasetError(f"No array {key!r} in the .mat file", path=path, layout=layout, standin_config=standin)
    return np.asarray(mat[key])


def _raw_prefix(mat: dict, n_trials: int, path: Path, layout: str, standin: str) -> str:
    """The subject's key prefix of the raw EEG arrays (``djc_eeg1`` -> ``djc_eeg``)."""
    for key in mat:
        match = re.fullmatch(r"(.+_eeg)1", key)
        if match:
            return match.group(1)
    raise DatasetError(f"No raw EEG arrays '<prefix>_eeg1..{n_trials}' in the .mat file", path=path, layout=layout,
                       standin_config=standin)


class EEGFeatureDataModule(BaseDataModule):
    """DE-feature windows of trials, with ConTL's splits and band z-scoring. Subclasses list the trials.

    Args:
        data_dir: the dataset root.
        feature: the released feature key prefix (``de_LDS``...) or ``raw`` (recompute DE from the EEG).
        sample_rate, window_s, de_method, lds: the ``raw`` pipeline (``datamodules.eeg_features``).
        subject: subject-dependent runs: the subject id (its file-name number, e.g. 1) or None for all.
        sessions: the sessions used (None: all).
        split: ``trial`` or ``loso``; ``fold``: the held-out subject's index for ``loso``.
        train_trials, test_trials: 1-based trial numbers of the ``trial`` split (None: the dataset's default).
        val_fraction, val_seed: the validation share of the training windows (the code: 0.3, random_state 7).
        normalization: ``band`` (z-score per band from the training windows) or ``none``.
        resize_to: cyclically repeat each flattened sample to this length (``np.resize``; DEAP 160 -> 310), None: off.
        shuffle_train: shuffle the training loader (the code: False).
    """

    layout: str = ""
    standin_config: str = ""
    classes: tuple[str, ...] = ()
    n_trials: int = 0
    default_train_trials: tuple[int, ...] = ()
    default_test_trials: tuple[int, ...] = ()
    splits: tuple[str, ...] = ("trial", "loso")

    def __init__(self, data_dir: str = "", feature: str = "de_LDS", sample_rate: float = 200.0,
                 window_s: float = 1.0, de_method: Literal["stft", "bandpass"] = "stft", lds: bool = False,
                 subject: Optional[Union[int, str]] = None, sessions: Optional[list[int]] = None,
                 split: str = "trial", fold: int = 0,
                 train_trials: Optional[list[int]] = None, test_trials: Optional[list[int]] = None,
                 val_fraction: float = 0.3, val_seed: int = 7, normalization: Literal["band", "none"] = "band",
                 resize_to: Optional[int] = None, shuffle_train: bool = False, batch_size: int = 128,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        if normalization not in ("band", "none"):
            raise ValueError(f"normalization must be 'band' or 'none', got {normalization!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.data_dir = Path(data_dir)
        self.feature, self.sample_rate, self.window_s, self.de_method, self.lds = (
            feature, sample_rate, window_s, de_method, lds)
        self.subject = None if subject is None else str(subject)
        self.sessions = None if sessions is None else [int(s) for s in sessions]
        self.split, self.fold = split, fold
        self.train_trials = tuple(train_trials or self.default_train_trials)
        self.test_trials = tuple(test_trials or self.default_test_trials)
        self.val_fraction, self.val_seed = val_fraction, val_seed
        self.normalization, self.resize_to, self.shuffle_train = normalization, resize_to, shuffle_train
        self.num_classes = len(self.classes)
        self.band_mean: Optional[np.ndarray] = None
        self.band_std: Optional[np.ndarray] = None

    # -- subclass hook -------------------------------------------------------------------------------
    def load_trials(self) -> list[EEGTrial]:
        raise NotImplementedError

    def error(self, problem: str, path: Optional[Path] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config)

    def raw_to_features(self, eeg: np.ndarray) -> np.ndarray:
        """Raw trial EEG (channels, T) -> DE windows (n_windows, channels, bands)."""
        de = differential_entropy(eeg, self.sample_rate, window_s=self.window_s, method=self.de_method)
        if self.lds:
            de = lds_smooth(de, axis=1)
        return de.transpose(1, 0, 2)

    # -- splits --------------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        trials = self.load_trials()
        if not trials:
            raise self.error("No trials found", self.data_dir)
        subjects = sorted({t.subject for t in trials}, key=lambda s: (len(s), s))
        self.subjects = subjects
        if self.sessions is not None:
            trials = [t for t in trials if t.session in self.sessions]
        train, test = self.split_trials(trials, subjects)
        if not train or not test:
            raise self.error(f"The {self.split} split left an empty train or test set "
                             f"({len(train)} / {len(test)} trials)", self.data_dir)
        index = {s: i for i, s in enumerate(subjects)}
        x_tr, y_tr, g_tr, n_tr = self._stack(train, index)
        x_te, y_te, g_te, n_te = self._stack(test, index)
        if self.val_fraction > 0:
            idx_tr, idx_va = train_test_split(np.arange(len(y_tr)), test_size=self.val_fraction,
                                              random_state=self.val_seed)
        else:
            idx_tr, idx_va = np.arange(len(y_tr)), np.arange(0)
        x_va, y_va, g_va, n_va = x_tr[idx_va], y_tr[idx_va], g_tr[idx_va], [n_tr[i] for i in idx_va]
        x_tr, y_tr, g_tr, n_tr = x_tr[idx_tr], y_tr[idx_tr], g_tr[idx_tr], [n_tr[i] for i in idx_tr]
        if self.normalization == "band":
            self.band_mean = x_tr.mean(axis=(0, 1), keepdims=True)
            self.band_std = x_tr.std(axis=(0, 1), keepdims=True) + 1e-8
            x_tr, x_va, x_te = ((x - self.band_mean) / self.band_std for x in (x_tr, x_va, x_te))
        self.train_set = self._dataset(x_tr, y_tr, g_tr, n_tr)
        self.val_set = self._dataset(x_va if len(y_va) else x_tr, y_va if len(y_va) else y_tr,
                                     g_va if len(y_va) else g_tr, n_va if len(y_va) else n_tr)
        self.test_set = self._dataset(x_te, y_te, g_te, n_te)
        self._train_labels = y_tr

    def split_trials(self, trials: list[EEGTrial], subjects: list[str]) -> tuple[list[EEGTrial], list[EEGTrial]]:
        """(train, test) trials of ``split``: by trial number within ``subject`` (``trial``) or one subject out."""
        if self.split == "loso":
            if not 0 <= self.fold < len(subjects):
                raise ValueError(f"fold {self.fold} out of range for {len(subjects)} subjects")
            held_out = subjects[self.fold]
            return [t for t in trials if t.subject != held_out], [t for t in trials if t.subject == held_out]
        trials = self.subject_trials(trials, subjects)
        return [t for t in trials if t.trial in self.train_trials], [t for t in trials if t.trial in self.test_trials]

    def subject_trials(self, trials: list[EEGTrial], subjects: list[str]) -> list[EEGTrial]:
        if self.subject is None:
            return trials
        if self.subject not in subjects:
            raise self.error(f"Subject {self.subject!r} not in the data (subjects: {subjects})", self.data_dir)
        return [t for t in trials if t.subject == self.subject]

    def _stack(self, trials: Sequence[EEGTrial], index: dict[str, int]):
        xs, ys, gs, names = [], [], [], []
        for t in trials:
            n = len(t.features)
            xs.append(t.features.astype(np.float32))
            ys.append(np.full(n, t.label))
            gs.append(np.full(n, index[t.subject]))
            names += [f"{t.subject}_s{t.session}_t{t.trial}_w{i}" for i in range(n)]
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), names

    def _dataset(self, x, y, g, names) -> _WindowDataset:
        if self.resize_to is not None:
            x = np.stack([np.resize(v.reshape(-1), self.resize_to) for v in x]) if len(x) else \
                np.zeros((0, self.resize_to), np.float32)
        return _WindowDataset(x, y, g, names)

    @property
    def class_counts(self) -> list[int]:
        return np.bincount(self._train_labels, minlength=self.num_classes).tolist()

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set, "train")
        return self._loader(dataset, self.batch_size, shuffle=self.shuffle_train, sampler=None)


class SEEDIVDataModule(EEGFeatureDataModule):
    """SEED-IV: 15 subjects x 3 sessions x 24 film-clip trials, 62 channels, 4 classes (neutral/sad/fear/happy)."""

    layout = """SEED_IV/
  eeg_feature_smooth/{1,2,3}/<subject>_<YYYYMMDD>.mat   folder = session; keys de_LDS1..de_LDS24 (also
                                                       de_movingAve*, psd_*), each (62, n_windows, 5)
  eeg_raw_data/{1,2,3}/<subject>_<YYYYMMDD>.mat         (feature: raw) keys <prefix>_eeg1..24, each (62, T)
  trial labels per session: the ReadMe's lists (datamodules.seed_eeg.SEED_IV_LABELS)"""
    standin_config = "experiments/contl_demo.yaml"
    classes = SEED_IV_CLASSES
    n_trials = 24
    default_train_trials = tuple(range(1, 17))
    default_test_trials = tuple(range(17, 25))

    def load_trials(self) -> list[EEGTrial]:
        folder = self.data_dir / ("eeg_raw_data" if self.feature == "raw" else "eeg_feature_smooth")
        if not folder.is_dir():
            raise self.error("Missing folder", folder)
        trials = []
        for session in (1, 2, 3):
            session_dir = folder / str(session)
            if not session_dir.is_dir():
                raise self.error("Missing session folder", session_dir)
            files = sorted(p for p in session_dir.iterdir() if _FILE_RE.match(p.name))
            if not files:
                raise self.error("No <subject>_<date>.mat files in the session folder", session_dir)
            for path in files:
                subject = _FILE_RE.match(path.name).group(1)
                if self.subject is not None and self.split == "trial" and subject != self.subject:
                    continue  # subject-dependent: read only the subject's files
                mat = load_mat(path, self.layout, self.standin_config)
                prefix = _raw_prefix(mat, 24, path, self.layout, self.standin_config) if self.feature == "raw" \
                    else self.feature
                for trial in range(1, self.n_trials + 1):
                    array = _trial_key(mat, prefix, trial, path, self.layout, self.standin_config)
                    trials.append(EEGTrial(subject, session, trial, SEED_IV_LABELS[session][trial - 1],
                                           self._features(array, path, f"{prefix}{trial}")))
        return trials

    def _features(self, array: np.ndarray, path: Path, key: str) -> np.ndarray:
        if self.feature == "raw":
            if array.ndim != 2:
                raise self.error(f"{key} should be (channels, samples), got {array.shape}", path)
            return self.raw_to_features(array)
        if array.ndim != 3 or array.shape[-1] != 5:
            raise self.error(f"{key} should be (channels, n_windows, 5), got {array.shape}", path)
        return array.transpose(1, 0, 2).astype(np.float32)


class SEEDDataModule(SEEDIVDataModule):
    """SEED: 15 subjects x 3 sessions x 15 film-clip trials, 62 channels at 200 Hz, 3 classes
    (negative/neutral/positive). A subject's sessions are its three files in date order."""

    layout = """SEED/
  ExtractedFeatures/<subject>_<YYYYMMDD>.mat    keys de_LDS1..de_LDS15 (also de_movingAve*, psd_*), each (62, n, 5)
  ExtractedFeatures/label.mat                   key label: (1, 15) of -1 / 0 / 1
  Preprocessed_EEG/<subject>_<YYYYMMDD>.mat     (feature: raw) keys <prefix>_eeg1..15, each (62, T) at 200 Hz
  Preprocessed_EEG/label.mat"""
    classes = SEED_CLASSES
    n_trials = 15
    default_train_trials = tuple(range(1, 10))
    default_test_trials = tuple(range(10, 16))

    def load_trials(self) -> list[EEGTrial]:
        folder = self.data_dir / ("Preprocessed_EEG" if self.feature == "raw" else "ExtractedFeatures")
        if not folder.is_dir():
            raise self.error("Missing folder", folder)
        label_mat = load_mat(folder / "label.mat", self.layout, self.standin_config)
        if "label" not in label_mat or np.asarray(label_mat["label"]).size != self.n_trials:
            raise self.error("label.mat needs a 'label' array of 15 values in {-1, 0, 1}", folder / "label.mat")
        labels = np.asarray(label_mat["label"]).reshape(-1).astype(int) + 1
        files = sorted(p for p in folder.iterdir() if _FILE_RE.match(p.name))
        if not files:
            raise self.error("No <subject>_<date>.mat files", folder)
        by_subject: dict[str, list[Path]] = {}
        for path in files:
            by_subject.setdefault(_FILE_RE.match(path.name).group(1), []).append(path)
        trials = []
        for subject, paths in by_subject.items():
            if self.subject is not None and self.split == "trial" and subject != self.subject:
                continue
            for session, path in enumerate(sorted(paths, key=lambda p: _FILE_RE.match(p.name).group(2)), start=1):
                mat = load_mat(path, self.layout, self.standin_config)
                prefix = _raw_prefix(mat, 15, path, self.layout, self.standin_config) if self.feature == "raw" \
                    else self.feature
                for trial in range(1, self.n_trials + 1):
                    array = _trial_key(mat, prefix, trial, path, self.layout, self.standin_config)
                    trials.append(EEGTrial(subject, session, trial, int(labels[trial - 1]),
                                           self._features(array, path, f"{prefix}{trial}")))
        return trials


# ---- Raw 2-s windows of the preprocessed EEG (Coglier: DE / PSD per window, TSception on raw windows) ------------
from datamodules.eeg_emotion import EEGEmotionWindowsDataModule  # noqa: E402
from datamodules.eeg_features import SEED_CHANNELS, SEED_GRID  # noqa: E402
from datamodules.timeseries import Recording  # noqa: E402


class SEEDRawWindowsDataModule(EEGEmotionWindowsDataModule):
    """SEED's ``Preprocessed_EEG`` trials (62 channels, 200 Hz) as 2-s windows (400 samples every 200: 3,379 per
    session, 152,055 in all), 3 classes; a subject's three files are its sessions in date order. Inputs, splits and
    the Coglier stages: ``datamodules.eeg_emotion``."""

    layout = """SEED/
  Preprocessed_EEG/<subject>_<YYYYMMDD>.mat   keys <initials>_eeg1..15, each (62, T) at 200 Hz (three files per subject)
  Preprocessed_EEG/label.mat                  key label: (1, 15) of -1 / 0 / 1"""
    standin_config = "experiments/coglier_demo.yaml"
    classes = SEED_CLASSES
    channels = SEED_CHANNELS
    grid = SEED_GRID
    default_sample_rate = 200.0
    n_trials = 15
    folder = "Preprocessed_EEG"

    def __init__(self, data_dir: str = "", window_length: float = 400, window_step: float = 200, **kwargs: Any):
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step, **kwargs)

    def session_files(self) -> list[tuple[str, int, Path]]:
        """(subject, session, file) of every subject file."""
        folder = self.require_dir(self.data_dir / self.folder, "Preprocessed_EEG folder")
        files = sorted(p for p in folder.iterdir() if _FILE_RE.match(p.name))
        if not files:
            raise self.error("no <subject>_<date>.mat files", folder)
        by_subject: dict[str, list[Path]] = {}
        for path in files:
            by_subject.setdefault(_FILE_RE.match(path.name).group(1), []).append(path)
        return [(subject, session, path) for subject, paths in by_subject.items()
                for session, path in enumerate(sorted(paths, key=lambda p: _FILE_RE.match(p.name).group(2)), 1)]

    def trial_labels(self, session: int) -> Sequence[int]:
        path = self.data_dir / self.folder / "label.mat"
        mat = load_mat(path, self.layout, self.standin_config)
        if "label" not in mat or np.asarray(mat["label"]).size != self.n_trials:
            raise self.error("label.mat needs a 'label' array of 15 values in {-1, 0, 1}", path)
        return (np.asarray(mat["label"]).reshape(-1).astype(int) + 1).tolist()

    def list_recordings(self) -> list[Recording]:
        recordings = []
        for subject, session, path in self.session_files():
            if self.subjects is not None and subject not in self.subjects:
                continue  # subject-dependent runs read only their subject's files
            labels = self.trial_labels(session)
            mat = load_mat(path, self.layout, self.standin_config)
            prefix = _raw_prefix(mat, self.n_trials, path, self.layout, self.standin_config)
            for trial in range(1, self.n_trials + 1):
                eeg = _trial_key(mat, prefix, trial, path, self.layout, self.standin_config)
                if eeg.ndim != 2 or eeg.shape[0] != len(self.channels):
                    raise self.error(f"{prefix}{trial} should be ({len(self.channels)} channels, samples), "
                                     f"got {eeg.shape}", path)
                recordings.append(Recording(eeg.T.astype(np.float32), int(labels[trial - 1]), subject=subject,
                                            trial=f"s{session}t{trial}", name=f"{subject}_s{session}_t{trial}"))
        return recordings


class SEEDIVRawWindowsDataModule(SEEDRawWindowsDataModule):
    """SEED-IV's ``eeg_raw_data`` (62 channels, 200 Hz; the paper says 64) as 2-s windows (150,765 in all), 4 classes
    (0 neutral, 1 sad, 2 fear, 3 happy) from the ReadMe's per-session label lists."""

    layout = """SEED_IV/
  eeg_raw_data/{1,2,3}/<subject>_<YYYYMMDD>.mat   folder = session; keys <initials>_eeg1..24, each (62, T) at 200 Hz
  trial labels per session: the ReadMe's lists (datamodules.seed_eeg.SEED_IV_LABELS)"""
    classes = SEED_IV_CLASSES
    n_trials = 24
    folder = "eeg_raw_data"

    def session_files(self) -> list[tuple[str, int, Path]]:
        folder = self.require_dir(self.data_dir / self.folder, "eeg_raw_data folder")
        found = []
        for session in (1, 2, 3):
            session_dir = self.require_dir(folder / str(session), "session folder")
            files = sorted(p for p in session_dir.iterdir() if _FILE_RE.match(p.name))
            if not files:
                raise self.error("no <subject>_<date>.mat files in the session folder", session_dir)
            found += [(_FILE_RE.match(p.name).group(1), session, p) for p in files]
        return found

    def trial_labels(self, session: int) -> Sequence[int]:
        return SEED_IV_LABELS[session]
