"""Pieces shared by every DataModule of the project: the data error and the loader plumbing."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Optional, Union

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

PathLike = Union[str, os.PathLike]


class DatasetError(RuntimeError):
    """Data missing or corrupt.

    The entry point prints only ``str(error)`` (no traceback), so the message alone must tell the
    user what is wrong, what the data should look like and what to run when they have no data.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: Optional[PathLike] = None,
        layout: Optional[str] = None,
        standin_config: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.layout = layout
        self.standin_config = standin_config
        self.hint = hint
        lines = [problem if self.path is None else f"{problem}: {self.path}"]
        if hint:
            lines.append(hint)
        if layout:
            lines += ["Expected layout:", _indent(layout.strip("\n"), "  ")]
        if standin_config:
            lines.append(
                f"No data at hand? Run the offline stand-in instead: python run.py --config {standin_config}"
            )
        super().__init__("\n".join(lines))


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def writable_dir(path: Path) -> bool:
    """Create ``path`` (and its parents) if needed; whether this process can write into it (decode caches)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        return os.access(path, os.W_OK)
    except OSError:
        return False


class EpochSeededRandomSampler(Sampler[int]):
    """Draws ``num_samples`` distinct indices per epoch from a generator seeded with ``seed + epoch``.

    Epochs see different samples yet a run is reproducible. Lightning calls ``set_epoch`` on a
    single device; under DDP it wraps this sampler (DistributedSamplerWrapper) and never calls it,
    so each ``__iter__`` also advances the epoch itself, identically on every rank.
    """

    def __init__(self, data_source: Sized, num_samples: int, seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.data_len = len(data_source)
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        # Without replacement while num_samples <= len(data): each epoch a fresh random subset.
        chunks = []
        remaining = self.num_samples
        while remaining > 0:
            chunk = torch.randperm(self.data_len, generator=generator)[:remaining]
            chunks.append(chunk)
            remaining -= len(chunk)
        return iter(torch.cat(chunks).tolist())


class BaseDataModule(L.LightningDataModule):
    """Loader plumbing. Subclasses fill ``train_set``, ``val_set``, ``test_set`` (and optionally
    ``predict_set``, else the test set is predicted) in ``setup``.

    Several test sets: ``test_sets`` (further in-distribution sets, e.g. another hospital's images) and
    ``ood_test_sets`` (out-of-distribution sets, whose items need no target), both ``{name: dataset}``.
    With either, ``test_dataloader`` returns a list of loaders in the order of ``test_loader_names``:
    ``test_set`` first ("test"), then ``test_sets``, then ``ood_test_sets``; without, the one loader as before.

    Args:
        batch_size: samples per batch (per process under DDP).
        num_workers: loader worker processes; workers persist across epochs when > 0.
        pin_memory: pin host memory; ``None`` pins when CUDA is available.
        eval_batch_size: batch size of the val/test/predict loaders; ``None`` uses ``batch_size``.
    """

    #: 2 or 3; set by subclasses (class attribute or in ``__init__``).
    spatial_dims: int = 2
    #: number of label values in the segmentation maps, background 0 included.
    num_labels: int = 0

    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: Optional[bool] = None,
        eval_batch_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self.test_sets: dict[str, Dataset] = {}
        self.ood_test_sets: dict[str, Dataset] = {}
        self.predict_set: Optional[Dataset] = None

    # Hook: a sampler for the train set (e.g. a fixed number of random pairs per epoch); None = shuffle.
    def train_sampler(self, dataset: Dataset) -> Optional[Sampler]:
        return None

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set, "train")
        sampler = self.train_sampler(dataset)
        # Under DDP Lightning wraps the sampler (or replaces shuffling) with a distributed one.
        return self._loader(dataset, self.batch_size, shuffle=sampler is None, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require(self.val_set, "val"))

    def test_dataloader(self) -> Union[DataLoader, list[DataLoader]]:
        loader = self._eval_loader(self._require(self.test_set, "test"))
        if not self.test_sets and not self.ood_test_sets:
            return loader
        names = self.test_loader_names  # checks the names
        extra = {**self.test_sets, **self.ood_test_sets}
        return [loader, *(self._eval_loader(extra[name]) for name in names[1:])]

    @property
    def test_loader_names(self) -> list[str]:
        """The names of ``test_dataloader()``'s loaders, in order; the tasks log loader ``name``'s metrics
        under ``test/<name>/`` (the first, ``test_set``, keeps plain ``test/``)."""
        names = ["test", *self.test_sets, *self.ood_test_sets]
        for name in names[1:]:
            if not name or not name.replace("_", "").replace("-", "").isalnum() or name in self.RESERVED_TEST_NAMES:
                raise ValueError(f"test set name {name!r}: use letters, digits, '_' or '-', and none of "
                                 f"{sorted(self.RESERVED_TEST_NAMES)} (they name metrics of the first test set)")
        if len(set(names)) != len(names):
            raise ValueError(f"test set names must be distinct, got {names}")
        return names

    #: names a further test set may not take: "test" is the first loader, "group" its per-group metrics.
    RESERVED_TEST_NAMES = frozenset({"test", "group"})

    def predict_dataloader(self) -> DataLoader:
        dataset = self.predict_set if self.predict_set is not None else self.test_set
        return self._eval_loader(self._require(dataset, "predict"))

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return self._loader(dataset, self.eval_batch_size, shuffle=False, sampler=self._eval_sampler(dataset))

    @staticmethod
    def _eval_sampler(dataset: Dataset) -> Optional[Sampler]:
        """Under DDP: each sample on exactly one rank.

        Lightning's default DistributedSampler pads the last rank with repeated samples, which biases
        metrics averaged over the set; it keeps a DistributedSampler that the loader already has.
        Ranks may then run one batch fewer than others, so per-step ``sync_dist`` logging must not be
        used on these loaders (torchmetrics' epoch-end sync is fine).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return None
        world_size = dist.get_world_size()
        if world_size == 1:
            return None
        if len(dataset) < world_size:
            # Unrepeated sampling would leave a rank without a batch, which can hang DDP.
            warnings.warn(
                f"Evaluation set of {len(dataset)} samples is smaller than the world size {world_size}: "
                "using the padded DistributedSampler, some samples are counted twice.",
                stacklevel=2,
            )
            return DistributedSampler(dataset, shuffle=False)
        return UnrepeatedDistributedSampler(dataset, shuffle=False)

    def _loader(
        self, dataset: Dataset, batch_size: int, *, shuffle: bool, sampler: Optional[Sampler]
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _require(self, dataset: Optional[Dataset], split: str) -> Dataset:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__} has no {split} set: call setup() first "
                f"(the Trainer does), or the {split} split is empty."
            )
        return dataset
