"""A model and preprocessing function of the kind a user brings (benchmarks/gpu_bench.py): a DLRM
with ten `EmbeddingBag` tables over 13 dense and 10 categorical columns (Criteo's shape), plugged
into batchscore by import path (`model.class_path: userdlrm:UserDLRM` with safetensors weights)
and a numpy `preprocessing.function: userdlrm:preprocess`. Nothing of batchscore is imported."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn

DENSE = [f"d{i}" for i in range(13)]
CATEGORICAL = [f"c{i}" for i in range(10)]
BUCKETS = 100_003
DIM = 16


def preprocess(batch: pa.Table) -> dict[str, np.ndarray]:
    """The features as trained: log1p of the non-negative dense values, ids modulo the buckets."""
    dense = np.empty((batch.num_rows, len(DENSE)), dtype=np.float32)
    for i, c in enumerate(DENSE):
        np.log1p(np.maximum(batch.column(c).to_numpy(), 0), out=dense[:, i])
    cat = np.empty((batch.num_rows, len(CATEGORICAL)), dtype=np.int64)
    for i, c in enumerate(CATEGORICAL):
        np.remainder(batch.column(c).to_numpy(), BUCKETS, out=cat[:, i])
    return {"dense": dense, "cat": cat}


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class UserDLRM(nn.Module):
    def __init__(self, buckets: int = BUCKETS, dim: int = DIM) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(buckets, dim, mode="sum") for _ in CATEGORICAL)
        self.bottom = mlp([len(DENSE), 64, dim])
        n = len(CATEGORICAL) + 1
        self.top = mlp([dim + n * (n - 1) // 2, 64, 32, 1])
        self.register_buffer("pairs", torch.triu_indices(n, n, offset=1), persistent=False)

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        vecs = torch.stack([x, *(t(cat[:, i : i + 1]) for i, t in enumerate(self.tables))], dim=1)
        inter = torch.bmm(vecs, vecs.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return torch.sigmoid(self.top(torch.cat([x, inter], dim=1))).squeeze(1)


class FreeModel(nn.Module):
    """A nearly free model (benchmarks/cpu_per_row.py): the first dense feature as the score, so a
    run's CPU is what it spends outside the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return dense[:, 0] * self.scale
