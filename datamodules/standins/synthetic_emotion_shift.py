"""Offline stand-in for Coglier (GAMEEMO-like): synthetic 14-channel raw EEG windows with concept-shifted subjects.

Each window is ``window_samples`` samples at 128 Hz of band-limited Gaussian noise in theta / alpha / beta / gamma
(drawn in the frequency domain, random phases) plus white noise. Its class scales the amplitude of each channel x
band by a class-specific gain map (entries -1 / 0 / +1 times ``class_gain``, e.g. +-30 %), each subject by its own
random gain (log-normal, sd ``subject_gain``) and noise level. Subjects ``shifted_subjects`` have a concept shift:
a ``shift_fraction`` of their windows carry a label drawn uniformly at random, and (``shifted_effect`` < 1) a
weaker class pattern (gain map times ``shifted_effect``): an unreliable self-report of a weak emotional response,
so P(Y | X) differs from the other subjects'. (A label swap alone would be invisible to the label-free MSP score.)

The windows go through the real pipeline of ``datamodules.eeg_emotion`` (DE / PSD per window, 9 x 9 GAMEEMO grid,
or raw windows), with the same stages as GAMEEMO. Each window is its own recording (non-overlapping), named
``S<subject>c<class>w<i>``; ``shifted`` lists the windows whose label was replaced.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from datamodules.eeg_emotion import EEGEmotionWindowsDataModule
from datamodules.eeg_features import COGLIER_BANDS, GAMEEMO_CHANNELS, GAMEEMO_GRID
from datamodules.timeseries import Recording


def synthetic_windows(labels: np.ndarray, gain_map: np.ndarray, subject_gain: np.ndarray, effect: np.ndarray,
                      rng: np.random.Generator, n_samples: int = 256, fs: float = 128.0,
                      noise: float = 0.5) -> np.ndarray:
    """(n, channels, n_samples) float32 windows: band noise with amplitude ``subject_gain * (1 + effect * map[label])``
    per channel x band (``gain_map`` (classes, channels, bands), ``effect`` (n,)) plus white noise of sd ``noise``."""
    n, channels = len(labels), gain_map.shape[1]
    freqs = np.fft.rfftfreq(n_samples, 1 / fs)
    band_of = np.full(len(freqs), -1)
    for b, (lo, hi) in enumerate(COGLIER_BANDS.values()):
        band_of[(freqs >= lo) & (freqs <= hi)] = b
    in_band = band_of >= 0
    amplitude = subject_gain[None] * (1 + effect[:, None, None] * gain_map[labels])  # (n, channels, bands)
    spectrum = np.zeros((n, channels, len(freqs)), dtype=np.complex128)
    draws = rng.standard_normal((n, channels, int(in_band.sum()), 2))
    spectrum[..., in_band] = (draws[..., 0] + 1j * draws[..., 1]) * amplitude[..., band_of[in_band]]
    x = np.fft.irfft(spectrum, n=n_samples, axis=-1)
    x /= x[:, :, :].std() + 1e-12
    return (x + noise * rng.standard_normal(x.shape)).astype(np.float32)


class SyntheticConceptShiftDataModule(EEGEmotionWindowsDataModule):
    """GAMEEMO-shaped stand-in with concept-shifted subjects (module docstring).

    Args:
        n_subjects, n_classes, windows_per_class, window_samples: the sizes (subjects "1".."n").
        shifted_subjects, shift_fraction, shifted_effect: the concept shift.
        class_gain, subject_gain, noise, seed: the generator.
        Other arguments: ``EEGEmotionWindowsDataModule``'s (feature, input_layout, stage, thresholds, ...).
    """

    channels = GAMEEMO_CHANNELS
    grid = GAMEEMO_GRID
    default_sample_rate = 128.0
    standin_config = "experiments/coglier_demo.yaml"

    def __init__(self, n_subjects: int = 8, n_classes: int = 3, windows_per_class: int = 40,
                 window_samples: int = 256, shifted_subjects: Optional[list[str]] = None,
                 shift_fraction: float = 0.6, shifted_effect: float = 0.0, class_gain: float = 0.3,
                 subject_gain: float = 0.1, noise: float = 0.5, seed: int = 0, **kwargs: Any):
        kwargs.setdefault("window_length", window_samples)
        kwargs.setdefault("window_step", window_samples)
        super().__init__(**kwargs)
        if not 0 <= shift_fraction <= 1:
            raise ValueError(f"shift_fraction must be in [0, 1], got {shift_fraction}")
        self.classes = tuple(str(c) for c in range(n_classes))
        self.n_subjects, self.n_classes, self.windows_per_class = n_subjects, n_classes, windows_per_class
        self.window_samples = window_samples
        self.shifted_subjects = [str(s) for s in (["7", "8"] if shifted_subjects is None else shifted_subjects)]
        self.shift_fraction, self.shifted_effect = shift_fraction, shifted_effect
        self.class_gain, self.subject_gain, self.noise, self.seed = class_gain, subject_gain, noise, seed
        self.shifted: set[str] = set()

    def list_recordings(self) -> list[Recording]:
        rng = np.random.default_rng(self.seed)
        n_channels, n_bands = len(self.channels), len(COGLIER_BANDS)
        gain_map = self.class_gain * rng.integers(-1, 2, size=(self.n_classes, n_channels, n_bands)).astype(float)
        recordings = []
        for s in range(1, self.n_subjects + 1):
            subject = str(s)
            sub_rng = np.random.default_rng([self.seed, s])  # a subject's data do not depend on the others
            labels = np.repeat(np.arange(self.n_classes), self.windows_per_class)
            effect = np.ones(len(labels))
            reported = labels.copy()
            if subject in self.shifted_subjects:
                shifted = sub_rng.random(len(labels)) < self.shift_fraction
                reported[shifted] = sub_rng.integers(0, self.n_classes, size=int(shifted.sum()))
                effect[shifted] = self.shifted_effect
            else:
                shifted = np.zeros(len(labels), dtype=bool)
            gain = np.exp(self.subject_gain * sub_rng.standard_normal((n_channels, n_bands)))
            windows = synthetic_windows(labels, gain_map, gain, effect, sub_rng, self.window_samples,
                                        self.sample_rate, self.noise)
            if self.subjects is not None and subject not in self.subjects:
                continue
            for i, (window, label) in enumerate(zip(windows, reported)):
                name = f"S{subject}c{labels[i]}w{i}"
                if shifted[i]:
                    self.shifted.add(name)
                recordings.append(Recording(window.T, int(label), subject=subject, trial=f"c{labels[i]}", name=name))
        return recordings
