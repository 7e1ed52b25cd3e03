#!/usr/bin/env python
"""Parameter counts of every experiment's model next to the paper's, without any dataset.

    python benchmarks/params.py                       # every experiments/*.yaml
    python benchmarks/params.py experiments/fnoreg_oasis2d_large.yaml

Prints a markdown row per config: | config | parameters | paper | delta % |. The paper's count is
the config's ``paper.parameters`` entry. Models are built on the meta device (no memory, no time).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.utils import count_parameters  # noqa: E402


def build_model(model_config: dict) -> LightningModule:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", fail_untyped=False)
    config = parser.parse_object({"model": model_config})
    with torch.device("meta"):
        return parser.instantiate(config).model


def row(path: Path) -> str:
    config = yaml.safe_load(path.read_text()) or {}
    if "model" not in config:
        return ""
    n = count_parameters(build_model(config["model"]))
    paper = (config.get("paper") or {}).get("parameters")
    if paper:
        return f"| {path.stem} | {n:,} | {float(paper) / 1e6:.3g}M | {100 * (n - float(paper)) / float(paper):+.2f} |"
    return f"| {path.stem} | {n:,} | – | – |"


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or sorted((ROOT / "experiments").glob("*.yaml"))
    print("| config | parameters | paper | delta % |")
    print("|---|---|---|---|")
    for path in paths:
        line = row(path)
        if line:
            print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
