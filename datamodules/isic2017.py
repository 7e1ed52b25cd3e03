"""ISIC 2018 Task 1 for training, the ISIC 2017 Part 1 test set as out-of-distribution test (HarmonizedSS Table 3).

ISIC 2017 (https://challenge.isic-archive.com/data/#2017): ``ISIC-2017_Test_v2_Data.zip`` (600 dermoscopy images,
plus ``*_superpixels.png`` files that are skipped) and ``ISIC-2017_Test_v2_Part1_GroundTruth.zip``
(``ISIC_<id>_segmentation.png``). The HarmonizedSS paper says 650 images; the release has 600, and whatever is on
disk is used (``test/isic2017/num_images`` logs the count).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from datamodules.isic2018 import ISIC2018DataModule
from datamodules.kvasir_seg import ExtraTestSetsMixin
from datamodules.segmentation import SegmentationItem, list_images

TEST_INPUT_DIR = "ISIC-2017_Test_v2_Data"
TEST_MASK_DIR = "ISIC-2017_Test_v2_Part1_GroundTruth"
ISIC2017_LAYOUT = f"""<isic2017_dir>/
  {TEST_INPUT_DIR}/ISIC_0012086.jpg, ...                     the 600 test images
  {TEST_MASK_DIR}/ISIC_0012086_segmentation.png, ...  binary lesion masks (0/255)"""


def isic2017_items(root: Path, error) -> list[SegmentationItem]:
    images, masks = root / TEST_INPUT_DIR, root / TEST_MASK_DIR
    for folder in (images, masks):
        if not folder.is_dir():
            raise error("ISIC 2017 folder not found", folder)
    items = []
    for image in list_images(images, (".jpg", ".jpeg", ".png")):
        if not image.stem.startswith("ISIC_") or image.stem.endswith("_superpixels"):
            continue
        mask = masks / f"{image.stem}_segmentation.png"
        if not mask.is_file():
            raise error(f"image without a mask (expected {mask.name})", image)
        items.append(SegmentationItem(image, (mask,)))
    return items


class ISIC2018To2017DataModule(ExtraTestSetsMixin, ISIC2018DataModule):
    """ISIC 2018 Task 1 (split by ``test_size``/``split_seed``, as ``SegmentationDataModule``) plus, with
    ``isic2017_dir``, the ISIC 2017 test set as the further test set ``isic2017``."""

    standin_config = "experiments/harmss_demo.yaml"

    def __init__(self, data_dir: str, isic2017_dir: Optional[str] = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        self.isic2017_dir = Path(isic2017_dir).expanduser() if isic2017_dir else None

    def setup(self, stage: Optional[str] = None) -> None:
        fresh = not self.items
        super().setup(stage)
        if fresh and self.isic2017_dir is not None:
            error = lambda problem, path: self.error(problem, path, hint=f"ISIC 2017 layout:\n{ISIC2017_LAYOUT}")  # noqa: E731
            self.add_test_set("isic2017", isic2017_items(self.isic2017_dir, error))
