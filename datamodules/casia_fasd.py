"""CASIA-FASD (Zhang et al., ICB 2012): 600 videos of 50 subjects, 20 for training and 30 for testing; per subject
3 bona fide videos (low, normal and high quality cameras) and 9 attacks: warped photo, cut photo and video replay
at each quality.

Names per subject folder: ``1``, ``2``, ``HR_1`` bona fide; ``3``, ``4``, ``HR_2`` warped print; ``5``, ``6``,
``HR_3`` cut print; ``7``, ``8``, ``HR_4`` video replay (labels 0, 1, 2, 3). The paper reports the test EER; the
release has no dev split, so ``val_fraction`` of the training subjects are held out for checkpoint selection and
the threshold (choice).
"""
from __future__ import annotations

from datamodules.face_antispoofing import FaceAntiSpoofingDataModule, Split, VideoItem

LAYOUT = """<data_dir>/
  train_release/<subject 1..20>/{1,2,3,4,5,6,7,8,HR_1,HR_2,HR_3,HR_4}.avi
  test_release/<subject 1..30>/{1,...,8,HR_1,...,HR_4}.avi
  (1, 2, HR_1 live; 3, 4, HR_2 warped print; 5, 6, HR_3 cut print; 7, 8, HR_4 replay)"""

CASIA_LABELS = {"1": 0, "2": 0, "HR_1": 0, "3": 1, "4": 1, "HR_2": 1, "5": 2, "6": 2, "HR_3": 2,
                "7": 3, "8": 3, "HR_4": 3}


class CasiaFASDDataModule(FaceAntiSpoofingDataModule):
    """CASIA-FASD: train / held-out validation subjects / test (see the module docstring). Arguments:
    ``FaceAntiSpoofingDataModule``'s."""

    attack_types = ("warped_print", "cut_print", "replay")
    layout = LAYOUT

    def _release(self, folder: str, subject_offset: int) -> list[VideoItem]:
        root = self.require_dir(self.data_dir / folder)
        items = []
        for subject_dir in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
            if not subject_dir.name.isdigit():
                continue
            for video in sorted(subject_dir.glob("*.avi")):
                if video.stem in CASIA_LABELS:
                    items.append(VideoItem(video, CASIA_LABELS[video.stem], subject_offset + int(subject_dir.name),
                                           f"{folder}/{subject_dir.name}/{video.stem}"))
        if not items:
            raise self.error(f"CASIA-FASD: no videos in {folder}", root)
        return items

    def list_split(self, split: Split) -> list[VideoItem]:
        self.require_dir(self.data_dir)
        if split == "test":
            return self._release("test_release", 1000)
        train, val = self.holdout_subjects(self._release("train_release", 0))
        return train if split == "train" else val
