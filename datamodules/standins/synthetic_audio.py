"""Offline audio stand-in: synthetic sound events over pink noise, generated on the fly (deterministic).

Ten event classes with random parameters, so a classifier must learn the class's time-frequency shape,
not one frequency: 0 steady tone, 1 up-chirp, 2 down-chirp, 3 amplitude-modulated tone, 4 frequency-
modulated (vibrato) tone, 5 low-band noise burst, 6 high-band noise burst, 7 click train, 8 harmonic
stack, 9 tone pips. Each event has a random onset, duration (0.3-0.8 s) and SNR over pink noise.
Multi-label variant: 1-3 events of distinct classes mixed in one clip.

Batches match the real audio datasets: ``input`` (B, samples) float32 at 16 kHz and ``target`` (B,) int64
class indices, or (B, 10) float multi-hot with ``multilabel=True``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.signal import butter, chirp, sosfilt
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule
from lightning_modules.batch import AUDIO, LABEL

CLASS_NAMES = ("tone", "up_chirp", "down_chirp", "am_tone", "fm_tone", "low_noise_burst", "high_noise_burst",
               "click_train", "harmonic_stack", "tone_pips")


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def synth_event(rng: np.random.Generator, label: int, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    if label == 0:
        x = np.sin(2 * np.pi * rng.uniform(300, 3000) * t)
    elif label in (1, 2):
        f0 = rng.uniform(200, 1000)
        f1 = f0 * rng.uniform(3, 6)
        x = chirp(t, f0, t[-1], f1) if label == 1 else chirp(t, f1, t[-1], f0)
    elif label == 3:
        x = np.sin(2 * np.pi * rng.uniform(500, 2000) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))
    elif label == 4:
        f, rate_hz = rng.uniform(500, 2000), rng.uniform(5, 10)
        phase = 2 * np.pi * f * t + (0.08 * f / rate_hz) * np.sin(2 * np.pi * rate_hz * t)
        x = np.sin(phase)
    elif label in (5, 6):
        band = (200, 800) if label == 5 else (3000, 6000)
        x = sosfilt(butter(4, band, btype="bandpass", fs=rate, output="sos"), rng.standard_normal(n))
    elif label == 7:
        x = np.zeros(n)
        period = int(rate / rng.uniform(20, 60))
        click = np.exp(-np.arange(40) / 6.0) * rng.choice([-1, 1], 40)
        for start in range(int(rng.integers(0, period)), n - 40, period):
            x[start:start + 40] += click
    elif label == 8:
        f0 = rng.uniform(100, 300)
        x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 9))
    elif label == 9:
        f, pip = rng.uniform(800, 2500), int(0.05 * rate)
        gate = (np.arange(n) % (2 * pip)) < pip
        x = np.sin(2 * np.pi * f * t) * gate
    else:
        raise ValueError(f"unknown class {label}")
    fade = min(int(0.01 * rate), n // 2)
    envelope = np.ones(n)
    envelope[:fade], envelope[n - fade:] = np.linspace(0, 1, fade), np.linspace(1, 0, fade)
    x = x * envelope
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


class SyntheticAudioEvents(Dataset):
    """Clip i of a split is drawn from ``default_rng([seed, i])``: the same clip in every epoch and worker."""

    def __init__(self, num_clips: int, seed: int, sample_rate: int = 16000, duration_s: float = 1.0,
                 multilabel: bool = False, max_events: int = 3, snr_db: tuple[float, float] = (0.0, 15.0)):
        self.num_clips, self.seed = num_clips, seed
        self.sample_rate, self.num_samples = sample_rate, int(round(duration_s * sample_rate))
        self.multilabel, self.max_events, self.snr_db = multilabel, max_events, snr_db

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        n, rate = self.num_samples, self.sample_rate
        count = int(rng.integers(1, self.max_events + 1)) if self.multilabel else 1
        labels = rng.choice(len(CLASS_NAMES), size=count, replace=False)
        clip = 0.05 * pink_noise(rng, n)
        for label in labels:
            length = int(rng.uniform(0.3, 0.8) * n)
            onset = int(rng.integers(0, n - length + 1))
            gain = 0.05 * 10 ** (rng.uniform(*self.snr_db) / 20)
            clip[onset:onset + length] += gain * synth_event(rng, int(label), length, rate)
        clip = clip / max(1.0, np.abs(clip).max() / 0.9)
        if self.multilabel:
            target = torch.zeros(len(CLASS_NAMES))
            target[torch.as_tensor(labels)] = 1.0
        else:
            target = torch.tensor(int(labels[0]))
        return {AUDIO: torch.from_numpy(clip.astype(np.float32)), LABEL: target}


class SyntheticAudioDataModule(BaseDataModule):
    """Train/val/test splits of synthetic event clips (different seeds per split).

    Args:
        num_train, num_val, num_test: clips per split.
        multilabel: 1-3 mixed events per clip with multi-hot targets.
        seed: splits use seed, seed + 1, seed + 2.
        duration_s, sample_rate: clip length and rate (1 s at 16 kHz: 98 fbank frames).
    """

    num_classes = len(CLASS_NAMES)

    def __init__(self, num_train: int = 512, num_val: int = 128, num_test: int = 128, multilabel: bool = False,
                 seed: int = 0, duration_s: float = 1.0, sample_rate: int = 16000, batch_size: int = 32,
                 num_workers: int = 2, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.save_hyperparameters()
        kwargs = dict(sample_rate=sample_rate, duration_s=duration_s, multilabel=multilabel)
        self.train_set = SyntheticAudioEvents(num_train, seed, **kwargs)
        self.val_set = SyntheticAudioEvents(num_val, seed + 1, **kwargs)
        self.test_set = SyntheticAudioEvents(num_test, seed + 2, **kwargs)
