"""The batch vocabulary: the keys every dataset writes and every task reads.

A batch is a dict. Datasets of every family use these names, and every task reads its input and target
through ``input_key``/``target_key`` (defaults below), so any dataset feeds any task whose shapes match:
an audio clip dataset feeds the classification task as well as the regression task, an image/mask
dataset feeds segmentation, and an image/label dataset classification.

Shapes are per batch (B first); ``*S`` is the spatial shape, 2D (H, W) or 3D (H, W, D).
"""
from __future__ import annotations

from collections.abc import Mapping

#: image input, float (B, C, *S); for reconstruction the degraded (e.g. zero-filled) image.
IMAGE = "image"
#: waveform input, float (B, samples) or (B, channels, samples).
AUDIO = "audio"
#: a multichannel signal that is neither image nor audio (EEG, wearable sensors, keypoint tracks), float (B, C, T, ...).
SIGNAL = "signal"
#: a clip of frames, float (B, T, C, H, W).
VIDEO = "video"
#: segmentation labels, (B, 1, *S): float 0/1 (binary) or int64 class indices (multi-class); multi-label (overlapping
#: structures, e.g. optic disc and cup): multi-hot float (B, K, *S).
MASK = "mask"
#: class target: int64 index (B,) (multi-class) or multi-hot float (B, K) (multi-label).
LABEL = "label"
#: continuous target: a score (B,) for regression, a reference image (B, C, *S) for reconstruction.
TARGET = "target"
#: int64 (B,): the recording or subject a window was cut from; predictions are pooled per group.
GROUP = "group"
#: list[str] of sample identifiers (file stems), used for prediction files and figure titles.
NAME = "name"
#: registration pairs: images float (B, 1, *S) and their label maps int64 (B, 1, *S).
FIXED, MOVING, FIXED_SEG, MOVING_SEG = "fixed", "moving", "fixed_seg", "moving_seg"
#: registration landmarks: float (B, K, 2) pixel (x, y) coordinates in each image's frame, NaN rows where a pair has
#: fewer than K; and the length of the fixed image's diagonal in pixels (B,) that normalises the errors (rTRE).
FIXED_LANDMARKS, MOVING_LANDMARKS, DIAGONAL = "fixed_landmarks", "moving_landmarks", "diagonal"
#: episodes (datamodules/episodic.py): the support slice (B, C, H, W) and its mask (B, 1, H, W) beside the query
#: (``image``/``mask``); negatives: unrelated slices (B, N, C, H, W) with masks of an unrelated structure (B, N, 1, H, W).
SUPPORT_IMAGE, SUPPORT_MASK = "support_image", "support_mask"
NEGATIVE_IMAGE, NEGATIVE_MASK = "negative_image", "negative_mask"
#: an initial label of the input (e.g. an MRF mask) that guides a model, float 0/1 (B, 1, *S).
PRIOR = "prior"
#: int (B,): the slice (last axis of a volume) where slice-to-slice inference starts (e.g. the rectum).
START_SLICE = "start_slice"
#: source separation: the mixture (B, samples) and the sources (B, K, samples).
MIXTURE, SOURCES = "mixture", "sources"
#: int (B,): the sample rate of an audio item, where a dataset's clips differ.
SAMPLE_RATE = "sample_rate"
#: detection targets, one entry per image (counts differ, so lists, not stacked; datamodules.detection collates):
#: boxes float (N_i, 4) in pixel (x1, y1, x2, y2), x along the width; their class indices int64 (N_i,).
BOXES, BOX_LABELS = "boxes", "box_labels"
#: list[str]: the patient an image belongs to (detection: the unit of the patient bootstrap).
PATIENT = "patient"
#: weak (point) supervision: sparse labels int64 (B, 1, *S), the class on annotated pixels, -1 elsewhere
#: (datamodules/point_labels.py), and signed distance maps from them float (B, K, *S) (boundary losses).
POINTS, DISTANCE_MAPS = "points", "distance_maps"
#: slices of volumes: the volume each slice was cut from (list[str]), its index along the last axis int64 (B,) and
#: the volume's voxel size float (B, 3), so that slice predictions are restacked and scored per volume.
VOLUME, SLICE_INDEX, SPACING = "volume", "slice_index", "spacing"

#: clip sequences (rPPG): the reference pulse of each of a video's n clips (B, n, f), which clips have a usable
#: target (B, n) bool, how many clips exist (B,) int64 (the rest is padding), and the raw mean colour of each clip's
#: region of interest (B, n, 3, f) for the RGB baselines (CHROM, POS, ICA).
PULSE, VALID, NUM_CLIPS, RGB = "pulse", "valid", "num_clips", "rgb"
#: facial landmarks of an image, float (B, K, 2), (x, y) normalised to the image size (e.g. K = 68).
LANDMARKS = "landmarks"

VOCABULARY = frozenset({IMAGE, AUDIO, SIGNAL, VIDEO, MASK, LABEL, TARGET, GROUP, NAME, FIXED, MOVING,
                        FIXED_SEG, MOVING_SEG, FIXED_LANDMARKS, MOVING_LANDMARKS, DIAGONAL, MIXTURE, SOURCES, SAMPLE_RATE,
                        BOXES, BOX_LABELS, SUPPORT_IMAGE, SUPPORT_MASK, NEGATIVE_IMAGE, NEGATIVE_MASK, PRIOR, START_SLICE,
                        POINTS, DISTANCE_MAPS, VOLUME, SLICE_INDEX, SPACING, PULSE, VALID, NUM_CLIPS, RGB,
                        LANDMARKS, PATIENT})

def require(batch: Mapping, *keys: str, task: str = "this task") -> None:
    """Fail with one readable message when a batch lacks keys a task needs (a dataset/task mismatch)."""
    missing = [key for key in keys if key not in batch]
    if missing:
        raise KeyError(f"{task} needs batch keys {missing}, but the batch has {sorted(batch)}: set the task's "
                       f"input_key/target_key to keys the dataset writes (lightning_modules/batch.py lists them)")
