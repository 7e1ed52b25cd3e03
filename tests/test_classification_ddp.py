"""Classification metrics under DDP (2 CPU processes, gloo): a recording whose windows are split over the ranks
is pooled whole, and the OOD scores of both ranks are gathered, so every rank computes the single-process
numbers."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_modules.metrics.classification import ClassificationEvaluation
from lightning_modules.metrics.ood import SourcedScores, ood_detection_metrics


def _windows():
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(10).repeat_interleave(5)  # 10 recordings x 5 windows
    labels = groups % 3
    logits = torch.randn(50, 3, generator=g) * 2 + F.one_hot(labels, 3)
    ood = torch.randn(30, generator=g) + 0.5
    return logits, labels, groups, ood


def _evaluate(logits, labels, groups, id_scores, ood_scores):
    evaluation = ClassificationEvaluation(3, multilabel=False, group_pooling="mean_logit")
    evaluation.update(logits, labels, groups)
    out = {k: float(v) for k, v in evaluation.compute().items()}
    scores = SourcedScores()
    scores.update(id_scores, 0)
    scores.update(ood_scores, 1)
    values, sources = scores.compute()
    out.update({f"ood_{k}": float(v) for k, v in ood_detection_metrics(values[sources == 0], values[sources == 1]).items()})
    return out


def _worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        logits, labels, groups, ood = _windows()
        mine = torch.arange(len(labels)) % world_size == rank  # every recording has windows on both ranks
        id_scores = -logits.softmax(-1).amax(-1)
        out = _evaluate(logits[mine], labels[mine], groups[mine], id_scores[mine], ood[rank::world_size])
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_group_and_ood_metrics_gather_every_rank(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    logits, labels, groups, ood = _windows()
    single = _evaluate(logits, labels, groups, -logits.softmax(-1).amax(-1), ood)
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out.keys() == single.keys()
        for key, value in single.items():
            assert abs(out[key] - value) < 1e-6, (rank, key, out[key], value)
    assert single["group/num_groups"] == 10 and single["group/acc"] != single["acc"]


def _trainer_run(mode: str, out_dir: str) -> None:
    """``python -m tests.test_classification_ddp single|ddp DIR``: the image run's test under one process
    (after training; weights saved) or under Lightning's DDP on 2 CPU processes (weights loaded)."""
    import json

    from lightning.pytorch import Trainer

    from tests.test_classification import ClassificationTask, _quadrant_net, _QuadrantData

    torch.manual_seed(0)
    task = ClassificationTask(_quadrant_net(), 3, group_pooling="majority",
                              optimizer=lambda params: torch.optim.AdamW(params, lr=0.01))
    data = _QuadrantData(batch_size=7, num_workers=0)  # odd batches: recordings split over the ranks
    common = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                  default_root_dir=out_dir)
    weights = os.path.join(out_dir, "weights.pt")
    if mode == "single":
        Trainer(max_epochs=4, enable_checkpointing=False, **common).fit(task, data)
        torch.save(task.state_dict(), weights)
        trainer = Trainer(devices=1, **common)
    else:
        task.load_state_dict(torch.load(weights))
        trainer = Trainer(devices=2, strategy="ddp", **common)
    metrics = trainer.test(task, data, verbose=False)[0]
    if trainer.is_global_zero:
        with open(os.path.join(out_dir, f"{mode}.json"), "w") as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f)


@pytest.mark.slow
def test_lightning_ddp_test_with_several_loaders_matches_one_process(tmp_path):
    """Through Lightning's Trainer (about 30 s): every metric of every test loader (groups, the second site,
    OOD detection) is the one-process number under DDP with 2 CPU processes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    for mode in ("single", "ddp"):
        proc = subprocess.run([sys.executable, "-m", "tests.test_classification_ddp", mode, str(tmp_path)], cwd=root,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = (json.loads((tmp_path / f"{mode}.json").read_text()) for mode in ("single", "ddp"))
    assert single.keys() == ddp.keys() and "test/mixed/ood_auroc" in single and "test/other_site/group/acc" in single
    assert all(abs(single[k] - ddp[k]) < 1e-6 for k in single), {k: (single[k], ddp[k]) for k in single}


if __name__ == "__main__":
    import sys

    _trainer_run(sys.argv[1], sys.argv[2])
