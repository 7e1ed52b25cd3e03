"""SABS: the Synapse multi-organ abdominal CT of the MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault"
challenge (BTCV; syn3193805), 30 training scans with 13 organ labels (1 spleen, 2 right kidney, 3 left kidney,
4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta, 9 inferior vena cava, 10 portal and splenic veins,
11 pancreas, 12 right adrenal gland, 13 left adrenal gland) and no colon: Guided-SET-DCL's training sets D_tr1 (SABS)
and D_tr2 (SABS + CTC68) of Table 1, tested on the colon scans (CTC30).

Layout as the challenge distributes it (``RawData.zip``; ``sabs_dir`` may also be the ``RawData`` folder)::

    <sabs_dir>/RawData/Training/img/img0001.nii.gz ... img0040.nii.gz
    <sabs_dir>/RawData/Training/label/label0001.nii.gz ... (same case numbers)

``SABSColonDataModule`` trains on SABS (optionally plus the colon scans' training split) and validates and tests on
the colon scans of ``ColonCTDataModule`` (``data_dir``, ``layout``, ``split_file``):

- ``train_supervision: superpixel`` (D_tr1, the paper's "self-supervised learning ... with superpixel results instead
  of annotations"): SSL-ALPNet's superpixel episodes on every training scan; no label is read for training;
- ``train_supervision: labels`` (D_tr2 with ``colon_train: true``): the 13 organs as 13 binary classes of episodes
  (``episodic.class_volumes``: each organ's initial label is its superpixel approximation, the negatives' masks the
  other organs) beside the colon scans' colon episodes (MRF initial label): the paper's "Superpixel+MRF".

SABS is preprocessed as the colon scans (HU window [-1000, 1000], slices resized to ``image_size``), not with
SSL-ALPNet's [-125, 275] window and cropping: one normalisation for training and the colon test scans (air must stay
distinct). The preprocessed SABS scans (image, labels, superpixels) are cached as ``.npz`` under
``<cache_dir>/sabs/<settings hash>/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from datamodules.base import DatasetError, writable_dir
from datamodules.colon_ct import ColonCTDataModule
from datamodules.episodic import (EpisodeVolume, class_volumes, resize_slices, superpixel_volume, window_hu)

SABS_LAYOUT = """<sabs_dir>/RawData/Training/img/img0001.nii.gz    (BTCV abdomen, 30 CT scans)
<sabs_dir>/RawData/Training/label/label0001.nii.gz (0 background, organs 1-13)"""

SABS_ORGANS = ("spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior_vena_cava", "portal_splenic_vein", "pancreas", "adrenal_right", "adrenal_left")

SABS_STANDIN_CONFIG = "experiments/setdcl_superpixel_demo.yaml"


class SABSColonDataModule(ColonCTDataModule):
    """SABS (+ the colon scans' training split) for training, the colon scans for validation and test.

    Args:
        sabs_dir: the BTCV root (holding ``RawData/Training``) or its ``RawData`` folder.
        colon_train: add the colon scans' training split to the training episodes (D_tr2 = SABS + CTC68).
        sabs_classes: the organ labels used as classes (``labels`` supervision; default all 13).
        sabs_max_cases: use only the first SABS cases (sorted), for quick runs.
        sabs_prior_share: an organ's superpixel initial label keeps the superpixels at least this much inside it.
        (others: ``ColonCTDataModule`` and ``EpisodicVolumeDataModule``; ``train_supervision`` chooses D_tr1's
        superpixel episodes or D_tr2's labelled ones)
    """

    def __init__(self, sabs_dir: str, colon_train: bool = False, sabs_classes: Sequence[int] = tuple(range(1, 14)),
                 sabs_max_cases: Optional[int] = None, sabs_prior_share: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sabs_dir = Path(os.path.expanduser(str(sabs_dir)))
        self.colon_train, self.sabs_classes = colon_train, [int(k) for k in sabs_classes]
        self.sabs_max_cases, self.sabs_prior_share = sabs_max_cases, sabs_prior_share

    # -- SABS files --------------------------------------------------------------------------------
    def sabs_error(self, problem: str, path=None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(f"{type(self).__name__} (SABS): {problem}", path=path, layout=SABS_LAYOUT,
                            standin_config=SABS_STANDIN_CONFIG, hint=hint)

    def sabs_training_dir(self) -> Path:
        for root in (self.sabs_dir / "RawData" / "Training", self.sabs_dir / "Training"):
            if root.is_dir():
                return root
        raise self.sabs_error("no RawData/Training folder", self.sabs_dir)

    def sabs_cases(self) -> list[str]:
        folder = self.sabs_training_dir() / "img"
        if not folder.is_dir():
            raise self.sabs_error("missing img folder", folder)
        cases = sorted(m.group(1) for p in folder.glob("img*.nii.gz") if (m := re.fullmatch(r"img(\d+)\.nii\.gz",
                                                                                             p.name)))
        if not cases:
            raise self.sabs_error("no img<case>.nii.gz scans", folder)
        return cases[: self.sabs_max_cases] if self.sabs_max_cases else cases

    def sabs_files(self, case: str) -> tuple[Path, Path]:
        root = self.sabs_training_dir()
        image, label = root / "img" / f"img{case}.nii.gz", root / "label" / f"label{case}.nii.gz"
        for path in (image, label):
            if not path.is_file():
                raise self.sabs_error("missing file", path)
        return image, label

    # -- preprocessing with a cache ----------------------------------------------------------------
    def sabs_settings(self) -> dict:
        return {"image_size": self.image_size, "hu_window": list(self.hu_window),
                "superpixel_min_size": self.superpixel_min_size, "superpixel_sigma": self.superpixel_sigma,
                "version": 1}

    def _sabs_cache_path(self, case: str) -> Optional[Path]:
        if self.cache_root is None:
            return None
        digest = hashlib.sha1(json.dumps(self.sabs_settings(), sort_keys=True).encode()).hexdigest()[:10]
        return self.cache_root / "sabs" / digest / f"sabs{case}.npz"

    def sabs_volume(self, case: str) -> EpisodeVolume:
        """One SABS scan: image in [0, 1], ``mask`` = the organ labels (0-13), ``superpixels``; no initial label."""
        path = self._sabs_cache_path(case)
        if path is not None and path.is_file():
            with np.load(path) as data:
                image, labels, superpixels = data["image"], data["labels"], data["superpixels"]
        else:
            image_path, label_path = self.sabs_files(case)
            hu = self.read_nifti(image_path, self.sabs_error).astype(np.float32)
            labels = self.read_nifti(label_path, self.sabs_error)
            if labels.shape != hu.shape:
                raise self.sabs_error(f"label has shape {labels.shape}, the image {hu.shape}", label_path)
            image = resize_slices(window_hu(hu, self.hu_window), self.image_size, "image")
            labels = resize_slices(np.asarray(labels, np.uint8), self.image_size, "mask")
            superpixels = superpixel_volume(image, self.superpixel_min_size, self.superpixel_sigma).astype(np.uint16)
            if path is not None and writable_dir(path.parent):
                tmp = path.parent / f".sabs{case}.{uuid.uuid4().hex}.tmp.npz"
                np.savez(tmp, image=image, labels=labels, superpixels=superpixels)
                os.replace(tmp, path)
        zeros = np.zeros(labels.shape, np.uint8)
        return EpisodeVolume(f"sabs{case}", image, labels, zeros, zeros, 0, superpixels.astype(np.int32))

    def load_split(self, split: str) -> list[EpisodeVolume]:
        if split != "train" or split in self.volumes:
            return super().load_split(split)
        sabs = [self.sabs_volume(case) for case in self.sabs_cases()]
        if self.train_supervision == "labels":
            sabs = [organ for volume in sabs for organ in class_volumes(volume, self.sabs_classes,
                                                                         self.sabs_prior_share)]
        colon = super().load_split("train") if self.colon_train else []
        self.volumes["train"] = sabs + colon
        return self.volumes["train"]

    def prepare_data(self) -> None:
        """Check both layouts, then fill the caches (the SABS scans; the MRF labels of the colon scans used)."""
        for case in self.sabs_cases():
            self.sabs_files(case)
        for case in self.sabs_cases():
            path = self._sabs_cache_path(case)
            if path is None or not path.is_file():
                self.sabs_volume(case)
        splits = ("train", "val", "test") if self.colon_train else ("val", "test")  # colon training scans: D_tr2
        cases = [case for split in splits for case in self.splits()[split]]
        for case in cases:
            self.case_files(case)
        for case in cases:
            if self.cached(case) is None:
                self.preprocess(self.read_volume(case))
