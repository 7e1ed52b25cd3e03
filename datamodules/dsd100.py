"""DSD100 (SiSEC 2016 MUS) and MUSDB18-HQ in their distributed WAV layouts, for music source separation.

DSD100 (https://sigsep.github.io/datasets/dsd100.html): 100 tracks, Dev 50 / Test 50, stereo 44.1 kHz::

    DSD100/Mixtures/{Dev,Test}/<NNN - Artist - Title>/mixture.wav
    DSD100/Sources/{Dev,Test}/<NNN - Artist - Title>/{vocals,bass,drums,other}.wav

MUSDB18-HQ (https://zenodo.org/records/3338373): 150 tracks, train 100 / test 50, the same stems::

    musdb18hq/{train,test}/<Artist - Title>/{mixture,vocals,bass,drums,other}.wav

The separation family's batches: training items are mixture/source excerpts of exactly T STFT frames
(``n_fft + (T - 1) * hop`` samples, every ``chunk_stride`` frames of every track, as the authors' code
cuts its chunks), ``{"mixture": (samples,), "sources": (4, samples)}``; evaluation items are whole
tracks, ``{"mixture", "sources", "name", "sample_rate"}`` (batch size 1). Audio is mono ((L + R) / 2,
the paper's input) and read through ``datamodules.audio_io``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.audio_io import audio_info, load_audio
from datamodules.base import BaseDataModule, DatasetError
from lightning_modules.batch import MIXTURE, NAME, SAMPLE_RATE
from lightning_modules.batch import SOURCES as SOURCES_KEY  # (SOURCES below names the stems)

SOURCES = ("vocals", "bass", "drums", "other")
STANDIN_CONFIG = "experiments/chandna_demo.yaml"
DSD100_LAYOUT = """DSD100/
  Mixtures/Dev/<NNN - Artist - Title>/mixture.wav      (50 tracks; Test/ likewise, 50 tracks)
  Sources/Dev/<NNN - Artist - Title>/vocals.wav, bass.wav, drums.wav, other.wav
