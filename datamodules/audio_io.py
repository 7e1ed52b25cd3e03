"""What every audio dataset shares: soundfile decoding, mono downmix, polyphase resampling, a clip dataset.

No torchaudio on our machines; soundfile reads WAV/FLAC/OGG (and MP3 with libsndfile >= 1.1). Errors are
``DatasetError`` naming the file, so a corrupt or missing clip stops the run with one clear message.
"""
from __future__ import annotations

import os
from fractions import Fraction
from collections.abc import Sequence
from typing import Optional

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly
from torch.utils.data import Dataset

from datamodules.base import DatasetError, PathLike
from lightning_modules.batch import AUDIO, LABEL


def audio_info(path: PathLike, *, layout: Optional[str] = None, standin_config: Optional[str] = None):
    """soundfile's header info (samplerate, channels, frames) without decoding the samples."""
    try:
        return sf.info(os.fspath(path))
    except (RuntimeError, sf.LibsndfileError, OSError) as error:
        raise _error(path, error, layout, standin_config) from None


def load_audio(
    path: PathLike,
    sample_rate: Optional[int] = None,
    *,
    mono: bool = True,
    start: int = 0,
    frames: int = -1,
    layout: Optional[str] = None,
    standin_config: Optional[str] = None,
) -> tuple[np.ndarray, int]:
    """Read ``path`` as float32.

    Args:
        sample_rate: resample to this rate (polyphase, anti-aliased); ``None`` keeps the file's rate.
        mono: average the channels (returns ``(samples,)``); otherwise ``(channels, samples)``.
        start, frames: read a window, in samples at the file's own rate (``frames=-1``: to the end).
        layout, standin_config: what the DatasetError shows when the file is missing or unreadable.

    Returns:
        ``(audio, rate)`` with ``rate`` the returned audio's sample rate.
    """
    try:
        audio, rate = sf.read(os.fspath(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as error:
        raise _error(path, error, layout, standin_config) from None
    if audio.shape[0] == 0:
        raise DatasetError("Audio file has no samples", path=path, layout=layout, standin_config=standin_config)
    audio = audio.T  # (channels, samples)
    if mono:
        audio = audio.mean(axis=0)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return np.ascontiguousarray(audio, dtype=np.float32), rate


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy's Kaiser-windowed FIR)."""
    if orig_rate == new_rate:
        return audio
    ratio = Fraction(new_rate, orig_rate).limit_denominator(1000)
    return resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def write_audio(path: PathLike, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> str:
    """Write ``(samples,)`` or ``(channels, samples)`` audio; clips to [-1, 1] for integer subtypes."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.T  # soundfile wants (samples, channels)
    if subtype.startswith("PCM"):
        audio = np.clip(audio, -1.0, 1.0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sf.write(os.fspath(path), audio, sample_rate, subtype=subtype)
    return os.fspath(path)


def _error(path: PathLike, error: Exception, layout: Optional[str], standin_config: Optional[str]) -> DatasetError:
    problem = "Audio file not found" if not os.path.exists(path) else f"Cannot decode audio file ({error})"
    return DatasetError(problem, path=path, layout=layout, standin_config=standin_config)


class AudioClipDataset(Dataset):
    """Clips read with ``load_audio`` (mono, resampled to ``sample_rate``), zero-padded or cut to
    ``clip_seconds``. Items: ``input`` (samples,) float32 and ``target``: an int64 class index, or, with
    ``num_labels``, a float multi-hot vector built from the item's label indices."""

    def __init__(self, paths: Sequence[str], targets: Sequence, sample_rate: int = 16000, clip_seconds: float = 10.0,
                 num_labels: Optional[int] = None, layout: Optional[str] = None, standin_config: Optional[str] = None):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} clips but {len(targets)} targets")
        self.paths, self.targets = list(paths), list(targets)
        self.sample_rate, self.num_samples = sample_rate, int(round(clip_seconds * sample_rate))
        self.num_labels, self.layout, self.standin_config = num_labels, layout, standin_config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        audio, _ = load_audio(self.paths[index], self.sample_rate, layout=self.layout, standin_config=self.standin_config)
        clip = np.zeros(self.num_samples, dtype=np.float32)
        clip[: min(len(audio), self.num_samples)] = audio[: self.num_samples]
        target = self.targets[index]
        if self.num_labels is not None:
            hot = torch.zeros(self.num_labels)
            hot[torch.as_tensor(target, dtype=torch.long)] = 1.0
            target = hot
        else:
            target = torch.tensor(int(target))
        return {AUDIO: torch.from_numpy(clip), LABEL: target}
