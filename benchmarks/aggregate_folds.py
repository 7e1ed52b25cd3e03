#!/usr/bin/env python
"""Mean +- std over folds (or repeated runs) of the test metrics in each run's results.json.

    python benchmarks/aggregate_folds.py runs/unet_gcn_busi                 # every runs/unet_gcn_busi/*/results.json
    python benchmarks/aggregate_folds.py runs/unet_gcn_busi/fold0 runs/unet_gcn_busi/fold1 ...

UNet-GCN reports each metric as mean +- std over its 4 CV folds (paper Tables 5-6): run the fold
configs with ``--run_id fold<k>``, then aggregate. Prints a markdown table (metric, mean, std, n,
the paper's value where the config's ``paper:`` has it) and writes ``aggregate.json`` next to the runs.
The std is the sample standard deviation (ddof = 1) across runs.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def collect(paths: list[Path]) -> list[dict]:
    files = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif (path / "results.json").is_file():
            files.append(path / "results.json")
        else:
            files += sorted(path.glob("*/results.json"))
    if not files:
        raise SystemExit(f"no results.json under {', '.join(map(str, paths))}")
    return [json.loads(f.read_text()) | {"_file": str(f)} for f in files]


def aggregate(results: list[dict]) -> dict[str, dict[str, float]]:
    names = sorted({k for r in results for k in r.get("metrics", {})})
    out = {}
    for name in names:
        values = [float(r["metrics"][name]) for r in results if name in r.get("metrics", {})]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[name] = {"mean": mean, "std": std, "n": len(values)}
    return out


def main(argv: list[str]) -> dict:
    if not argv:
        raise SystemExit(__doc__)
    paths = [Path(a) for a in argv]
    results = collect(paths)
    table = aggregate(results)
    paper = next((r.get("paper") for r in results if r.get("paper")), None) or {}
    print(f"{len(results)} runs: " + ", ".join(r["_file"] for r in results))
    print("| metric | mean | std | n | paper |")
    print("|---|---|---|---|---|")
    for name, stats in table.items():
        reference = paper.get(name)
        std_ref = paper.get(f"{name}_fold_std")
        ref = "" if reference is None else f"{reference:.4f}" + ("" if std_ref is None else f" +- {std_ref:.4f}")
        print(f"| {name} | {stats['mean']:.4f} | {stats['std']:.4f} | {stats['n']} | {ref} |")
    target = paths[0] if len(paths) == 1 and paths[0].is_dir() else paths[0].parent
    (target / "aggregate.json").write_text(json.dumps({"runs": [r["_file"] for r in results], "metrics": table,
                                                       "paper": paper}, indent=2))
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