or MUSDB18-HQ:
  musdb18hq/train/<Artist - Title>/mixture.wav, vocals.wav, bass.wav, drums.wav, other.wav   (test/ likewise)"""
#: MUSDB18's official validation tracks (musdb's mus.setup validation list, 14 of the train split). On
#: DSD100 the ones that are Dev tracks validate; the rest of Dev trains (the paper does not validate).
MUSDB_VALIDATION_TRACKS = (
    "Actions - One Minute Smile", "Alexander Ross - Goodbye Bolero", "ANiMAL - Rockshow",
    "Clara Berry And Wooldog - Waltz For My Victims", "Fergessen - Nos Palpitants", "James May - On The Line",
    "Johnny Lokke - Promises & Lies", "Leaf - Summerghost", "Meaxic - Take A Step",
    "Patrick Talbot - A Reason To Leave", "Skelpolu - Human Mistakes", "Traffic Experiment - Sirens",
    "Triviul - Angelsaint", "Young Griffo - Pennies",
)


# --------------------------------------------------------------------------------------------
# Tracks (files or arrays) and the two datasets every separation DataModule uses
# --------------------------------------------------------------------------------------------


@dataclass
class TrackFiles:
    name: str
    mixture: Path
    sources: tuple[Path, ...]


class SeparationTracks:
    """Mono tracks: ``names``, ``lengths`` (samples), ``sample_rate`` and ``read(i, start, frames)`` ->
    ``(mixture (frames,), sources (S, frames))`` float32; frames=-1 reads to the end."""

    names: list[str]
    lengths: list[int]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int, start: int = 0, frames: int = -1) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ArrayTracks(SeparationTracks):
    """Tracks held in memory (a stand-in, or files decoded once)."""

    def __init__(self, names: Sequence[str], mixtures: Sequence[np.ndarray], sources: Sequence[np.ndarray],
                 sample_rate: int):
        self.names, self.mixtures, self.sources = list(names), list(mixtures), list(sources)
        self.lengths = [len(m) for m in self.mixtures]
        self.sample_rate = sample_rate

    def read(self, index: int, start: int = 0, frames: int = -1) -> tuple[np.ndarray, np.ndarray]:
        stop = self.lengths[index] if frames < 0 else start + frames
        return self.mixtures[index][start:stop], self.sources[index][:, start:stop]


class FileTracks(SeparationTracks):
    """Tracks read from WAV files on demand (soundfile seeks, so an excerpt costs its own samples only)."""

    def __init__(self, tracks: Sequence[TrackFiles], sample_rate: int, layout: str = DSD100_LAYOUT,
                 standin_config: str = STANDIN_CONFIG):
        self.tracks = list(tracks)
        self.names = [t.name for t in self.tracks]
        self.sample_rate = sample_rate
        self.layout, self.standin_config = layout, standin_config
        self.lengths = []
        for track in self.tracks:
            lengths = []
            for path in (track.mixture, *track.sources):
                info = audio_info(path, layout=layout, standin_config=standin_config)
                if info.samplerate != sample_rate:
                    raise DatasetError(f"Sample rate {info.samplerate} Hz, expected {sample_rate} Hz", path=path,
                                       hint="Set --data.sample_rate to the files' rate (DSD100/MUSDB18: 44100), or "
                                            "--data.preload true to resample while loading.",
                                       standin_config=standin_config)
                lengths.append(info.frames)
            self.lengths.append(min(lengths))  # stems and mixture of a track have one length; be safe

    def _load(self, path: Path, start: int, frames: int) -> np.ndarray:
        return load_audio(path, start=start, frames=frames, layout=self.layout, standin_config=self.standin_config)[0]

    def read(self, index: int, start: int = 0, frames: int = -1) -> tuple[np.ndarray, np.ndarray]:
        track = self.tracks[index]
        frames = self.lengths[index] - start if frames < 0 else frames
        sources = np.stack([self._load(path, start, frames) for path in track.sources])
        return self._load(track.mixture, start, frames), sources

    def preload(self, sample_rate: int) -> ArrayTracks:
        """Decode every track once (resampled to ``sample_rate``); workers share the arrays."""
        mixtures, sources = [], []
        for track in self.tracks:
            load = lambda p: load_audio(p, sample_rate, layout=self.layout, standin_config=self.standin_config)[0]  # noqa: E731
            stems = [load(path) for path in track.sources]
            mixture = load(track.mixture)
            n = min(len(mixture), *(len(s) for s in stems))
            mixtures.append(mixture[:n])
            sources.append(np.stack([s[:n] for s in stems]))
        return ArrayTracks(self.names, mixtures, sources, sample_rate)


class ChunkDataset(Dataset):
    """Training excerpts of ``chunk_samples`` starting every ``step`` samples of every track."""

    def __init__(self, tracks: SeparationTracks, chunk_samples: int, step: int):
        self.tracks, self.chunk_samples = tracks, chunk_samples
        counts = [max(0, (n - chunk_samples) // step + 1) for n in tracks.lengths]
        self.step = step
        self.offsets = np.cumsum([0, *counts])
        if self.offsets[-1] == 0:
            raise DatasetError(f"No track is long enough for one training chunk of {chunk_samples} samples")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        track = int(np.searchsorted(self.offsets, index, side="right")) - 1
        start = (index - int(self.offsets[track])) * self.step
        mixture, sources = self.tracks.read(track, start, self.chunk_samples)
        return {MIXTURE: torch.from_numpy(np.array(mixture, dtype=np.float32)),
                SOURCES_KEY: torch.from_numpy(np.array(sources, dtype=np.float32))}


class TrackDataset(Dataset):
    """Whole tracks for evaluation and prediction."""

    def __init__(self, tracks: SeparationTracks):
        self.tracks = tracks

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict:
        mixture, sources = self.tracks.read(index)
        return {MIXTURE: torch.from_numpy(np.array(mixture, dtype=np.float32)),
                SOURCES_KEY: torch.from_numpy(np.array(sources, dtype=np.float32)),
                NAME: self.tracks.names[index], SAMPLE_RATE: self.tracks.sample_rate}


class SeparationDataModule(BaseDataModule):
    """Loader plumbing of the separation family; subclasses return their splits from ``load_splits``.

    Args:
        n_fft, hop_length, chunk_frames: a training excerpt gives exactly ``chunk_frames`` STFT frames
            (``n_fft + (chunk_frames - 1) * hop_length`` samples); match the model's STFT and T.
        chunk_stride: frames between consecutive training excerpts (the code: T - 25 = 5).
        batch_size: training excerpts (chunks) per batch; evaluation is one track per batch.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, chunk_frames: int, chunk_stride: int,
                 batch_size: int, num_workers: int, pin_memory: Optional[bool]):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size=1)
        if min(n_fft, hop_length, chunk_frames, chunk_stride) < 1:
            raise ValueError("n_fft, hop_length, chunk_frames and chunk_stride must be >= 1")
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.chunk_frames, self.chunk_stride = chunk_frames, chunk_stride
        self.sources = SOURCES

    @property
    def chunk_samples(self) -> int:
        return self.n_fft + (self.chunk_frames - 1) * self.hop_length

    def load_splits(self) -> dict[str, SeparationTracks]:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_set is not None:
            return
        splits = self.load_splits()
        self.train_set = ChunkDataset(splits["train"], self.chunk_samples, self.chunk_stride * self.hop_length)
        self.val_set = TrackDataset(splits["val"])
        self.test_set = TrackDataset(splits["test"])


