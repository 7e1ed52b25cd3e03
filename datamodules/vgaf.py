"""VGAF (Video Group AFfect, EmotiW 2020; Sharma et al.): 4,183 in-the-wild group videos, three group valence
classes (Positive, Neutral, Negative); train 2,661 / val 766 / test 756 (test labels not public).

GER-STGAT's protocol: train on Train, report on Val (the test labels are not released): the test loader is Val and
the validation loader is the same clips (monitoring only: the configs test the final epoch's model).

Layout of the release: ``Train/*.mp4``, ``Val/*.mp4`` and one label file per split, ``Train_labels.txt`` /
``Val_labels.txt`` (a header ``Vid_name Label``, then ``<video name> <label>``, labels 1 Positive, 2 Neutral,
3 Negative or the names; whitespace or comma separated). Instead of the label files a manifest CSV per split
(``train.csv`` / ``val.csv``: ``path,label``) is accepted. The features are extracted once into
``features/<video id>.npz`` (``datamodules.group_video_features``).
"""
from __future__ import annotations

import re
from pathlib import Path

from datamodules.group_video_features import (FEATURE_LAYOUT, GroupVideo, GroupVideoDataModule, parse_label,
                                              read_manifest)

LAYOUT = """\
<root>/Train/*.mp4, <root>/Val/*.mp4     the clips (only needed for the feature extraction)
<root>/Train_labels.txt, Val_labels.txt  header 'Vid_name Label', then '<video name> <label>' per line, label 1 Positive,
                                         2 Neutral, 3 Negative (or the names); or manifests <root>/train.csv, val.csv
                                         ('path,label')
""" + FEATURE_LAYOUT + """
                                   e.g. python -m datamodules.group_video_features extract --videos <root>/Train --out <root>/features --frames 20
                                        (and the same for <root>/Val)"""


class VGAFDataModule(GroupVideoDataModule):
    """VGAF feature caches; see the module doc for the layout and split.

    Args:
        data_dir: the release root.
        num_frames: T = 20 (the paper's).
        Others: ``GroupVideoDataModule``.
    """

    layout = LAYOUT

    def __init__(self, data_dir: str = "data/vgaf", num_frames: int = 20, **kwargs):
        super().__init__(data_dir=data_dir, num_frames=num_frames, **kwargs)

    def read_split(self, split: str) -> list[tuple[str, int]]:
        labels = self.data_dir / f"{split}_labels.txt"
        manifest = self.data_dir / f"{split.lower()}.csv"
        try:
            if labels.is_file():
                rows = []
                for line in labels.read_text().splitlines():
                    fields = [f for f in re.split(r"[\s,]+", line.strip()) if f]
                    if len(fields) < 2 or fields[0].lower() in ("vid_name", "video", "name"):
                        continue
                    rows.append((Path(fields[0]).stem, parse_label(fields[1])))
                return rows
            if manifest.is_file():
                return read_manifest(manifest)
        except (ValueError, IndexError) as error:
            raise self.error(f"bad VGAF label file ({error})", labels if labels.is_file() else manifest) from error
        raise self.error(f"VGAF {split} labels missing (neither {labels.name} nor {manifest.name})", labels)

    def list_videos(self) -> dict[str, list[GroupVideo]]:
        if not self.data_dir.is_dir():
            raise self.error("VGAF folder not found", self.data_dir)
        splits = {}
        for split, name in (("train", "Train"), ("test", "Val")):
            splits[split] = [GroupVideo(self.feature_path(vid), label, vid) for vid, label in self.read_split(name)]
        splits["val"] = splits["test"]
        return splits
