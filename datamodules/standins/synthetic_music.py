"""Offline stand-in for music source separation: synthesised 4-stem "songs" (vocals, bass, drums, other).

Each stem has the spectro-temporal signature that Chandna's vertical (timbre) and horizontal (temporal)
convolutions are meant to pick up:
- bass: 3 harmonics of f0 in [50, 150] Hz, a new note every 0.5 s, ADSR envelope;
- drums: kick (decaying 60 Hz sine + click) and hi-hat (high-passed noise, 20 ms decay) on a random
  8th-note grid;
- vocals: a harmonic tone, f0 in [200, 500] Hz with 5 Hz vibrato, harmonics shaped by 3 formants;
- other: sustained 3-note saw/square chords in 300-1500 Hz.
Stems get random gains; the mixture is their sum. Everything follows from ``seed``. Batches have the
keys of the real data (datamodules/dsd100.py), and ``write_dsd100_tree`` writes such songs as WAVs in
the DSD100 layout, so tests run the real loader on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from scipy.signal import butter, sosfilt

from datamodules.audio_io import write_audio
from datamodules.dsd100 import SOURCES, ArrayTracks, SeparationDataModule, SeparationTracks


def _adsr(n: int, rate: int, attack=0.02, decay=0.08, sustain=0.6, release=0.1) -> np.ndarray:
    a, d, r = (max(1, int(x * rate)) for x in (attack, decay, release))
    s = max(0, n - a - d - r)
    env = np.concatenate([np.linspace(0, 1, a, endpoint=False), np.linspace(1, sustain, d, endpoint=False),
                          np.full(s, sustain), np.linspace(sustain, 0, r)])
    return env[:n] if len(env) >= n else np.pad(env, (0, n - len(env)))


def _bass(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    note = int(0.5 * rate)
    for start in range(0, n, note):
        length = min(note, n - start)
        t = np.arange(length) / rate
        f0 = rng.uniform(50, 150)
        tone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
        out[start:start + length] = tone * _adsr(length, rate)
    return out


def _drums(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    eighth = int(rate * 60 / rng.uniform(100, 140) / 2)
    hihat_sos = butter(4, min(0.99, 5000 / (rate / 2)), btype="highpass", output="sos")
    kick_len, hat_len = int(0.25 * rate), int(0.08 * rate)
    t_kick = np.arange(kick_len) / rate
    kick = np.sin(2 * np.pi * 60 * t_kick * (1 + 0.5 * np.exp(-t_kick / 0.02))) * np.exp(-t_kick / 0.08)
    kick[: int(0.002 * rate)] += rng.uniform(-1, 1, int(0.002 * rate))  # the beater's click
    for start in range(0, n, eighth):
        if rng.random() < 0.45:
            length = min(kick_len, n - start)
            out[start:start + length] += kick[:length]
        if rng.random() < 0.7:
            length = min(hat_len, n - start)
            hat = sosfilt(hihat_sos, rng.standard_normal(hat_len)) * np.exp(-np.arange(hat_len) / (0.02 * rate))
            out[start:start + length] += 0.5 * hat[:length]
    return out


def _vocals(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    formants = np.array([rng.uniform(500, 900), rng.uniform(1000, 1800), rng.uniform(2200, 3200)])
    phrase = int(rng.uniform(0.6, 1.2) * rate)
    for start in range(0, n, phrase):
        length = min(phrase, n - start)
        if rng.random() < 0.2:  # breaths: a silent phrase now and then
            continue
        t = np.arange(length) / rate
        f0 = rng.uniform(200, 500)
        inst = f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))  # 5 Hz vibrato
        phase = 2 * np.pi * np.cumsum(inst) / rate
        tone = np.zeros(length)
        for k in range(1, int(4000 // f0) + 1):
            gain = sum(np.exp(-0.5 * ((k * f0 - f) / 150) ** 2) for f in formants) + 0.05
            tone += gain * np.sin(k * phase) / k
        out[start:start + length] = tone * _adsr(length, rate, attack=0.05, release=0.15, sustain=0.8)
    return out


def _other(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n)
    chord = int(rate * 1.0)
    for start in range(0, n, chord):
        length = min(chord, n - start)
        t = np.arange(length) / rate
        root = rng.uniform(300, 700)
        tone = np.zeros(length)
        for ratio in (1.0, 1.26, 1.5):  # a major triad
            f = root * ratio
            cycle = (f * t + rng.uniform()) % 1.0
            wave = 2 * cycle - 1 if rng.random() < 0.5 else np.sign(cycle - 0.5)  # saw or square
            tone += wave
        # Soften the waveform's upper harmonics so the chords stay in 300-1500 Hz.
        sos = butter(2, min(0.99, 1500 / (rate / 2)), output="sos")
        out[start:start + length] = sosfilt(sos, tone) * _adsr(length, rate, attack=0.05, sustain=0.9, release=0.05)
    return out


STEM_GENERATORS = {"vocals": _vocals, "bass": _bass, "drums": _drums, "other": _other}


def synthesize_song(seconds: float, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One song: (mixture (n,), sources (4, n)) float32 in SOURCES order, peak below 1."""
    n = int(seconds * sample_rate)
    stems = []
    for name in SOURCES:
        stem = STEM_GENERATORS[name](n, sample_rate, rng)
        stem = stem / (np.sqrt(np.mean(stem ** 2)) + 1e-8) * 10 ** (rng.uniform(-6, 0) / 20)  # random gain
        stems.append(stem)
    sources = np.stack(stems)
    peak = np.abs(sources.sum(0)).max()
    sources = (0.9 * sources / peak).astype(np.float32)
    return sources.sum(0).astype(np.float32), sources


