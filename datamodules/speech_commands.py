"""Speech Commands V2 (Warden, 2018), 35 words, in its released layout, with the official split.

Download: http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz (2.3 GB), extracted as is.
Train = every clip of a word folder not listed in validation_list.txt or testing_list.txt (84,843 /
9,981 / 11,005 clips); ``_background_noise_`` is not a class and is skipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from datamodules.audio_io import AudioClipDataset
from datamodules.base import BaseDataModule, DatasetError

STANDIN_CONFIG = "experiments/asda_demo.yaml"
WORDS = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
         "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
         "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
OFFICIAL_SPLIT_SIZES = {"train": 84843, "val": 9981, "test": 11005}

LAYOUT = """\
<data_dir>/                          (speech_commands_v0.02.tar.gz extracted)
  validation_list.txt                one relative path per line, e.g. right/bb05582b_nohash_3.wav
  testing_list.txt
  <word>/<speaker>_nohash_<k>.wav    35 word folders: backward, bed, ..., zero (1 s, 16 kHz)
  _background_noise_/                (ignored)"""


class SpeechCommandsDataModule(BaseDataModule):
    """Speech Commands V2, 35 classes (index = position of the word in ``WORDS``, alphabetical), 1 s clips."""

    num_classes = len(WORDS)

    def __init__(self, data_dir: str = "data/speech_commands_v0.02", clip_seconds: float = 1.0,
                 sample_rate: int = 16000, batch_size: int = 256, num_workers: int = 8,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.clip_seconds, self.sample_rate = clip_seconds, sample_rate

    def _error(self, problem: str, path) -> DatasetError:
        return DatasetError(problem, path=path, layout=LAYOUT, standin_config=STANDIN_CONFIG)

    def _read_list(self, name: str) -> list[str]:
        path = self.data_dir / name
        if not path.is_file():
            raise self._error("Speech Commands split list not found", path)
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def splits(self) -> dict[str, list[str]]:
        """Relative clip paths of each split, sorted."""
        if not self.data_dir.is_dir():
            raise self._error("Speech Commands folder not found", self.data_dir)
        held_out = {"val": self._read_list("validation_list.txt"), "test": self._read_list("testing_list.txt")}
        listed = set(held_out["val"]) | set(held_out["test"])
        train = []
        for word in WORDS:
            folder = self.data_dir / word
            if not folder.is_dir():
                raise self._error(f"Speech Commands word folder '{word}' not found", folder)
            train += [f"{word}/{name}" for name in os.listdir(folder)
                      if name.endswith(".wav") and f"{word}/{name}" not in listed]
        for split, paths in held_out.items():
            for rel in paths:
                if rel.split("/")[0] not in WORDS:
                    raise self._error(f"{split} list entry '{rel}' is not in one of the 35 word folders",
                                      self.data_dir / ("validation_list.txt" if split == "val" else "testing_list.txt"))
                if not (self.data_dir / rel).is_file():
                    raise self._error("Audio file listed in the official split not found", self.data_dir / rel)
        return {"train": sorted(train), "val": sorted(held_out["val"]), "test": sorted(held_out["test"])}

    def _dataset(self, relative_paths: list[str]) -> AudioClipDataset:
        targets = [WORDS.index(rel.split("/")[0]) for rel in relative_paths]
        return AudioClipDataset([str(self.data_dir / rel) for rel in relative_paths], targets, self.sample_rate,
                                self.clip_seconds, layout=LAYOUT, standin_config=STANDIN_CONFIG)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.test_set is not None:
            return
        splits = self.splits()
        self.train_set, self.val_set, self.test_set = (self._dataset(splits[s]) for s in ("train", "val", "test"))
