#!/usr/bin/env python
"""Training throughput, inference latency and peak memory of UnFeMa.

    python benchmarks/unfema_speed.py                          # demo size (128 px) and the paper's (512 / 1024 px)
    python benchmarks/unfema_speed.py --configs demo --steps 3
    python benchmarks/unfema_speed.py --configs demo_perceptual deephistreg_demo larhi_demo deephistreg larhi

Each configuration runs in its own process so that its peak memory is its own (CUDA: max_memory_allocated; CPU:
peak resident set size). A train step is the task's full step (matching, Soft Points, weighted DLT, warp, patch
NCC, backward, AdamW) at the given batch; inference is one pair through the 4-angle search with RANSAC, the
procedure of validation and test (``demo_perceptual``: Perceptual Search with random VGG-19 features instead). The
baselines (DeepHistReg, LARHI) train with the global NCC and include their exhaustive search in every step.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = dict(initial_dim=32, block_dims=(32, 48, 64), nhead=4, n_layers=2, threshold=0.02, ransac_threshold=2.0,
            ransac_trials=300)
CONFIGS = {  # name: (network class, its args, train size, train batch, inference size, patch NCC size or None)
    "demo": ("UnFeMa", DEMO, 128, 8, 128, 16),
    "paper": ("UnFeMa", dict(), 512, 2, 1024, 32),  # batch 16 in the paper (2 GPUs); 2 here to fit a CPU
    # opt-in (--configs): inference with Perceptual Search, and the baselines (global NCC loss)
    "demo_perceptual": ("UnFeMa", {**DEMO, "perceptual_search": ("PerceptualSearch", dict(scales=(1.0, 0.5, 0.25)))},
                        128, 8, 128, 16),
    "deephistreg_demo": ("DeepHistRegAffine", dict(width=16), 128, 8, 128, None),
    "deephistreg": ("DeepHistRegAffine", dict(width=64), 512, 2, 512, None),
    "larhi_demo": ("LARHIAffine", dict(patch_size=64, width=16), 128, 8, 128, None),
    "larhi": ("LARHIAffine", dict(patch_size=224, width=32), 512, 2, 512, None),
}


def build_network(name: str, kwargs: dict):
    from lightning_modules import unfema, unfema_baselines

    kwargs = {k: build_network(*v) if isinstance(v, tuple) and isinstance(v[0], str) else v
              for k, v in kwargs.items()}
    return getattr(unfema if hasattr(unfema, name) else unfema_baselines, name)(**kwargs)


def measure(name: str, steps: int) -> dict:
    import torch

    from lightning_modules.losses.registration import GlobalNCCLoss, PatchNCCLoss
    from lightning_modules.tasks.registration import RegistrationTask
    from lightning_modules.utils import count_parameters

    network, kwargs, size, batch, eval_size, patch = CONFIGS[name]
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    similarity = PatchNCCLoss(patch) if patch else GlobalNCCLoss()
    task = RegistrationTask(build_network(network, kwargs), smooth_weight=0.0, similarity=similarity,
                            optimizer=partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.1)).to(device)
    optimizer = task.configure_optimizers()
    # a real pair (the stand-in's tissue) so that the matcher finds matches
    from datamodules.standins.synthetic_ihc import SyntheticIHCPairs

    pairs = SyntheticIHCPairs(batch, seed=0, image_size=size, crop_size=min(2 * size, 300))
    items = [pairs[i] for i in range(batch)]
    data = {k: torch.stack([it[k] for it in items]).to(device) for k in ("fixed", "moving")}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step():
        loss = task.losses(data)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_s = (time.perf_counter() - start) / steps

    task.eval()
    eval_pairs = SyntheticIHCPairs(1, seed=1, image_size=eval_size, crop_size=min(2 * eval_size, 300))
    pair = {k: eval_pairs[0][k][None].to(device) for k in ("fixed", "moving")}
    with torch.no_grad():
        task.losses(pair)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            task.losses(pair)
        sync()
    latency = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"config": name, "device": str(device), "parameters": count_parameters(task.network),
            "train_size": size, "train_batch": batch, "train_step_s": round(train_s, 3),
            "train_pairs_per_s": round(batch / train_s, 2), "inference_size": eval_size,
            "inference_latency_s": round(latency, 3), "inference_pairs_per_s": round(1 / latency, 3),
            "peak_memory_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return
    for name in args.configs:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps)],
                             capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else f"{name}: failed\n{out.stderr[-2000:]}")


if __name__ == "__main__":
    main()
