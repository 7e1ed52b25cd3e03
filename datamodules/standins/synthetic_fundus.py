"""Offline stand-in for RIGA+ (SAPM): fundus crops cut from scikit-image's retina photograph
(``skimage.data.retina``, shipped inside the wheel) with a synthetic optic disc and cup painted in, and several
synthetic acquisition "domains", so that single-source domain generalisation is measurable.

Each image (``size`` px square, RGB):

- background: a random window (300-400 px) of the real fundus photograph, away from its own optic disc (real
  vessels, fovea and choroid texture), randomly flipped/rotated by 90 degrees, resized;
- optic disc (OD): a pale yellow soft-edged ellipse (radius 11-17 % of the side, random aspect and angle) near the
  centre, as RIGA+'s disc-centred crops; optic cup (OC): a brighter, whiter ellipse inside it (radius ratio
  0.4-0.7); 4-7 dark vessel curves leave the disc. The label map uses RIGA+'s values (255 disc, 128 cup, 0
  background), so the stand-in goes through the same reader code as the real data;
- domain style, applied to the whole image: hue shift, per-channel gain, gamma, contrast, Gaussian blur and a
  linear illumination gradient (each with a small per-image jitter). ``source`` is the photograph's own style; the
  three targets (``cool_bright``, ``warm_dark``, ``low_contrast``) differ as RIGA+'s cameras do (colour cast,
  exposure, contrast, focus).

Protocol as RIGA+: train on ``num_train`` source images (validation: ``num_val`` further source images), test on
``num_test`` images per target domain (``test/<domain>/dice/OD`` ...), every target together as ``test/``.
Deterministic given ``seed``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from datamodules.riga_plus import FundusDataset, FundusDomainsDataModule, FundusItem

#: domain -> (hue shift in degrees, RGB gain, gamma, contrast around the mean, blur sigma in px at 96 px,
#: illumination gradient amplitude)
DOMAIN_STYLES: dict[str, dict] = {
    "source": dict(hue=0.0, gain=(1.0, 1.0, 1.0), gamma=1.0, contrast=1.0, blur=0.0, illumination=0.0),
    "cool_bright": dict(hue=18.0, gain=(0.75, 1.15, 1.45), gamma=0.65, contrast=0.85, blur=0.6, illumination=0.2),
    "warm_dark": dict(hue=-15.0, gain=(1.1, 0.7, 0.55), gamma=1.6, contrast=1.25, blur=0.3, illumination=0.35),
    "low_contrast": dict(hue=0.0, gain=(0.85, 0.95, 1.05), gamma=1.0, contrast=0.55, blur=1.5, illumination=0.15),
}
TARGET_DOMAINS = ("cool_bright", "warm_dark", "low_contrast")


@lru_cache(maxsize=1)
def _retina() -> np.ndarray:
    from skimage.data import retina

    return retina()


def _ellipse(yy, xx, cy, cx, ry, rx, angle, softness=1.0) -> np.ndarray:
    """Soft ellipse in [0, 1] (1 inside, an edge ~``softness`` px wide), and the hard mask is ``> 0.5``."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    radius = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)  # 1 on the boundary
    return np.clip((1.0 - radius) * min(rx, ry) / softness + 0.5, 0.0, 1.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    photo = _retina()  # 1411 x 1411; its own disc is near (y 656, x 232)
    half = int(rng.integers(150, 201))
    cy, cx = int(rng.integers(450, 951)), int(rng.integers(600, 1001))
    window = photo[cy - half:cy + half, cx - half:cx + half].astype(np.float32)
    window = np.rot90(window, int(rng.integers(4)))
    if rng.random() < 0.5:
        window = window[:, ::-1]
    return cv2.resize(np.ascontiguousarray(window), (size, size), interpolation=cv2.INTER_AREA)


def synthetic_fundus(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(image HxWx3 float32 0-255 in the source style, label map HxW uint8: 255 disc, 128 cup, 0 background)."""
    image = _background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    r = rng.uniform(0.11, 0.17) * size
    ry, rx = r * rng.uniform(0.88, 1.12), r * rng.uniform(0.88, 1.12)
    angle = rng.uniform(0, np.pi)
    disc = _ellipse(yy, xx, cy, cx, ry, rx, angle, softness=1.5)
    ratio = rng.uniform(0.4, 0.7)
    ccy, ccx = cy + rng.uniform(-0.1, 0.1) * r, cx + rng.uniform(-0.1, 0.1) * r
    cup = _ellipse(yy, xx, ccy, ccx, ry * ratio, rx * ratio, angle + rng.uniform(-0.3, 0.3), softness=1.5)
    texture = 1.0 + 0.06 * gaussian_filter(rng.standard_normal((size, size)), 1.5)[..., None]
    disc_colour = np.array([235, 185, 110], np.float32) * rng.uniform(0.92, 1.05)
    cup_colour = np.array([250, 232, 185], np.float32) * rng.uniform(0.95, 1.02)
    image = image * (1 - 0.8 * disc[..., None]) + 0.8 * disc[..., None] * disc_colour * texture
    image = image * (1 - 0.75 * cup[..., None]) + 0.75 * cup[..., None] * cup_colour * texture
    vessels = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(4, 8))):  # dark curves leaving the disc
        theta, bend = rng.uniform(0, 2 * np.pi), rng.uniform(-0.02, 0.02)
        points, (y, x) = [], (cy + 0.3 * r * np.sin(theta), cx + 0.3 * r * np.cos(theta))
        for _step in range(int(size * 0.7)):
            points.append((x, y))
            theta += bend
            y, x = y + np.sin(theta), x + np.cos(theta)
        cv2.polylines(vessels, [np.round(np.array(points)).astype(np.int32)], False, 1.0,
                      thickness=int(rng.integers(1, 3)))
    vessels = gaussian_filter(vessels, 0.6)[..., None]
    image = image * (1 - 0.55 * vessels) + 0.55 * vessels * np.array([120, 25, 20], np.float32)
    label = np.zeros((size, size), np.uint8)
    label[disc > 0.5] = 255
    label[(cup > 0.5) & (disc > 0.5)] = 128
    return np.clip(image, 0, 255), label


def apply_domain_style(image: np.ndarray, domain: str, rng: np.random.Generator) -> np.ndarray:
    """The domain's acquisition style on a 0-255 float image (per-image jitter of +-5 % on each factor)."""
    style = DOMAIN_STYLES[domain]
    jitter = lambda: rng.uniform(0.95, 1.05)  # noqa: E731
    size = image.shape[0]
    x = np.clip(image, 0, 255).astype(np.uint8)
    if style["hue"]:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV).astype(np.int32)
        hsv[..., 0] = (hsv[..., 0] + int(round(style["hue"] * jitter() / 2))) % 180  # OpenCV hue: 0-179
        x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    x = x.astype(np.float32) / 255.0
    x = x * np.array(style["gain"], np.float32) * jitter()
    x = np.clip(x, 0, 1) ** (style["gamma"] * jitter())
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = mean + (x - mean) * style["contrast"] * jitter()
    if style["illumination"]:
        direction = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        x = x * (1 + style["illumination"] * jitter() * (np.cos(direction) * xx + np.sin(direction) * yy))[..., None]
    if style["blur"]:
        sigma = style["blur"] * size / 96 * jitter()
        x = np.stack([gaussian_filter(x[..., c], sigma) for c in range(3)], axis=-1)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def synthetic_domain(domain: str, count: int, seed: int, size: int = 96, offset: int = 0) -> list[FundusItem]:
    """``count`` stand-in images of one domain, deterministic in (seed, domain, offset + index)."""
    domain_index = list(DOMAIN_STYLES).index(domain)
    items = []
    for i in range(offset, offset + count):
        rng = np.random.default_rng([seed, domain_index, i])
        image, label = synthetic_fundus(rng, size)
        items.append(FundusItem(apply_domain_style(image, domain, rng), label, f"{domain}_{i:04d}"))
    return items


class SyntheticFundusDataModule(FundusDomainsDataModule):
    """The RIGA+ protocol on the stand-in (see the module docstring); batches as ``RIGAPlusDataModule``'s.

    Args:
        num_train, num_val: source-domain training and validation images.
        num_test: images per target domain.
        source_size: the generated images' side (the model's ``image_size`` resizes them, as the real reader).
        targets: which target domains to test on.
    """

    def __init__(self, num_train: int = 96, num_val: int = 24, num_test: int = 32, source_size: int = 96,
                 targets: tuple[str, ...] = TARGET_DOMAINS, image_size: int = 96, seed: int = 0,
                 batch_size: int = 8, num_workers: int = 0, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(image_size, 0.0, seed, batch_size, num_workers, pin_memory, eval_batch_size)
        unknown = [t for t in targets if t not in DOMAIN_STYLES or t == "source"]
        if unknown:
            raise ValueError(f"unknown target domains {unknown}: choose from {TARGET_DOMAINS}")
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.source_size, self.targets = source_size, tuple(targets)
        self.standin_config = None

    def list_domains(self):
        source = synthetic_domain("source", self.num_train + self.num_val, self.seed, self.source_size)
        return source, {t: synthetic_domain(t, self.num_test, self.seed, self.source_size) for t in self.targets}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        source, targets = self.list_domains()
        make = lambda items, augment=False: FundusDataset(items, self.image_size, augment, None)  # noqa: E731
        self.train_set, self.val_set = make(source[:self.num_train], True), make(source[self.num_train:])
        self.test_sets = {name: make(items) for name, items in targets.items()}
        from torch.utils.data import ConcatDataset

        self.test_set = ConcatDataset(list(self.test_sets.values()))