# --------------------------------------------------------------------------------------------
# DSD100 / MUSDB18-HQ
# --------------------------------------------------------------------------------------------


def _strip_number(name: str) -> str:
    """DSD100 folders are '<NNN> - Artist - Title'; MUSDB18's are 'Artist - Title'."""
    return re.sub(r"^\d+\s*-\s*", "", name)


def detect_layout(root: Path) -> str:
    if (root / "Mixtures").is_dir() and (root / "Sources").is_dir():
        return "dsd100"
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "musdb18hq"
    problem = "No DSD100 or MUSDB18-HQ data found" if root.is_dir() else "Data folder not found"
    raise DatasetError(problem, path=root, layout=DSD100_LAYOUT, standin_config=STANDIN_CONFIG)


def list_tracks(root: Path, layout: str, subset: str) -> list[TrackFiles]:
    """Tracks of the official subset ('train' = DSD100 Dev / MUSDB18 train, or 'test'), sorted by name,
    every file checked."""
    folder_name = {"dsd100": {"train": "Dev", "test": "Test"}, "musdb18hq": {"train": "train", "test": "test"}}
    if layout == "dsd100":
        mixtures = root / "Mixtures" / folder_name[layout][subset]
        sources_root = root / "Sources" / folder_name[layout][subset]
    else:
        mixtures = sources_root = root / folder_name[layout][subset]
    if not mixtures.is_dir():
        raise DatasetError(f"Missing the {subset} subset", path=mixtures, layout=DSD100_LAYOUT,
                           standin_config=STANDIN_CONFIG)
    tracks = []
    for folder in sorted(p for p in mixtures.iterdir() if p.is_dir()):
        track = TrackFiles(folder.name, folder / "mixture.wav",
                           tuple(sources_root / folder.name / f"{s}.wav" for s in SOURCES))
        for path in (track.mixture, *track.sources):
            if not path.is_file():
                raise DatasetError("Missing audio file", path=path, layout=DSD100_LAYOUT, standin_config=STANDIN_CONFIG)
        tracks.append(track)
    if not tracks:
        raise DatasetError(f"No tracks in the {subset} subset", path=mixtures, layout=DSD100_LAYOUT,
                           standin_config=STANDIN_CONFIG)
    return tracks


