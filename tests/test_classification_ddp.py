"""Classification metrics under DDP (2 CPU processes, gloo): a recording whose windows are split over the ranks
is pooled whole, and the OOD scores of both ranks are gathered, so every rank computes the single-process
numbers."""
import os

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
