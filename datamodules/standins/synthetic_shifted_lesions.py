"""The skin-lesion stand-in (``synthetic_lesions``, kind ``skin``) plus an out-of-distribution test set: the same
kind of test images (another seed) with an acquisition shift, as HarmonizedSS's Kvasir-SEG -> PolypGen and
ISIC-18 -> ISIC-17 tests. The shift: hue rotation of the RGB channels (``hue_shift`` of the way to the next
channel), contrast scaled by ``contrast`` around the image mean, Gaussian blur of ``blur_sigma`` pixels. Masks are
unchanged. The further test set logs ``test/shifted/...`` (Dice, IoU, ECE/MCE, all-background baseline).
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from datamodules.segmentation import build_transform
from datamodules.standins.synthetic_lesions import ArraySegmentationDataset, SyntheticLesionDataModule


def shift_image(image: np.ndarray, hue_shift: float = 0.3, contrast: float = 0.7, blur_sigma: float = 1.0) -> np.ndarray:
    """(H, W, 3) uint8 -> the shifted (H, W, 3) uint8."""
    x = image.astype(np.float32)
    x = (1 - hue_shift) * x + hue_shift * np.roll(x, 1, axis=-1)
    x = x.mean() + contrast * (x - x.mean())
    if blur_sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), blur_sigma)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


class ShiftedLesionDataModule(SyntheticLesionDataModule):
    """``SyntheticLesionDataModule`` (skin) with the further test set ``shifted`` of ``num_shifted`` images.

    Args:
        num_shifted: images in the shifted test set (0: none).
        hue_shift, contrast, blur_sigma: the shift (:func:`shift_image`).
        (the rest: ``SyntheticLesionDataModule``'s)
    """

    standin_config = "experiments/harmss_demo.yaml"

    def __init__(self, num_shifted: int = 64, hue_shift: float = 0.3, contrast: float = 0.7, blur_sigma: float = 1.0,
                 **kwargs):
        kwargs.setdefault("kind", "skin")
        super().__init__(**kwargs)
        self.num_shifted, self.hue_shift, self.contrast, self.blur_sigma = num_shifted, hue_shift, contrast, blur_sigma

    def setup(self, stage: Optional[str] = None) -> None:
        fresh = self.train_set is None
        super().setup(stage)
        if not fresh or self.num_shifted <= 0:
            return
        shifted_source = type(self)(num_shifted=0, kind=self.kind, image_size=self.image_size, num_train=0, num_val=0,
                                    num_test=self.num_shifted, normal_fraction=self.normal_fraction,
                                    channels=self.channels, seed=self.seed + 1000)
        samples = [(shift_image(image, self.hue_shift, self.contrast, self.blur_sigma), mask, f"shifted_{name}", label)
                   for image, mask, name, label in shifted_source.samples("test")]
        transform = build_transform(self.image_size, self.channels, self.normalization)
        self.test_sets["shifted"] = ArraySegmentationDataset(samples, transform, self.channels)
