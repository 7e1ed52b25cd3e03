"""ABCD(E) cue removal ("debasing", Bolelli et al., ICPR 2024): transforms of a dermoscopic image and its lesion
mask that conceal one clinical cue at a time, so a classifier retrained on the result can no longer use it.

Every function takes an RGB uint8 image (H, W, 3) and its binary lesion mask (H, W) (any nonzero = lesion) and
returns the debased ``(image, mask)`` (uint8, mask 0/1), computed with OpenCV/NumPy on whole arrays:

- ``debase_asymmetry``: warp so the lesion centroid sits at the image centre and rotate by a random angle (one
  affine warp, reflected borders), then rebuild the image from its top-right quadrant mirrored into the other three
  (top-left = horizontal flip, bottom half = vertical flip of the top half): the lesion becomes symmetric about
  both axes through the centre, whatever its shape was;
- ``debase_borders``: the 1 px mask contour (``cv2.findContours``) dilated with an elliptic kernel of odd size
  k = odd(``k_coef`` * min(H, W) * sqrt(foreground ratio)), blurred (``cv2.GaussianBlur``, sigma k/2), scaled to
  peak 1 and multiplied into the image (image * (1 - band)): a thick soft black band hides the border;
- ``debase_grayscale``: RGB -> luminance (``cv2.cvtColor``), replicated to 3 channels;
- ``debase_mask``: the binary mask itself (0/255) on 3 channels: shape and size only;
- ``debase_diameter``: crop (or reflect-pad) a box centred on the lesion centroid whose area is
  foreground area / ``fg_target`` and resize it back to (H, W) (one affine warp, reflected borders): every lesion
  then covers ``fg_target`` (0.8) of the image, so its apparent size carries no information. Elongated lesions
  may be clipped by the crop, as in the paper;
- ``debase_occlusion``: the lesion's bounding box painted black (Bissoto et al. 2019's occlusion; an extra
  option, not in the paper's tables).

An empty mask (no lesion found) leaves image and mask unchanged, except for ``grayscale`` and ``mask`` which do not
need a lesion. ``debase(name, image, mask, rng)`` dispatches by name (``DEBASINGS``); only ``asymmetry`` draws from
``rng`` (its rotation angle), so a seeded generator per image makes the cached result reproducible.

The mask-based area scores of the paper's no-DL baseline (Table 6) are ``foreground_ratio`` (mask area / image
area) and ``bbox_ratio`` (lesion bounding-box area / image area).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union

import albumentations as A
import cv2
import numpy as np

from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule

DEBASINGS = ("none", "asymmetry", "borders", "grayscale", "mask", "diameter", "occlusion")
#: the variants whose transform needs a lesion mask
NEEDS_MASK = frozenset({"asymmetry", "borders", "mask", "diameter", "occlusion"})


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return (mask > 0).astype(np.uint8)


def _check(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    mask = _binary(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {image.shape[:2]}")
    return image, mask


def foreground_ratio(mask: np.ndarray) -> float:
    """Lesion pixels / image pixels ("Segm. Mask" score of the paper's Table 6)."""
    return float(_binary(mask).mean())


def bbox_ratio(mask: np.ndarray) -> float:
    """Area of the lesion's bounding box / image area ("B. Box" score); 0 without lesion."""
    mask = _binary(mask)
    if not mask.any():
        return 0.0
    x, y, w, h = cv2.boundingRect(mask)
    return float(w * h) / mask.size


def centroid(mask: np.ndarray) -> Optional[tuple[float, float]]:
    """(row, column) of the lesion's centre of mass (image moments), None without lesion."""
    moments = cv2.moments(_binary(mask), binaryImage=True)
    if moments["m00"] == 0:
        return None
    return moments["m01"] / moments["m00"], moments["m10"] / moments["m00"]


def _warp(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear) and mask (nearest) through one 2x3 affine map, reflected borders."""
    h, w = mask.shape
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out_mask = cv2.warpAffine(mask, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    return out, out_mask


def mirror_top_right(array: np.ndarray) -> np.ndarray:
    """The array rebuilt from its top-right quadrant: that quadrant, its horizontal mirror on the left and the
    vertical mirror of the resulting top half below (for an odd side the middle row/column is the mirror axis)."""
    h, w = array.shape[:2]
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    quadrant = array[:h2, w - w2:]
    top = np.concatenate([quadrant[:, ::-1][:, :w - w2], quadrant], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1][2 * h2 - h:]], axis=0))


def debase_asymmetry(image: np.ndarray, mask: np.ndarray, rng: Optional[np.random.Generator] = None,
                     angle: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Lesion centroid to the image centre, rotation by ``angle`` degrees (default: uniform in [0, 360) from
    ``rng``), then ``mirror_top_right``: a lesion symmetric about both image axes."""
    image, mask = _check(image, mask)
    centre_of_mass = centroid(mask)
    if centre_of_mass is None:
        return image.copy(), mask
    if angle is None:
        angle = float((rng if rng is not None else np.random.default_rng()).uniform(0.0, 360.0))
    h, w = mask.shape
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    # p -> R (p - m) + c: translate the centroid m to the centre c, then rotate about c
    rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
    m = np.array([centre_of_mass[1], centre_of_mass[0]])
    rotation[:, 2] = np.asarray(centre) - rotation[:, :2] @ m
    image, mask = _warp(image, mask, rotation)
    return mirror_top_right(image), mirror_top_right(mask)


def border_kernel_size(mask: np.ndarray, k_coef: float = 0.08) -> int:
    """Odd dilation kernel size k = odd(k_coef * min(H, W) * sqrt(foreground ratio)), at least 3."""
    size = k_coef * min(mask.shape[:2]) * np.sqrt(foreground_ratio(mask))
    k = max(3, int(round(size)))
    return k if k % 2 else k + 1


def border_band(mask: np.ndarray, k_coef: float = 0.08) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the dilated, blurred mask contour (peak 1), zeros without lesion."""
    mask = _binary(mask)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    line = np.zeros(mask.shape, np.uint8)
    if not contours:
        return line.astype(np.float32)
    cv2.drawContours(line, contours, -1, 1, thickness=1)
    k = border_kernel_size(mask, k_coef)
    band = cv2.dilate(line, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(np.float32)
    band = cv2.GaussianBlur(band, (0, 0), sigmaX=k / 2.0, borderType=cv2.BORDER_REFLECT)
    return band / max(float(band.max()), 1e-6)


def debase_borders(image: np.ndarray, mask: np.ndarray, k_coef: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """The lesion border under a thick soft black band (``border_band``)."""
    image, mask = _check(image, mask)
    band = border_band(mask, k_coef)
    out = image.astype(np.float32) * (1.0 - band[..., None])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def debase_grayscale(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB -> grey (ITU-R BT.601 luma, ``cv2.COLOR_RGB2GRAY``) on 3 channels."""
    image, mask = _check(image, mask)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(grey[..., None], 3, axis=-1), mask


def debase_mask(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The binary mask as the image (0/255 on 3 channels)."""
    image, mask = _check(image, mask)
    return np.repeat((mask * 255)[..., None], 3, axis=-1), mask


def debase_diameter(image: np.ndarray, mask: np.ndarray, fg_target: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Crop & pad to a fixed foreground ratio: the box of side (H, W) * sqrt(fg / fg_target) centred on the lesion
    centroid (reflect-padded where it leaves the image: fg > fg_target) resized to (H, W)."""
    if not 0 < fg_target <= 1:
        raise ValueError(f"fg_target must be in (0, 1], got {fg_target}")
    image, mask = _check(image, mask)
    centre_of_mass = centroid(mask)
    if centre_of_mass is None:
        return image.copy(), mask
    h, w = mask.shape
    scale = np.sqrt(foreground_ratio(mask) / fg_target)  # box side / image side
    top, left = centre_of_mass[0] - scale * (h - 1) / 2.0, centre_of_mass[1] - scale * (w - 1) / 2.0
    # output pixel (x, y) samples the source at (left + scale x, top + scale y): its inverse as the forward map
    matrix = np.array([[1.0 / scale, 0.0, -left / scale], [0.0, 1.0 / scale, -top / scale]])
    return _warp(image, mask, matrix)


def debase_occlusion(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lesion's bounding box painted black (Bissoto et al. 2019)."""
    image, mask = _check(image, mask)
    out = image.copy()
    if mask.any():
        x, y, w, h = cv2.boundingRect(mask)
        out[y:y + h, x:x + w] = 0
    return out, mask


def debase(name: str, image: np.ndarray, mask: np.ndarray, rng: Optional[np.random.Generator] = None,
           k_coef: float = 0.08, fg_target: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Apply the debasing ``name`` (one of ``DEBASINGS``; ``none`` returns the inputs)."""
    functions: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "none": lambda: _check(image, mask),
        "asymmetry": lambda: debase_asymmetry(image, mask, rng),
        "borders": lambda: debase_borders(image, mask, k_coef),
        "grayscale": lambda: debase_grayscale(image, mask),
        "mask": lambda: debase_mask(image, mask),
        "diameter": lambda: debase_diameter(image, mask, fg_target),
        "occlusion": lambda: debase_occlusion(image, mask),
    }
    if name not in functions:
        raise ValueError(f"unknown debasing {name!r}; one of {', '.join(DEBASINGS)}")
    return functions[name]()


def item_rng(seed: int, name: str) -> np.random.Generator:
    """A generator fixed by (seed, image name): the same random debasing for an image in every run and worker."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def centre_square(image: np.ndarray, mask: Optional[np.ndarray] = None, size: Optional[int] = None):
    """The paper's harmonisation: square centre crop of side min(H, W), resized to ``size`` (area for the image,
    nearest for the mask; None: no resize). Returns ``(image, mask)`` (mask None when not given)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side]
    mask = None if mask is None else _binary(mask)[top:top + side, left:left + side]
    if size is not None and side != size:
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interpolation)
        if image.ndim == 2:
            image = image[..., None]
        if mask is not None:
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(image), mask


def dermoscopy_augmentation() -> list:
    """The card's training augmentation, after debasing: random 90-degree rotations, horizontal and vertical flips,
    and albumentations' former ShiftScaleRotate defaults (shift 6.25 %, scale +-10 %, rotation +-45 degrees,
    reflected borders). No colour jitter: it would blur the colour experiments."""
    return [A.RandomRotate90(p=1.0), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5),
            A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-45, 45),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.5)]


# ---------------------------------------------------------------------------------------------------------------
# The datamodule base: debasing as the cached preprocessing of ImageClassificationDataModule
# ---------------------------------------------------------------------------------------------------------------
Debasing = Literal["none", "asymmetry", "borders", "grayscale", "mask", "diameter", "occlusion"]


@dataclass(frozen=True)
class DermoscopyItem(ClassificationItem):
    """A dermoscopic image with its lesion mask: a file (``masks/<id>.png``), a uint8 array, or None (none known)."""

    mask: Union[Path, np.ndarray, None] = None


class DebasedDataModule(ImageClassificationDataModule):
    """``ImageClassificationDataModule`` whose cached ``preprocess`` is the paper's: square centre crop of
    min(H, W), resize to ``pre_size`` (768 in the paper), then the debasing ``debase`` (module docstring), seeded
    per image by (``debase_seed``, image name). Subclasses list ``DermoscopyItem`` s (with their masks).

    Args:
        debase: ``none`` (the original images), ``asymmetry``, ``borders``, ``grayscale``, ``mask``, ``diameter``
            or ``occlusion``. All but ``none``/``grayscale`` need each image's lesion mask.
        debase_seed: seed of the random parts (the asymmetry rotation).
        pre_size: side of the square images that are debased (None: the crop's own size).
        border_k_coef: ``k_coef`` of ``debase_borders`` (the band's width relative to the image side).
        diameter_fg: the foreground ratio that ``debase_diameter`` sets (0.8).
        with_mask: also put the (debased) lesion mask in the batch as ``mask`` (the area baselines read it).
        test_on_val: add the validation split as a further test loader named ``val``: the threshold policy
            (``lightning_modules.abcde.ABCDETask``) picks its operating point on the tested checkpoint's
            validation ROC.
        **kwargs: ``ImageClassificationDataModule`` 's (image_size, normalization, augmentation, splits, ...).
    """

    def __init__(self, data_dir: str = "", debase: Debasing = "none", debase_seed: int = 0,
                 pre_size: Optional[int] = 768, border_k_coef: float = 0.08, diameter_fg: float = 0.8,
                 with_mask: bool = False, test_on_val: bool = True, **kwargs):
        super().__init__(data_dir, **kwargs)
        if debase not in DEBASINGS:
            raise ValueError(f"debase must be one of {', '.join(DEBASINGS)}, got {debase!r}")
        if not 0 < diameter_fg <= 1:
            raise ValueError(f"diameter_fg must be in (0, 1], got {diameter_fg}")
        if self.channels != 3:
            raise ValueError("dermoscopy images are RGB: channels must be 3")
        self.debase, self.debase_seed, self.pre_size = debase, debase_seed, pre_size
        self.border_k_coef, self.diameter_fg = border_k_coef, diameter_fg
        self.with_mask, self.test_on_val = with_mask, test_on_val

    @property
    def needs_mask(self) -> bool:
        return self.with_mask or self.debase in NEEDS_MASK

    def mask_hint(self) -> str:
        """What to do when masks are missing (subclasses name their layout's mask folder)."""
        return (f"debase={self.debase!r}" + (" and with_mask" if self.with_mask else "")
                + " need a lesion mask per image (precomputed, e.g. by a segmentation network)")

    def read_mask(self, item: ClassificationItem) -> np.ndarray:
        """The item's (H, W) uint8 0/1 mask, at its image's size."""
        source = getattr(item, "mask", None)
        if source is None:
            raise self.error(f"no lesion mask for image {item.name}", hint=self.mask_hint())
        if isinstance(source, np.ndarray):
            return _binary(source)
        if not Path(source).is_file():
            raise self.error("lesion mask not found", source, hint=self.mask_hint())
        mask = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise self.error("cannot read lesion mask", source, hint=self.mask_hint())
        return _binary(mask)

    def preprocess(self, image: np.ndarray, item: ClassificationItem):
        mask = None
        if self.needs_mask:
            mask = self.read_mask(item)
            if mask.shape != image.shape[:2]:  # masks of a segmentation network may come at another size
                mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        image, mask = centre_square(image, mask, self.pre_size)
        if mask is None:
            mask = np.zeros(image.shape[:2], np.uint8)  # grayscale/none: unused
        if self.debase != "none":
            image, mask = debase(self.debase, image, mask, item_rng(self.debase_seed, item.name),
                                 self.border_k_coef, self.diameter_fg)
        return (image, mask) if self.with_mask else image

    def setup(self, stage: Optional[str] = None) -> None:
        if self.items:
            return
        super().setup(stage)
        if self.test_on_val:
            self.test_sets = {**self.test_sets, "val": self.val_set}

    # helpers for the readers
    @staticmethod
    def masks_for(ids: Sequence[str], masks_dir: Optional[Path]) -> list[Optional[Path]]:
        """``masks_dir/<id>.png`` per image id (None without a masks folder)."""
        return [None if masks_dir is None else masks_dir / f"{i}.png" for i in ids]