def synthetic_tracks(count: int, seconds: float, sample_rate: int, seed: int, prefix: str) -> ArrayTracks:
    rng = np.random.default_rng(seed)
    songs = [synthesize_song(seconds, sample_rate, rng) for _ in range(count)]
    return ArrayTracks([f"{prefix}{i:03d}" for i in range(count)], [m for m, _ in songs], [s for _, s in songs],
                       sample_rate)


class SyntheticMusicDataModule(SeparationDataModule):
    """Synthetic 4-stem songs (train / val / test clips generated with seeds ``seed``, +1, +2).

    The card's stand-in: 16 kHz, n_fft 256 (129 bins), hop 64, T = 30; 64 train clips x 4 s, 16 test clips.
    """

    def __init__(self, num_train: int = 64, num_val: int = 8, num_test: int = 16, clip_seconds: float = 4.0,
                 sample_rate: int = 16000, n_fft: int = 256, hop_length: int = 64, chunk_frames: int = 30,
                 chunk_stride: int = 5, seed: int = 0, batch_size: int = 32, num_workers: int = 0,
                 pin_memory: Optional[bool] = None):
        # In-memory arrays: slicing is cheaper than starting workers, hence num_workers=0 by default.
        super().__init__(sample_rate, n_fft, hop_length, chunk_frames, chunk_stride, batch_size, num_workers,
                         pin_memory)
        self.save_hyperparameters()
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.clip_seconds, self.seed = clip_seconds, seed

    def load_splits(self) -> dict[str, SeparationTracks]:
        return {split: synthetic_tracks(count, self.clip_seconds, self.sample_rate, self.seed + k, f"{split}_")
                for k, (split, count) in enumerate(self.counts.items())}


def write_dsd100_tree(root, dev_names, test_names, seconds: float = 3.0, sample_rate: int = 16000,
                      seed: int = 0, stereo: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Synthetic songs written as a DSD100 release (Mixtures/ and Sources/, Dev and Test, stereo WAVs whose
    mono downmix is the song). Returns name -> (mixture, sources) as written (mono, float32)."""
    root, rng, written = Path(root), np.random.default_rng(seed), {}
    for subset, names in (("Dev", dev_names), ("Test", test_names)):
        for name in names:
            mixture, sources = synthesize_song(seconds, sample_rate, rng)
            as_file = (lambda x: np.stack([x, x])) if stereo else (lambda x: x)  # noqa: E731
            write_audio(root / "Mixtures" / subset / name / "mixture.wav", as_file(mixture), sample_rate, "FLOAT")
            for stem, audio in zip(SOURCES, sources):
                write_audio(root / "Sources" / subset / name / f"{stem}.wav", as_file(audio), sample_rate, "FLOAT")
            written[name] = (mixture, sources)
    return written
