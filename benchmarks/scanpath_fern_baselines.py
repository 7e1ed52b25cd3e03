#!/usr/bin/env python
"""Scanpath angle-fern paper, Table 2's non-deep rows: Random Ferns and EM statistics + SVM / tree ensemble /
two-layer network, on the same splits as the networks (train / val / test of the scanpath datamodules).

    python benchmarks/scanpath_fern_baselines.py                                   # the synthetic stand-in, subject task
    python benchmarks/scanpath_fern_baselines.py --task stimulus
    python benchmarks/scanpath_fern_baselines.py --dataset gazecom --data_dir /data/GazeCom --n_sets 4096 --set_size 5
    python benchmarks/scanpath_fern_baselines.py --dataset mit1003 --data_dir /data/MIT1003 --task stimulus

Features in ``lightning_modules/scanpath_features.py``. As the paper (Sect. 4.2), each method's parameters are picked
on the validation part (20 % of the training recordings; for Random Ferns the ensemble type and size, for the
SVM C, for the trees their number, for the two-layer net its width), then the pick is refitted on train + val and
scored on the test split (top-1 accuracy).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.blocks.angle_ferns import AngleFernHistogram  # noqa: E402
from lightning_modules.scanpath_features import em_statistics, fern_features  # noqa: E402

#: Table 2 (accuracy %), (subject, stimulus) per dataset
PAPER = {
    "Random Ferns": {"gazecom": (85, 44), "mit1003": (42, 41), "doves": (18, 52)},
    "EM statistics + SVM": {"gazecom": (61, 22), "mit1003": (21, 20), "doves": (5, 28)},
    "EM statistics + Tree ENS": {"gazecom": (62, 24), "mit1003": (25, 21), "doves": (6, 31)},
    "EM statistics + two layer NN": {"gazecom": (60, 24), "mit1003": (23, 21), "doves": (6, 29)},
}


def datamodule(args):
    common = dict(task=args.task, split_seed=args.split_seed, num_workers=0)
    if args.dataset == "standin":
        from datamodules.standins.synthetic_scanpaths import SyntheticScanpathDataModule

        return SyntheticScanpathDataModule(**common)
    if args.dataset == "gazecom":
        from datamodules.gazecom import GazeComDataModule

        return GazeComDataModule(args.data_dir, **common)
    if args.dataset == "mit1003":
        from datamodules.mit1003 import MIT1003DataModule

        return MIT1003DataModule(args.data_dir, max_samples=750, **common)
    from datamodules.doves import DOVESDataModule

    return DOVESDataModule(args.data_dir, max_samples=1000, **common)


def split_arrays(dm, split: str) -> tuple[torch.Tensor, np.ndarray]:
    dataset = getattr(dm, f"{split}_set")
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["signal"] for item in items]), np.array([int(item["label"]) for item in items])


def select_and_test(candidates: dict, data: dict) -> tuple[str, float, float]:
    """(best candidate name, its val accuracy, test accuracy after refitting on train + val)."""
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]
    scores = {name: float((make().fit(x_tr, y_tr).predict(x_va) == y_va).mean()) for name, make in candidates.items()}
    best = max(scores, key=scores.get)
    model = candidates[best]().fit(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]))
    return best, scores[best], float((model.predict(x_te) == y_te).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="standin", choices=["standin", "gazecom", "mit1003", "doves"])
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--task", default="subject", choices=["subject", "stimulus"])
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--n_sets", type=int, default=256, help="fern sets (the paper's layer: 4096)")
    parser.add_argument("--set_size", type=int, default=4, help="checks per set (the paper's layer: 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    dm = datamodule(args)
    dm.setup("fit")
    raw = {split: split_arrays(dm, split) for split in ("train", "val", "test")}
    rate = dm.sample_rate
    print(f"{args.dataset} ({args.task}): {dm.num_classes} classes, train/val/test "
          f"{'/'.join(str(len(raw[s][1])) for s in ('train', 'val', 'test'))} recordings, chance "
          f"{np.bincount(raw['test'][1]).max() / len(raw['test'][1]):.3f} (majority)")
    layer = AngleFernHistogram(args.n_sets, args.set_size, learn_ranges=False, seed=args.seed)
    start = time.perf_counter()
    ferns = {s: (fern_features(layer, x), y) for s, (x, y) in raw.items()}
    fern_time = time.perf_counter() - start
    em = {s: (np.stack([em_statistics(r.numpy(), rate) for r in x]), y) for s, (x, y) in raw.items()}
    seed = args.seed
    methods = {
        "Random Ferns": (ferns, {
            **{f"extra-trees {n}": (lambda n=n: ExtraTreesClassifier(n, random_state=seed, n_jobs=1))
               for n in (100, 300)},
            **{f"random forest {n}": (lambda n=n: RandomForestClassifier(n, random_state=seed, n_jobs=1))
               for n in (100, 300)}}),
        "EM statistics + SVM": (em, {f"SVM C={c}": (lambda c=c: make_pipeline(StandardScaler(), SVC(C=c)))
                                     for c in (0.1, 1.0, 10.0)}),
        "EM statistics + Tree ENS": (em, {f"extra-trees {n}": (lambda n=n: ExtraTreesClassifier(n, random_state=seed,
                                                                                               n_jobs=1))
                                          for n in (100, 300)}),
        "EM statistics + two layer NN": (em, {f"MLP {h}": (lambda h=h: make_pipeline(StandardScaler(), MLPClassifier(
            (h,), max_iter=2000, random_state=seed))) for h in (32, 128)}),
    }
    column = 0 if args.task == "subject" else 1
    print(f"fern features: {ferns['train'][0].shape[1]} per recording, {fern_time:.1f} s for all recordings")
    print("| method | picked on val | val acc | test acc | paper (real data) |")
    print("|---|---|---|---|---|")
    for method, (features, candidates) in methods.items():
        best, val, test = select_and_test(candidates, features)
        paper = PAPER[method].get(args.dataset)
        print(f"| {method} | {best} | {val:.3f} | {test:.3f} | {f'{paper[column]} %' if paper else '-'} |")


if __name__ == "__main__":
    main()
