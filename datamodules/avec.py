"""AVEC 2013 / AVEC 2014 depression corpora (AViD-Corpus; BDI-II labels) as speech segments for regression.

Both are distributed by licence from the AVEC organisers, one file per recording in partition folders,
with one BDI-II score per recording in ``<subject>_<session>_Depression.csv``. File names vary between
copies, so recordings are found by glob patterns and matched to labels by their ``<subject>_<session>``
prefix. Three layouts are read (``layout``):

``partitions`` (the AVEC release; default)::

    <data_dir>/**/Training/**/<subject>_<session>[_<anything>].wav        e.g. Audio/Training/203_1_cut_audio.wav
    <data_dir>/**/Development/**/<subject>_<session>[_<anything>].wav     (AVEC2014: .../Northwind/236_1_Northwind_audio.wav
    <data_dir>/**/Testing/**/<subject>_<session>[_<anything>].wav          and .../Freeform/236_1_Freeform_audio.wav)
    <data_dir>/**/{Training,Development,Testing}/**/<subject>_<session>_Depression.csv   one number: BDI-II

AVEC2014 is distributed as video (``*_video.mp4``); extract the audio first, e.g.
``ffmpeg -i 236_1_Northwind_video.mp4 -vn -ac 1 -ar 8000 236_1_Northwind_audio.wav``.

``manifest``: a CSV with columns ``path,recording_id,subject_id,split,bdi`` (paths relative to data_dir;
split train/dev/test; several rows with one recording_id are clips of one recording).

``segmented`` (the pre-cut layout of the authors' group, github fchest/CSENet)::

    <data_dir>/{train,dev,test}/<BDI, 2 digits>/<recording_id>/<clip>.wav

Preprocessing as DCCANet: 8 kHz mono, 3 s segments with a 1.5 s hop (the last partial window is
dropped; a recording shorter than one segment is zero-padded to one). Files not already 8 kHz mono are
decoded and resampled once into ``cache_dir`` (.npy, memory-mapped). Training draws segments with the
paper's depression-level-balanced sampler; the recording's score is the mean over its segments.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from datamodules.audio_io import audio_info, load_audio
from datamodules.base import BaseDataModule, DatasetError
from lightning_modules.batch import AUDIO, GROUP, TARGET

STANDIN_CONFIG = "experiments/dcca_demo.yaml"
SPLITS = ("train", "dev", "test")
AVEC_PARTITIONS = {"train": "Training", "dev": "Development", "test": "Testing"}
SESSION_PATTERN = re.compile(r"^(\d+)_(\d+)")

PARTITIONS_LAYOUT = """\
<data_dir>/**/Training/**/<subject>_<session>[_<task>][_<suffix>].wav
<data_dir>/**/Development/**/<subject>_<session>[_<task>][_<suffix>].wav
<data_dir>/**/Testing/**/<subject>_<session>[_<task>][_<suffix>].wav
<data_dir>/**/{Training,Development,Testing}/**/<subject>_<session>_Depression.csv   (one number: BDI-II)
(the patterns are --data.audio_glob and --data.label_glob; {partition} is Training/Development/Testing)"""
MANIFEST_LAYOUT = """\
<manifest>.csv with the header  path,recording_id,subject_id,split,bdi
  path: audio file, relative to <data_dir> or absolute; split: train, dev or test
  several rows with the same recording_id are clips of one recording"""
SEGMENTED_LAYOUT = "<data_dir>/{train,dev,test}/<BDI, 2 digits>/<recording_id>/<clip>.wav  (fchest/CSENet)"
LAYOUTS = {"partitions": PARTITIONS_LAYOUT, "manifest": MANIFEST_LAYOUT, "segmented": SEGMENTED_LAYOUT}


@dataclass(frozen=True)
class Recording:
    """One labelled recording: one long audio file, or the clips it was cut into."""

    recording_id: str  # unique name, e.g. "236_1_Northwind_audio"
    subject_id: str  # the speaker, e.g. "236"
    session_id: str  # "<subject>_<session>"; AVEC2013 and AVEC2014 share sessions (leakage checks)
    split: str  # train, dev or test
    score: float  # BDI-II
    paths: tuple[str, ...] = ()


def session_of(name: str) -> Optional[str]:
    match = SESSION_PATTERN.match(name)
    return f"{match.group(1)}_{match.group(2)}" if match else None


# --------------------------------------------------------------------------------------------
# Layout readers: data_dir -> recordings
# --------------------------------------------------------------------------------------------


def _read_score(path: Path) -> float:
    try:
        text = path.read_text().replace(",", " ").split()
        return float(text[0])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        raise DatasetError("Label file does not hold a BDI-II score (one number)", path=path,
                           layout=PARTITIONS_LAYOUT, standin_config=STANDIN_CONFIG) from None


def read_partitions(data_dir: Path, splits: Sequence[str] = SPLITS, audio_glob: str = "**/{partition}/**/*.wav",
                    label_glob: str = "**/{partition}/**/*_Depression.csv",
                    partitions: Optional[dict[str, str]] = None) -> list[Recording]:
    """The AVEC release: audio and ``*_Depression.csv`` labels under partition folders, matched by session."""
    partitions = {**AVEC_PARTITIONS, **(partitions or {})}
    recordings = []
    for split in splits:
        partition = partitions[split]
        audio = sorted(glob.glob(str(data_dir / audio_glob.format(partition=partition)), recursive=True))
        if not audio:
            videos = glob.glob(str(data_dir / "**" / partition / "**" / "*.mp4"), recursive=True)
            hint = ("Found .mp4 videos but no audio: extract it first, e.g. ffmpeg -i X_video.mp4 -vn -ac 1 -ar 8000 "
                    "X_audio.wav" if videos else None)
            raise DatasetError(f"No audio of the {partition} partition matches {audio_glob.format(partition=partition)!r} in",
                               path=data_dir, layout=PARTITIONS_LAYOUT, standin_config=STANDIN_CONFIG, hint=hint)
        labels: dict[str, tuple[float, Path]] = {}
        for label_path in map(Path, sorted(glob.glob(str(data_dir / label_glob.format(partition=partition)),
                                                     recursive=True))):
            session = session_of(label_path.name)
            if session is None:
                continue
            score = _read_score(label_path)
            if session in labels and labels[session][0] != score:
                raise DatasetError(f"Two labels disagree for session {session} ({labels[session][1]} says "
                                   f"{labels[session][0]})", path=label_path, layout=PARTITIONS_LAYOUT)
            labels[session] = (score, label_path)
        for path in map(Path, audio):
            session = session_of(path.name)
            if session is None:
                raise DatasetError("Audio file name does not start with <subject>_<session>", path=path,
                                   layout=PARTITIONS_LAYOUT, standin_config=STANDIN_CONFIG)
            if session not in labels:
                raise DatasetError(f"No label {session}_Depression.csv (pattern {label_glob.format(partition=partition)!r}) "
                                   "for audio file", path=path, layout=PARTITIONS_LAYOUT, standin_config=STANDIN_CONFIG)
            recordings.append(Recording(path.stem, session.split("_")[0], session, split, labels[session][0],
                                        (str(path),)))
    return recordings


def read_manifest(data_dir: Path, manifest: Path, splits: Sequence[str] = SPLITS) -> list[Recording]:
    """A CSV ``path,recording_id,subject_id,split,bdi``; rows sharing a recording_id are its clips."""
    if not manifest.is_file():
        raise DatasetError("Manifest not found", path=manifest, layout=MANIFEST_LAYOUT, standin_config=STANDIN_CONFIG)
    rows: dict[str, list[dict]] = defaultdict(list)
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "recording_id", "subject_id", "split", "bdi"} - set(reader.fieldnames or ())
        if missing:
            raise DatasetError(f"Manifest lacks the columns {sorted(missing)}", path=manifest, layout=MANIFEST_LAYOUT)
        for line, row in enumerate(reader, start=2):
            split = {"training": "train", "development": "dev", "testing": "test"}.get(row["split"].lower(),
                                                                                        row["split"].lower())
            if split not in SPLITS:
                raise DatasetError(f"Line {line}: split must be train, dev or test, got {row['split']!r}",
                                   path=manifest, layout=MANIFEST_LAYOUT)
            try:
                row["bdi"] = float(row["bdi"])
            except ValueError:
                raise DatasetError(f"Line {line}: bdi is not a number ({row['bdi']!r})", path=manifest,
                                   layout=MANIFEST_LAYOUT) from None
            row["split"] = split
            rows[row["recording_id"]].append(row)
    recordings = []
    for recording_id, clips in rows.items():
        first = clips[0]
        if any(c["split"] != first["split"] or c["bdi"] != first["bdi"] for c in clips):
            raise DatasetError(f"Rows of recording {recording_id} disagree on split or bdi", path=manifest,
                               layout=MANIFEST_LAYOUT)
        if first["split"] not in splits:
            continue
        paths = tuple(str(data_dir / c["path"]) if not os.path.isabs(c["path"]) else c["path"] for c in clips)
        recordings.append(Recording(recording_id, first["subject_id"], session_of(recording_id) or recording_id,
                                    first["split"], first["bdi"], paths))
    return recordings


def read_segmented(data_dir: Path, splits: Sequence[str] = SPLITS) -> list[Recording]:
    """``<split>/<BDI>/<recording_id>/<clip>.wav``: the score is the folder name."""
    recordings = []
    for split in splits:
        split_dir = data_dir / split
        if not split_dir.is_dir():
            raise DatasetError(f"No {split} folder", path=split_dir, layout=SEGMENTED_LAYOUT,
                               standin_config=STANDIN_CONFIG)
        for score_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            try:
                score = float(score_dir.name)
            except ValueError:
                raise DatasetError("Folder name is not a BDI-II score", path=score_dir, layout=SEGMENTED_LAYOUT) from None
            for recording_dir in sorted(p for p in score_dir.iterdir() if p.is_dir()):
                clips = tuple(sorted(str(p) for p in recording_dir.glob("*.wav")))
                if not clips:
                    raise DatasetError("No .wav clips in recording folder", path=recording_dir, layout=SEGMENTED_LAYOUT)
                name = recording_dir.name
                session = session_of(name) or name
                recordings.append(Recording(name, session.split("_")[0], session, split, score, clips))
    return recordings


# --------------------------------------------------------------------------------------------
# Audio sources and segments
# --------------------------------------------------------------------------------------------


class ArrayAudio:
    """Audio held as an array (stand-in, or a memory-mapped .npy cache opened lazily in each worker)."""

    def __init__(self, array: Optional[np.ndarray] = None, npy_path: Optional[str] = None):
        self._array = array
        self.npy_path = npy_path
        self.num_samples = len(array) if array is not None else len(np.load(npy_path, mmap_mode="r"))

    def read(self, start: int, frames: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.npy_path, mmap_mode="r")
        return np.asarray(self._array[start:start + frames], dtype=np.float32)


class FileAudio:
    """A mono file already at the target rate: each segment is a windowed soundfile read."""

    def __init__(self, path: str, num_samples: int, layout: Optional[str] = None):
        self.path, self.num_samples, self.layout = path, num_samples, layout

    def read(self, start: int, frames: int) -> np.ndarray:
        return load_audio(self.path, start=start, frames=frames, layout=self.layout, standin_config=STANDIN_CONFIG)[0]


def segment_starts(num_samples: int, segment_samples: int, hop_samples: int) -> np.ndarray:
    """Window starts with the last partial window dropped; one (zero-padded) window if shorter than one."""
    if num_samples <= segment_samples:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, num_samples - segment_samples + 1, hop_samples, dtype=np.int64)


class SegmentDataset(Dataset):
    """Every segment of every recording: items ``{"audio": (segment_samples,), "target", "group"}``
    (lightning_modules/batch.py), ``group`` the integer index of the segment's recording.

    Args:
        recordings: the recordings (their order gives the integer ``group`` of the batch).
        sources: for each recording, its audio sources (one file, or its clips) with ``num_samples`` and
            ``read(start, frames)``.
    """

    def __init__(self, recordings: Sequence[Recording], sources: Sequence[Sequence], segment_samples: int,
                 hop_samples: int):
        if len(recordings) != len(sources):
            raise ValueError(f"{len(recordings)} recordings but {len(sources)} source lists")
        self.recordings = list(recordings)
        self.sources = [list(s) for s in sources]
        self.segment_samples, self.hop_samples = segment_samples, hop_samples
        rows = [(r, s, start) for r, recording_sources in enumerate(self.sources)
                for s, source in enumerate(recording_sources)
                for start in segment_starts(source.num_samples, segment_samples, hop_samples)]
        index = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self.recording_index, self.source_index, self.starts = index[:, 0], index[:, 1], index[:, 2]
        self.scores = np.asarray([r.score for r in self.recordings], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        r = int(self.recording_index[index])
        audio = self.sources[r][int(self.source_index[index])].read(int(self.starts[index]), self.segment_samples)
        if len(audio) < self.segment_samples:
            audio = np.pad(audio, (0, self.segment_samples - len(audio)))
        return {AUDIO: torch.from_numpy(np.array(audio, dtype=np.float32)),
                TARGET: torch.tensor(self.scores[r]), GROUP: torch.tensor(r, dtype=torch.int64)}


class ScoreBalancedSampler(Sampler[int]):
    """DCCANet's depression-level-balanced sampling.

    Subjects are grouped by their score; each round takes ``segments_per_group`` consecutive segments from
    every score group, from the group's subjects in turn (each subject continues where it stopped, wrapping
    around), so every score level contributes the same number of segments per epoch and the subjects of a
    level are used evenly. The chunks of an epoch are shuffled (whole chunks), seeded by ``seed + epoch``;
    the rotation is a function of the global round number, so a resumed run continues it. The epoch
    advances on every ``__iter__`` too (under DDP Lightning wraps the sampler and never calls set_epoch).
    """

    def __init__(self, dataset: SegmentDataset, segments_per_group: int = 8, rounds_per_epoch: int = 160,
                 seed: int = 0):
        if segments_per_group < 1 or rounds_per_epoch < 1:
            raise ValueError("segments_per_group and rounds_per_epoch must be >= 1")
        self.segments_per_group, self.rounds_per_epoch, self.seed = segments_per_group, rounds_per_epoch, seed
        self.epoch = 0
        units: dict[tuple[float, str], list[np.ndarray]] = defaultdict(list)
        for r, recording in enumerate(dataset.recordings):
            units[(recording.score, recording.subject_id)].append(np.flatnonzero(dataset.recording_index == r))
        groups: dict[float, list[np.ndarray]] = defaultdict(list)
        for (score, _), segments in sorted(units.items()):
            groups[score].append(np.concatenate(segments))  # a subject's segments in recording order
        self.groups = [groups[score] for score in sorted(groups)]
        rng = np.random.default_rng(seed)
        self.offsets = [[int(rng.integers(len(u))) for u in subjects] for subjects in self.groups]

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rounds_per_epoch * self.num_groups * self.segments_per_group

    def epoch_chunks(self, epoch: int) -> np.ndarray:
        """(rounds * groups, segments_per_group) segment indices of ``epoch``, before shuffling."""
        k = self.segments_per_group
        chunks = []
        for round_ in range(epoch * self.rounds_per_epoch, (epoch + 1) * self.rounds_per_epoch):
            for subjects, offsets in zip(self.groups, self.offsets):
                turn = round_ % len(subjects)
                visit = round_ // len(subjects)
                segments = subjects[turn]
                chunks.append(segments[(offsets[turn] + visit * k + np.arange(k)) % len(segments)])
        return np.stack(chunks)

    def __iter__(self) -> Iterator[int]:
        chunks = self.epoch_chunks(self.epoch)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(chunks), generator=generator).numpy()
        return iter(chunks[order].reshape(-1).tolist())


# --------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------


class SegmentedSpeechDataModule(BaseDataModule):
    """Recordings cut into fixed-length segments for segment-level regression; subclasses list recordings.

    Args:
        sample_rate: audio rate of the segments (DCCANet: 8000).
        segment_seconds, hop_seconds: segment length and hop (DCCANet: 3.0 and 1.5).
        sampler: "balanced" (ScoreBalancedSampler, the paper's) or "shuffle" (every segment once per epoch).
        segments_per_group, rounds_per_epoch: of the balanced sampler (8, and 160 rounds as fchest/CSENet).
        seed: the sampler's seed.
    """

    def __init__(self, sample_rate: int = 8000, segment_seconds: float = 3.0, hop_seconds: float = 1.5,
                 sampler: Literal["balanced", "shuffle"] = "balanced", segments_per_group: int = 8,
                 rounds_per_epoch: int = 160, seed: int = 0, batch_size: int = 64, num_workers: int = 2,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if sampler not in ("balanced", "shuffle"):
            raise ValueError(f"sampler must be 'balanced' or 'shuffle', got {sampler!r}")
        self.sample_rate = sample_rate
        self.segment_samples = int(round(segment_seconds * sample_rate))
        self.hop_samples = int(round(hop_seconds * sample_rate))
        self.sampler = sampler
        self.segments_per_group, self.rounds_per_epoch, self.seed = segments_per_group, rounds_per_epoch, seed
        self.train_target_mean: Optional[float] = None

    def recordings_and_sources(self) -> list[tuple[Recording, list]]:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        by_split: dict[str, list[tuple[Recording, list]]] = defaultdict(list)
        for recording, sources in self.recordings_and_sources():
            by_split[recording.split].append((recording, sources))
        sets = {}
        for split in SPLITS:
            if not by_split[split]:
                raise DatasetError(f"No {split} recordings", path=getattr(self, "data_dir", None),
                                   layout=getattr(self, "layout_description", None), standin_config=STANDIN_CONFIG)
            recordings, sources = zip(*by_split[split])
            sets[split] = SegmentDataset(recordings, sources, self.segment_samples, self.hop_samples)
        self.train_set, self.val_set, self.test_set = sets["train"], sets["dev"], sets["test"]
        self.train_target_mean = float(self.train_set.scores.mean())

    def train_sampler(self, dataset: Dataset) -> Optional[Sampler]:
        if self.sampler == "shuffle":
            return None
        return ScoreBalancedSampler(dataset, self.segments_per_group, self.rounds_per_epoch, self.seed)


class AVECDataModule(SegmentedSpeechDataModule):
    """AVEC2013 or AVEC2014 (see the module docstring for the layouts), optionally with the other corpus's
    train(+dev) recordings added to training (DCCANet's cross-dataset augmentation).

    Args:
        data_dir: the corpus root.
        layout: "partitions" (the AVEC release), "manifest" or "segmented" (fchest/CSENet's clips).
        audio_glob, label_glob: patterns under data_dir for the "partitions" layout; ``{partition}`` is
            replaced by Training, Development or Testing.
        manifest: the CSV for the "manifest" layout; ``None`` = ``<data_dir>/manifest.csv``.
        extra_train_dir, extra_train_layout, extra_train_manifest, extra_train_splits: the other corpus,
            whose recordings of ``extra_train_splits`` join training -- except sessions that are in this
            corpus's test set (AVEC2013 and AVEC2014 share sessions).
        cache_dir: where files that are not already mono at ``sample_rate`` are decoded and resampled to
            (.npy); ``None`` = ``<data_dir>/.cache_<rate>hz``.
    """

    def __init__(self, data_dir: str, layout: Literal["partitions", "manifest", "segmented"] = "partitions",
                 audio_glob: str = "**/{partition}/**/*.wav", label_glob: str = "**/{partition}/**/*_Depression.csv",
                 manifest: Optional[str] = None, extra_train_dir: Optional[str] = None,
                 extra_train_layout: Literal["partitions", "manifest", "segmented"] = "partitions",
                 extra_train_manifest: Optional[str] = None, extra_train_splits: Sequence[str] = ("train", "dev"),
                 cache_dir: Optional[str] = None, sample_rate: int = 8000, segment_seconds: float = 3.0,
                 hop_seconds: float = 1.5, sampler: Literal["balanced", "shuffle"] = "balanced",
                 segments_per_group: int = 8, rounds_per_epoch: int = 160, seed: int = 0, batch_size: int = 64,
                 num_workers: int = 4, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(sample_rate, segment_seconds, hop_seconds, sampler, segments_per_group, rounds_per_epoch,
                         seed, batch_size, num_workers, pin_memory, eval_batch_size)
        if layout not in LAYOUTS or extra_train_layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}")
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.layout, self.layout_description = layout, LAYOUTS[layout]
        self.audio_glob, self.label_glob, self.manifest = audio_glob, label_glob, manifest
        self.extra_train_dir = None if extra_train_dir is None else Path(os.path.expanduser(str(extra_train_dir)))
        self.extra_train_layout, self.extra_train_manifest = extra_train_layout, extra_train_manifest
        self.extra_train_splits = tuple(extra_train_splits)
        self.cache_dir = (self.data_dir / f".cache_{sample_rate}hz" if cache_dir is None
                          else Path(os.path.expanduser(str(cache_dir))))

    def _read(self, root: Path, layout: str, manifest: Optional[str], splits: Sequence[str]) -> list[Recording]:
        if not root.is_dir():
            raise DatasetError("Dataset folder not found", path=root, layout=LAYOUTS[layout],
                               standin_config=STANDIN_CONFIG)
        if layout == "partitions":
            return read_partitions(root, splits, self.audio_glob, self.label_glob)
        if layout == "manifest":
            return read_manifest(root, Path(manifest) if manifest else root / "manifest.csv", splits)
        return read_segmented(root, splits)

    def recordings(self) -> list[Recording]:
        """This corpus's recordings, then the extra training recordings (split "train")."""
        recordings = self._read(self.data_dir, self.layout, self.manifest, SPLITS)
        if self.extra_train_dir is not None:
            test_sessions = {r.session_id for r in recordings if r.split == "test"}
            extra = self._read(self.extra_train_dir, self.extra_train_layout, self.extra_train_manifest,
                               self.extra_train_splits)
            names = {r.recording_id for r in recordings}
            recordings += [Recording(f"extra/{r.recording_id}" if r.recording_id in names else r.recording_id,
                                     r.subject_id, r.session_id, "train", r.score, r.paths)
                           for r in extra if r.session_id not in test_sessions]
        return recordings

    # -- decoding: files at the target rate are read in windows; others are resampled once into the cache --
    def _cache_path(self, path: str) -> Path:
        digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
        return self.cache_dir / f"{Path(path).stem}_{digest}.npy"

    def _needs_cache(self, path: str) -> tuple[bool, int]:
        info = audio_info(path, layout=self.layout_description, standin_config=STANDIN_CONFIG)
        return (info.samplerate != self.sample_rate or info.channels != 1), info.frames

    def _cached(self, path: str) -> ArrayAudio:
        target = self._cache_path(path)
        if not target.is_file() or target.stat().st_mtime < os.stat(path).st_mtime:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass
            if not os.access(self.cache_dir, os.W_OK):
                raise DatasetError("Cannot write the resampled-audio cache", path=self.cache_dir,
                                   hint="Pass a writable folder with --data.cache_dir.")
            audio, _ = load_audio(path, self.sample_rate, layout=self.layout_description, standin_config=STANDIN_CONFIG)
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, audio)
            os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
        return ArrayAudio(npy_path=str(target))

    def _source(self, path: str):
        needs_cache, frames = self._needs_cache(path)
        if needs_cache:
            return self._cached(path)
        if frames == 0:
            raise DatasetError("Audio file has no samples", path=path, layout=self.layout_description,
                               standin_config=STANDIN_CONFIG)
        return FileAudio(path, frames, self.layout_description)

    def prepare_data(self) -> None:
        # Rank 0 of each node fills the cache; setup() on every rank then finds it.
        for recording in self.recordings():
            for path in recording.paths:
                self._source(path)

    def recordings_and_sources(self) -> list[tuple[Recording, list]]:
        return [(r, [self._source(p) for p in r.paths]) for r in self.recordings()]
