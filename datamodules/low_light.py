"""Low-light versions of facial expression datasets, as LLDif (ICPR 2024) synthesises them, and the LL-RAF-DB,
LL-FERPlus and LL-KDEF DataModules.

The paper darkens each normal-light image in Adobe Lightroom with parameters drawn from a, b, c ~ U(0, 1):
exposure -5 + a^2 (stops), highlights -20 min(b, 0.5) + 5, shadows -20 min(c, 0.5) and white balance
-20 (5 - 5 a^2). Lightroom is not scriptable here, so ``emulate_low_light`` approximates its sliders (a documented
choice, docs/papers/lldif.md):

1. linearise sRGB (``kornia.color.rgb_to_linear_rgb``);
2. highlights / shadows: per-pixel gain 1 + highlights/100 * smoothstep(0.5, 1, Y) + shadows/100 *
   (1 - smoothstep(0, 0.5, Y)), Y the sRGB luma (Rec. 709 weights);
3. exposure: x 2^exposure;
4. white balance: R x (1 + wb/400), B x (1 - wb/400) (wb = -100 + 100 a^2 in [-100, 0]: a cool cast, strongest
   in the darkest images);
5. optional Gaussian sensor noise (``noise_std`` grey levels; the paper adds none), back to sRGB, uint8.

Every image keeps its own a, b, c for good: drawn from a generator seeded by (``low_light_seed``, CRC32 of the
image name). Grey images are processed as RGB and turned back to grey (luma).

Each DataModule also offers the normal-light test images as the further test set ``normal_light`` (``clear_test``), so a
run scores both (the paper's Fig. 6 compares confidences on clear and low-light images), and by default
(``standardize``) standardises every image with the per-channel mean / std of the training split's low-light images
(the paper names no input normalisation; on [0, 1] or ImageNet scaling the dark inputs, std ~0.05, left the
unnormalised PNET_S2 (DiffIR's CPEN) of stage 2 at chance on the stand-in: docs/papers/lldif.md).
"""
from __future__ import annotations

import zlib
from typing import Optional

import kornia
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from datamodules.ferplus import FERPlusDataModule
from datamodules.image_classification import ClassificationItem
from datamodules.kdef import KDEFDataModule
from datamodules.rafdb import RAFDBDataModule
from lightning_modules.batch import IMAGE

STANDIN_CONFIG = "experiments/lldif_demo_laclip.yaml (then lldif_demo_s1.yaml, lldif_demo_s2.yaml)"


def lightroom_parameters(rng: np.random.Generator) -> dict[str, float]:
    """The paper's Lightroom settings from a, b, c ~ U(0, 1)."""
    a, b, c = rng.uniform(0.0, 1.0, 3)
    return {"exposure": -5.0 + a ** 2, "highlights": -20.0 * min(b, 0.5) + 5.0, "shadows": -20.0 * min(c, 0.5),
            "white_balance": -20.0 * (5.0 - 5.0 * a ** 2)}


