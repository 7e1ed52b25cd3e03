#!/usr/bin/env python
"""DiffCMR speed and memory: training step throughput, denoising step cost with and without the cached
condition encoding G(I^u), and the resulting sampling time per slice for each sampler, T and R.

    python benchmarks/diffcmr_speed.py                                   # paper network, CPU-sized defaults
    python benchmarks/diffcmr_speed.py --device cuda --size 128 --batch 6 --precision bf16   # the paper's setting

Sampling time per slice = (steps x one denoising step on a batch of R images) / 1 slice, since the R
rounds run as one batch; a step's cost is measured, not the full chain (T = 1000 on a CPU takes hours).
Under DDP each GPU samples its own slices: the per-slice time divides by the number of GPUs
(``--config experiments/trainer/ddp.yaml``). Peak memory: CUDA's allocator on GPU, the process's
maximum resident set on CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.diffcmr import DiffCMR  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

SAMPLERS = {"DDPM T=1000 (paper)": 1000, "DDPM T=100": 100, "DDIM 100 steps": 100, "DDIM 50 steps": 50,
            "DDIM 20 steps": 20}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed(fn, device, repeats):
    """Seconds per call: wall clock, and on CPU also the process's CPU time (robust to a shared machine:
    with one thread it is the wall time the call would take on an idle core)."""
    fn()  # warm-up (allocator, kernels, autotuning)
    synchronise(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    synchronise(device)
    wall, cpu = (time.perf_counter() - start) / repeats, (time.process_time() - cpu_start) / repeats
    return cpu if device.type == "cpu" and USE_CPU_TIME else wall


USE_CPU_TIME = False


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, help="image side (paper: 128)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (paper: 6)")
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 4, 8], help="R values for sampling")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cpu_time", action="store_true",
                        help="report process CPU time instead of wall time (a shared CPU; use with --threads 1)")
    args = parser.parse_args(argv)
    global USE_CPU_TIME
    USE_CPU_TIME = args.cpu_time
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = DiffCMR().to(device)
    print(f"DiffCMR (official size): {count_parameters(model):,} parameters; device {device}, "
          f"{args.size}x{args.size}, {args.precision}, torch threads {torch.get_num_threads()}, "
          f"{'CPU time' if USE_CPU_TIME and device.type == 'cpu' else 'wall time'}")

    # -- training step (Algorithm 1 at batch --batch) ---------------------------------------------------
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    image = torch.rand(args.batch, 1, args.size, args.size, device=device)

    def train_step():
        with autocast(device, args.precision):
            eps = model(image, image, torch.randint(0, 1000, (args.batch,), device=device).float())
            loss = torch.nn.functional.mse_loss(eps.float(), torch.randn_like(image))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = timed(train_step, device, args.repeats)
    print(f"\ntraining: {step * 1000:.0f} ms/step at batch {args.batch} = {args.batch / step:.2f} images/s; "
          f"peak memory {peak_memory_mb(device):.0f} MB")
    del optimizer

    # -- sampling: one denoising step on the R rounds of one slice, batched ------------------------------
    model.eval()
    print("\n| R | G(I^u) per step (uncached) | step with cached G | " + " | ".join(SAMPLERS) + " |")
    print("|---|---|---|" + "---|" * len(SAMPLERS))
    for rounds in args.rounds:
        x = torch.randn(rounds, 1, args.size, args.size, device=device)
        condition = torch.rand(rounds, 1, args.size, args.size, device=device)
        t = torch.full((rounds,), 500.0, device=device)
        with torch.no_grad(), autocast(device, args.precision):
            features = model.encode_condition(condition)
            uncached = timed(lambda: model(x, condition, t), device, args.repeats)
            cached = timed(lambda: model.denoise(x, t, features), device, args.repeats)
        per_slice = " | ".join(f"{steps * cached:.1f} s" for steps in SAMPLERS.values())
        print(f"| {rounds} | {uncached * 1000:.0f} ms | {cached * 1000:.0f} ms | {per_slice} |")
    print(f"\npeak memory {peak_memory_mb(device):.0f} MB. Sampling columns: seconds per slice "
          "(steps x cached step time; one slice, its R rounds as one batch).")


if __name__ == "__main__":
    main()
