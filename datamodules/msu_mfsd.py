"""MSU-MFSD (Wen et al., IEEE TIFS 2015): 280 videos of 35 clients (laptop and Android phone cameras); bona fide,
printed photo, and video replays on an iPad and an iPhone. The official split: ``train_sub_list.txt`` (15 clients)
and ``test_sub_list.txt`` (20 clients).

Names ``real_client<id>_<camera>_SD_scene01`` and ``attack_client<id>_<camera>_SD_<medium>_scene01`` with medium
``printed_photo`` (label 1) or ``ipad_video`` / ``iphone_video`` (label 2, video replay); bona fide label 0. The
release has no dev split: ``val_fraction`` of the training clients are held out (choice).
"""
from __future__ import annotations

import re

from datamodules.face_antispoofing import FaceAntiSpoofingDataModule, Split, VideoItem

LAYOUT = """<data_dir>/
  scene01/real/real_client<id>_<camera>_SD_scene01.{mp4,mov}
  scene01/attack/attack_client<id>_<camera>_SD_{printed_photo,ipad_video,iphone_video}_scene01.{mp4,mov}
  train_sub_list.txt   test_sub_list.txt          (one client id per line)"""

_CLIENT = re.compile(r"client(\d+)")


def msu_label(name: str) -> int:
    """0 real, 1 printed photo, 2 video replay."""
    if name.startswith("real"):
        return 0
    return 1 if "printed_photo" in name else 2


class MSUMFSDDataModule(FaceAntiSpoofingDataModule):
    """MSU-MFSD with its official client lists. Arguments: ``FaceAntiSpoofingDataModule``'s."""

    attack_types = ("print", "replay")
    layout = LAYOUT

    def _clients(self, name: str) -> set[int]:
        path = self.data_dir / name
        if not path.is_file():
            raise self.error("MSU-MFSD client list not found", path)
        return {int(v) for v in path.read_text().split() if v.strip().isdigit()}

    def list_split(self, split: Split) -> list[VideoItem]:
        scene = self.require_dir(self.require_dir(self.data_dir) / "scene01")
        clients = self._clients("test_sub_list.txt" if split == "test" else "train_sub_list.txt")
        items = []
        for folder in ("real", "attack"):
            for video in sorted(self.require_dir(scene / folder).iterdir()):
                if video.suffix.lower() not in (".mp4", ".mov"):
                    continue
                match = _CLIENT.search(video.name)
                if match is None or int(match.group(1)) not in clients:
                    continue
                items.append(VideoItem(video, msu_label(video.name), int(match.group(1)),
                                       f"scene01/{folder}/{video.stem}"))
        if not items:
            raise self.error(f"MSU-MFSD: no videos of the {split} clients", scene)
        if split == "test":
            return items
        train, val = self.holdout_subjects(items)
        return train if split == "train" else val
