"""Offline stand-in for speech depression level estimation: synthetic voiced "speech" whose prosody
depends on a latent BDI-II-like score.

Every speaker has an integer score s in [0, 63] and a recording of a few seconds at 8 kHz: a glottal pulse
train (f0 from a slow random intonation contour, with jitter) through a glottal low-pass, one of five
vowel formant cascades per syllable (F1-F3 resonators), a spectral tilt and an amplitude envelope of
syllables separated by pauses with breath noise. As the speech-depression literature reports, a higher
score gives (each with speaker-to-speaker noise):

- a narrower pitch range (intonation std from ~4 to ~0.8 semitones) and more jitter;
- slower speech and more pausing (pause ratio ~0.15 -> ~0.5);
- flatter loudness (smaller syllable-to-syllable energy modulation);
- a steeper spectral tilt (less energy above ~1 kHz).

Base pitch, vowel sequence, overall loudness and noise are nuisances independent of the score. The
recordings are cut into segments exactly as the AVEC loader cuts real ones (datamodules.avec), with the
same batch keys; ``write_partitions_tree`` and ``write_segmented_tree`` write them in the AVEC and the
fchest/CSENet layouts to exercise the real loaders.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from scipy.signal import lfilter

from datamodules.audio_io import write_audio
from datamodules.avec import AVEC_PARTITIONS, ArrayAudio, Recording, SegmentedSpeechDataModule, segment_starts

MAX_SCORE = 63
# (F1, F2, F3) in Hz of five vowels (/a/, /e/, /i/, /o/, /u/, adult averages).
VOWEL_FORMANTS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410],
                           [300, 870, 2240]], dtype=np.float64)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


def _resonator(frequency: float, bandwidth: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-pole resonator with unit gain at DC (Klatt)."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    a = np.array([1.0, -2 * r * np.cos(2 * np.pi * frequency / sample_rate), r * r])
    return np.array([a.sum()]), a


def _smooth_noise(rng: np.random.Generator, num_samples: int, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """Unit-std low-pass noise (a slow random contour)."""
    step = max(1, int(sample_rate / (4 * cutoff_hz)))
    knots = rng.standard_normal(num_samples // step + 2)
    contour = np.interp(np.arange(num_samples) / step, np.arange(len(knots)), knots)
    return contour / (contour.std() + 1e-8)


def synthesise_speech(score: float, num_samples: int, sample_rate: int = 8000,
                      rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """One recording (float32, peak <= 1) of a speaker with the given score."""
    rng = np.random.default_rng() if rng is None else rng
    u = float(np.clip(score / MAX_SCORE, 0.0, 1.0))
    jitter_noise = lambda scale: scale * (1 + 0.25 * rng.standard_normal())  # speaker-to-speaker spread
    # --- prosody parameters from the score ---
    base_f0 = rng.uniform(95.0, 230.0)  # nuisance: voice pitch
    pitch_range_st = max(0.3, jitter_noise(4.0 - 3.2 * u))
    jitter = max(0.0, jitter_noise(0.004 + 0.03 * u))
    syllable_rate = max(1.5, jitter_noise(5.0 - 2.2 * u))
    pause_ratio = float(np.clip(jitter_noise(0.15 + 0.35 * u), 0.05, 0.8))
    modulation_depth = float(np.clip(jitter_noise(0.85 - 0.6 * u), 0.05, 0.95))
    tilt = float(np.clip(0.2 + 0.65 * u + 0.05 * rng.standard_normal(), 0.0, 0.95))

    # --- source: pulse train with intonation and jitter ---
    semitones = pitch_range_st * _smooth_noise(rng, num_samples, sample_rate, cutoff_hz=1.5)
    f0 = base_f0 * 2.0 ** (semitones / 12.0) * (1 + jitter * rng.standard_normal(num_samples))
    phase = np.cumsum(f0 / sample_rate)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    glottal = lfilter([1.0], [1.0, -1.6, 0.64], pulses)  # double pole at 0.8: glottal pulse roll-off

    # --- syllables and pauses: a piecewise envelope and a vowel per syllable ---
    envelope = np.zeros(num_samples)
    vowel_of_sample = np.zeros(num_samples, dtype=np.int64)
    t = int(rng.uniform(0, 0.3) * sample_rate)
    while t < num_samples:
        if rng.random() < pause_ratio:  # a pause
            t += int(rng.uniform(0.2, 0.7) * sample_rate)
            continue
        length = max(8, int(rng.uniform(0.7, 1.3) * sample_rate / syllable_rate))
        end = min(num_samples, t + length)
        hump = np.sin(np.pi * np.arange(end - t) / length) ** 0.7
        envelope[t:end] = hump * (1.0 - modulation_depth * rng.random())
        vowel_of_sample[t:end] = rng.integers(len(VOWEL_FORMANTS))
        t = end
    voiced = np.zeros(num_samples)
    for vowel, formants in enumerate(VOWEL_FORMANTS):
        chosen = vowel_of_sample == vowel
        if not chosen.any():
            continue
        filtered = glottal
        for frequency, bandwidth in zip(formants * rng.uniform(0.9, 1.1), FORMANT_BANDWIDTHS):
            filtered = lfilter(*_resonator(frequency, bandwidth, sample_rate), filtered)
        voiced[chosen] = filtered[chosen]
    voiced *= envelope
    voiced /= np.abs(voiced).max() + 1e-8
    breath = 0.01 * rng.standard_normal(num_samples) * (1.0 - envelope)
    speech = lfilter([1.0 - tilt], [1.0, -tilt], voiced + breath)  # spectral tilt (one-pole low-pass)
    speech += 10 ** (-55 / 20) * rng.standard_normal(num_samples)  # recording noise floor
    speech *= rng.uniform(0.3, 0.9) / (np.abs(speech).max() + 1e-8)  # nuisance: loudness
    return speech.astype(np.float32)


def standin_recordings(num_train: int = 40, num_dev: int = 10, num_test: int = 20, recording_seconds: float = 12.0,
                       sample_rate: int = 8000, seed: int = 0) -> list[tuple[Recording, np.ndarray]]:
    """Speakers ``synthetic_<n>`` with integer scores ~ U{0..63}, one recording each, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * num_train + ["dev"] * num_dev + ["test"] * num_test
    scores = rng.integers(0, MAX_SCORE + 1, len(splits))
    num_samples = int(round(recording_seconds * sample_rate))
    out = []
    for n, (split, score) in enumerate(zip(splits, scores)):
        audio = synthesise_speech(float(score), num_samples, sample_rate, np.random.default_rng([seed, n]))
        subject = str(300 + n)
        out.append((Recording(f"{subject}_1_synthetic", subject, f"{subject}_1", split, float(score)), audio))
    return out


