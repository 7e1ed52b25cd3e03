"""Idiap Replay-Attack (Chingovska et al., BIOSIG 2012): 1,200 videos of 50 clients in train (15 clients) /
devel (15) / test (20); bona fide under controlled and adverse light, attacks hand-held or on a fixed support.

Attack names ``attack_<device>_client<id>_session01_<quality>_<medium>_<light>.mov`` with device ``print`` (printed
photo), or ``mobile`` / ``highdef`` showing a ``photo`` or a ``video``: labels 1 print, 2 digital photo, 3 video
replay; bona fide ``real/client<id>_session01_webcam_authenticate_<light>_<n>.mov`` (label 0). HTER at the devel
set's EER threshold (the task's validation set). The distribution's ``face-locations/<split>/.../<name>.face``
files (per frame ``frame x y w h``) give the face boxes when present, else the Haar detector.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from datamodules.face_antispoofing import FaceAntiSpoofingDataModule, Split, VideoItem

LAYOUT = """<data_dir>/
  train/real/*.mov   train/attack/fixed/*.mov   train/attack/hand/*.mov
  devel/...          test/...
  face-locations/{train,devel,test}/.../<name>.face   (optional: per frame "frame x y w h")"""

_FOLDERS = {"train": "train", "val": "devel", "test": "test"}
_CLIENT = re.compile(r"client(\d+)")


def replay_attack_label(name: str) -> int:
    """0 real, 1 printed photo, 2 digital photo (mobile / highdef), 3 video replay."""
    if not name.startswith("attack"):
        return 0
    if name.startswith("attack_print"):
        return 1
    return 3 if "_video_" in name else 2


class ReplayAttackDataModule(FaceAntiSpoofingDataModule):
    """Replay-Attack with its train / devel / test split. Arguments: ``FaceAntiSpoofingDataModule``'s."""

    attack_types = ("print", "photo", "video")
    layout = LAYOUT

    def list_split(self, split: Split) -> list[VideoItem]:
        root = self.require_dir(self.require_dir(self.data_dir) / _FOLDERS[split])
        videos = sorted(self.require_dir(root / "real").glob("*.mov"))
        attack = self.require_dir(root / "attack")
        videos += sorted(attack.glob("*/*.mov"))
        items = []
        for video in videos:
            match = _CLIENT.search(video.name)
            if match is None:
                raise self.error("Replay-Attack: no client id in the file name", video)
            relative = video.relative_to(self.data_dir).with_suffix("").as_posix()
            items.append(VideoItem(video, replay_attack_label(video.name), int(match.group(1)), relative))
        if not any(i.label == 0 for i in items) or not any(i.label for i in items):
            raise self.error("Replay-Attack: a split needs real and attack videos", root)
        return items

    def face_box(self, item: VideoItem, frame_index: int, frame: np.ndarray):
        boxes = self._boxes(item)
        if boxes and frame_index in boxes and boxes[frame_index][2] > 0:
            return boxes[frame_index]
        return super().face_box(item, frame_index, frame)

    def _boxes(self, item: VideoItem) -> Optional[dict[int, tuple[float, float, float, float]]]:
        cache = self.__dict__.setdefault("_box_cache", {})
        if item.path not in cache:
            path = self.data_dir / "face-locations" / f"{item.relative}.face"
            rows = {}
            if path.is_file():
                for line in path.read_text().splitlines():
                    values = line.split()
                    if len(values) >= 5:
                        rows[int(values[0])] = tuple(float(v) for v in values[1:5])
            cache.clear()
            cache[item.path] = rows or None
        return cache[item.path]
