#!/usr/bin/env python
"""One prepared speed check of every paper's demo: the real training loop (Lightning, the demo's DataModule and
workers, the paper's task) timed step by step on CUDA when present, else on the CPU.

    python benchmarks/gpu_check.py                                   # every demo, 32-true + bf16-mixed (+16-mixed for FFT papers on CUDA)
    python benchmarks/gpu_check.py --demos fnoreg_demo saca_unet_demo --steps 20
    python benchmarks/gpu_check.py --variants compile channels_last  # opt-in speed switches (lightning_modules/speed.py)
    python benchmarks/gpu_check.py --paper-batch                     # each demo at its paper's batch size (loader check)
    python benchmarks/gpu_check.py --ddp --demos saca_unet_demo      # DDP over every GPU (2 gloo processes on CPU)
    python benchmarks/gpu_check.py --fsdp                            # FSDP on ASDA (CUDA only; Lightning's FSDP refuses CPU)
    python benchmarks/gpu_check.py --budget-s 420 --out runs/gpu_check/h100.json --markdown runs/gpu_check/h100.md

Per run (one demo x precision x variant) it reports, after ``--warmup`` steps: training samples/s and ms per step,
the share of time the device waited for the next batch (``idle %``: loader + host-to-device copy; the goal is < 5 %),
validation ms per batch, the peak memory (CUDA: max allocated; CPU: the process's peak RSS), and whether the loss
stayed finite. Each run is ``run.py fit`` with ``lightning_modules.speed.StepTimer`` attached (it synchronises at
every step boundary, so the figures are what a step costs, not what an unsynchronised loop would overlap), no
logger, no checkpoints and no validation during fit; then ``trainer.validate`` on ``--val-batches`` batches.
Runs stop being started once ``--budget-s`` is spent (the rest are listed as skipped), so the check fits its slot.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run  # noqa: E402

EXPERIMENTS = ROOT / "experiments"
# Demos whose networks run FFTs (spectral layers, k-space, STFT front ends): also timed in 16-mixed on CUDA,
# where cuFFT's half precision path and the float32 islands of lightning_modules/blocks/spectral.py matter.
FFT_DEMOS = ("fnoreg", "diffcmr", "chandna", "asda", "dcca", "voxelmorph")
FSDP_DEMO = "asda_demo"


def all_demos() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*_demo*.yaml"))


def paper_of(demo: str) -> str:
    return demo.split("_demo")[0]


def paper_batch_size(demo: str) -> int | None:
    """The batch size of the paper's main row: the first base config ``experiments/<paper>/*.yaml`` that sets one."""
    for base in sorted((EXPERIMENTS / paper_of(demo)).glob("*.yaml")):
        if run.is_study(base):
            continue
        config = yaml.safe_load(base.read_text()) or {}
        size = ((config.get("data") or {}).get("init_args") or {}).get("batch_size")
        if isinstance(size, int):
            return size
    return None


def fit_args(demo: str, precision: str, variant: str, args, report: str, runs_dir: str) -> list[str]:
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    argv = ["fit", "--config", str(EXPERIMENTS / f"{demo}.yaml")]
    if args.ddp:
        argv += ["--config", str(EXPERIMENTS / "trainer" / ("ddp.yaml" if accelerator == "gpu" else "ddp_cpu.yaml"))]
    if args.fsdp:
        argv += ["--config", str(EXPERIMENTS / "trainer" / "fsdp.yaml")]
    else:
        argv += [f"--trainer.accelerator={accelerator}"]
        if not args.ddp:
            argv += ["--trainer.devices=1"]
    argv += [
        f"--trainer.precision={precision}",
        f"--trainer.max_steps={args.warmup + args.steps}", "--trainer.max_epochs=-1",
        # no validation during fit, without switching it off (a demo's EarlyStopping would miss its metric)
        "--trainer.check_val_every_n_epoch=1000000", "--trainer.val_check_interval=1.0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--runs_dir={runs_dir}", f"--run_id={demo}-{precision}-{variant}",
        "--trainer.callbacks+=lightning_modules.speed.StepTimer",
        f"--trainer.callbacks.report={report}", f"--trainer.callbacks.warmup={args.warmup}",
    ]
    if variant in ("compile", "compile+channels_last"):
        argv += ["--trainer.callbacks+=lightning_modules.speed.CompileNetwork"]
    if variant in ("channels_last", "compile+channels_last"):
        argv += ["--trainer.callbacks+=lightning_modules.speed.ChannelsLast"]
    if args.paper_batch:
        size = paper_batch_size(demo)
        if size:
            argv += [f"--data.init_args.batch_size={size}"]
    return argv


def run_in_process(argv: list[str], val_batches: int) -> None:
    cli = run.main(argv)
    trainer = cli.trainer
    if val_batches:
        trainer.limit_val_batches = val_batches
        trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        # validate() wrote the report again with the validation timings added
    del cli
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_subprocess(argv: list[str], timeout: float) -> None:
    """DDP/FSDP: Lightning relaunches the entry script on every rank, so these runs go through run.py itself."""
    subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], check=True, cwd=ROOT, timeout=timeout)


