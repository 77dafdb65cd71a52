"""The built-in ranking model: DLRM-style click-probability model.

Hashed categorical ids -> embeddings; dense features -> bottom MLP; pairwise dot products between
all of those vectors (the feature interaction); [dense vector, interactions] -> top MLP -> logit.
`forward(cat, dense)` returns the click probability, shape [N].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    def __init__(
        self,
        buckets: list[int],
        num_dense: int,
        embedding_dim: int = 16,
        bottom_mlp: list[int] | None = None,
        top_mlp: list[int] | None = None,
    ) -> None:
        super().__init__()
        bottom_mlp = list(bottom_mlp or [64, 32])
        top_mlp = list(top_mlp or [64, 32])
        self.embedding = nn.Embedding(int(sum(buckets)), embedding_dim)
        offsets = torch.tensor([0, *list(torch.tensor(buckets).cumsum(0)[:-1].tolist())])
        self.register_buffer("offsets", offsets.long(), persistent=False)
        self.bottom = _mlp([num_dense, *bottom_mlp, embedding_dim], last_activation=True)
        n = len(buckets) + 1
        iu = torch.triu_indices(n, n, offset=1)
        self.register_buffer("iu0", iu[0].clone(), persistent=False)
        self.register_buffer("iu1", iu[1].clone(), persistent=False)
        self.top = _mlp([embedding_dim + n * (n - 1) // 2, *top_mlp, 1], last_activation=False)

    def logits(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        e = self.embedding(cat + self.offsets)
        z = torch.cat([x.unsqueeze(1), e], dim=1)
        inter = torch.bmm(z, z.transpose(1, 2))
        flat = inter[:, self.iu0, self.iu1]
        return self.top(torch.cat([x, flat], dim=1)).squeeze(1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(cat, dense))


PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train in seconds on a laptop CPU; used by the demo.
    "dlrm-demo": {"embedding_dim": 16, "bottom_mlp": [64, 32], "top_mlp": [64, 32]},
    # A more typical production shape.
    "dlrm-base": {"embedding_dim": 64, "bottom_mlp": [256, 128], "top_mlp": [512, 256]},
}


def build_dlrm(buckets: list[int], num_dense: int, preset: str = "dlrm-demo", **overrides: Any) -> DLRM:
    if preset not in PRESETS:
        raise ValueError(f"unknown DLRM preset {preset!r}; known: {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **overrides}
    return DLRM(buckets=buckets, num_dense=num_dense, **kwargs)
