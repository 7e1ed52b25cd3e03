"""ISIC 2018 Task 1 (lesion boundary segmentation), in the layout of the challenge's download.

Download: https://challenge.isic-archive.com/data/#2018 ("Training Data" of Task 1: 2594 dermoscopy
images, ``ISIC2018_Task1-2_Training_Input.zip``, and their masks, ``ISIC2018_Task1_Training_GroundTruth.zip``).
SACA-UNet (as UNeXt) uses these 2594 images, split 80/20 (``train_test_split``, seed 41), at 512x512.
"""
from __future__ import annotations

from datamodules.segmentation import SegmentationDataModule, SegmentationItem, list_images

INPUT_DIR = "ISIC2018_Task1-2_Training_Input"
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"


class ISIC2018DataModule(SegmentationDataModule):
    """ISIC 2018 Task 1 training set: ``ISIC_<id>.jpg`` with mask ``ISIC_<id>_segmentation.png``.

    Takes every argument of ``SegmentationDataModule`` (image size, splits, augmentation, ...).
    """

    layout = f"""<data_dir>/
  {INPUT_DIR}/ISIC_0000000.jpg, ...            2594 RGB dermoscopy images
  {MASK_DIR}/ISIC_0000000_segmentation.png, ...  binary lesion masks (0/255), same size as their image"""

    def list_items(self) -> list[SegmentationItem]:
        images = self.require_dir(self.data_dir / INPUT_DIR, "image folder")
        masks = self.require_dir(self.data_dir / MASK_DIR, "ground-truth folder")
        items = []
        for image in list_images(images, (".jpg", ".jpeg", ".png")):
            if not image.stem.startswith("ISIC_") or image.stem.endswith("_superpixels"):
                continue
            mask = masks / f"{image.stem}_segmentation.png"
            if not mask.is_file():
                raise self.error(f"image without a mask (expected {mask.name})", image)
            items.append(SegmentationItem(image, (mask,)))
        return items
