"""Online SE (Thomas et al., 2022; on request from IIIT Bangalore) as facial-landmark clips (the engagement
ST-GCN paper's binary dataset): 10-s Zoom clips of 6 students at 24 fps, Not-Engaged / Engaged, split
3,190 / 1,660 / 1,290 (train / validation / test).

The release's file layout is not public, so this reader takes one CSV per split of the paper's split, clip ids and
labels, beside the landmark cache (``python -m datamodules.face_landmarks extract``); see ``LAYOUT``.
"""
from __future__ import annotations

import csv
from typing import Optional

from datamodules.face_landmarks import LANDMARK_LAYOUT, LandmarkClip, LandmarkClipDataModule
from datamodules.engagenet import clip_id

CLASSES = ("Not-Engaged", "Engaged")
_LABELS = {"not-engaged": 0, "not engaged": 0, "notengaged": 0, "disengaged": 0, "0": 0, "engaged": 1, "1": 1}
SPLIT_FILES = {"train": "train.csv", "val": "validation.csv", "test": "test.csv"}

LAYOUT = """\
<root>/train.csv, <root>/validation.csv, <root>/test.csv
                                   header 'clip,label'; label Engaged | Not-Engaged (or 1 | 0); a '.mp4' suffix is ignored
""" + LANDMARK_LAYOUT


class OnlineSEDataModule(LandmarkClipDataModule):
    """Online SE landmark clips (binary). ``num_frames`` 240 (10 s at 24 fps). Others: ``LandmarkClipDataModule``."""

    classes = CLASSES
    layout = LAYOUT
    standin_config = "experiments/engagement_stgcn_demo_binary.yaml"

    def __init__(self, data_dir: str = "data/online_se", num_frames: Optional[int] = 240, **kwargs):
        super().__init__(data_dir=data_dir, num_frames=num_frames, **kwargs)

    def read_split(self, split: str) -> list[LandmarkClip]:
        path = self.data_dir / SPLIT_FILES[split]
        if not path.is_file():
            raise self.error(f"Online SE {split} list missing", path)
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "clip" not in fields or "label" not in fields:
                raise self.error(f"Online SE list needs the columns clip,label, has {fields}", path)
            clips = []
            for line, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                label = _LABELS.get(row["label"].lower())
                if label is None:
                    raise self.error(f"row {line}: unknown label {row['label']!r} (Engaged or Not-Engaged)", path)
                cid = clip_id(row["clip"])
                clips.append(LandmarkClip(self.landmark_path(cid), label, cid))
        return clips

    def list_clips(self) -> dict[str, list[LandmarkClip]]:
        if not self.data_dir.is_dir():
            raise self.error("Online SE folder not found", self.data_dir)
        return {split: self.read_split(split) for split in SPLIT_FILES}
