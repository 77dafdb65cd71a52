"""The model of configs/example-safetensors-class.yaml: your own nn.Module, named there by
`model.class_path: tinyranker:TinyRanker` and loaded from safetensors weights (no pickle).

batchscore imports it from the config's folder, builds it with `model.kwargs`, loads the weights
(keys, shapes and dtypes checked) and calls it as `model(cat, dense)`, the order of
`model.inputs`. Save weights of your own the same way:

    .venv/bin/python configs/tinyranker.py demo/tinyranker.safetensors
"""

from __future__ import annotations

import sys

import torch
from torch import nn


class TinyRanker(nn.Module):
    """Embeddings of hashed categorical features plus a linear layer over the dense ones."""

    def __init__(self, buckets: int, n_cat: int, n_dense: int, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(buckets, dim)
        self.dense = nn.Linear(n_dense, dim)
        self.out = nn.Linear(dim * (n_cat + 1), 1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        parts = [self.emb(cat).flatten(1), torch.relu(self.dense(dense))]
        return torch.sigmoid(self.out(torch.cat(parts, dim=1))).squeeze(1)


def save_weights(path: str, seed: int = 0) -> None:
    """Weights as training would leave them (here: a seeded initialisation), in safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = TinyRanker(buckets=1024, n_cat=3, n_dense=2)
    save_file(model.state_dict(), path)


if __name__ == "__main__":
    save_weights(sys.argv[1] if len(sys.argv) > 1 else "demo/tinyranker.safetensors")
