"""What every speed benchmark needs, in one place: device synchronisation, autocast for a Lightning precision
string, peak memory, and timing a step after a warm-up (synchronised before and after, so a CUDA step is
measured whole)."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable, Union

import torch

Device = Union[str, torch.device]


def sync(device: Device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: Device, precision: str):
    """``torch.autocast`` for a Lightning precision ("32-true", "bf16-mixed", "16-mixed"; also "fp32"/"bf16"/"fp16")."""
    device = torch.device(device)
    if precision in ("32-true", "32", "fp32"):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision.startswith("bf16") else torch.float16)


def peak_memory_mb(device: Device) -> float:
    """CUDA: the peak memory allocated by tensors; CPU: the process's peak resident set (all of Python)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def step_times(fn: Callable[[], object], device: Device, steps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``steps`` calls of ``fn`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], object], device: Device, steps: int, warmup: int = 1) -> float:
    return statistics.median(step_times(fn, device, steps, warmup))
