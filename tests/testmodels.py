"""Small TorchScript models of the output-kind tests (tests/integration/test_kinds.py, test_topk.py),
and how a test puts one on the S3 server."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.fs as pafs
import torch
from torch import nn

from pipeline.storage import resolve


class TwoHeads(nn.Module):
    """Click and conversion heads, returned by name (in the other order than a config lists them);
    p_click is NaN where the first dense input is above `nan_click_above` (never, by default)."""

    def __init__(self, num_dense: int, nan_click_above: float = math.inf) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, 2)
        self.lin = nn.Linear(num_dense, 2)
        self.nan_click_above = nan_click_above

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.emb(cat).sum(1) + self.lin(dense)
        click = torch.sigmoid(z[:, 0])
        click = torch.where(dense[:, 0] > self.nan_click_above, torch.full_like(click, float("nan")), click)
        return {"p_convert": torch.sigmoid(z[:, 1]), "p_click": click}


def upload_scripted(module: nn.Module, local: Path, uri: str, storage) -> None:
    """`module` scripted and saved at `local`, then copied to `uri` (s3://...)."""
    torch.jit.save(torch.jit.script(module), str(local))
    target = resolve(uri, storage)
    pafs.copy_files(
        str(local), target.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target.fs
    )


class Raises(nn.Module):
    """A model whose forward pass always raises: a challenger that fails while scoring."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("challenger model raised on purpose")


class PairsBuffer(nn.Module):
    """A user's model as most are written (tests/unit/test_checkpoint.py): its layers initialized
    by torch.nn.init, and a non-persistent buffer computed from its arguments alone (a DLRM's
    interaction indices)."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(50, n, mode="sum")
        self.lin = nn.Linear(n, n)
        self.register_buffer("pairs", torch.triu_indices(n, n, offset=1), persistent=False)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        x = self.lin(self.emb(cat))
        return x[:, self.pairs[0]] * x[:, self.pairs[1]]


class InitializedState(nn.Module):
    """A model whose __init__ initializes, with torch.nn.init, a tensor a load does not replace:
    `where` is "buffer" (a non-persistent buffer), "derived" (a buffer computed from an
    initialized temporary), "attribute" (a plain tensor attribute), "shared" (a non-persistent
    buffer sharing the initialized memory of a parameter) or "sparse" (nothing initialized but the
    parameters, and a sparse non-persistent buffer: no storage to compare, so the load does not
    trust the skip). Seeded: its builds are equal."""

    def __init__(self, where: str, n: int = 4) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.lin = nn.Linear(n, n)
        if where == "sparse":
            self.register_buffer("proj", torch.eye(n).to_sparse(), persistent=False)
            return
        block = nn.init.normal_(torch.empty(2, n, n))
        if where == "buffer":
            self.register_buffer("proj", block[0], persistent=False)
        elif where == "derived":
            self.register_buffer("proj", block[0] * 2, persistent=False)
        elif where == "attribute":
            self.proj = block[0]
        else:
            self.weight = nn.Parameter(block[0])
            self.register_buffer("proj", block[1], persistent=False)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        proj = self.proj.to_dense() if self.proj.is_sparse else self.proj
        return self.lin(dense) @ proj


class ScaleFromInit(nn.Module):
    """A model whose __init__ keeps a number computed from an initialized parameter outside any
    tensor (no check can see it): the load that skips the init must not make it plausible."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(n, 1)
        self.scale = 1.0 / float(self.lin.weight.detach().abs().sum())

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.lin(dense).squeeze(1) * self.scale


class ChecksItsInit(nn.Module):
    """A model whose __init__ refuses weights that are not finite (as one that factorizes its
    initialized weights would fail on them): it must still load. `broken`: it never builds."""

    def __init__(self, n: int = 4, broken: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(n, 1)
        if not torch.isfinite(self.lin.weight).all():
            raise ValueError("weights not finite")
        if broken:
            raise ValueError("a broken model")

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.lin(dense).squeeze(1)
