"""Registration family data: pairs of subjects -> ``{"moving", "fixed", "moving_seg", "fixed_seg"}``."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_modules.batch import FIXED, FIXED_SEG, MOVING, MOVING_SEG


class InMemorySubjects:
    """Subjects held as arrays: ``images`` (N, *spatial) float32, ``labels`` (N, *spatial) integer."""

    def __init__(self, images, labels) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label maps")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


class RegistrationPairDataset(Dataset):
    """Ordered pairs ``(moving, fixed)`` of subject indices into ``subjects``.

    ``subjects[i]`` returns ``(image, labels)`` as numpy arrays of shape ``spatial``; items are dicts
    with ``moving``/``fixed`` float32 and ``moving_seg``/``fixed_seg`` int64, each (1, *spatial).
    """

    def __init__(self, subjects, pairs) -> None:
        self.subjects = subjects
        self.pairs = [(int(m), int(f)) for m, f in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        moving_index, fixed_index = self.pairs[index]
        moving, moving_seg = self.subjects[moving_index]
        fixed, fixed_seg = self.subjects[fixed_index]
        return {
            MOVING: _as_tensor(moving, torch.float32),
            FIXED: _as_tensor(fixed, torch.float32),
            MOVING_SEG: _as_tensor(moving_seg, torch.int64),
            FIXED_SEG: _as_tensor(fixed_seg, torch.int64),
        }


def _as_tensor(array, dtype: torch.dtype) -> torch.Tensor:
    # np.array copies: memory-mapped or shared arrays must not be handed out (read-only / aliasing).
    numpy_dtype = np.float32 if dtype == torch.float32 else np.int64
    return torch.from_numpy(np.array(array, dtype=numpy_dtype, copy=True))[None]
