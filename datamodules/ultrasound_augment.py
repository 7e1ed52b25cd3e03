"""UNet-GCN's ultrasound augmentation (paper Table 1): 3 of 6 operations, chosen at random per image.

Identity; Gaussian blur; histogram equalisation; contrast and brightness with a factor drawn from
[0.05, 0.95]; horizontal flip (p = 0.5, image and mask together). Contrast and brightness follow
torchvision's ``adjust_contrast``/``adjust_brightness`` (the authors' PyTorch code would have used
them; torchvision itself is unavailable here): ``factor * img + (1 - factor) * mean(img)`` and
``factor * img``, clipped to the image's range. Images may be uint8 or float in [0, 1].
"""
from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.pixel import functional as pixel_functional


def _blend(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """torchvision's ``_blend``: ``factor * image + (1 - factor) * other`` clipped to the dtype's range."""
    bound = 255.0 if image.dtype == np.uint8 else 1.0
    out = np.clip(factor * image.astype(np.float32) + (1.0 - factor) * other, 0.0, bound)
    return out.astype(image.dtype)


def _grey_mean(image: np.ndarray) -> float:
    """Mean of the ITU-R 601 grey image, as torchvision's adjust_contrast (grey input: the plain mean)."""
    pixels = image.astype(np.float32)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = pixels @ np.array([0.2989, 0.587, 0.114], dtype=np.float32)
        if image.dtype == np.uint8:  # torchvision rounds the grey uint8 image before the mean
            pixels = np.floor(pixels)
    return float(pixels.mean())


class _FactorTransform(A.ImageOnlyTransform):
    def __init__(self, factor_range: tuple[float, float] = (0.05, 0.95), p: float = 1.0):
        super().__init__(p=p)
        low, high = factor_range
        if not 0 <= low <= high:
            raise ValueError(f"factor_range must be 0 <= low <= high, got {factor_range}")
        self.factor_range = (float(low), float(high))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, float]:
        return {"factor": self.py_random.uniform(*self.factor_range)}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("factor_range",)


class TorchvisionContrast(_FactorTransform):
    """``adjust_contrast(img, factor)``: blend with the image's grey mean (factor < 1 flattens)."""

    def apply(self, img: np.ndarray, factor: float, **params: Any) -> np.ndarray:
        return _blend(img, _grey_mean(img), factor)


class TorchvisionBrightness(_FactorTransform):
    """``adjust_brightness(img, factor)``: blend with black (factor < 1 darkens)."""

    def apply(self, img: np.ndarray, factor: float, **params: Any) -> np.ndarray:
        return _blend(img, 0.0, factor)


class Equalize(A.ImageOnlyTransform):
    """PIL-style histogram equalisation (``ImageOps.equalize``, what torchvision's ``equalize`` does)
    for uint8 or float [0, 1] images: floats are quantised to 256 levels, equalised, scaled back."""

    def __init__(self, p: float = 1.0):
        super().__init__(p=p)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        as_uint8 = img if img.dtype == np.uint8 else np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
        squeeze = as_uint8.ndim == 3 and as_uint8.shape[-1] == 1
        # albumentations' equalize works in place: hand it a copy.
        equalised = pixel_functional.equalize(np.array(as_uint8[..., 0] if squeeze else as_uint8), mode="pil")
        equalised = equalised[..., None] if squeeze else equalised
        return equalised if img.dtype == np.uint8 else (equalised.astype(np.float32) / 255.0).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def ultrasound_randaugment(num_ops: int = 3, factor_range: tuple[float, float] = (0.05, 0.95)) -> A.SomeOf:
    """Table 1 as one albumentations transform: ``num_ops`` distinct operations of the six per image.

    The flip keeps its own p = 0.5 once chosen (as in the card); the rest apply with p = 1.
    """
    operations = [
        A.NoOp(p=1.0),
        A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.1, 2.0), p=1.0),
        Equalize(p=1.0),
        TorchvisionContrast(factor_range, p=1.0),
        TorchvisionBrightness(factor_range, p=1.0),
        A.HorizontalFlip(p=0.5),
    ]
    return A.SomeOf(operations, n=num_ops, replace=False, p=1.0)


def ultrasound_augmentation() -> list:
    """The segmentation DataModules' ``augmentation`` hook:
    ``augmentation: datamodules.ultrasound_augment:ultrasound_augmentation``."""
    return [ultrasound_randaugment()]