def one_run(demo: str, precision: str, variant: str, args, workdir: str, remaining_s: float) -> dict:
    report = os.path.join(workdir, f"{demo}-{precision}-{variant}.json")
    argv = fit_args(demo, precision, variant, args, report, os.path.join(workdir, "runs"))
    row = {"demo": demo, "precision": precision, "variant": variant,
           "mode": "fsdp" if args.fsdp else "ddp" if args.ddp else "single"}
    start = time.perf_counter()
    try:
        if args.ddp or args.fsdp:
            run_in_subprocess(argv, timeout=max(remaining_s, 30))
        else:
            run_in_process(argv, args.val_batches)
        with open(report) as f:
            row.update(json.load(f))
        row["status"] = "ok" if row.get("loss_finite", False) else "loss not finite"
    except (Exception, SystemExit) as error:  # one demo's failure is a result of the check, not its end
        row["status"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
        if "nothing to train" in str(error):  # the oracle and mixture bounds of Chandna: `run.py test` only
            row["status"] = "test-only demo"
        elif args.verbose:
            traceback.print_exc()
    row["wall_s"] = time.perf_counter() - start
    return row


def _fmt(value, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def markdown(rows: list[dict]) -> str:
    lines = ["| demo | mode | precision | variant | params | batch | train samples/s | ms/step | idle % "
             "| val ms/batch | peak MB | loss | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        train, val = row.get("train") or {}, row.get("validate") or {}
        loss = (f"{_fmt(row.get('first_loss'), '.3g')} -> {_fmt(row.get('last_loss'), '.3g')}"
                if row.get("first_loss") is not None else ("finite" if row.get("loss_finite") else "–"))
        lines.append(
            f"| {row['demo']} | {row['mode']} | {row['precision']} | {row['variant']} "
            f"| {_fmt(row.get('parameters'), ',')} | {train.get('batch_size', '–')} "
            f"| {_fmt(train.get('samples_per_s'))} | {_fmt(train.get('step_ms_mean'))} "
            f"| {_fmt(100 * train['idle_fraction'] if 'idle_fraction' in train else None)} "
            f"| {_fmt(val.get('step_ms_mean'))} | {_fmt(row.get('peak_memory_mb'), '.0f')} | {loss} "
            f"| {row['status']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", nargs="*", default=None, help="demo config stems (default: every demo)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--precisions", nargs="*", default=None,
                        help="default: 32-true bf16-mixed, and 16-mixed for FFT demos on CUDA")
    parser.add_argument("--variants", nargs="*", default=["eager"],
                        choices=["eager", "compile", "channels_last", "compile+channels_last"])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (allocator, cuDNN autotune, compile)")
    parser.add_argument("--val-batches", type=int, default=5)
    parser.add_argument("--paper-batch", action="store_true", help="the paper's batch size instead of the demo's")
    parser.add_argument("--ddp", action="store_true", help="DDP over all GPUs (CPU: 2 gloo processes)")
    parser.add_argument("--fsdp", action="store_true", help=f"FSDP on {FSDP_DEMO} (CUDA only)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no new run after this many seconds")
    parser.add_argument("--out", default=None, help="JSON of every row")
    parser.add_argument("--markdown", default=None, help="write the table here too")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.fsdp and args.device != "cuda":
        parser.error("FSDP needs CUDA (Lightning's FSDPStrategy refuses the CPU)")
    demos = args.demos or ([FSDP_DEMO] if args.fsdp else all_demos())
    unknown = sorted(set(demos) - set(all_demos()))
    if unknown:
        parser.error(f"no such demo config: {unknown} (have: {all_demos()})")
    os.environ.setdefault("WANDB_MODE", "offline")

    plan = []
    for demo in demos:
        precisions = args.precisions or (["32-true", "bf16-mixed"]
                                         + (["16-mixed"] if args.device == "cuda" and paper_of(demo) in FFT_DEMOS
                                            else []))
        plan += [(demo, p, v) for p in precisions for v in args.variants]

    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
        for demo, precision, variant in plan:
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_s:
                rows.append({"demo": demo, "precision": precision, "variant": variant, "status": "skipped (budget)",
                             "mode": "fsdp" if args.fsdp else "ddp" if args.ddp else "single"})
                continue
            row = one_run(demo, precision, variant, args, workdir, args.budget_s - elapsed + 120)
            rows.append(row)
            print(f"[{time.perf_counter() - start:6.0f} s] {demo} {precision} {variant}: {row['status']} "
                  f"({row['wall_s']:.0f} s)", flush=True)

    table = markdown(rows)
    device = next((r["device"] for r in rows if r.get("device")), args.device)
    header = (f"gpu_check on {device}, torch {torch.__version__}, {args.steps} timed steps after {args.warmup}, "
              f"{time.perf_counter() - start:.0f} s in all")
    print(f"\n{header}\n\n{table}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=2)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        Path(args.markdown).write_text(f"{header}\n\n{table}\n")
    return rows


if __name__ == "__main__":
    main()