def write_partitions_tree(root: os.PathLike, recordings: list[tuple[Recording, np.ndarray]], sample_rate: int = 8000,
                          file_rate: Optional[int] = None) -> Path:
    """The AVEC layout: ``Audio/<Partition>/<id>.wav`` and ``Labels/<Partition>/<session>_Depression.csv``.

    ``file_rate`` writes the files at another rate (e.g. 16000, to exercise resampling and the cache).
    """
    from datamodules.audio_io import resample

    root = Path(root)
    for recording, audio in recordings:
        partition = AVEC_PARTITIONS[recording.split]
        rate = file_rate or sample_rate
        write_audio(root / "Audio" / partition / f"{recording.recording_id}.wav",
                    resample(audio, sample_rate, rate), rate)
        label = root / "Labels" / partition / f"{recording.session_id}_Depression.csv"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(f"{int(recording.score)}\n")
    return root


def write_segmented_tree(root: os.PathLike, recordings: list[tuple[Recording, np.ndarray]], sample_rate: int = 8000,
                         segment_seconds: float = 3.0, hop_seconds: float = 1.5) -> Path:
    """fchest/CSENet's layout: ``<split>/<BDI 2 digits>/<id>/<clip>.wav``, clips cut like the loader cuts."""
    root = Path(root)
    segment, hop = int(segment_seconds * sample_rate), int(hop_seconds * sample_rate)
    for recording, audio in recordings:
        folder = root / recording.split / f"{int(recording.score):02d}" / recording.recording_id
        for n, start in enumerate(segment_starts(len(audio), segment, hop)):
            write_audio(folder / f"{n:04d}.wav", audio[start:start + segment], sample_rate)
    return root


class SyntheticDepressionSpeechDataModule(SegmentedSpeechDataModule):
    """Synthetic speakers (see the module docstring), cut into segments like AVEC recordings.

    Args:
        num_train, num_dev, num_test: speakers (one recording each) per split.
        recording_seconds: length of every recording.
        data_seed: the speakers and their audio follow from it (``seed`` is the sampler's).
        Others: as SegmentedSpeechDataModule (sample rate, segment/hop length, sampler, loader).
    """

    def __init__(self, num_train: int = 40, num_dev: int = 10, num_test: int = 20, recording_seconds: float = 12.0,
                 data_seed: int = 0, sample_rate: int = 8000, segment_seconds: float = 1.0,
                 hop_seconds: float = 0.5, sampler: Literal["balanced", "shuffle"] = "balanced",
                 segments_per_group: int = 8, rounds_per_epoch: int = 4, seed: int = 0, batch_size: int = 32,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(sample_rate, segment_seconds, hop_seconds, sampler, segments_per_group, rounds_per_epoch,
                         seed, batch_size, num_workers, pin_memory, eval_batch_size)
        self.num_train, self.num_dev, self.num_test = num_train, num_dev, num_test
        self.recording_seconds, self.data_seed = recording_seconds, data_seed

    def recordings_and_sources(self) -> list[tuple[Recording, list]]:
        return [(recording, [ArrayAudio(audio)]) for recording, audio in standin_recordings(
            self.num_train, self.num_dev, self.num_test, self.recording_seconds, self.sample_rate, self.data_seed)]
