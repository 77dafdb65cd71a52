"""The built-in models.

DLRM: hashed categorical ids -> embeddings; dense features -> bottom MLP; pairwise dot products
between all of those vectors (the feature interaction); [dense vector, interactions] -> top MLP ->
logit. `forward(cat, dense)` returns the click probability, shape [N]; with `heads` (preset
`heads`) one probability per head, shape [N, k] (column i is head i: `output.score_columns`).

TwoTower (preset `two-tower`): a user tower and an item tower over the user-side and item-side
features of the same (cat, dense) inputs, trained so that the dot product of the two vectors is the
click logit. `forward(cat, dense)` returns the user vector, shape [N, d] (`output.kind: embedding`);
`item_vectors(cat, dense)` the item's.
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
        heads: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = len(heads or [])  # 0: one output, [N]
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
        outputs = max(1, self.num_heads)
        self.top = _mlp([embedding_dim + n * (n - 1) // 2, *top_mlp, outputs], last_activation=False)

    def logits(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """[N] logits, or [N, k] with k heads."""
        x = self.bottom(dense)
        e = self.embedding(cat + self.offsets)
        z = torch.cat([x.unsqueeze(1), e], dim=1)
        inter = torch.bmm(z, z.transpose(1, 2))
        flat = inter[:, self.iu0, self.iu1]
        out = self.top(torch.cat([x, flat], dim=1))
        return out if self.num_heads > 1 else out.squeeze(1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(cat, dense))


class TwoTower(nn.Module):
    """User and item towers over chosen columns of (cat, dense); logit = user . item."""

    def __init__(
        self,
        buckets: list[int],
        num_dense: int,
        user_cat: list[int],
        user_dense: list[int],
        item_cat: list[int],
        item_dense: list[int],
        embedding_dim: int = 16,
        hidden: list[int] | None = None,
    ) -> None:
        super().__init__()
        hidden = list(hidden or [64])
        self.embedding = nn.Embedding(int(sum(buckets)), embedding_dim)
        offsets = torch.tensor([0, *list(torch.tensor(buckets).cumsum(0)[:-1].tolist())])
        self.register_buffer("offsets", offsets.long(), persistent=False)
        for name, idx in (("user_cat", user_cat), ("user_dense", user_dense)):
            self.register_buffer(name, torch.tensor(idx, dtype=torch.long), persistent=False)
        for name, idx in (("item_cat", item_cat), ("item_dense", item_dense)):
            self.register_buffer(name, torch.tensor(idx, dtype=torch.long), persistent=False)
        self.user_mlp = _mlp([embedding_dim + len(user_dense), *hidden, embedding_dim], last_activation=False)
        self.item_mlp = _mlp([embedding_dim + len(item_dense), *hidden, embedding_dim], last_activation=False)

    def _embed(self, cat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.embedding(cat[:, idx] + self.offsets[idx]).sum(1)

    def item_vectors(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.item_mlp(torch.cat([self._embed(cat, self.item_cat), dense[:, self.item_dense]], dim=1))

    def logits(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return (self.forward(cat, dense) * self.item_vectors(cat, dense)).sum(1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The user vector [N, d]: what a two-tower retrieval system embeds nightly."""
        return self.user_mlp(torch.cat([self._embed(cat, self.user_cat), dense[:, self.user_dense]], dim=1))


PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train in seconds on a laptop CPU; used by the demo.
    "dlrm-demo": {"embedding_dim": 16, "bottom_mlp": [64, 32], "top_mlp": [64, 32]},
    # A more typical production shape.
    "dlrm-base": {"embedding_dim": 64, "bottom_mlp": [256, 128], "top_mlp": [512, 256]},
    # The demo model with two heads, [N, 2]: output.score_columns: [p_click, p_convert].
    "heads": {
        "embedding_dim": 16,
        "bottom_mlp": [64, 32],
        "top_mlp": [64, 32],
        "heads": ["p_click", "p_convert"],
    },
    # A user tower that embeds ([N, 16]; output.kind: embedding) and its item tower. Which features
    # each tower reads comes with the feature spec (kwargs user_cat, user_dense, item_cat, item_dense).
    "two-tower": {"embedding_dim": 16, "hidden": [64]},
}


def build_dlrm(buckets: list[int], num_dense: int, preset: str = "dlrm-demo", **overrides: Any) -> nn.Module:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **overrides}
    cls = TwoTower if preset == "two-tower" else DLRM
    return cls(buckets=buckets, num_dense=num_dense, **kwargs)
