import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tests never reach W&B's servers: runs are written offline in the run folder.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One intra-op thread for the whole session, set once before any op: small test models run faster
# without a second spinning OpenMP thread (much faster on a shared CPU), and the count must never be
# raised again mid-process: after set_num_threads(1) -> (2), torch 2.13's CPU build (oneMKL) breaks
# batched float64 torch.linalg.solve ("Pivots given to lu_solve ..."), which BSS Eval uses.
torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def write_oasis_tree(root: Path, num_subjects: int, shape_2d=(160, 192), shape_3d=(8, 10, 12), seed: int = 0):
    """A tiny OASIS-1 release in the neurite-oasis v1.0 layout (random images, real file names)."""
    rng = np.random.default_rng(seed)
    names = [f"OASIS_OAS1_{i + 1:04d}_MR1" for i in range(num_subjects)]
    arrays = {}
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        slice_img = rng.random((*shape_2d, 1), dtype=np.float32)
        slice_seg = rng.integers(0, 25, (*shape_2d, 1)).astype(np.uint8)
        vol_img = rng.random(shape_3d, dtype=np.float32)
        vol_seg = rng.integers(0, 36, shape_3d).astype(np.uint8)
        for file, array in (("slice_norm", slice_img), ("slice_seg24", slice_seg),
                            ("aligned_norm", vol_img), ("aligned_seg35", vol_seg)):
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(folder / f"{file}.nii.gz"))
        arrays[name] = (slice_img[..., 0], slice_seg[..., 0], vol_img, vol_seg)
    (root / "subjects.txt").write_text("\n".join(names) + "\n")
    return names, arrays
