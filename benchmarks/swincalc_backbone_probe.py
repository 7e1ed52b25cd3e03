"""SwinCalc issue 14 probe: can the RetinaNet head find the stand-in's clusters on a given backbone after a few
steps, trained or frozen at its random initialisation? (docs/papers/swincalc.md, "Diagnosis").

A 128 x 80 version of the demo (32 training images, batch 4, AdamW, gradient-norm clipping at 10, one thread),
through DetectionTask and a Lightning Trainer; prints the test TPR@1 and AUFC[0, 1] of the detector and of the
bright-spot baseline on the same 32 test images.

    python benchmarks/swincalc_backbone_probe.py --backbone resnet18 --freeze          # 0.99 AUFC (seed 0)
    python benchmarks/swincalc_backbone_probe.py --backbone swin_t --freeze            # 0.10
    python benchmarks/swincalc_backbone_probe.py --backbone swin_t --epochs 8          # 0.07
    python benchmarks/swincalc_backbone_probe.py --backbone swin_t --linear_init default
"""
from __future__ import annotations

import argparse
import json
import time
from functools import partial

import lightning
import torch
from lightning.pytorch import Trainer
from torch import nn

from datamodules.standins.synthetic_mammo import SyntheticMammoDataModule
from lightning_modules.swincalc import BrightSpotDetector, RetinaNetCalcDetector
from lightning_modules.tasks.detection import DetectionTask


def build(args) -> RetinaNetCalcDetector:
    if args.backbone.startswith("resnet"):
        backbone_args = {"widen_factor": 0.25}
    else:  # the demo's tiny Swin
        backbone_args = {"embed_dim": 32, "depths": args.depths, "num_heads": [1, 2, 4, 8],
                         "stochastic_depth_prob": 0.0, "patch_size": [args.patch, args.patch]}
    network = RetinaNetCalcDetector(backbone=args.backbone, backbone_args=backbone_args, out_indices=args.out_indices,
                                    fpn_channels=64, extra_levels="none",
                                    anchor_sizes=[[12, 16, 20], [24, 32, 40], [48, 64, 80]], score_thresh=0.0,
                                    detections_per_img=20)
    body = network.backbone
    if args.no_out_norms:
        body.out_norms = nn.ModuleList([nn.Identity() for _ in body.out_norms])
    if args.no_patch_norm:
        body.features[0][2] = nn.Identity()
    if args.linear_init:
        for module in body.modules():
            if isinstance(module, nn.Linear):
                if args.linear_init == "default":
                    module.reset_parameters()
                else:
                    nn.init.trunc_normal_(module.weight, std=float(args.linear_init))
    if args.freeze:
        for parameter in body.parameters():
            parameter.requires_grad_(False)
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="swin_t", help="swin_t (the demo's tiny Swin) or resnet18 (x 1/4)")
    parser.add_argument("--freeze", action="store_true", help="keep the backbone at its random initialisation")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup_steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depths", type=json.loads, default=[1, 1, 2, 1])
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--out_indices", type=json.loads, default=[0, 1, 2])
    parser.add_argument("--no_out_norms", action="store_true", help="Swin: no detection output LayerNorms")
    parser.add_argument("--no_patch_norm", action="store_true", help="Swin: no LayerNorm after the patch embedding")
    parser.add_argument("--linear_init", default="", help="Swin Linear weights: 'default' (PyTorch's) or a std")
    args = parser.parse_args()

    torch.set_num_threads(1)
    start = time.time()
    lightning.seed_everything(args.seed)
    task = DetectionTask(build(args), fppi=(0.1, 1.0), aufc_limits=(1.0,),
                         baselines={"bright_spot": BrightSpotDetector(box_size=24, max_detections=10)},
                         max_figure_images=0, warmup_steps=args.warmup_steps,
                         optimizer=partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.05))
    data = SyntheticMammoDataModule(num_train=32, num_val=4, num_test=32, image_size=(128, 80), seed=0, batch_size=4)
    trainer = Trainer(max_epochs=args.epochs, accelerator="cpu", gradient_clip_val=10.0, limit_val_batches=0,
                      num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    (metrics,) = trainer.test(task, datamodule=data, verbose=False)
    print(json.dumps({"args": vars(args), "seconds": round(time.time() - start, 1),
                      **{k: round(v, 3) for k, v in metrics.items() if k.endswith(("tpr@1", "aufc@1"))}}))


if __name__ == "__main__":
    main()
