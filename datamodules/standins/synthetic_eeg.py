"""Offline stand-in for SEED-IV (ConTL): synthetic raw EEG pushed through the real DE pipeline.

Each trial is ``n_windows`` seconds of ``n_channels``-channel Gaussian EEG at ``sample_rate`` Hz, drawn in the
frequency domain (random phases) with a 1/f power spectrum. Its emotion class (the SEED-IV session label lists,
so the 1-16 / 17-24 trial split has every class) scales the band power on its own block of ``block`` adjacent
channels (adjacent in the flattened channel-major order, so ConTL's k=4 convolutions see them):

- neutral: alpha up; sad: theta up, alpha down; fear: beta up; happy: gamma up (power x ``effect`` / ÷ ``effect``).

Nuisances: a per-subject channel gain (log-normal, sd ``subject_sd``), a per-trial channel gain (sd ``trial_sd``)
and a slow amplitude drift across the windows of a trial (a sinusoid of period ~the trial, depth ``drift``).
The windows then go through ``datamodules.eeg_features.differential_entropy`` (the paper's 256-point STFT, 1 s
Hann windows, five bands) exactly as ``feature: raw`` does on the real data.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from datamodules.eeg_features import BANDS
from datamodules.seed_eeg import SEED_IV_CLASSES, SEED_IV_LABELS, EEGFeatureDataModule, EEGTrial

#: per class: the band power factors' exponents (+1 = x effect, -1 = / effect), bands delta..gamma.
CLASS_PATTERNS = np.array([[0, 0, 1, 0, 0],     # neutral: alpha up
                           [0, 1, -1, 0, 0],    # sad: theta up, alpha down
                           [0, 0, 0, 1, 0],     # fear: beta up
                           [0, 0, 0, 0, 1]],    # happy: gamma up
                          dtype=np.float64)


def synthetic_trial(label: int, subject_gain: np.ndarray, rng: np.random.Generator, n_windows: int = 20,
                    sample_rate: float = 200.0, block: int = 12, effect: float = 1.6, trial_sd: float = 0.2,
                    drift: float = 0.3) -> np.ndarray:
    """One trial's raw EEG (channels, n_windows * sample_rate), float64."""
    n_channels = len(subject_gain)
    T = int(n_windows * sample_rate)
    freqs = np.fft.rfftfreq(T, 1 / sample_rate)
    amplitude = 1 / np.sqrt(np.maximum(freqs, 0.5))  # 1/f power
    gain = np.ones((n_channels, len(freqs)))
    start = block * label
    for b, (lo, hi) in enumerate(BANDS.values()):
        in_band = (freqs >= lo - 0.5) & (freqs < hi + 0.5)
        gain[start:start + block, in_band] *= np.sqrt(effect ** CLASS_PATTERNS[label, b])
    spectrum = (rng.standard_normal((n_channels, len(freqs))) + 1j * rng.standard_normal((n_channels, len(freqs))))
    x = np.fft.irfft(spectrum * amplitude * gain, n=T, axis=-1)
    x /= x.std(axis=-1, keepdims=True).mean()
    channel_gain = subject_gain * np.exp(trial_sd * rng.standard_normal(n_channels))
    t = np.arange(T) / sample_rate
    period = n_windows * rng.uniform(0.8, 1.5)
    envelope = 1 + drift * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi, size=(n_channels, 1)))
    return x * channel_gain[:, None] * envelope


class SyntheticSEEDIVDataModule(EEGFeatureDataModule):
    """SEED-IV-shaped stand-in: subjects x 3 sessions x 24 trials (SEED-IV labels), DE from synthetic raw EEG.

    Args:
        n_subjects, n_sessions, n_trials, n_windows, n_channels, block, effect, subject_sd, trial_sd, drift, seed:
            the generator (see the module doc).
        Other arguments: ``EEGFeatureDataModule``'s (split, subject, val_fraction, normalization, ...);
        ``feature`` is always ``raw``.
    """

    classes = SEED_IV_CLASSES
    n_trials = 24
    default_train_trials = tuple(range(1, 17))
    default_test_trials = tuple(range(17, 25))

    def __init__(self, n_subjects: int = 3, n_sessions: int = 3, n_windows: int = 20, n_channels: int = 62,
                 block: int = 12, effect: float = 1.6, subject_sd: float = 0.3, trial_sd: float = 0.2,
                 drift: float = 0.3, seed: int = 0, **kwargs: Any):
        kwargs.setdefault("feature", "raw")
        super().__init__(**kwargs)
        if block * len(self.classes) > n_channels:
            raise ValueError(f"{len(self.classes)} class blocks of {block} channels need >= {block * 4} channels")
        if not 1 <= n_sessions <= 3:
            raise ValueError("n_sessions must be 1..3 (the SEED-IV session label lists)")
        self.n_subjects, self.n_sessions, self.n_windows, self.n_channels = n_subjects, n_sessions, n_windows, n_channels
        self.block, self.effect, self.subject_sd, self.trial_sd, self.drift = block, effect, subject_sd, trial_sd, drift
        self.seed = seed

    def load_trials(self) -> list[EEGTrial]:
        rng = np.random.default_rng(self.seed)
        trials = []
        for s in range(1, self.n_subjects + 1):
            subject_gain = np.exp(self.subject_sd * rng.standard_normal(self.n_channels))
            for session in range(1, self.n_sessions + 1):
                for trial, label in enumerate(SEED_IV_LABELS[session], start=1):
                    eeg = synthetic_trial(label, subject_gain, rng, self.n_windows, self.sample_rate, self.block,
                                          self.effect, self.trial_sd, self.drift)
                    trials.append(EEGTrial(str(s), session, trial, label, self.raw_to_features(eeg)))
        return trials
