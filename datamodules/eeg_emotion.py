"""EEG emotion windows with DE / PSD / raw inputs and the Top-K subject-adaptive OOD protocol of Coglier (ICPR 2024).

A dataset module (``datamodules.gameemo``, ``datamodules.seed_eeg.SEEDRawWindowsDataModule`` ...) lists its raw
recordings (``Recording``: (T, channels) EEG, one label); ``TimeSeriesDataModule`` cuts the sliding windows (2 s:
GAMEEMO 256 / 128, SEED 400 / 200 samples). This base turns each window into the model's input:

- ``feature: de`` -> ``eeg_features.window_band_de`` (each window band-passed, Butterworth order 5 + lfilter;
  ``de_formula`` "code" = 0.5 log2(2 pi e std), "textbook" = 0.5 ln(2 pi e var));
  ``feature: psd`` -> ``window_band_psd`` (Hann FFT band mean power, log1p); ``feature: raw`` -> the window itself,
  z-scored per channel with training statistics (TSception);
- ``input_layout: grid`` (bands, 9, 9) for CCNN, ``channels`` (electrodes, bands) for DGCNN, ``raw`` (electrodes,
  samples) for TSception.

Splits: within each subject, ``test_size`` (10 %) of its windows is the test set and ``val_fraction`` (10 %) of the rest
the validation set, both stratified by label with ``split_seed`` 42 (the code's ``train_test_split`` per subject), so a
subject's split is the same whichever subjects are loaded. ``D_train`` below is a subject's train + validation windows.

``stage`` selects what one run trains and tests on (Algorithm 1; ``experiments/coglier/*_study.yaml`` chains them):

- ``subject``: one subject-dependent model (``subject``), its 10 % test set -> ``test/acc`` ranks the subjects;
- ``odm``: the OOD detection model. High / Low groups from the subject runs found under ``groups_from`` (a study
  folder: each ``*/config.yaml`` with ``stage: subject`` and its ``results.json``) or from ``high_subjects`` /
  ``low_subjects``: the top ``floor(top_k * N)`` subjects by accuracy (``low_count`` fixes the Low size instead, the
  code's ``--cut``). The High Group's D_train is split into train / validation / High-test (90 / 5 / 5 %, stratified);
  the Low Group's D_train is the out-of-distribution test set ``low`` (``test/low/ood_auroc`` with MSP);
- ``pooled``: every subject's D_train (training + validation) and test windows. With ``odm_checkpoint`` and
  ``threshold`` T > 0, windows whose ODM maximum softmax probability is below T are removed from D_train and
  rejected from the test set (the ID model); ``test_sets['all']`` keeps the unfiltered test set and
  ``eval_thresholds`` adds the test windows retained at each further threshold (``T085`` ...), so a baseline
  (T = 0) is also scored on the samples a refined model keeps. ``potato_z``: the Riemannian Potato baseline
  (pyriemann: Schaefer-Strimmer covariances of the raw windows, ``Potato(metric='riemann', threshold=z)`` fitted on
  D_train; flagged windows leave D_train and the test set). ``refinement`` holds the removal rate (RR) and the test
  rejection rate, which ``CoglierTask`` logs.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from datamodules.eeg_features import COGLIER_BANDS, grid_positions, to_grid, window_band_de, window_band_psd
from datamodules.splits import holdout_split
from datamodules.timeseries import TimeSeriesDataModule, TimeSeriesWindows
from lightning_modules.batch import GROUP, LABEL, NAME, SIGNAL

Feature = Literal["de", "psd", "raw"]
InputLayout = Literal["grid", "channels", "raw"]
Stage = Literal["subject", "odm", "pooled"]


class FeatureWindows(Dataset):
    """Rows ``indices`` of a precomputed (N_windows, ...) input tensor, with their labels, groups and names."""

    def __init__(self, inputs: torch.Tensor, indices: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                 names: Sequence[str]):
        self.inputs = inputs
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.groups = torch.as_tensor(np.asarray(groups, dtype=np.int64))
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return {SIGNAL: self.inputs[self.indices[i]], LABEL: self.labels[i], GROUP: self.groups[i], NAME: self.names[i]}


def rank_groups(accuracies: dict[str, float], top_k: float = 0.85,
                low_count: Optional[int] = None) -> tuple[list[str], list[str]]:
    """(High, Low) subjects: sorted by accuracy, descending (ties by subject id); High = the first
    ``floor(top_k * N)`` (at least 1, at most N - 1), or N - ``low_count``."""
    n = len(accuracies)
    if n < 2:
        raise ValueError(f"ranking needs at least 2 subjects, got {n}")
    order = sorted(accuracies, key=lambda s: (-accuracies[s], s))
    n_high = n - int(low_count) if low_count is not None else int(math.floor(top_k * n + 1e-9))
    n_high = min(max(n_high, 1), n - 1)
    return order[:n_high], order[n_high:]


def subject_accuracies(study_dir: str | Path, metric: str = "test/acc") -> dict[str, float]:
    """{subject: test accuracy} of the finished ``stage: subject`` runs in a study folder."""
    found = {}
    for config_path in sorted(Path(study_dir).glob("*/config.yaml")):
        results = config_path.parent / "results.json"
        config = yaml.safe_load(config_path.read_text()) or {}
        data = (config.get("data") or {}).get("init_args") or {}
        if data.get("stage") != "subject" or not results.is_file():
            continue
        metrics = json.loads(results.read_text()).get("metrics", {})
        if metric in metrics:
            found[str(data.get("subject"))] = float(metrics[metric])
    return found


class EEGEmotionWindowsDataModule(TimeSeriesDataModule):
    """Windows of raw EEG recordings as DE / PSD / raw inputs, with Coglier's stages (module docstring).

    Args:
        feature, input_layout: the input (module docstring); ``bands`` (Hz pairs, default the paper's theta 4-7,
            alpha 8-13, beta 14-31, gamma 32-49), ``de_formula``, ``filter_order``, ``psd_nfft`` (None: the window).
        stage, subject, groups_from, high_subjects, low_subjects, top_k, low_count, odm_checkpoint, threshold,
            eval_thresholds, potato_z, odm_val_fraction, odm_test_fraction: the protocol (module docstring).
        cache_dir: keep the computed DE / PSD features of all windows there (one .npy per setting); None: no cache.
        Other arguments: ``TimeSeriesDataModule``'s (windows, test_size, val_fraction, split_seed, batch_size ...).
    """

    #: the recordings' channel names in order and the 9 x 9 grid of the montage; set by subclasses.
    channels: tuple[str, ...] = ()
    grid: tuple[tuple[str, ...], ...] = ()

    def __init__(self, data_dir: str = "", feature: Feature = "de", input_layout: InputLayout = "grid",
                 bands: Optional[list[list[float]]] = None, de_formula: Literal["code", "textbook"] = "code",
                 filter_order: int = 5, psd_nfft: Optional[int] = None, stage: Stage = "pooled",
                 subject: Optional[str] = None, groups_from: Optional[str] = None,
                 high_subjects: Optional[list[str]] = None, low_subjects: Optional[list[str]] = None,
                 top_k: float = 0.85, low_count: Optional[int] = None, odm_checkpoint: Optional[str] = None,
                 threshold: float = 0.0, eval_thresholds: Optional[list[float]] = None,
                 potato_z: Optional[float] = None, odm_val_fraction: float = 0.05, odm_test_fraction: float = 0.05,
                 cache_dir: Optional[str] = None, window_length: Optional[float] = None,
                 window_step: Optional[float] = None, window_unit: Literal["samples", "seconds"] = "samples",
                 sample_rate: Optional[float] = None, test_size: float = 0.1, val_fraction: float = 0.1,
                 split_seed: int = 42, subjects: Optional[list[str]] = None, batch_size: int = 64,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        if feature not in ("de", "psd", "raw"):
            raise ValueError(f"feature must be 'de', 'psd' or 'raw', got {feature!r}")
        if input_layout not in ("grid", "channels", "raw"):
            raise ValueError(f"input_layout must be 'grid', 'channels' or 'raw', got {input_layout!r}")
        if (feature == "raw") != (input_layout == "raw"):
            raise ValueError(f"feature {feature!r} and input_layout {input_layout!r} do not fit: raw windows go with "
                             "input_layout raw, DE / PSD features with grid or channels")
        if stage not in ("subject", "odm", "pooled"):
            raise ValueError(f"stage must be 'subject', 'odm' or 'pooled', got {stage!r}")
        if stage == "subject" and subject is None:
            raise ValueError("stage: subject needs subject (the subject-dependent model's subject id)")
        thresholds = [threshold, *(eval_thresholds or [])]
        if any(not 0 <= t < 1 for t in thresholds):
            raise ValueError(f"thresholds must be in [0, 1), got {thresholds}")
        if stage == "subject":
            subjects = [str(subject)]
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step,
                         window_unit=window_unit, sample_rate=sample_rate,
                         normalization="zscore" if feature == "raw" else "none", signal_layout="channels_first",
                         split="random", test_size=test_size, subjects=subjects, val_fraction=val_fraction,
                         split_seed=split_seed, group_by="subject", batch_size=batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        self.feature, self.input_layout = feature, input_layout
        self.bands = [tuple(map(float, b)) for b in (bands or COGLIER_BANDS.values())]
        self.de_formula, self.filter_order, self.psd_nfft = de_formula, filter_order, psd_nfft
        self.stage, self.subject = stage, None if subject is None else str(subject)
        self.groups_from = groups_from
        self.high_subjects = None if high_subjects is None else [str(s) for s in high_subjects]
        self.low_subjects = None if low_subjects is None else [str(s) for s in low_subjects]
        self.top_k, self.low_count = top_k, low_count
        self.odm_checkpoint, self.threshold = odm_checkpoint, float(threshold)
        self.eval_thresholds = [float(t) for t in (eval_thresholds or [])]
        self.potato_z = potato_z
        self.odm_val_fraction, self.odm_test_fraction = odm_val_fraction, odm_test_fraction
        self.cache_dir = cache_dir
        self.inputs: Optional[torch.Tensor] = None
        self.refinement: dict[str, float] = {}
        self.groups: dict[str, list[str]] = {}
        self._staged = False

    # ---- splits: stratified within each subject ----
    def _window_holdout(self, indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        subjects = self.window_subject[indices]
        train, test = [], []
        for subject in sorted(set(subjects.tolist())):
            part = indices[subjects == subject]
            a, b = super()._window_holdout(part, fraction)
            train.append(a)
            test.append(b)
        return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))

    def _pooled_holdout(self, indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Stratified hold-out over the pooled windows (the ODM's High-Group split)."""
        a, b = holdout_split(len(indices), fraction, self.split_seed, stratify=self._stratify(indices, fraction))
        return np.sort(indices[a]), np.sort(indices[b])

    # ---- inputs ----
    def raw_windows(self, indices: np.ndarray) -> np.ndarray:
        """(n, channels, samples) float32 windows of the (normalised) concatenated signal."""
        rows = self.window_starts[indices][:, None] + np.arange(self.length)[None, :]
        return self.data.numpy()[rows].transpose(0, 2, 1)

    def _cache_path(self) -> Optional[Path]:
        if not self.cache_dir:
            return None
        key = json.dumps([type(self).__name__, str(self.data_dir), self.feature, self.bands, self.de_formula,
                          self.filter_order, self.psd_nfft, self.length, self.window_step, self.sample_rate,
                          self.recording_names, int(len(self.window_starts))], default=str)
        return Path(self.cache_dir) / f"{type(self).__name__}_{self.feature}_{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy"

    def compute_features(self, chunk: int = 1024) -> np.ndarray:
        """(N_windows, channels, bands) DE or PSD of every window, in chunks (cached with ``cache_dir``)."""
        path = self._cache_path()
        if path is not None and path.is_file():
            return np.load(path)
        if not self.sample_rate:
            raise ValueError("DE / PSD features need the sample rate")
        out = []
        for start in range(0, len(self.window_starts), chunk):
            windows = self.raw_windows(np.arange(start, min(start + chunk, len(self.window_starts))))
            if self.feature == "de":
                out.append(window_band_de(windows, self.sample_rate, self.bands, self.filter_order, self.de_formula))
            else:
                out.append(window_band_psd(windows, self.sample_rate, self.bands, self.psd_nfft))
        features = np.concatenate(out)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, features)
        return features

    def _model_inputs(self) -> torch.Tensor:
        features = self.compute_features()
        if self.input_layout == "grid":
            if not self.channels or not self.grid:
                raise ValueError(f"{type(self).__name__} has no electrode grid: use input_layout channels")
            features = to_grid(features, grid_positions(self.channels, self.grid))
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))

    def make_dataset(self, indices: np.ndarray) -> Dataset:
        if self.feature == "raw":
            return super().make_dataset(indices)
        if self.inputs is None:
            self.inputs = self._model_inputs()
        names = [f"{self.recording_names[r]}@{int(o)}" for r, o in
                 zip(self.window_recording[indices], self.window_offsets[indices])]
        return FeatureWindows(self.inputs, indices, self.window_labels[indices], self.window_group[indices], names)

    # ---- the stages ----
    def setup(self, stage: Optional[str] = None) -> None:
        if self._staged:
            return
        if self.stage == "odm" and self.groups_from is None and not (self.high_subjects and self.low_subjects):
            raise ValueError("stage: odm needs groups_from (a study folder with the subject runs) or "
                             "high_subjects and low_subjects")
        if (self.threshold > 0 or self.eval_thresholds) and not self.odm_checkpoint:
            raise ValueError("an MSP threshold needs odm_checkpoint (the trained OOD detection model's checkpoint: "
                             "the study's odm run, or --data.init_args.odm_checkpoint)")
        super().setup(stage)
        pool = np.sort(np.concatenate([self.split_indices["train"], self.split_indices["val"]]))
        test = self.split_indices["test"]
        self.test_sets, self.ood_test_sets = {}, {}
        if self.stage == "subject":
            train, val = self.split_indices["train"], self.split_indices["val"]
        elif self.stage == "odm":
            train, val, test = self._odm_sets(pool)
        else:
            train, val, test = self._pooled_sets(pool, test)
        self.split_indices = {"train": train, "val": val, "test": test}
        for split, indices in self.split_indices.items():
            if len(indices) == 0:
                raise self.error(f"the {split} set of stage {self.stage!r} is empty", self.data_dir)
        self.train_set, self.val_set = self.make_dataset(train), self.make_dataset(val)
        self.test_set = self.predict_set = self.make_dataset(test)
        self._staged = True

    def _groups(self) -> tuple[list[str], list[str]]:
        present = sorted(set(self.window_subject.tolist()))
        if self.high_subjects and self.low_subjects:
            high, low = self.high_subjects, self.low_subjects
        else:
            accuracies = subject_accuracies(self.groups_from)
            missing = sorted(set(present) - set(accuracies))
            if missing:
                raise self.error(f"no finished subject run (stage: subject, results.json with test/acc) for "
                                 f"subjects {missing}", Path(self.groups_from))
            high, low = rank_groups({s: accuracies[s] for s in present}, self.top_k, self.low_count)
            self.groups["accuracies"] = {s: accuracies[s] for s in present}
        unknown = sorted((set(high) | set(low)) - set(present))
        if unknown:
            raise self.error(f"High/Low subjects {unknown} are not in the data (subjects: {present})", self.data_dir)
        self.groups.update(high=list(high), low=list(low))
        return list(high), list(low)

    def _odm_sets(self, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        high, low = self._groups()
        in_high = np.isin(self.window_subject[pool], high)
        high_pool, low_pool = pool[in_high], pool[~in_high & np.isin(self.window_subject[pool], low)]
        rest, high_test = self._pooled_holdout(high_pool, self.odm_test_fraction)
        train, val = self._pooled_holdout(rest, self.odm_val_fraction / (1 - self.odm_test_fraction))
        self.ood_test_sets = {"low": self.make_dataset(low_pool)}
        self.refinement.update(n_high_subjects=float(len(high)), n_low_subjects=float(len(low)))
        return train, val, high_test

    def odm_msp(self, indices: np.ndarray) -> np.ndarray:
        """The ODM's maximum softmax probability of each window (``lightning_modules.coglier.msp``)."""
        from lightning_modules.coglier import load_classifier, msp

        if not Path(self.odm_checkpoint).is_file():
            raise self.error("ODM checkpoint not found", Path(self.odm_checkpoint))
        if not hasattr(self, "_odm"):
            self._odm = load_classifier(self.odm_checkpoint)
        return msp(self._odm, self.make_dataset(indices), batch_size=max(self.eval_batch_size, 256))

    def potato_keep(self, pool: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Riemannian Potato (pyriemann) fitted on the D_train windows' covariances: (keep pool, keep test)."""
        try:
            from pyriemann.artifact_detection import Potato
        except ImportError:  # pyriemann < 0.12
            from pyriemann.clustering import Potato
        from pyriemann.estimation import Covariances

        estimator = Covariances(estimator="sch")

        def covariances(indices: np.ndarray, chunk: int = 2048) -> np.ndarray:  # chunks: SEED's windows are 13 GB
            return np.concatenate([estimator.transform(self.raw_windows(indices[i:i + chunk]).astype(np.float64))
                                   for i in range(0, len(indices), chunk)])

        cov_pool, cov_test = covariances(pool), covariances(test)
        potato = Potato(metric="riemann", threshold=float(self.potato_z)).fit(cov_pool)
        return potato.predict(cov_pool) == 1, potato.predict(cov_test) == 1

    def _pooled_sets(self, pool: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep_pool = np.ones(len(pool), dtype=bool)
        keep_test = np.ones(len(test), dtype=bool)
        msp_test = None
        if self.potato_z is not None:
            keep_pool, keep_test = self.potato_keep(pool, test)
        if self.threshold > 0 or self.eval_thresholds:
            msp_pool, msp_test = self.odm_msp(pool), self.odm_msp(test)
            if self.threshold > 0:
                keep_pool &= msp_pool >= self.threshold
                keep_test &= msp_test >= self.threshold
        filtered = not (keep_pool.all() and keep_test.all())
        if filtered or self.eval_thresholds:
            self.test_sets["all"] = self.make_dataset(test)
        for t in self.eval_thresholds:
            retained = test[msp_test >= t]
            if len(retained):  # an empty loader would have no metrics to log
                self.test_sets[f"T{int(round(t * 100)):03d}"] = self.make_dataset(retained)
        self.refinement.update(rr=float(1 - keep_pool.mean()), test_rejection=float(1 - keep_test.mean()),
                               n_train_pool=float(keep_pool.sum()), n_test=float(keep_test.sum()))
        train, val = self._window_holdout(pool[keep_pool], self.val_fraction) if self.val_fraction > 0 else \
            (pool[keep_pool], test[keep_test])
        return train, val, test[keep_test]
