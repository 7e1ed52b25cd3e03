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


def training_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, device: Device,
                  precision: str = "32-true", module: torch.nn.Module | None = None,
                  clip_norm: float | None = None) -> Callable[[], None]:
    """One optimiser step as a closure for ``step_times``/``median_time``: ``loss_fn()`` under autocast, backward
    outside it, optional gradient-norm clipping, step. ``module`` (if given) is put in train mode first, so a
    benchmark that times inference between train steps cannot leave it in eval mode."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> None:
        if module is not None:
            module.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = loss_fn()
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()

    return step


def add_speed_args(parser, batch_size: int = 2, steps: int = 3) -> None:
    """The arguments every speed benchmark takes: batch size, timed steps, device and Lightning precision."""
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", help='"32-true", "bf16-mixed" or "16-mixed"')
