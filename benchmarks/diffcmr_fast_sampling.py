#!/usr/bin/env python
"""Fast sampling for DiffCMR: PSNR / SSIM / NMSE and wall time of the paper's DDPM chain against shorter
DDPM chains (the paper's Table 4a: schedule rebuilt for T) and DDIM along the full chain, for R = 1 and 4.

    python run.py --config experiments/diffcmr_demo.yaml --run_id demo            # train the stand-in demo
    python benchmarks/diffcmr_fast_sampling.py --ckpt runs/diffcmr_demo/demo/checkpoints/last.ckpt
    python benchmarks/diffcmr_fast_sampling.py --ckpt C --config experiments/diffcmr/cine.yaml \
        --data_dir /data/ChallengeData --full_steps 1000 --ddim 100 50 20 --ddpm 100 20

Prints a markdown table: sampler, network evaluations per slice (steps x R, all R rounds in one batch),
metrics of the R-round mean, seconds per slice and speed-up against the full DDPM chain.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.batch import IMAGE, TARGET  # noqa: E402
from lightning_modules.metrics.reconstruction import reconstruction_metrics  # noqa: E402
from lightning_modules.tasks.reconstruction import DiffusionReconstructionTask  # noqa: E402


def build_datamodule(config_path: Path, data_dir: str | None) -> LightningDataModule:
    config = yaml.safe_load(config_path.read_text())
    if data_dir:
        config["data"]["init_args"]["data_dir"] = data_dir
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", fail_untyped=False)
    return parser.instantiate(parser.parse_object({"data": config["data"]})).data


def evaluate(task: DiffusionReconstructionTask, loader, device) -> tuple[dict, float]:
    values: dict[str, list] = {"psnr": [], "ssim": [], "nmse": []}
    seconds, slices = 0.0, 0
    for batch_idx, batch in enumerate(loader):
        condition, target = batch[IMAGE].to(device), batch[TARGET].to(device)
        start = time.perf_counter()
        prediction = task.reconstruct(condition, batch_idx)[""]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        slices += len(condition)
        for name, value in reconstruction_metrics(prediction.float(), target).items():
            values[name].append(value.cpu())
    return {name: torch.cat(v).mean().item() for name, v in values.items()}, seconds / slices


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "diffcmr_demo.yaml"))
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--full_steps", type=int, default=50, help="the reference DDPM chain length T")
    parser.add_argument("--ddpm", type=int, nargs="*", default=[20], help="shorter DDPM chains (schedule rebuilt)")
    parser.add_argument("--ddim", type=int, nargs="*", default=[25, 10, 5], help="DDIM steps along the full chain")
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--clip_range", type=float, nargs=2, default=None,
                        help="x0 clamp (a sampling option, not in checkpoints); default: the config's, else [-1, 1]")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    clip_range = args.clip_range
    if clip_range is None:
        model_args = (yaml.safe_load(Path(args.config).read_text()).get("model") or {}).get("init_args") or {}
        clip_range = model_args.get("clip_range", (-1.0, 1.0))
    datamodule = build_datamodule(Path(args.config), args.data_dir)
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    if args.max_batches:
        loader = [b for _, b in zip(range(args.max_batches), loader)]
    settings = [("DDPM", args.full_steps, None)] + [("DDPM", t, None) for t in args.ddpm] + [
        ("DDIM", args.full_steps, k) for k in args.ddim]
    print("| sampler | R | network evaluations per slice | PSNR | SSIM | NMSE | s / slice | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for rounds in args.rounds:
        reference_time = None
        for name, steps, ddim_steps in settings:
            task = DiffusionReconstructionTask.load_from_checkpoint(
                args.ckpt, map_location=device, inference_steps=steps, rounds=rounds,
                sampler="ddim" if ddim_steps else "ddpm", ddim_steps=ddim_steps or 50,
                clip_range=clip_range).eval()
            metrics, seconds = evaluate(task, loader, device)
            reference_time = reference_time or seconds
            label = f"DDPM T={steps}" if not ddim_steps else f"DDIM {ddim_steps} steps (of T={steps})"
            evaluations = (ddim_steps or steps) * rounds
            print(f"| {label} | {rounds} | {evaluations} | {metrics['psnr']:.2f} | {metrics['ssim']:.4f} | "
                  f"{metrics['nmse']:.4f} | {seconds:.3f} | {reference_time / seconds:.1f}x |", flush=True)
    zero = {"psnr": [], "ssim": [], "nmse": []}
    for batch in loader:
        for key, value in reconstruction_metrics(batch[IMAGE].float(), batch[TARGET]).items():
            zero[key].append(value)
    zero = {k: torch.cat(v).mean().item() for k, v in zero.items()}
    print(f"| zero-filled input | – | 0 | {zero['psnr']:.2f} | {zero['ssim']:.4f} | {zero['nmse']:.4f} | – | – |")


if __name__ == "__main__":
    main()
