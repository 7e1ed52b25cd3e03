#!/usr/bin/env python
"""Tract-RLFormer speed: the Decision Transformer's training step (Eq. 2 + AdamW, windows/s), the tracking
environment alone (state + reward for N streamlines, streamline-steps/s), autoregressive tracking with the DT
(streamline-steps/s, K-step context per streamline), the TD3 actor's tracking and one TD3 update (transitions/s),
and peak memory.

    python benchmarks/tract_rlformer_speed.py                                     # the paper's sizes, CPU
    python benchmarks/tract_rlformer_speed.py --hidden 32 --layers 2 --context 10 --batch-size 32 --streamlines 512 \
        --volume 24 --actor-hidden 256 --td3-batch 256                             # the demo's sizes
    python benchmarks/tract_rlformer_speed.py --device cuda --precision bf16-mixed

A random order-8 SH volume (45 coefficients) of ``--volume``^3 voxels with random peaks and a full mask (no data
loading is timed). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, median_time, peak_memory_mb, training_step  # noqa: E402
from lightning_modules.losses.tractography import multi_step_angular_loss  # noqa: E402
from lightning_modules.tasks.reinforcement import (DecisionTransformerPolicy, MLPActor, MLPCritic,  # noqa: E402
                                                   TD3Task)
from lightning_modules.tasks.tracking_env import FeedForwardPolicy, TrackingEnv, TractographySubject  # noqa: E402
from lightning_modules.tract_rlformer import TractRLFormer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--streamlines", type=int, default=4096)
    parser.add_argument("--volume", type=int, default=64)
    parser.add_argument("--actor-hidden", type=int, default=1024)
    parser.add_argument("--td3-batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    size = (args.volume,) * 3
    subject = TractographySubject("bench", rng.standard_normal((*size, 45)).astype(np.float32),
                                  rng.standard_normal((*size, 3, 3)).astype(np.float32), np.ones(size, bool),
                                  np.ones(size, bool))
    env = TrackingEnv(subject, step_mm=0.375, device=device)
    n, k = args.streamlines, args.context
    tips = torch.rand(n, 3, device=device) * (args.volume - 1)
    previous = torch.nn.functional.normalize(torch.randn(n, 4, 3, device=device), dim=-1)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, device=device), dim=-1)

    def env_step():
        env.state(tips, previous)
        env.reward(tips, direction, previous[:, 0])
        env.in_mask(tips)

    net = TractRLFormer(hidden_size=args.hidden, n_layers=args.layers, context_length=k).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-4, weight_decay=1e-4)
    b = args.batch_size
    window = [torch.randn(b, k, 1, device=device), torch.randn(b, k, 334, device=device),
              torch.randn(b, k, 3, device=device), torch.arange(k, device=device).expand(b, k),
              torch.ones(b, k, dtype=torch.bool, device=device)]

    train_step = training_step(lambda: multi_step_angular_loss(net(*window).float(), window[2], window[4]),
                               optimizer, device, args.precision, module=net, clip_norm=0.25)

    net.eval()
    policy = DecisionTransformerPolicy(net)
    policy.start(n, device)
    index = torch.arange(n, device=device)
    states = env.state(tips, previous)
    step = {"t": 0}

    @torch.no_grad()
    def dt_track_step():
        with autocast(device, args.precision):
            action = policy.act(states, index, step["t"]).float()
        policy.observe(index, action, torch.ones(n, device=device))
        env_step()
        step["t"] += 1

    actor = MLPActor(hidden=(args.actor_hidden,) * 2).to(device).eval()
    actor_policy = FeedForwardPolicy(actor, noise=0.334)

    @torch.no_grad()
    def actor_track_step():
        with autocast(device, args.precision):
            actor_policy.act(states, index, 0)
        env_step()

    td3 = TD3Task(MLPActor(hidden=(args.actor_hidden,) * 2), MLPCritic(hidden=(args.actor_hidden,) * 2),
                  replay_size=4 * args.td3_batch, replay_batch_size=args.td3_batch,
                  optimizer=functools.partial(torch.optim.Adam, lr=8.56e-6)).to(device)
    m = 4 * args.td3_batch
    td3.buffer.add(state=torch.randn(m, 334, device=device), action=torch.rand(m, 3, device=device) * 2 - 1,
                   reward=torch.rand(m, device=device), next_state=torch.randn(m, 334, device=device),
                   done=torch.zeros(m, device=device))
    td3_opts = [td3.optimizer_factory(td3.actor.parameters()),
                td3.optimizer_factory(list(td3.critic_1.parameters()) + list(td3.critic_2.parameters()))]
    td3.optimizers = lambda: td3_opts  # outside a Trainer: the update's two optimisers
    td3.manual_backward = lambda loss: loss.backward()

    def td3_update():
        with autocast(device, args.precision):
            td3.td3_update()

    t_env = median_time(env_step, device, args.repeats)
    t_train = median_time(train_step, device, args.repeats)
    t_dt = median_time(dt_track_step, device, args.repeats)
    t_actor = median_time(actor_track_step, device, args.repeats)
    t_td3 = median_time(td3_update, device, args.repeats)
    params = sum(p.numel() for p in net.parameters())
    print(f"T-RLF d {args.hidden}, {args.layers} blocks, K {k} ({params:,} parameters); TD3 MLPs "
          f"{args.actor_hidden}-{args.actor_hidden}; {n} streamlines, {args.volume}^3 SH volume; {device}, "
          f"{args.precision}, {torch.get_num_threads()} threads\n")
    print("| measure | value |\n|---|---|")
    print(f"| environment step (state 334 + reward + mask) | {n / t_env:.3g} streamline-steps/s |")
    print(f"| T-RLF train step (Eq. 2 + AdamW, batch {b} x K {k}) | {b / t_train:.3g} windows/s "
          f"({t_train * 1e3:.3g} ms/batch) |")
    print(f"| T-RLF tracking (context K, + environment) | {n / t_dt:.3g} streamline-steps/s |")
    print(f"| TD3 actor tracking (+ environment) | {n / t_actor:.3g} streamline-steps/s |")
    print(f"| TD3 update (twin critics + delayed actor, batch {args.td3_batch}) | {args.td3_batch / t_td3:.3g} "
          f"transitions/s ({t_td3 * 1e3:.3g} ms) |")
    print(f"| peak memory | {peak_memory_mb(device):.0f} MiB |")


if __name__ == "__main__":
    main()
