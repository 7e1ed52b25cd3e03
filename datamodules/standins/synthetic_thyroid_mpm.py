"""Offline stand-in for the thyroid MPM RoIs (ThyroidFAE): synthetic BSHG, FSHG and TPEF images of a nodule
capsule, FA vs FTC, grouped in tissue sections and split by section like the real data.

- SHG (BSHG): a band of oriented collagen fibres (a sinusoidal texture) marks the capsule. FTC: a thick capsule
  (30-45 % of the width) with disordered fibre angles (a smooth random angle field); FA: a thin band (10-20 %)
  with aligned fibres. Each section has its own capsule direction and brightness (a section effect).
- FSHG = 1.3 BSHG + noise (forward and backward SHG of mature collagen look alike).
- TPEF: autofluorescent cells (Gaussian blobs), denser in FTC, over a faint tissue background.
- Photon counting: every image is Poisson noise around its intensity (in counts), i.e. raw, unnormalised values
  as the microscope's TIFFs.

Default: 128 x 128, 40 FA + 40 FTC RoIs in 8 sections of 10 (4 per class). ``export_standin`` writes it in
the official layout (``datamodules.thyroid_mpm.LAYOUT``) for trying the real-data module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from scipy.ndimage import gaussian_filter

from datamodules.thyroid_mpm import CLASSES, MPMItem, ThyroidMPMDataModule, write_roi


def _fibre_texture(size: int, angle: np.ndarray, wavelength: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    # Fibres run along `angle`: the phase advances across them.
    phase = 2 * np.pi * (-xx * np.sin(angle) + yy * np.cos(angle)) / wavelength + rng.uniform(0, 2 * np.pi)
    return 0.5 + 0.5 * np.sin(phase)


def synthetic_roi(label: int, rng: np.random.Generator, size: int = 128, capsule_angle: float = 0.0,
                  gain: float = 1.0) -> np.ndarray:
    """(3, size, size) float32 raw counts: BSHG, FSHG, TPEF of one RoI (label 0 FA, 1 FTC)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = capsule_angle + rng.normal(0, 0.15)
    thickness = size * (rng.uniform(0.30, 0.45) if label == 1 else rng.uniform(0.10, 0.20))
    centre = rng.uniform(0.35, 0.65) * size
    # Signed distance from the capsule's centre line (through (centre, centre) along `angle`).
    distance = -(xx - centre) * np.sin(angle) + (yy - centre) * np.cos(angle)
    band = 1.0 / (1.0 + np.exp((np.abs(distance) - thickness / 2) / 1.5))
    if label == 1:  # disordered fibres: a smooth random angle field of +- ~60 degrees
        field = gaussian_filter(rng.normal(0, 1, (size, size)), sigma=size / 16)
        fibre_angle = angle + field / (field.std() + 1e-8) * 1.0
    else:  # aligned with the capsule
        fibre_angle = angle + rng.normal(0, 0.05)
    texture = _fibre_texture(size, fibre_angle, wavelength=rng.uniform(5.0, 7.0), rng=rng)
    shg = gain * (40.0 * band * (0.25 + 0.75 * texture ** 2) + 2.0)
    bshg = rng.poisson(shg).astype(np.float32)
    fshg = rng.poisson(1.3 * shg + np.abs(rng.normal(0, 1.0, shg.shape))).astype(np.float32)

    cells = rng.poisson(45 if label == 1 else 15)
    tpef = 6.0 + 4.0 * gaussian_filter(rng.normal(0, 1, (size, size)), sigma=4) ** 2
    for _ in range(cells):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(1.5, 3.0)
        tpef += rng.uniform(20, 40) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
    tpef = rng.poisson(gain * tpef).astype(np.float32)
    return np.stack([bshg, fshg, tpef])


def synthetic_items(num_sections: int = 8, rois_per_section: int = 10, size: int = 128,
                    seed: int = 0) -> list[MPMItem]:
    """Sections alternate FA, FTC (4 + 4 by default); section s is named ``<30000 + s>``."""
    rng = np.random.default_rng(seed)
    items = []
    for section in range(num_sections):
        label = section % 2
        section_id = str(30000 + section)
        capsule_angle, gain = rng.uniform(0, np.pi), rng.uniform(0.7, 1.4)
        for roi in range(rois_per_section):
            image = synthetic_roi(label, rng, size, capsule_angle, gain)
            items.append(MPMItem(image, label, section_id, f"{CLASSES[label]}/{section_id}-{roi + 1}"))
    return items


class SyntheticThyroidMPMDataModule(ThyroidMPMDataModule):
    """The synthetic RoIs through ``ThyroidMPMDataModule``'s split, normalisation and batching (``data_dir``
    unused).

    Args:
        num_sections, rois_per_section, size, seed: the generated set (sections alternate FA and FTC).
        Others: ``ThyroidMPMDataModule``'s (split by section, 70:10:20, balanced train).
    """

    def __init__(self, num_sections: int = 8, rois_per_section: int = 10, size: int = 128, seed: int = 0,
                 **kwargs) -> None:
        kwargs.setdefault("exclude", ())
        super().__init__(**kwargs)
        if num_sections < 4:
            raise ValueError(f"num_sections must be >= 4 (2 per class), got {num_sections}")
        self.num_sections, self.rois_per_section, self.size, self.seed = num_sections, rois_per_section, size, seed

    def prepare_data(self) -> None:
        pass

    def list_items(self) -> list[MPMItem]:
        return synthetic_items(self.num_sections, self.rois_per_section, self.size, self.seed)


def export_standin(root: Union[str, Path], num_sections: int = 8, rois_per_section: int = 10, size: int = 128,
                   seed: int = 0, polarisation_jitter: float = 1.0) -> Path:
    """Write the stand-in in the official on-disk layout (10 polarisation TIFFs per SHG modality)."""
    root = Path(root)
    for index, item in enumerate(synthetic_items(num_sections, rois_per_section, size, seed)):
        class_name, folder = item.name.split("/")
        write_roi(root, class_name, folder, *item.source, polarisation_jitter=polarisation_jitter, seed=seed + index)
    return root
