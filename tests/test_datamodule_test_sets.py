"""BaseDataModule's several test sets: the single loader unchanged, named further (in- and out-of-distribution)
loaders in a fixed order, name checks, and every loader counting each sample once under DDP."""
import pytest
import torch.distributed as dist
from torch.utils.data import DataLoader

from datamodules.base import BaseDataModule


class _Range:
    def __init__(self, start, n):
        self.start, self.n = start, n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return self.start + index


def _datamodule(**sets):
    dm = BaseDataModule(batch_size=4, num_workers=0)
    dm.test_set = _Range(0, 10)
    dm.test_sets = dict(sets.get("test_sets", {}))
    dm.ood_test_sets = dict(sets.get("ood_test_sets", {}))
    return dm


def test_one_test_set_gives_one_loader_as_before():
    dm = _datamodule()
    loader = dm.test_dataloader()
    assert isinstance(loader, DataLoader) and dm.test_loader_names == ["test"]
    assert [int(i) for batch in loader for i in batch] == list(range(10))


def test_further_test_sets_come_in_the_order_of_their_names():
    dm = _datamodule(ood_test_sets={"digits": _Range(200, 3), "noise": _Range(300, 5)},
                     test_sets={"stu": _Range(100, 6)})
    loaders = dm.test_dataloader()
    assert dm.test_loader_names == ["test", "stu", "digits", "noise"]
    assert [[int(i) for batch in loader for i in batch] for loader in loaders] == [
        list(range(10)), list(range(100, 106)), [200, 201, 202], list(range(300, 305))]


@pytest.mark.parametrize("sets", [{"test_sets": {"group": _Range(0, 2)}}, {"ood_test_sets": {"test": _Range(0, 2)}},
                                  {"test_sets": {"a/b": _Range(0, 2)}}, {"test_sets": {"": _Range(0, 2)}},
                                  {"test_sets": {"x": _Range(0, 2)}, "ood_test_sets": {"x": _Range(0, 2)}}])
def test_test_set_names_that_would_clash_in_the_metric_names_are_refused(sets):
    with pytest.raises(ValueError, match="test set name"):
        _datamodule(**sets).test_dataloader()


def test_every_test_loader_counts_each_sample_once_under_ddp(monkeypatch):
    seen = [[], [], []]
    for rank in range(3):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
        monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
        dm = _datamodule(test_sets={"other": _Range(100, 7)}, ood_test_sets={"ood": _Range(200, 5)})
        for i, loader in enumerate(dm.test_dataloader()):
            seen[i] += [int(x) for batch in loader for x in batch]
    assert [sorted(s) for s in seen] == [list(range(10)), list(range(100, 107)), list(range(200, 205))]
