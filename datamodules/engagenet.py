"""EngageNet (Singh et al., ICMI 2023) as facial-landmark clips (the engagement ST-GCN paper).

10-s clips of 127 students at 30 fps, four ordinal engagement levels. The release (on request) ships the videos,
``final_labels.csv`` (clip -> label string, as read by the authors' baselines, engagenet_baselines) and the
subject-independent clip lists ``train.txt`` / ``valid.txt`` / ``test.txt`` (test labels are not released).
Clips labelled 'SNP(Subject Not Present)' are excluded, as in the baselines. The landmarks are extracted once
(``python -m datamodules.face_landmarks extract``) into ``landmarks/<clip id>.npy``.

Split (the paper's protocol): train on ``train.txt``, report on ``valid.txt`` (the test set's labels are not
public): the test loader is ``valid.txt``; the validation loader is the same clips (monitoring only: the
paper's model is the final epoch, so its configs test ``last.ckpt``).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from datamodules.face_landmarks import LANDMARK_LAYOUT, LandmarkClip, LandmarkClipDataModule

CLASSES = ("Not-Engaged", "Barely-Engaged", "Engaged", "Highly-Engaged")
SNP = "snp(subject not present)"
_LABELS = {name.lower(): i for i, name in enumerate(CLASSES)}
_ID_COLUMNS = ("chunk", "clip", "clip_id", "video", "video_id", "name", "file", "filename", "id")
_LABEL_COLUMNS = ("label", "labels", "engagement", "engagement_level", "class")

LAYOUT = """\
<root>/final_labels.csv            clip id (first column, or chunk/clip/video/name/file/id), label (label column, else
                                   the last): Not-Engaged | Barely-Engaged | Engaged | Highly-Engaged | SNP(Subject
                                   Not Present) (or 0-3); a '.mp4' suffix on ids is ignored
<root>/train.txt, <root>/valid.txt one clip id per line (test.txt optional: its labels are not released)
""" + LANDMARK_LAYOUT


def parse_label(value: str) -> Optional[int]:
    """Class index of a label string or digit; None for SNP (excluded). Unknown values raise ValueError."""
    text = value.strip()
    if text.lower() == SNP or text.lower().startswith("snp"):
        return None
    if text.isdigit() and int(text) < len(CLASSES):
        return int(text)
    if text.lower() in _LABELS:
        return _LABELS[text.lower()]
    raise ValueError(f"unknown EngageNet label {value!r} (expected one of {list(CLASSES)} or SNP)")


def clip_id(text: str) -> str:
    return Path(text.strip()).name.removesuffix(".mp4")


class EngageNetDataModule(LandmarkClipDataModule):
    """EngageNet landmark clips; see the module doc for the layout and split.

    Args:
        data_dir: the release root (``final_labels.csv``, ``train.txt``, ``valid.txt``, ``landmarks/``).
        num_frames: clips padded/cropped to 300 frames (10 s at 30 fps).
        Others: ``LandmarkClipDataModule``.
    """

    classes = CLASSES
    layout = LAYOUT
    standin_config = "experiments/engagement_stgcn_demo.yaml"

    def __init__(self, data_dir: str = "data/engagenet", num_frames: Optional[int] = 300, **kwargs):
        super().__init__(data_dir=data_dir, num_frames=num_frames, **kwargs)

    def read_labels(self) -> dict[str, Optional[int]]:
        path = self.data_dir / "final_labels.csv"
        if not path.is_file():
            raise self.error("EngageNet label file missing", path)
        with open(path, newline="") as file:
            rows = list(csv.reader(file))
        if len(rows) < 2:
            raise self.error("EngageNet label file has no rows", path)
        header = [h.strip().lower() for h in rows[0]]
        id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), 0)
        label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), len(header) - 1)
        if id_col == label_col:
            raise self.error("EngageNet label file needs a clip column and a label column", path)
        labels = {}
        for line, row in enumerate(rows[1:], start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            try:
                labels[clip_id(row[id_col])] = parse_label(row[label_col])
            except (ValueError, IndexError) as error:
                raise self.error(f"bad row {line} in the label file ({error})", path) from error
        return labels

    def read_list(self, name: str) -> list[str]:
        path = self.data_dir / name
        if not path.is_file():
            raise self.error(f"EngageNet split list {name} missing", path)
        return [clip_id(line) for line in path.read_text().splitlines() if line.strip()]

    def list_clips(self) -> dict[str, list[LandmarkClip]]:
        if not self.data_dir.is_dir():
            raise self.error("EngageNet folder not found", self.data_dir)
        labels = self.read_labels()
        splits = {}
        for split, file in (("train", "train.txt"), ("test", "valid.txt")):
            clips = []
            for cid in self.read_list(file):
                if cid not in labels:
                    raise self.error(f"clip {cid} of {file} has no label in final_labels.csv",
                                     self.data_dir / "final_labels.csv")
                if labels[cid] is not None:  # SNP clips are excluded
                    clips.append(LandmarkClip(self.landmark_path(cid), labels[cid], cid))
            splits[split] = clips
        splits["val"] = splits["test"]
        return splits
