#!/usr/bin/env python
"""Parameter counts of every experiment's model next to the paper's, without any dataset.

    python benchmarks/params.py                       # every experiment in experiments/ (base + setting)
    python benchmarks/params.py experiments/fnoreg/oasis2d.yaml experiments/fnoreg/oasis2d/small.yaml

Prints a markdown row per config (named as its run folder: fnoreg_oasis2d_small): | config | parameters |
paper | delta % |. A setting is read with its base. The paper's count is the config's ``paper.parameters`` entry. Models are built on the meta device (no memory, no time).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def build_model(model_config: dict) -> LightningModule:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", fail_untyped=False)
    config = parser.parse_object({"model": model_config})
    with torch.device("meta"):
        return parser.instantiate(config).model


def row(path: Path) -> str:
    config = run.resolved_config(path)
    n = count_parameters(build_model(config["model"]))
    paper = (config.get("paper") or {}).get("parameters")
    name = run.experiment_name(run.composition(path))
    if paper:
        return f"| {name} | {n:,} | {float(paper) / 1e6:.3g}M | {100 * (n - float(paper)) / float(paper):+.2f} |"
    return f"| {name} | {n:,} | – | – |"


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or [files[-1] for files in run.all_compositions()]
    print("| config | parameters | paper | delta % |")
    print("|---|---|---|---|")
    for path in paths:
        line = row(path)
        if line:
            print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
