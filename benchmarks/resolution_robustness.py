#!/usr/bin/env python
"""The paper's central claim on the offline stand-in: train at 1x and at 0.5x, test at 1x.

    python benchmarks/resolution_robustness.py [--configs experiments/fnoreg_demo.yaml experiments/voxelmorph_demo.yaml]

For each config, trains twice with run.py (``--model.train_scale 1.0`` and ``0.5``; the 0.5x model sees
40x48 images during training) and tests both on full-resolution pairs. Prints a markdown table with
Dice at 1x for each training resolution, the relative change (the paper's Table 1 last column), and
% folded pixels. Each run is a separate process, as a user would run it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_and_test(config: str, scale: float, runs_dir: str, extra: list[str]) -> dict:
    run_id = f"scale{scale}"
    cmd = [sys.executable, "run.py", "--config", config, "--model.train_scale", str(scale), "--runs_dir", runs_dir,
           "--run_id", run_id, "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", *extra]
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("PAPERBENCH_RUN_ID", None)
    subprocess.run(cmd, cwd=ROOT, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((Path(runs_dir) / Path(config).stem / run_id / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+",
                        default=["experiments/fnoreg_demo.yaml", "experiments/voxelmorph_demo.yaml"])
    parser.add_argument("--runs_dir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more run.py flags for every run")
    args = parser.parse_args()
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="robustness_")
    print("| config | Dice identity | Dice 1x (trained 1x) | Dice 1x (trained 0.5x) | change | % folded 1x / 0.5x |")
    print("|---|---|---|---|---|---|")
    for config in args.configs:
        full = train_and_test(config, 1.0, runs_dir, args.extra)
        half = train_and_test(config, 0.5, runs_dir, args.extra)
        change = 100 * (half["test/dice"] - full["test/dice"]) / full["test/dice"]
        print(f"| {Path(config).stem} | {full['test/dice_before']:.3f} | {full['test/dice']:.3f} "
              f"| {half['test/dice']:.3f} | {change:+.2f}% "
              f"| {full['test/folding_percent']:.3f} / {half['test/folding_percent']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
