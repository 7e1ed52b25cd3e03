"""STU (Zhuang et al. 2019; Shantou University, GE Voluson E10): 42 breast ultrasound images with
lesion masks, all lesions. UNet-GCN uses it only as an external test set for models trained on BUSI
or Dataset-B (paper Table 6), so every image is in the test split.

Layout of the public release (github.com/xbhlk/STU-Hospital)::

    <data_dir>/Hospital/Test_Image_<n>.png    images (n = 1 ... 42); ``image_<n>.png`` also accepted
    <data_dir>/Hospital/mask_<n>.png          lesion masks (> 127)

``data_dir`` may also point at the ``Hospital`` folder itself.
"""
from __future__ import annotations

import re
from pathlib import Path

from datamodules.segmentation import SegmentationDataModule, SegmentationItem, list_images

_IMAGE = re.compile(r"^(?:Test_Image|image)_(\d+)$", re.IGNORECASE)


class STUDataModule(SegmentationDataModule):
    """Test-only: ``python run.py test --config experiments/unet_gcn/busi.yaml --config experiments/unet_gcn/busi/to_stu.yaml --ckpt_path ...``."""

    layout = """<data_dir>/Hospital/
  Test_Image_<n>.png      images, n = 1 ... 42 (or image_<n>.png)
  mask_<n>.png            binary lesion masks (> 127)"""
    standin_config = "experiments/unet_gcn_demo.yaml"

    def __init__(self, data_dir: str = "data/STU-Hospital", image_size=256, channels: int = 1,
                 normalization: str = "unit", augmentation: str = "none", **kwargs) -> None:
        kwargs.setdefault("val_fraction", 0.0)
        super().__init__(data_dir, image_size=image_size, channels=channels, normalization=normalization,
                         augmentation=augmentation, **kwargs)

    def _folder(self) -> Path:
        hospital = self.data_dir / "Hospital"
        return hospital if hospital.is_dir() else self.data_dir

    def list_items(self) -> list[SegmentationItem]:
        folder = self._folder()
        items = []
        for image in list_images(folder):
            match = _IMAGE.match(image.stem)
            if match is None:
                continue
            mask = folder / f"mask_{match.group(1)}.png"
            if not mask.is_file():
                raise self.error(f"image without a mask (looked for {mask.name})", image)
            items.append(SegmentationItem(image, (mask,), name=f"stu_{int(match.group(1)):03d}"))
        if not items:
            raise self.error("no Test_Image_<n>.png / mask_<n>.png pairs found", folder)
        return items

    def make_splits(self) -> dict[str, list[int]]:
        everything = list(range(len(self.items)))
        return {"train": [], "val": [], "test": everything}
