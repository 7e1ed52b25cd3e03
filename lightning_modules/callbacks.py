"""Prediction writers: ``python run.py predict`` hands each batch's predictions (tensors and names, from a task's
``predict_step``) to these callbacks, which write them into the run folder. Tasks attach their default writer in
``configure_callbacks``; a writer given in the trainer's callbacks takes its place.

Under DDP each rank writes the batches it predicted, and every sample is predicted on exactly one rank (Lightning
samples prediction loaders without padding; BaseDataModule's eval loaders bring an UnrepeatedDistributedSampler),
so every file is written once, with no gathering.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_modules.batch import MASK, NAME, SAMPLE_RATE, SOURCES


class _RunFolderWriter(BasePredictionWriter):
    """Writes under ``<trainer.default_root_dir>/<folder>`` (the run folder), batch by batch."""

    def __init__(self, folder: str):
        super().__init__(write_interval="batch")
        self.folder = folder

    def output_dir(self, trainer) -> str:
        return os.path.join(trainer.default_root_dir, self.folder)


class MaskPNGWriter(_RunFolderWriter):
    """``<run folder>/<folder>/<name>.png``, one 8-bit PNG per predicted mask.

    The prediction is ``{"mask": (B, 1, H, W) integer labels, "name": [B names]}``; pixel values are
    ``label * scale`` (binary masks: ``scale=255`` gives 0/255; class labels: ``scale=1``). Volumes,
    (B, 1, H, W, D), are written as ``<name>.nii.gz`` (uint8 labels, unscaled, identity affine).
    Multi-label masks (B, K, ...) with ``label_names`` (K names) are written one file per channel,
    ``<name>_<label>.png`` (or ``.nii.gz``).
    """

    def __init__(self, folder: str = "predictions", scale: int = 1, label_names: Optional[Sequence[str]] = None):
        super().__init__(folder)
        self.scale = scale
        self.label_names = None if label_names is None else [str(name) for name in label_names]

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices: Optional[Sequence[int]],
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.label_names is not None:  # multi-label: each channel as its own binary mask
            if prediction[MASK].shape[1] != len(self.label_names):
                raise ValueError(f"{prediction[MASK].shape[1]} mask channels but label names {self.label_names}")
            for k, label in enumerate(self.label_names):
                channel = {MASK: prediction[MASK][:, k:k + 1], NAME: [f"{name}_{label}" for name in prediction[NAME]]}
                self._write(trainer, channel)
            return
        self._write(trainer, prediction)

    def _write(self, trainer, prediction: dict) -> None:
        from PIL import Image

        masks = prediction[MASK][:, 0].to(torch.uint8).cpu().numpy()
        os.makedirs(self.output_dir(trainer), exist_ok=True)
        if masks.ndim == 4:  # volumes
            import nibabel as nib

            for name, mask in zip(prediction[NAME], masks):
                nib.save(nib.Nifti1Image(mask, np.eye(4)), os.path.join(self.output_dir(trainer), f"{name}.nii.gz"))
            return
        if self.scale != 1:
            masks = masks * np.uint8(self.scale)
        os.makedirs(self.output_dir(trainer), exist_ok=True)
        for name, mask in zip(prediction[NAME], masks):
            Image.fromarray(mask).save(os.path.join(self.output_dir(trainer), f"{name}.png"))


class AudioStemWriter(_RunFolderWriter):
    """``<run folder>/<folder>/<name>/<stem>.wav``: each separated source of each track, as float WAV at the
    track's rate.

    The prediction is ``{"sources": (B, S, samples), "name": [B names], "sample_rate": (B,)}``; ``stems`` names
    the S sources in order.
    """

    def __init__(self, stems: Sequence[str], folder: str = "separated", subtype: str = "FLOAT"):
        super().__init__(folder)
        self.stems = list(stems)
        self.subtype = subtype

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices: Optional[Sequence[int]],
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        import soundfile as sf

        estimates = prediction[SOURCES].detach().float().cpu().numpy()
        for name, rate, track in zip(prediction[NAME], prediction[SAMPLE_RATE], estimates):
            if len(track) != len(self.stems):
                raise ValueError(f"{len(track)} separated sources but {len(self.stems)} stem names {self.stems}")
            folder = os.path.join(self.output_dir(trainer), name)
            os.makedirs(folder, exist_ok=True)
            for stem, audio in zip(self.stems, track):
                sf.write(os.path.join(folder, f"{stem}.wav"), audio, int(rate), subtype=self.subtype)


def default_writer(trainer, writer: BasePredictionWriter) -> list:
    """``[writer]`` for a task's ``configure_callbacks``, unless the trainer already has a prediction writer
    (one from the config), which then stays in charge."""
    if trainer is not None and any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
        return []
    return [writer]
