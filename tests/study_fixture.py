"""A seconds-long classification run for the study runner's tests (imported by run.py in a subprocess)."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule


class _Blobs(Dataset):
    def __init__(self, n: int, seed: int, shift: float):
        g = torch.Generator().manual_seed(seed)
        self.label = torch.randint(0, 3, (n,), generator=g)
        self.image = torch.randn(n, 4, generator=g) + shift * F.one_hot(self.label, 4).float()

    def __len__(self):
        return len(self.label)

    def __getitem__(self, i):
        return {"image": self.image[i], "label": self.label[i]}


class BlobData(BaseDataModule):
    """Three Gaussian blobs in 4-D, ``shift`` apart: a larger shift is an easier problem."""

    def __init__(self, shift: float = 2.0, batch_size: int = 32, num_workers: int = 0):
        super().__init__(batch_size, num_workers)
        self.shift = shift

    def setup(self, stage=None):
        self.train_set, self.val_set, self.test_set = (_Blobs(n, s, self.shift) for n, s in ((192, 0), (64, 1), (128, 2)))


class BlobNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)
