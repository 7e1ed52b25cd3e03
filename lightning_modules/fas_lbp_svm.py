"""Colour-texture LBP + SVM (Boulkenafet et al., "Face anti-spoofing based on color texture analysis", ICIP 2015):
the classical baseline of the face anti-spoofing papers (the card's "LBP colour-texture + SVM"; [4] in Table 5).

Per frame: uniform LBP codes (P = 8, R = 1; scikit-image ``local_binary_pattern``, ``method="nri_uniform"``, 59
bins) of each channel of the HSV and YCbCr images, one normalised histogram per channel, concatenated (6 x 59 = 354
features); an RBF SVM (scikit-learn ``SVC``) on standardised features gives the live score (its decision
value). Thresholds and metrics as the GAN's (``metrics/antispoofing.py``): the dev EER threshold, APCER / BPCER /
ACER / HTER at it, the test EER and AUC.

    python -m lightning_modules.fas_lbp_svm          # on the synthetic stand-in (the demo's frames)
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from skimage.feature import local_binary_pattern
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from lightning_modules.metrics.antispoofing import equal_error_rate, pad_report

BINS = 59  # non-rotation-invariant uniform patterns of 8 neighbours (58) + one bin for the rest


def color_lbp_features(image: np.ndarray, points: int = 8, radius: float = 1.0) -> np.ndarray:
    """(354,) float64: the uniform-LBP histograms of the H, S, V, Y, Cb, Cr channels of an RGB uint8 image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    channels = np.concatenate([cv2.cvtColor(image, cv2.COLOR_RGB2HSV), cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)], 2)
    histograms = []
    for c in range(channels.shape[2]):
        codes = local_binary_pattern(channels[..., c], points, radius, method="nri_uniform")
        hist = np.bincount(codes.astype(np.int64).ravel(), minlength=BINS)[:BINS].astype(np.float64)
        histograms.append(hist / max(hist.sum(), 1.0))
    return np.concatenate(histograms)


def fit_lbp_svm(images: np.ndarray, labels: np.ndarray, c: float = 10.0, seed: int = 0):
    """The scaler + RBF SVM fitted on frames (N, H, W, 3) uint8 with presentation classes (0 = bona fide)."""
    features = np.stack([color_lbp_features(image) for image in images])
    model = make_pipeline(StandardScaler(), SVC(C=c, kernel="rbf", gamma="scale", random_state=seed))
    return model.fit(features, (labels == 0).astype(int))


def live_scores(model, images: np.ndarray) -> np.ndarray:
    """The SVM's decision values (higher = bona fide)."""
    return model.decision_function(np.stack([color_lbp_features(image) for image in images]))


def evaluate(model, dev_images, dev_labels, test_images, test_labels) -> dict[str, float]:
    """PAD report (fractions) on the test frames at the dev set's EER threshold."""
    dev = torch.from_numpy(live_scores(model, dev_images))
    _, threshold = equal_error_rate(dev, torch.from_numpy(dev_labels == 0))
    return pad_report(torch.from_numpy(live_scores(model, test_images)), torch.from_numpy(test_labels), threshold)


def main() -> None:  # pragma: no cover - a command-line report
    from datamodules.standins.synthetic_antispoofing import SyntheticAntiSpoofingDataModule

    dm = SyntheticAntiSpoofingDataModule()
    dm.setup("fit")
    dm.setup("test")
    arrays = {}
    for name, dataset in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set)):
        frames = dataset.load.frames[..., :3]
        arrays[name] = (frames, np.asarray(dataset.labels))
    model = fit_lbp_svm(*arrays["train"])
    report = evaluate(model, *arrays["val"], *arrays["test"])
    print("| ACER % | APCER % | BPCER % | HTER % | EER % | AUC % |\n|---|---|---|---|---|---|")
    print("| " + " | ".join(f"{100 * report[k]:.1f}" for k in ("acer", "apcer", "bpcer", "hter", "eer", "auc")) + " |")


if __name__ == "__main__":
    main()
