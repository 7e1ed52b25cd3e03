"""COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021), Kaggle release with lung masks.

Download: https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database
(``COVID-19_Radiography_Dataset/``). Each class folder holds ``images/`` (299x299 chest X-rays) and
``masks/`` (256x256 lung masks, same file names). SACA-UNet's "COVID-19" set: the 3616 COVID images
with their lung masks, holdout 80/20, 256x256.

The release's masks are smaller than their images by design, so here a mask is resized (nearest) to
its image's size before both are resized to ``image_size``; other sizes than 256 vs 299 still fail.
"""
from __future__ import annotations

from typing import Sequence

from datamodules.segmentation import SegmentationDataModule, SegmentationItem, find_image, list_images

COVID_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
ROOT_NAME = "COVID-19_Radiography_Dataset"


class COVID19RadiographyDataModule(SegmentationDataModule):
    """COVID-19 Radiography Database: ``<class>/images/<class>-<n>.png`` + ``<class>/masks/<class>-<n>.png``.

    Args:
        data_dir: ``COVID-19_Radiography_Dataset`` or the folder that contains it.
        use_classes: class folders used (SACA-UNet: COVID only, 3616 images).
    """

    classes = COVID_CLASSES
    #: (image size, mask size) pairs of the release, accepted although they differ.
    release_sizes = {((299, 299), (256, 256))}
    layout = f"""<data_dir> = {ROOT_NAME}/ (or its parent)
  COVID/images/COVID-1.png, ...        chest X-rays, 299x299
  COVID/masks/COVID-1.png, ...         lung masks, 256x256 (0/255), same file names
  Normal/, Lung_Opacity/, Viral Pneumonia/   the same, used with use_classes"""

    def __init__(self, data_dir: str, use_classes: Sequence[str] = ("COVID",), **kwargs) -> None:
        kwargs.setdefault("image_size", 256)
        super().__init__(data_dir, **kwargs)
        self.use_classes = self.checked_classes(use_classes)

    def list_items(self) -> list[SegmentationItem]:
        root = self.release_root(ROOT_NAME)
        items = []
        for label in self.use_classes:
            images = self.require_dir(root / label / "images", f"'{label}/images' folder")
            masks = self.require_dir(root / label / "masks", f"'{label}/masks' folder")
            for image in list_images(images, (".png",)):
                mask = find_image(masks, image.stem, (".png",))
                if mask is None:
                    raise self.error(f"image without a mask (expected '{label}/masks/{image.name}')", image)
                items.append(SegmentationItem(image, (mask,), label))
        return items
