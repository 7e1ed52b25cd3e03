"""KDEF (Karolinska Directed Emotional Faces, Lundqvist et al. 1998): 70 amateur actors (35 female, 35 male), two
sessions (A, B), 7 expressions, 5 angles: 4,900 colour photographs of 562 x 762 pixels.

Layout as distributed (``KDEF_and_AKDEF/KDEF/`` or ``KDEF/``): one folder per session and person,
``<data_dir>/AF01/AF01AFS.JPG``: session A/B, sex F/M, person 01-35, expression AF (afraid), AN (angry), DI
(disgusted), HA (happy), NE (neutral), SA (sad), SU (surprised), angle FL (full left), HL (half left), S (straight),
HR, FR. Labels in the unified order (``datamodules.fer2013.EMOTIONS``); the person (sex + number, both sessions) is
the item's group, so the default split keeps people apart: ``split: group``, ``test_size`` 0.2 = 56 / 14 people
(3,920 / 980 images, LLDif's counts; the paper does not say how it split).
"""
from __future__ import annotations

import re

from datamodules.fer2013 import EMOTIONS
from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule

KDEF_EXPRESSIONS = {"AF": "fear", "AN": "angry", "DI": "disgust", "HA": "happy", "NE": "neutral", "SA": "sad",
                    "SU": "surprise"}
KDEF_ANGLES = ("FL", "HL", "S", "HR", "FR")
FILE_PATTERN = re.compile(r"^([AB])([FM])(\d\d)(AF|AN|DI|HA|NE|SA|SU)(FL|HL|S|HR|FR)$", re.IGNORECASE)


class KDEFDataModule(ImageClassificationDataModule):
    """KDEF (module docstring).

    Args:
        data_dir: the folder holding the ``AF01``-style person folders (or ``KDEF/`` inside it).
        angles: the angles to keep (default all five).
        **kwargs: ``ImageClassificationDataModule`` 's (split defaults to ``group``: people kept apart).
    """

    layout = """<data_dir>/            (KDEF_and_AKDEF/KDEF/ or KDEF/ as unpacked)
  AF01/AF01AFS.JPG ...  <session A|B><sex F|M><person 01-35>/<same><expression AF|AN|DI|HA|NE|SA|SU><angle
  BM35/BM35SUFR.JPG     FL|HL|S|HR|FR>.JPG; 4,900 images (70 people x 2 sessions x 7 expressions x 5 angles)"""
    classes = EMOTIONS

    def __init__(self, data_dir: str, angles: tuple[str, ...] = KDEF_ANGLES, split: str = "group",
                 test_size: float = 0.2, **kwargs):
        super().__init__(data_dir, split=split, test_size=test_size, **kwargs)
        unknown = set(angles) - set(KDEF_ANGLES)
        if unknown or not angles:
            raise ValueError(f"angles must be a non-empty subset of {KDEF_ANGLES}, got {angles}")
        self.angles = tuple(angles)

    def list_items(self) -> list[ClassificationItem]:
        root = self.data_dir / "KDEF" if (self.data_dir / "KDEF").is_dir() else self.data_dir
        folders = sorted(p for p in self.require_dir(root, "KDEF folder").iterdir()
                         if p.is_dir() and re.fullmatch(r"[AB][FM]\d\d", p.name, re.IGNORECASE))
        if not folders:
            raise self.error("no person folders (AF01 ... BM35) found", root)
        items = []
        for folder in folders:
            for path in sorted(folder.iterdir()):
                match = FILE_PATTERN.match(path.stem)
                if path.suffix.lower() not in (".jpg", ".jpeg") or match is None:
                    continue
                _, sex, person, expression, angle = (g.upper() for g in match.groups())
                if angle not in self.angles:
                    continue
                label = EMOTIONS.index(KDEF_EXPRESSIONS[expression])
                items.append(ClassificationItem(path, label, group=f"{sex}{person}"))
        if not items:
            raise self.error("the person folders hold no <id><expression><angle>.JPG images", root)
        return items
