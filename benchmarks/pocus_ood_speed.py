#!/usr/bin/env python
"""POCUS-OOD speed: training step, inference latency/throughput and peak memory of the base CNN, the multi-exit CNN
and the deep ensemble, with each method's OOD score.

    python benchmarks/pocus_ood_speed.py                                   # CPU, fp32, 180 px, batch 32
    python benchmarks/pocus_ood_speed.py --device cuda --precision bf16-mixed --members 20

On random 1 x 180 x 180 images (``--size``), per variant:

- training: forward + class-weighted cross-entropy (the multi-exit loss 0.5/0.5/1.0 for the multi-exit CNN) +
  backward + Adam step on a batch of ``--batch-size`` (images/s after warm-up); an ensemble's training is its
  members' one after another (``members`` x the base CNN's time; not re-measured);
- inference with the method's score (max-softmax; multi-level energy over the 3 exits; the ensemble's variance,
  weighted variance and epistemic uncertainties from ``--members`` members): one image (median ms) and a batch
  of 64 (images/s), eval mode, no grad;
- peak memory: CUDA max allocated during the variant, or the process's peak RSS on CPU (an upper bound, monotone
  over the run).
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, median_time, peak_memory_mb, sync  # noqa: E402
from lightning_modules import pocus_ood as po  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def train_rate(net, exits: bool, args, device) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(args.batch_size, 1, args.size, args.size, device=device)
    y = torch.randint(0, 3, (args.batch_size,), device=device)
    weights = torch.tensor([0.6, 1.4, 1.2], device=device)
    net.train()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, args.precision):
            if exits:
                loss = po.multi_exit_loss(net.forward_exits(x), y, [0.5, 0.5, 1.0], weights)
            else:
                loss = torch.nn.functional.cross_entropy(net(x), y, weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def make_scorer(kind: str, net, device, size: int):
    """A function images -> (logits, ID score), as POCUSOODTask scores them."""
    if kind == "softmax":
        return lambda x: (lambda z: (z, po.softmax_score(z)))(net(x))
    if kind == "multilevel":
        reference = [torch.randn(500, device=device) for _ in range(3)]  # training-score CDFs (their size only)

        def score(x):
            outs = net.forward_exits(x)
            return outs[-1], po.multi_level_score([po.energy_score(z) for z in outs], reference)
        return score

    def score(x):
        probs = net.member_probs(x)
        return probs.mean(0).log(), torch.stack([-po.ensemble_uncertainty(probs, k) for k in ("var", "wvar", "epi")])
    return score


def infer(score, args, device) -> tuple[float, float]:
    one = torch.rand(1, 1, args.size, args.size, device=device)
    big = torch.rand(64, 1, args.size, args.size, device=device)
    with torch.no_grad(), autocast(device, args.precision):
        latency = median_time(lambda: score(one), device, args.steps, args.warmup)
        score(big)
        sync(device)
        t = time.perf_counter()
        for _ in range(args.batches):
            score(big)
        sync(device)
        rate = args.batches * 64 / (time.perf_counter() - t)
    return latency * 1e3, rate


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--size", type=int, default=180)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    variants = {
        "base CNN, max-softmax": (po.POCUSCNN(input_size=args.size), False, "softmax"),
        "base CNN (valid padding), max-softmax": (po.POCUSCNN(input_size=args.size, padding="valid"), False, "softmax"),
        "multi-exit CNN, multi-level energy": (po.POCUSCNN(input_size=args.size, exit_after=[2, 4]), True, "multilevel"),
        f"deep ensemble x{args.members}, var/wvar/epi": (po.DeepEnsemble(n_members=args.members, input_size=args.size),
                                                         None, "ensemble"),
    }
    print(f"device {device}, precision {args.precision}, {args.size} px, train batch {args.batch_size}, "
          f"inference batch 64\n")
    print("| variant | parameters | train images/s | latency 1 image (ms) | inference images/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    base_rate = None
    for name, (net, exits, kind) in variants.items():
        net = net.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if exits is None:
            rate = f"{base_rate / args.members:.1f} (members one by one)"
        else:
            measured = train_rate(net, exits, args, device)
            base_rate = base_rate or measured
            rate = f"{measured:.1f}"
        net.eval()
        latency, throughput = infer(make_scorer(kind, net, device, args.size), args, device)
        print(f"| {name} | {count_parameters(net):,} | {rate} | {latency:.1f} | {throughput:.1f} | {peak_memory_mb(device):.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
