"""CVC-ClinicDB (Bernal et al. 2015): 612 colonoscopy frames (384x288) with polyp masks.

Download: https://polyp.grand-challenge.org/CVCClinicDB/ (``Original/`` and ``Ground Truth/``, TIFF),
or the Kaggle copy with ``PNG/`` and ``TIF/`` subfolders of the same two folders and file names.
SACA-UNet: holdout 80/20, 256x256.
"""
from __future__ import annotations

from datamodules.segmentation import SegmentationDataModule, SegmentationItem, find_image, list_images

IMAGE_DIR = "Original"
MASK_DIR = "Ground Truth"


class CVCClinicDBDataModule(SegmentationDataModule):
    """CVC-ClinicDB: ``Original/<n>.tif|png`` with mask ``Ground Truth/<n>.tif|png`` (same stem).

    ``data_dir`` holds ``Original/`` and ``Ground Truth/``, or a ``PNG/`` or ``TIF/`` folder that does
    (the Kaggle copy; PNG is preferred).
    """

    layout = f"""<data_dir>/ (or <data_dir>/PNG/, <data_dir>/TIF/)
  {IMAGE_DIR}/1.tif (or 1.png), ..., 612.tif      colonoscopy frames, 384x288 RGB
  {MASK_DIR}/1.tif (or 1.png), ...                polyp masks (0/255), same names and sizes"""

    def __init__(self, data_dir: str, **kwargs) -> None:
        kwargs.setdefault("image_size", 256)
        super().__init__(data_dir, **kwargs)

    def _root(self):
        for candidate in (self.data_dir, self.data_dir / "PNG", self.data_dir / "TIF"):
            if (candidate / IMAGE_DIR).is_dir():
                return candidate
        return self.data_dir

    def list_items(self) -> list[SegmentationItem]:
        root = self._root()
        images = self.require_dir(root / IMAGE_DIR, "image folder")
        masks = self.require_dir(root / MASK_DIR, "ground-truth folder")
        items = []
        for image in list_images(images, (".tif", ".tiff", ".png", ".bmp")):
            mask = find_image(masks, image.stem, (".tif", ".tiff", ".png", ".bmp"))
            if mask is None:
                raise self.error(f"image without a mask (expected '{MASK_DIR}/{image.stem}{image.suffix}')", image)
            items.append(SegmentationItem(image, (mask,)))
        return items
