"""Studies: several runs of run.py in order (repeats over seeds or splits, ablation variants, two-stage
pipelines, ensembles), then one table and one figure of their test metrics.

    python run.py study --config experiments/abcde_cnn/synthetic_study.yaml
    python run.py study --config X_study.yaml --study_id s1        # resume: finished runs are kept
    python run.py study --config X_study.yaml --dry_run            # print the commands only

A study file holds one ``study:`` mapping::

    study:
      runs:                                   # in order; a later run may use an earlier one's outputs
        - name: "member{seed}"                # expanded with the repeat variables
          config: [experiments/x_demo.yaml]   # the --config files (one path or a list)
          args: {seed_everything: "{seed}"}   # --key value flags (lists/dicts are passed as JSON)
          repeat: {seed: [0, 1, 2]}           # one run per combination (cartesian product); or a list of
                                              # mappings, one run each ([{member: 0, lr: 3e-4}, ...])
          subcommand: null                    # null: fit then test; or test / validate / predict
          label: null                         # the table row: runs with the same label pool (default: the
                                              # name template, i.e. all repeats of the entry; "{variant}":
                                              # one row per variant, pooled over the other variables)
        - name: ensemble
          subcommand: test
          config: experiments/x_ensemble.yaml
          args: {model.init_args.network.init_args.checkpoints: "{ckpts:member*}"}
      table: {metrics: [test/acc, test/auroc], top_k: null, rank_by: test/auroc, rank_mode: max}
      figure: {metric: test/auroc}
      analysis: null                          # or "package.module:function"(study_dir, results) -> markdown

Placeholders in ``args`` (and in ``config``): the repeat variables; ``{ckpt:NAME}`` the best (else last)
checkpoint of the earlier run NAME; ``{ckpts:GLOB}`` the JSON list of those of the runs whose names match
GLOB; ``{dir:NAME}`` a run's folder; ``{study_dir}``.

Every run has its own folder ``<runs_dir>/<study>/<study id>/<run name>/`` (its config, checkpoints,
metrics.csv, W&B run, results.json). The study writes there ``results.csv`` (one row per run: its
variables and test metrics), ``summary.md`` / ``summary.json`` (per entry of ``runs``: mean +- sample std
over its repeats, or over the ``top_k`` best by ``rank_by``; the paper's value where the run's ``paper:``
has the metric) and ``figure.png`` (the ``figure.metric`` per entry, mean +- std).
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import importlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

ROOT = Path(__file__).resolve().parent
RUN_PY = ROOT / "run.py"
EXPERIMENTS = ROOT / "experiments"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]+))?\}")


class StudyError(RuntimeError):
    """A study file that cannot run, or a run of it that failed."""


@dataclass
class StudyRun:
    """One expanded run of a study: its entry (the table row it is pooled in), name and variables."""

    entry: str
    name: str
    variables: dict[str, Any]
    configs: list[str]
    args: dict[str, Any]
    subcommand: Optional[str] = None
    run_dir: Path = field(default_factory=Path)


def study_name(path: Path) -> str:
    """experiments/abcde_cnn/synthetic_study.yaml -> abcde_cnn_synthetic_study (run.py's rule)."""
    path = path.resolve()
    if EXPERIMENTS in path.parents:
        return path.relative_to(EXPERIMENTS).with_suffix("").as_posix().replace("/", "_")
    return path.stem


def load_study(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    spec = (yaml.safe_load(path.read_text()) or {}).get("study")
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list) or not spec["runs"]:
        raise StudyError(f"{path}: expected a 'study:' mapping with a non-empty 'runs:' list")
    unknown = set(spec) - {"runs", "table", "figure", "analysis", "name"}
    if unknown:
        raise StudyError(f"{path}: unknown study keys {sorted(unknown)}")
    return spec


def expand_runs(spec: dict, study_dir: Path) -> list[StudyRun]:
    """The runs of a study in order, each repeat combination its own run (names must come out distinct)."""
    runs = []
    for index, entry in enumerate(spec["runs"]):
        unknown = set(entry) - {"name", "config", "args", "repeat", "subcommand", "label"}
        if unknown or "name" not in entry or "config" not in entry:
            raise StudyError(f"runs[{index}]: needs 'name' and 'config' (allowed keys: name, config, args, "
                             f"repeat, subcommand, label); got {sorted(entry)}")
        repeat = entry.get("repeat") or {}
        if isinstance(repeat, list):  # one run per mapping: variables that go together (sampled hyperparameters)
            if not all(isinstance(r, dict) for r in repeat):
                raise StudyError(f"runs[{index}]: a 'repeat' list holds mappings (one run each)")
            combinations = [dict(r) for r in repeat]
        else:
            keys = list(repeat)
            values = [v if isinstance(v, list) else [v] for v in repeat.values()]
            combinations = [dict(zip(keys, c)) for c in itertools.product(*values)]
        configs = entry["config"] if isinstance(entry["config"], list) else [entry["config"]]
        for variables in combinations:
            name = str(entry["name"]).format(**variables)
            if not re.fullmatch(r"[A-Za-z0-9_.=-]+", name):
                raise StudyError(f"run name {name!r}: use letters, digits, '_', '-', '.', '='")
            label = str(entry["label"]).format(**variables) if entry.get("label") else str(entry["name"])
            runs.append(StudyRun(label, name, variables, list(configs), dict(entry.get("args") or {}),
                                 entry.get("subcommand"), study_dir / name))
    names = [run.name for run in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyError(f"run names repeat: {duplicates} (put the repeat variables in the name)")
    return runs


def checkpoint_of(run: StudyRun) -> Path:
    for name in ("best.ckpt", "last.ckpt"):
        path = run.run_dir / "checkpoints" / name
        if path.is_file():
            return path
    raise StudyError(f"run {run.name} left no checkpoint in {run.run_dir / 'checkpoints'}")


def substitute(value: Any, run: StudyRun, done: dict[str, StudyRun], study_dir: Path) -> Any:
    """``value`` with its placeholders filled (strings only; a lone ``{seed}`` keeps the variable's type)."""
    if not isinstance(value, str):
        return value

    def lookup(kind: str, argument: Optional[str]) -> Any:
        if argument is None:
            if kind == "study_dir":
                return str(study_dir)
            if kind in run.variables:
                return run.variables[kind]
            raise StudyError(f"run {run.name}: unknown placeholder {{{kind}}}")
        if kind == "ckpts":
            matches = [r for name, r in done.items() if fnmatch.fnmatchcase(name, argument)]
            if not matches:
                raise StudyError(f"run {run.name}: no earlier run matches {argument!r}")
            return json.dumps([str(checkpoint_of(r)) for r in matches])
        if argument not in done:
            raise StudyError(f"run {run.name}: {{{kind}:{argument}}} names no earlier run")
        if kind == "ckpt":
            return str(checkpoint_of(done[argument]))
        if kind == "dir":
            return str(done[argument].run_dir)
        raise StudyError(f"run {run.name}: unknown placeholder {{{kind}:{argument}}}")

    whole = PLACEHOLDER.fullmatch(value)
    if whole:
        return lookup(whole.group(1), whole.group(2))
    return PLACEHOLDER.sub(lambda m: str(lookup(m.group(1), m.group(2))), value)


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def command(run: StudyRun, done: dict[str, StudyRun], study_dir: Path, runs_dir: str, experiment: str) -> list[str]:
    """The run.py command line of one run."""
    argv = [sys.executable, str(RUN_PY)]
    if run.subcommand:
        argv.append(run.subcommand)
    for config in run.configs:
        argv += ["--config", str(substitute(config, run, done, study_dir))]
    argv += ["--runs_dir", runs_dir, "--experiment", experiment, "--run_id", run.name]
    for key, value in run.args.items():
        argv += [f"--{str(key).lstrip('-')}", _flag_value(substitute(value, run, done, study_dir))]
    return argv


def execute(argv: list[str], log_path: Path) -> int:
    """Run one command, its output shown and kept in ``log_path``."""
    env = dict(os.environ)
    env.pop("PAPERBENCH_RUN_ID", None)  # each run gets its own folder
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, cwd=ROOT, env=env) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        return process.wait()


# --------------------------------------------------------------------------------------------
# Tables and figure
# --------------------------------------------------------------------------------------------

def read_results(runs: list[StudyRun]) -> list[dict]:
    results = []
    for run in runs:
        path = run.run_dir / "results.json"
        record = json.loads(path.read_text()) if path.is_file() else {"metrics": {}}
        results.append({"entry": run.entry, "run": run.name, "variables": run.variables,
                        "metrics": record.get("metrics", {}), "paper": record.get("paper") or {},
                        "run_dir": str(run.run_dir)})
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarise(results: list[dict], table: dict) -> dict[str, dict]:
    """Per entry: {metric: {mean, std, n, paper}} over its runs (or their ``top_k`` best by ``rank_by``)."""
    metrics = table.get("metrics") or sorted({k for r in results for k in r["metrics"] if k.startswith("test/")})
    top_k, rank_by = table.get("top_k"), table.get("rank_by")
    descending = table.get("rank_mode", "max") == "max"
    summary = {}
    for entry in dict.fromkeys(r["entry"] for r in results):
        members = [r for r in results if r["entry"] == entry and r["metrics"]]
        if top_k and rank_by:
            ranked = [r for r in members if rank_by in r["metrics"]]
            members = sorted(ranked, key=lambda r: r["metrics"][rank_by], reverse=descending)[:int(top_k)]
        rows = {}
        for metric in metrics:
            values = [float(r["metrics"][metric]) for r in members if metric in r["metrics"]]
            if not values:
                continue
            mean, std = mean_std(values)
            paper = next((r["paper"].get(metric) for r in members if isinstance(r["paper"].get(metric), (int, float))), None)
            rows[metric] = {"mean": mean, "std": std, "n": len(values), "paper": paper}
        summary[entry] = rows
    return summary


def write_tables(study_dir: Path, results: list[dict], summary: dict[str, dict]) -> Path:
    variables = sorted({k for r in results for k in r["variables"]})
    metrics = sorted({k for r in results for k in r["metrics"]})
    with open(study_dir / "results.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["entry", "run", *variables, *metrics])
        for r in results:
            writer.writerow([r["entry"], r["run"], *(r["variables"].get(v, "") for v in variables),
                             *(r["metrics"].get(m, "") for m in metrics)])
    (study_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    columns = list(dict.fromkeys(m for rows in summary.values() for m in rows))
    lines = ["| entry | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for entry, rows in summary.items():
        cells = []
        for metric in columns:
            stats = rows.get(metric)
            if stats is None:
                cells.append("")
                continue
            cell = f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["n"] > 1 else "")
            if stats["paper"] is not None:
                cell += f" (paper {stats['paper']:.4g})"
            cells.append(cell)
        lines.append(f"| {entry} | " + " | ".join(cells) + " |")
    path = study_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_figure(study_dir: Path, summary: dict[str, dict], figure: dict) -> Optional[Path]:
    metric = figure.get("metric")
    entries = [e for e, rows in summary.items() if metric in rows]
    if not metric or not entries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [summary[e][metric]["mean"] for e in entries]
    stds = [summary[e][metric]["std"] for e in entries]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(entries) + 2), 3.5))
    ax.bar(range(len(entries)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    papers = [summary[e][metric]["paper"] for e in entries]
    if any(p is not None for p in papers):
        ax.scatter([i for i, p in enumerate(papers) if p is not None], [p for p in papers if p is not None],
                   color="tab:red", marker="_", s=400, label="paper", zorder=3)
        ax.legend()
    ax.set_xticks(range(len(entries)), entries, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(figure.get("title") or metric)
    fig.tight_layout()
    path = study_dir / "figure.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def run_study(config: str | os.PathLike, study_id: Optional[str] = None, runs_dir: str = "runs",
              dry_run: bool = False, only: Optional[list[str]] = None) -> Path:
    """Run (or resume, with the ``study_id`` of an earlier call) a study; returns its folder."""
    path = Path(config)
    spec = load_study(path)
    name = spec.get("name") or study_name(path)
    study_id = study_id or time.strftime("%Y%m%d-%H%M%S")
    experiment = f"{name}/{study_id}"
    study_dir = Path(runs_dir) / name / study_id
    runs = expand_runs(spec, study_dir)
    done: dict[str, StudyRun] = {}
    for i, run in enumerate(runs, 1):
        if only and not any(fnmatch.fnmatchcase(run.name, pattern) for pattern in only):
            if (run.run_dir / "results.json").is_file() or (run.run_dir / "checkpoints").is_dir():
                done[run.name] = run
            continue
        argv = command(run, done, study_dir, runs_dir, experiment)
        print(f"[study {name}] run {i}/{len(runs)}: {run.name}\n  " + " ".join(argv[1:]), flush=True)
        if dry_run:
            done[run.name] = run
            continue
        if (run.run_dir / "results.json").is_file():
            print(f"  finished earlier ({run.run_dir / 'results.json'}): kept", flush=True)
        else:
            code = execute(argv, study_dir / "logs" / f"{run.name}.log")
            if code != 0:
                raise StudyError(f"run {run.name} failed (exit {code}); its output: {study_dir / 'logs' / (run.name + '.log')}. "
                                 f"Fix it and resume with --study_id {study_id}")
        done[run.name] = run
    if dry_run:
        return study_dir
    results = read_results(runs)
    summary = summarise(results, spec.get("table") or {})
    table = write_tables(study_dir, results, summary)
    write_figure(study_dir, summary, spec.get("figure") or {})
    if spec.get("analysis"):
        module, function = str(spec["analysis"]).split(":", 1)
        extra = getattr(importlib.import_module(module), function)(study_dir, results)
        if extra:
            with open(table, "a") as file:
                file.write("\n" + str(extra).rstrip() + "\n")
    print(f"[study {name}] summary: {table}\n" + table.read_text(), flush=True)
    return study_dir


def main(argv: Optional[list[str]] = None) -> Path:
    parser = argparse.ArgumentParser(prog="run.py study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the study YAML")
    parser.add_argument("--study_id", default=None, help="folder name; an existing one resumes (default: a time stamp)")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--only", nargs="*", default=None, help="run only the runs whose names match these globs")
    args = parser.parse_args(argv)
    try:
        return run_study(args.config, args.study_id, args.runs_dir, args.dry_run, args.only)
    except StudyError as error:
        sys.stderr.write(f"\nerror: {error}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