def _smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def emulate_low_light(image: np.ndarray, exposure: float, highlights: float, shadows: float, white_balance: float,
                      noise_std: float = 0.0, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The low-light version of a uint8 image (H, W), (H, W, 1) or (H, W, 3) (module docstring), same shape."""
    if image.dtype != np.uint8:
        raise ValueError(f"emulate_low_light takes uint8 images, got {image.dtype}")
    grey = image.ndim == 2 or image.shape[-1] == 1
    rgb = np.repeat(image.reshape(*image.shape[:2], 1), 3, -1) if grey else image
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 255.0
    luma = (x * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    linear = kornia.color.rgb_to_linear_rgb(x)
    gain = 1 + highlights / 100 * _smoothstep(0.5, 1.0, luma) + shadows / 100 * (1 - _smoothstep(0.0, 0.5, luma))
    linear = linear * gain * 2.0 ** exposure
    linear = linear * torch.tensor([1 + white_balance / 400, 1.0, 1 - white_balance / 400]).view(1, 3, 1, 1)
    out = kornia.color.linear_rgb_to_rgb(linear.clamp(0, 1)) * 255.0
    if noise_std > 0:
        rng = np.random.default_rng(0) if rng is None else rng
        out = out + torch.from_numpy(rng.normal(0.0, noise_std, out.shape)).float()
    out = out.round().clamp(0, 255)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    if grey:
        out = np.round(out.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)).astype(np.uint8)
        return out.reshape(image.shape)
    return out


def low_light_version(image: np.ndarray, name: str, seed: int = 0, noise_std: float = 0.0) -> np.ndarray:
    """``emulate_low_light`` with the image's own parameters (seeded by ``seed`` and its name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return emulate_low_light(image, **lightroom_parameters(rng), noise_std=noise_std, rng=rng)


class Standardized(Dataset):
    """A dataset's ``image`` standardised per channel: (x - mean) / std."""

    def __init__(self, dataset: Dataset, mean: torch.Tensor, std: torch.Tensor):
        self.dataset, self.mean, self.std = dataset, mean, std

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item[IMAGE] = (item[IMAGE] - self.mean) / self.std
        return item


def channel_statistics(dataset: Dataset, max_items: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (C, 1, 1) of the ``image`` s of up to ``max_items`` evenly spaced
    items."""
    indices = np.linspace(0, len(dataset) - 1, min(len(dataset), max_items)).round().astype(int)
    images = torch.stack([dataset[int(i)][IMAGE] for i in np.unique(indices)])
    return images.mean((0, 2, 3))[:, None, None], images.std((0, 2, 3)).clamp_min(1e-6)[:, None, None]


class LowLight:
    """Mixin of an ``ImageClassificationDataModule``: its images darkened in ``preprocess`` (cached), the clear test
    set as ``test_sets["normal_light"]``, and (``standardize``) every set's images standardised with the per-channel
    mean and std of the training split's (after the ``normalization``; the clear test set with the same numbers).
    Subclasses call ``init_low_light`` in ``__init__``."""

    def init_low_light(self, low_light: bool, low_light_seed: int, noise_std: float, clear_test: bool,
                       standardize: bool = True) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.low_light, self.low_light_seed, self.noise_std = low_light, low_light_seed, noise_std
        self.clear_test, self.standardize = clear_test, standardize
        self.image_mean: Optional[torch.Tensor] = None
        self.image_std: Optional[torch.Tensor] = None
        self._darken = True

    def darken(self, image: np.ndarray, item: ClassificationItem) -> np.ndarray:
        if not (self.low_light and self._darken):
            return image
        return low_light_version(image, item.name or str(item.source), self.low_light_seed, self.noise_std)

    def preprocess(self, image: np.ndarray, item: ClassificationItem):
        return self.darken(super().preprocess(image, item), item)

    def setup(self, stage: Optional[str] = None) -> None:
        fresh = not self.items
        super().setup(stage)
        if fresh and self.low_light and self.clear_test:
            self._darken = False
            try:
                self.test_sets = {"normal_light": self.make_dataset([self.items[i] for i in self.split_indices["test"]],
                                                             train=False)}
            finally:
                self._darken = True
        if fresh and self.standardize:
            base = self.train_set.datasets[0] if isinstance(self.train_set, ConcatDataset) else self.train_set
            self.image_mean, self.image_std = channel_statistics(base)
            wrap = lambda dataset: Standardized(dataset, self.image_mean, self.image_std)  # noqa: E731
            self.train_set, self.val_set, self.test_set = (wrap(self.train_set), wrap(self.val_set),
                                                           wrap(self.test_set))
            self.predict_set = self.test_set
            self.test_sets = {name: wrap(dataset) for name, dataset in self.test_sets.items()}


class LowLightRAFDBDataModule(LowLight, RAFDBDataModule):
    """LL-RAF-DB: RAF-DB basic (``datamodules.rafdb`` layout) with its official split (``train_*`` 12,271 /
    ``test_*`` 3,068), darkened; 7 classes in the unified order (``datamodules.fer2013.EMOTIONS``). Validation: a
    stratified ``val_fraction`` of the training images (0: the test images, as the paper has no validation set).

    Args:
        low_light: darken the images (False: the normal-light RAF-DB of Table 1).
        low_light_seed: seed of every image's Lightroom parameters.
        noise_std: sensor noise (grey levels) after darkening (the paper: none).
        clear_test: also test on the normal-light test images (``test/normal_light/...``).
        standardize: standardise the images with the training split's per-channel mean / std.
        **kwargs: ``ImageClassificationDataModule`` 's (image_size, normalization, augmentation, batch_size ...).
    """

    standin_config = STANDIN_CONFIG

    def __init__(self, data_dir: str, low_light: bool = True, low_light_seed: int = 0, noise_std: float = 0.0,
                 clear_test: bool = True, standardize: bool = True, image_size: int = 112,
                 normalization: str = "imagenet", val_fraction: float = 0.1, **kwargs):
        kwargs.pop("split", None)
        super().__init__(data_dir, image_size=image_size, normalization=normalization, val_fraction=val_fraction,
                         split="predefined", **kwargs)
        self.init_low_light(low_light, low_light_seed, noise_std, clear_test, standardize)

    def make_splits(self) -> dict[str, list[int]]:
        train = [i for i, item in enumerate(self.items) if item.name.startswith("train_")]
        test = [i for i, item in enumerate(self.items) if item.name.startswith("test_")]
        if len(train) + len(test) != len(self.items):
            odd = next(item.name for item in self.items if not item.name.startswith(("train_", "test_")))
            raise self.error(f"image {odd!r} is neither train_* nor test_* (the official split)", self.data_dir)
        val = test
        if self.val_fraction > 0:
            train, val = self._holdout(train, self.val_fraction, grouped=False)
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


class LowLightFERPlusDataModule(LowLight, FERPlusDataModule):
    """LL-FERPlus: FERPlus (``datamodules.ferplus``: FER2013 images, FERPlus majority labels, 8 classes), darkened;
    train = Training, test = PublicTest + PrivateTest (the paper's 28,709 / 7,178 before the unusable images are
    dropped). Args as ``LowLightRAFDBDataModule`` 's."""

    standin_config = STANDIN_CONFIG

    def __init__(self, data_dir: str, low_light: bool = True, low_light_seed: int = 0, noise_std: float = 0.0,
                 clear_test: bool = True, standardize: bool = True, image_size: int = 112,
                 normalization: str = "imagenet", val_fraction: float = 0.1, **kwargs):
        super().__init__(data_dir, image_size=image_size, normalization=normalization, val_fraction=val_fraction,
                         **kwargs)
        self.init_low_light(low_light, low_light_seed, noise_std, clear_test, standardize)


class LowLightKDEFDataModule(LowLight, KDEFDataModule):
    """LL-KDEF: KDEF (``datamodules.kdef``: 4,900 images, 70 people x 2 sessions x 7 expressions x 5 angles),
    darkened; split by person, 56 / 14 (3,920 / 980 images). Args as ``LowLightRAFDBDataModule`` 's."""

    standin_config = STANDIN_CONFIG

    def __init__(self, data_dir: str, low_light: bool = True, low_light_seed: int = 0, noise_std: float = 0.0,
                 clear_test: bool = True, standardize: bool = True, image_size: int = 112,
                 normalization: str = "imagenet", val_fraction: float = 0.1, **kwargs):
        super().__init__(data_dir, image_size=image_size, normalization=normalization, val_fraction=val_fraction,
                         **kwargs)
        self.init_low_light(low_light, low_light_seed, noise_std, clear_test, standardize)


