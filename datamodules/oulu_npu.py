"""OULU-NPU (Boulkenafet et al., FG 2017): 5,940 videos of 55 subjects, 6 phones, 3 sessions; 1 bona fide and
4 attacks (2 printers, 2 displays) per subject, session and phone; 4 protocols (P3 and P4: 6 leave-one-phone-out
sub-protocols each), with fixed Train / Dev / Test subject sets.

File names ``<Phone>_<Session>_<User>_<File>``: File 1 = real access, 2-3 = print attacks (printer 1, 2), 4-5 =
video replay attacks (display 1, 2). Labels here: 0 bona fide, 1 print, 2 replay (APCER is the worse of the two).
The distribution's ``<name>.txt`` next to a video (per frame: ``frame, x_left_eye, y_left_eye, x_right_eye,
y_right_eye``) gives the face box when present (a square of 2x the eye distance around a point 0.4x the eye
distance below the eyes' midpoint, then the 1.2 margin), else the Haar detector.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.face_antispoofing import FaceAntiSpoofingDataModule, Split, VideoItem

LAYOUT = """<data_dir>/
  Train_files/<Phone>_<Session>_<User>_<File>.avi   (File 1 live, 2-3 print, 4-5 replay)
  Train_files/<Phone>_<Session>_<User>_<File>.txt   (optional: eye positions per frame)
  Dev_files/...   Test_files/...
  Protocols/Protocol_1/{Train,Dev,Test}.txt         lines like "+1,1_1_01_1"
  Protocols/Protocol_2/{Train,Dev,Test}.txt
  Protocols/Protocol_3/{Train,Dev,Test}_{1..6}.txt
  Protocols/Protocol_4/{Train,Dev,Test}_{1..6}.txt"""

_FOLDERS = {"train": "Train", "val": "Dev", "test": "Test"}


def oulu_label(name: str) -> int:
    """0 bona fide (File 1), 1 print (2-3), 2 replay (4-5) from a ``<Phone>_<Session>_<User>_<File>`` name."""
    file_id = int(name.split("_")[3])
    if file_id not in (1, 2, 3, 4, 5):
        raise ValueError(f"OULU-NPU file id must be 1-5, got {name}")
    return 0 if file_id == 1 else 1 if file_id in (2, 3) else 2


class OuluNPUDataModule(FaceAntiSpoofingDataModule):
    """OULU-NPU by protocol: ``protocol`` 1-4, ``sub_protocol`` 1-6 for protocols 3 and 4 (None otherwise).
    Train / Dev / Test are the protocol's lists; the threshold comes from Dev (the task's validation set).
    Other arguments: ``FaceAntiSpoofingDataModule``'s."""

    attack_types = ("print", "replay")
    layout = LAYOUT

    def __init__(self, data_dir: str, protocol: int = 1, sub_protocol: Optional[int] = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        if protocol not in (1, 2, 3, 4):
            raise ValueError(f"OULU-NPU protocol must be 1-4, got {protocol}")
        if protocol in (3, 4) and sub_protocol not in range(1, 7):
            raise ValueError(f"OULU-NPU protocol {protocol} needs sub_protocol 1-6, got {sub_protocol}")
        if protocol in (1, 2) and sub_protocol is not None:
            raise ValueError(f"OULU-NPU protocol {protocol} has no sub-protocols")
        self.protocol, self.sub_protocol = protocol, sub_protocol

    def protocol_file(self, split: Split) -> Path:
        suffix = f"_{self.sub_protocol}" if self.sub_protocol is not None else ""
        return self.data_dir / "Protocols" / f"Protocol_{self.protocol}" / f"{_FOLDERS[split]}{suffix}.txt"

    def list_split(self, split: Split) -> list[VideoItem]:
        self.require_dir(self.data_dir)
        listing = self.protocol_file(split)
        if not listing.is_file():
            raise self.error("OULU-NPU protocol list not found", listing)
        folder = self.require_dir(self.data_dir / f"{_FOLDERS[split]}_files")
        items = []
        for line in listing.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            name = line.split(",")[-1].strip()
            parts = name.split("_")
            if len(parts) != 4:
                raise self.error(f"OULU-NPU: malformed line {line!r} in the protocol list", listing)
            path = folder / f"{name}.avi"
            if not path.is_file():
                raise self.error("OULU-NPU video listed in the protocol not found", path)
            items.append(VideoItem(path, oulu_label(name), int(parts[2]), f"{folder.name}/{name}"))
        if not items:
            raise self.error("OULU-NPU protocol list is empty", listing)
        return items

    def face_box(self, item: VideoItem, frame_index: int, frame: np.ndarray):
        eyes = self._eyes(item)
        row = None if eyes is None else eyes.get(frame_index, eyes.get(frame_index + 1))  # 0- or 1-based files
        if row is not None:
            xl, yl, xr, yr = row
            distance = float(np.hypot(xr - xl, yr - yl))
            if distance > 1:
                side = 2.0 * distance
                cx, cy = (xl + xr) / 2.0, (yl + yr) / 2.0 + 0.4 * distance
                return cx - side / 2, cy - side / 2, side, side
        return super().face_box(item, frame_index, frame)

    def _eyes(self, item: VideoItem) -> Optional[dict[int, tuple[float, float, float, float]]]:
        cache = self.__dict__.setdefault("_eye_cache", {})
        if item.path not in cache:
            path = item.path.with_suffix(".txt")
            rows = {}
            if path.is_file():
                for line in path.read_text().splitlines():
                    values = [v for v in line.replace(",", " ").split() if v]
                    if len(values) >= 5:
                        rows[int(float(values[0]))] = tuple(float(v) for v in values[1:5])
            cache.clear()  # one video at a time
            cache[item.path] = rows or None
        return cache[item.path]
