#!/usr/bin/env python
"""DST paper, the handcrafted rows of Tables 2 and 4 (LBP-TOP): LBP-TOP features (``lightning_modules.dst_mer.
lbp_top_features``: 8 neighbours, radius 1, 5 x 5 blocks, XY/XT/YT) of the same 17 apex-centred frames (grey,
unmagnified, at the datamodule's image size) + scikit-learn's ``LinearSVC``, leave-one-subject-out, the
predictions pooled over the folds into UF1 / UAR / Acc (``pooled_scores``, as ``pooled_loso`` scores DST).

    python benchmarks/dst_mer_lbptop.py                                          # the stand-in (6 subjects)
    python benchmarks/dst_mer_lbptop.py --dataset casme2 --data_dir data/CASME2   # also samm, smic
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.micro_expression import (CASME2DataModule, SAMMDataModule, SMICDataModule, apex_window,  # noqa: E402
                                          detect_face_box, read_frames)
from datamodules.standins.synthetic_micro_expression import SyntheticMicroExpressionDataModule  # noqa: E402
from lightning_modules.dst_mer import lbp_top_features, pooled_scores  # noqa: E402

DATASETS = {"standin": SyntheticMicroExpressionDataModule, "casme2": CASME2DataModule, "samm": SAMMDataModule,
            "smic": SMICDataModule}


def clip_features(datamodule, clip) -> np.ndarray:
    frames = clip.frames if isinstance(clip.frames, np.ndarray) else read_frames(clip.frames)
    window = frames[apex_window(len(frames), clip.apex, datamodule.num_frames)]
    if datamodule.face_crop:
        x, y, w, h = detect_face_box(window[0])
        window = window[:, y:y + h, x:x + w]
    size = datamodule.image_size
    grey = np.stack([cv2.cvtColor(cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
                     for f in window])
    return lbp_top_features(grey)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="standin")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--image_size", type=int, default=None, help="default: 64 (stand-in) / 112")
    parser.add_argument("--C", type=float, default=1.0, help="LinearSVC's C")
    args = parser.parse_args()
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    kwargs = {} if args.data_dir is None else {"data_dir": args.data_dir}
    if args.image_size:
        kwargs["image_size"] = args.image_size
    datamodule = DATASETS[args.dataset](**kwargs)
    clips = datamodule.list_clips()
    start = time.perf_counter()
    features = np.stack([clip_features(datamodule, clip) for clip in clips])
    seconds = time.perf_counter() - start
    labels = np.array([c.label for c in clips])
    subjects = np.array([c.subject for c in clips])
    targets, preds = [], []
    for held_out in sorted(set(subjects)):
        train, test = subjects != held_out, subjects == held_out
        scaler = StandardScaler().fit(features[train])
        svm = LinearSVC(C=args.C, max_iter=20000).fit(scaler.transform(features[train]), labels[train])
        targets += labels[test].tolist()
        preds += svm.predict(scaler.transform(features[test])).tolist()
    scores = pooled_scores(targets, preds, datamodule.num_classes)
    print(f"LBP-TOP features: {features.shape[1]} per clip, {1e3 * seconds / len(clips):.0f} ms per clip")
    print("| method | dataset | folds | clips | UF1 | UAR | Acc |")
    print("|---|---|---|---|---|---|---|")
    print(f"| LBP-TOP + LinearSVC (C={args.C:g}) | {args.dataset} | {len(set(subjects))} | {scores['n']} | "
          f"{scores['uf1']:.4f} | {scores['uar']:.4f} | {scores['acc']:.4f} |")


if __name__ == "__main__":
    main()
