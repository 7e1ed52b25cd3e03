"""Albumentations pipelines whose random draws follow torch's seed, so augmented runs are reproducible."""
from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import torch


class SeededTransform:
    """Calls an albumentations pipeline after seeding it from torch's seed of the running process.

    Albumentations keeps its own generators, seeded from OS entropy unless told otherwise, so
    ``seed_everything`` alone leaves augmentation irreproducible. The seed is that of the main process or of
    a loader worker (torch derives each worker's seed from the main process's generator), so every worker
    draws its own stream and a rerun draws the same ones.
    """

    def __init__(self, transform: A.Compose):
        self.transform = transform
        self._seed: Optional[int] = None

    def __call__(self, **data: Any) -> dict[str, Any]:
        seed = torch.initial_seed() % 2**32
        if seed != self._seed:
            self.transform.set_random_seed(seed)
            self._seed = seed
        return self.transform(**data)
