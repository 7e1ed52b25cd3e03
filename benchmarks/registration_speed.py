#!/usr/bin/env python
"""Training throughput, inference latency and peak memory of the registration networks.

    python benchmarks/registration_speed.py                     # 2D models at 1x (160x192) and 0.5x (80x96)
    python benchmarks/registration_speed.py --dims 3 --models fnoreg voxelmorph
    python benchmarks/registration_speed.py --precision bf16-mixed   # autocast (GPU: bf16 tensor cores)

Each (model, resolution) runs in its own process so that peak memory is its own: on CUDA
torch.cuda.max_memory_allocated, on CPU the process's peak resident set size. Train steps are the
task's full step (network, warp, MSE + diffusion loss, backward, Adam) at the paper's batch size (8
in 2D, 1 in 3D); latency is one pair, forward + warp, after warm-up, synchronised on CUDA.
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

MODELS = {  # name: (class path, init args) ; the papers' configurations
    "fnoreg_small": ("lightning_modules.fnoreg.FNOReg", dict(hidden_channels=16, n_layers=6, n_modes=(40, 48), projection_channels=32)),
    "fnoreg_medium": ("lightning_modules.fnoreg.FNOReg", dict(hidden_channels=32, n_layers=12, n_modes=(40, 48), projection_channels=64)),
    "fnoreg_large": ("lightning_modules.fnoreg.FNOReg", dict(hidden_channels=32, n_layers=12, n_modes=(60, 72), projection_channels=64)),
    "fno_large": ("lightning_modules.fnoreg.FNO", dict(hidden_channels=32, n_layers=12, n_modes=(60, 72), projection_channels=64)),
    "voxelmorph": ("lightning_modules.voxelmorph.VoxelMorph", {}),
    "vxm_large": ("lightning_modules.voxelmorph.VoxelMorphLarge", {}),
    "vxm_huge": ("lightning_modules.voxelmorph.VoxelMorphHuge", {}),
    "fouriernet16": ("lightning_modules.fouriernet.FourierNet", dict(start_channels=16)),
    "fouriernet32": ("lightning_modules.fouriernet.FourierNet", dict(start_channels=32)),
    "transmorph": ("lightning_modules.transmorph.TransMorph", {}),
}
MODELS_3D = {
    "fnoreg": ("lightning_modules.fnoreg.FNOReg", dict(hidden_channels=12, n_layers=15, n_modes=(40, 48, 56), projection_channels=24)),
    "voxelmorph": ("lightning_modules.voxelmorph.VoxelMorph", {}),
    "vxm_large": ("lightning_modules.voxelmorph.VoxelMorphLarge", {}),
    "fouriernet16": ("lightning_modules.fouriernet.FourierNet", dict(start_channels=16)),
    "transmorph": ("lightning_modules.transmorph.TransMorph", {}),
}
SIZES = {2: {"1x": (160, 192), "0.5x": (80, 96)}, 3: {"1x": (160, 192, 224), "0.5x": (80, 96, 112)}}


def measure(name: str, dims: int, scale: str, precision: str, steps: int) -> dict:
    import importlib

    import torch

    from lightning_modules.tasks.registration import RegistrationTask
    from lightning_modules.utils import count_parameters

    class_path, kwargs = (MODELS if dims == 2 else MODELS_3D)[name]
    module, cls = class_path.rsplit(".", 1)
    network = getattr(importlib.import_module(module), cls)(spatial_dims=dims, **kwargs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = RegistrationTask(network, optimizer=partial(torch.optim.Adam, lr=1e-4)).to(device)
    optimizer = task.configure_optimizers()
    batch = 8 if dims == 2 else 1
    size = SIZES[dims][scale]
    data = {"fixed": torch.rand(batch, 1, *size, device=device), "moving": torch.rand(batch, 1, *size, device=device)}
    autocast = dict(device_type=device.type, dtype=torch.bfloat16 if "bf16" in precision else torch.float16,
                    enabled=precision != "32")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step():
        with torch.autocast(**autocast):
            loss = task.losses(data)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        train_step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_s = (time.perf_counter() - start) / steps

    task.eval()
    pair = {k: v[:1] for k, v in data.items()}
    with torch.no_grad(), torch.autocast(**autocast):
        for _ in range(2):
            task.losses(pair)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            task.losses(pair)
        sync()
    latency = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": name, "dims": dims, "scale": scale, "size": "x".join(map(str, size)), "batch": batch,
            "params": count_parameters(network), "pairs_per_s": batch / train_s, "latency_ms": 1000 * latency,
            "peak_mb": peak_mb, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--scales", nargs="+", default=["1x", "0.5x"])
    parser.add_argument("--precision", default="32", choices=("32", "bf16-mixed", "16-mixed"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SCALE", "DIMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, scale, dims = args.child
        print(json.dumps(measure(name, int(dims), scale, args.precision, args.steps)))
        return
    names = args.models or list(MODELS if args.dims == 2 else MODELS_3D)
    print("| model | input | batch | params | train pairs/s | inference ms/pair | peak memory MB | device |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for scale in args.scales:
            out = subprocess.run([sys.executable, __file__, "--child", name, scale, str(args.dims), "--precision",
                                  args.precision, "--steps", str(args.steps)], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {name} | {scale} | failed: {out.stderr.strip().splitlines()[-1]} |||||", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['model']} | {r['size']} ({scale}) | {r['batch']} | {r['params']:,} | {r['pairs_per_s']:.2f} "
                  f"| {r['latency_ms']:.1f} | {r['peak_mb']:.0f} | {r['device']} {r['precision']} |", flush=True)


if __name__ == "__main__":
    main()
