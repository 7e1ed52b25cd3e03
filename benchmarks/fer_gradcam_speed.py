#!/usr/bin/env python
"""FER Grad-CAM speed: the AlexNet-inspired CNN's training step (cross-entropy + Adam, images/s), inference
throughput (images/s at the batch size) and latency (ms for one image), the test-time explanations per image
(Grad-CAM of the true class, guided backprop, Guided Grad-CAM), and peak memory (CPU: max RSS; CUDA: max allocated).

    python benchmarks/fer_gradcam_speed.py                                       # the paper's network, 48 px, CPU
    python benchmarks/fer_gradcam_speed.py --channels 8 16 32 64                 # the demo's width-/4 network
    python benchmarks/fer_gradcam_speed.py --device cuda --batch-size 128

Random 48 x 48 RGB inputs; data loading is not timed (the datamodules preload). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.fer_gradcam import FERNet  # noqa: E402
from lightning_modules.gradcam import gradcam_maps, guided_backprop, guided_gradcam  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, device) -> float:
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i:  # the first is warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs=4, default=[32, 64, 128, 256])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = FERNet(channels=args.channels, img_size=args.size).to(device)
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.rand(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, 7, (args.batch_size,), device=device)

    def train_step():
        net.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()

    def infer(batch):
        net.eval()
        with torch.no_grad():
            net(batch)

    n_explain = min(32, args.batch_size)

    def explain_all():
        net.eval()
        cams = gradcam_maps(net, "features.unit4.conv2", x[:n_explain], y[:n_explain])
        guided_gradcam(guided_backprop(net, x[:n_explain], y[:n_explain]), cams)

    t_train = _median_time(train_step, args.repeats, device)
    t_infer = _median_time(lambda: infer(x), args.repeats, device)
    t_one = _median_time(lambda: infer(x[:1]), args.repeats * 4, device)
    t_cam = _median_time(lambda: gradcam_maps(net.eval(), "features.unit4.conv2", x[:n_explain], y[:n_explain]),
                         args.repeats, device)
    t_explain = _median_time(explain_all, args.repeats, device)
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MiB (CUDA allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (max RSS)"
    print(f"FERNet channels {args.channels}, {count_parameters(net):,} parameters, {args.size} px, batch "
          f"{args.batch_size}, {device}, {torch.get_num_threads()} threads\n")
    print("| measure | value |\n|---|---|")
    print(f"| train step (CE + Adam) | {args.batch_size / t_train:.3g} images/s ({t_train * 1e3:.3g} ms/batch) |")
    print(f"| inference throughput | {args.batch_size / t_infer:.3g} images/s |")
    print(f"| inference latency (1 image) | {t_one * 1e3:.3g} ms |")
    print(f"| Grad-CAM (true class, 7 classes' MONAI calls at most) | {t_cam / n_explain * 1e3:.3g} ms/image |")
    print(f"| Grad-CAM + guided backprop + Guided Grad-CAM | {t_explain / n_explain * 1e3:.3g} ms/image |")
    print(f"| peak memory | {peak} |")


if __name__ == "__main__":
    main()
