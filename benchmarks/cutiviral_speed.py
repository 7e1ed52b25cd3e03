#!/usr/bin/env python
"""Training throughput, inference latency and peak memory of CutiViral's networks on random data.

    python benchmarks/cutiviral_speed.py                                   # the five classifiers at 224 px, WGAN, CAE
    python benchmarks/cutiviral_speed.py --models resnet18 --size 64 --batch-size 16 --steps 5
    python benchmarks/cutiviral_speed.py --device cuda --precision bf16-mixed

Per network: training = forward + loss (CE for the classifiers, the WGAN critic loss with weight clipping, the CAE's
MSE) + backward + optimiser step on one batch (images/s after warm-up); inference = one image (classifiers, CAE) or
one generated sample (WGAN), eval mode, no grad (median ms); peak memory = CUDA max allocated during training, or
the growth of the process's peak RSS on CPU (an upper bound). Prints a markdown table; data loading is not timed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import peak_memory_mb, sync  # noqa: E402
from lightning_modules.backbones import ImageClassifier
from lightning_modules.cutiviral import ConvAutoencoder, WGANCritic, WGANGenerator

CLASSIFIERS = {"vgg16": "vgg16", "resnet18": "resnet18", "resnet50": "resnet50", "mobilenetv2": "mobilenet_v2",
               "effv2s": "efficientnet_v2_s"}


def bench(name, parameters, train_step, infer, batch, device, steps, autocast):
    rss0 = peak_memory_mb("cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with autocast():
        for _ in range(2):
            train_step()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            train_step()
        sync(device)
    throughput = steps * batch / (time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else peak_memory_mb("cpu") - rss0
    times = []
    with torch.no_grad(), autocast():
        for _ in range(steps + 2):
            sync(device)
            t = time.perf_counter()
            infer()
            sync(device)
            times.append(time.perf_counter() - t)
    latency = statistics.median(times[2:]) * 1000
    print(f"| {name} | {parameters / 1e6:.2f} M | {throughput:.1f} | {latency:.1f} | {memory:.0f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--models", nargs="+", default=[*CLASSIFIERS, "wgan", "cae"])
    parser.add_argument("--size", type=int, default=224, help="classifier and CAE input side")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    b, s = args.batch_size, args.size
    print(f"device {device}, precision {args.precision}, batch {b}, {s} px (WGAN 128 px)\n")
    print("| network | params | train img/s | inference ms/img | peak memory MB |\n|---|---|---|---|---|")
    for name in args.models:
        if name in CLASSIFIERS:
            net = ImageClassifier(CLASSIFIERS[name], num_classes=4).to(device).train()
            opt = torch.optim.Adam(net.parameters(), 1e-4)
            x, y = torch.randn(b, 3, s, s, device=device), torch.randint(0, 4, (b,), device=device)

            def step(net=net, opt=opt, x=x, y=y):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x).float(), y).backward()
                opt.step()

            one = x[:1]
            bench(name, sum(p.numel() for p in net.parameters()), step, lambda net=net, one=one: net.eval()(one),
                  b, device, args.steps, autocast)
        elif name == "wgan":
            g, c = WGANGenerator().to(device), WGANCritic().to(device)
            og, oc = torch.optim.RMSprop(g.parameters(), 5e-5), torch.optim.RMSprop(c.parameters(), 5e-5)
            real = torch.rand(b, 3, 128, 128, device=device) * 2 - 1

            def step(g=g, c=c, og=og, oc=oc, real=real):  # one critic update (+ clipping) and one generator update
                oc.zero_grad(set_to_none=True)
                with torch.no_grad():
                    fake = g(torch.randn(b, 100, device=device))
                (c(fake).mean() - c(real).mean()).float().backward()
                oc.step()
                for p in c.parameters():
                    p.data.clamp_(-0.01, 0.01)
                og.zero_grad(set_to_none=True)
                (-c(g(torch.randn(b, 100, device=device))).mean()).float().backward()
                og.step()

            bench("WGAN (G+D step)", sum(p.numel() for p in [*g.parameters(), *c.parameters()]), step,
                  lambda g=g: g.eval()(torch.randn(1, 100, device=device)), b, device, args.steps, autocast)
        elif name == "cae":
            net = ConvAutoencoder().to(device)
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            x = torch.rand(b, 3, s, s, device=device)

            def step(net=net, opt=opt, x=x):
                opt.zero_grad(set_to_none=True)
                F.mse_loss(net(x).float(), x).backward()
                opt.step()

            bench("CAE", sum(p.numel() for p in net.parameters()), step, lambda net=net, x=x: net.generate(x[:1]),
                  b, device, args.steps, autocast)
        else:
            raise SystemExit(f"unknown model {name!r}")


if __name__ == "__main__":
    main()
