#!/usr/bin/env python
"""LLDif speed: per stage the training step (forward + cross-entropy (+ LA-CLIP's InfoNCE) backward + Adam step,
images/s), inference throughput (images/s at the batch size) and latency (ms for one image), and peak memory (CUDA:
max allocated; CPU: growth of the peak RSS). Stage 2's inference runs the T-step prior diffusion from N(0, I).

    python benchmarks/lldif_speed.py                                   # the configs' sizes: 112 px, C = 256
    python benchmarks/lldif_speed.py --size 64 --tiny --batch-size 32  # the stand-in demo's networks
    python benchmarks/lldif_speed.py --device cuda --batch-size 64 --precision bf16-mixed

Random inputs and landmarks; data loading is not timed (the datamodules preload). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import add_speed_args, autocast, median_time, peak_memory_mb, training_step  # noqa: E402
from lightning_modules.lldif import LAClip, LLDifS1, LLDifS2  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

TINY_LACLIP = dict(widths=(16, 32, 64, 128), text_dim=64)
TINY_S1 = dict(prior_dim=64, dims=(32, 64, 128), depths=(1, 1, 1), embed_dim=128, vit_depth=1, vit_heads=4)
TINY_S2 = dict(n_feats=16, pnet_res=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--tiny", action="store_true", help="the stand-in demo's sizes")
    add_speed_args(parser, batch_size=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = peak_memory_mb(device)
    def make_laclip():
        return LAClip(args.size, 7, **(TINY_LACLIP if args.tiny else {}))

    def make_s1():  # LA-CLIP frozen inside
        return LLDifS1(laclip=make_laclip(), img_size=args.size, landmark_input="heatmaps",
                       **(TINY_S1 if args.tiny else {}))

    laclip, s1 = make_laclip(), make_s1()
    s2 = LLDifS2(s1=make_s1(), img_size=args.size, **(TINY_S2 if args.tiny else {}))
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, 7, (args.batch_size,), device=device)
    landmarks = torch.rand(args.batch_size, 68, 2, device=device)
    rows = []
    for name, network in (("LA-CLIP (stage 0)", laclip), ("stage 1 (LA-CLIP + PNET_S1 + LLformer)", s1),
                          ("stage 2 (PNET_S2 + diffusion + LLformer)", s2)):
        network = network.to(device)
        optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=3.5e-4)

        def loss_fn():
            logits, aux = network(x, y, landmarks)
            return F.cross_entropy(logits.float(), y) + sum(aux.values())

        train_step = training_step(loss_fn, optimizer, device, args.precision, module=network)

        def infer(batch, lm, label):
            network.eval()
            with torch.no_grad(), autocast(device, args.precision):
                network(batch, label, lm)

        train = args.batch_size / median_time(train_step, device, args.steps)
        label = None if isinstance(network, (LAClip, LLDifS2)) else y
        throughput = args.batch_size / median_time(lambda: infer(x, landmarks, label), device, args.steps)
        latency = 1000 * median_time(lambda: infer(x[:1], landmarks[:1], None if label is None else y[:1]),
                                     device, args.steps)
        memory = peak_memory_mb(device) - (0 if device.type == "cuda" else base)
        total = sum(p.numel() for p in network.parameters())
        rows.append(f"| {name} | {total / 1e6:.2f} M ({count_parameters(network) / 1e6:.2f} M trained) | "
                    f"{train:.1f} | {throughput:.1f} | {latency:.1f} | {memory:.0f} |")
        network.cpu()
    print(f"LLDif, {args.size} px, batch {args.batch_size}, {args.device}, {args.precision}"
          f"{', stand-in sizes' if args.tiny else ''}\n")
    print("| network | params | train img/s | infer img/s | latency ms (1 image) | peak MB |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