class DSD100DataModule(SeparationDataModule):
    """DSD100 or MUSDB18-HQ (WAV), mono, for magnitude-STFT separators.

    Args:
        data_dir: the dataset root (the folder holding ``Mixtures``/``Sources``, or ``train``/``test``).
        layout: ``"auto"`` (detected), ``"dsd100"`` or ``"musdb18hq"``.
        split: ``"official"``: train on Dev/train minus the validation tracks, test on Test/test (the
            paper: Dev 50 / Test 50); ``"pooled"``: all tracks shuffled with ``seed`` and cut by
            ``pooled_fractions`` (train, val, test) (the report's Exp. 4: 80/10/10).
        validation_tracks: names (without DSD100's number) held out of training for validation in the
            official split; default MUSDB18's official 14 (on DSD100, those among Dev).
        preload: decode all tracks into memory once (resampling to ``sample_rate`` if needed); otherwise
            excerpts are read from disk by the loader workers and files must be at ``sample_rate``.
    """

    def __init__(self, data_dir: str = "data/DSD100", layout: Literal["auto", "dsd100", "musdb18hq"] = "auto",
                 split: Literal["official", "pooled"] = "official",
                 validation_tracks: Optional[list[str]] = None,
                 pooled_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                 sample_rate: int = 44100, n_fft: int = 1024, hop_length: int = 256, chunk_frames: int = 30,
                 chunk_stride: int = 5, preload: bool = False, batch_size: int = 32, num_workers: int = 4,
                 pin_memory: Optional[bool] = None):
        super().__init__(sample_rate, n_fft, hop_length, chunk_frames, chunk_stride, batch_size, num_workers,
                         pin_memory)
        self.save_hyperparameters()
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.layout, self.split, self.seed, self.preload = layout, split, seed, preload
        self.validation_tracks = tuple(MUSDB_VALIDATION_TRACKS if validation_tracks is None else validation_tracks)
        self.pooled_fractions = tuple(pooled_fractions)

    def split_tracks(self) -> dict[str, list[TrackFiles]]:
        layout = detect_layout(self.data_dir) if self.layout == "auto" else self.layout
        train, test = list_tracks(self.data_dir, layout, "train"), list_tracks(self.data_dir, layout, "test")
        if self.split == "official":
            is_val = [_strip_number(t.name) in self.validation_tracks for t in train]
            val = [t for t, v in zip(train, is_val) if v]
            if not val:
                raise DatasetError("None of the validation tracks is in the training subset",
                                   path=self.data_dir, hint="Name some with --data.validation_tracks '[\"Artist - "
                                   "Title\", ...]' (default: MUSDB18's official validation tracks).",
                                   layout=DSD100_LAYOUT, standin_config=STANDIN_CONFIG)
            return {"train": [t for t, v in zip(train, is_val) if not v], "val": val, "test": test}
        everything = sorted(train + test, key=lambda t: t.name)
        order = np.random.default_rng(self.seed).permutation(len(everything))
        n_val = max(1, round(self.pooled_fractions[1] * len(everything)))
        n_test = max(1, round(self.pooled_fractions[2] * len(everything)))
        if len(everything) - n_val - n_test < 1:
            raise DatasetError(f"{len(everything)} tracks are too few for a pooled split {self.pooled_fractions}",
                               path=self.data_dir, layout=DSD100_LAYOUT, standin_config=STANDIN_CONFIG)
        picked = [everything[i] for i in order]
        return {"train": picked[n_val + n_test:], "val": picked[:n_val], "test": picked[n_val:n_val + n_test]}

    def load_splits(self) -> dict[str, SeparationTracks]:
        out = {}
        for name, tracks in self.split_tracks().items():
            if self.preload:
                out[name] = FileTracks(tracks, sample_rate=_file_rate(tracks[0])).preload(self.sample_rate)
            else:
                out[name] = FileTracks(tracks, self.sample_rate)
        return out


def _file_rate(track: TrackFiles) -> int:
    return audio_info(track.mixture, layout=DSD100_LAYOUT, standin_config=STANDIN_CONFIG).samplerate
