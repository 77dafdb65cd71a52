"""What a model returns, mapped to output columns: the model contract of each output kind.

kind `scores`, heads named by `output.score_columns` in model output order (default: one head,
`output.score_column`):
  - one head: a tensor `[N]` or `[N, 1]` (or a tuple/list/dict holding exactly one such tensor);
  - k heads: a tensor `[N, k]` (column i is head i), a tuple or list of k tensors `[N]` or
    `[N, 1]` (by position), or a dict whose keys are exactly the head names (by name; TorchScript
    `Dict[str, Tensor]` and `torch.export` programs returning a dict give this).
kind `embedding`: a tensor `[N, d]`, d the same for every batch of a run.

Anything else is refused with what the model returned (`describe`) and what was expected.
Embeddings are stored as a fixed-size list of float32, or, with `float16`, as a binary column of d
little-endian float16 values (2 d bytes; Delta Lake has no 16-bit float type):
`embedding_matrix` reads either back as an `[N, d]` array, `vector_norms` gives the L2 norm of
each vector (the value the run report profiles for embeddings)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.arrays import from_numpy, to_numpy


class OutputMismatch(ValueError):
    """The model's output does not fit the configured heads or kind."""


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dim")


def describe(out: Any) -> str:
    """What a model returned, e.g. `Tensor[16, 3]`, `tuple(Tensor[16], Tensor[16])`,
    `dict(p_click: Tensor[16])`."""
    if _is_tensor(out):
        return f"Tensor[{', '.join(str(int(s)) for s in out.shape)}]"
    if isinstance(out, dict):
        return "dict(" + ", ".join(f"{k}: {describe(v)}" for k, v in out.items()) + ")"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__}(" + ", ".join(describe(v) for v in out) + ")"
    return type(out).__name__


def _vector(t: Any, n: int) -> Any | None:
    """`t` as one value per row ([N] or [N, 1]), or None when it is not that."""
    if not _is_tensor(t):
        return None
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    return t if t.dim() == 1 and t.shape[0] == n else None


def map_heads(out: Any, heads: list[str], n: int) -> list[Any]:
    """One tensor [n] per head, in the order of `heads`; OutputMismatch when `out` does not fit."""
    k = len(heads)
    found: list[Any] | None = None
    if _is_tensor(out):
        if k == 1:
            v = _vector(out, n)
            found = [v] if v is not None else None
        elif out.dim() == 2 and tuple(out.shape) == (n, k):
            found = [out[:, i] for i in range(k)]
    elif isinstance(out, dict):
        if sorted(out) == sorted(heads) or (k == 1 and len(out) == 1):
            found = [_vector(out[h] if h in out else next(iter(out.values())), n) for h in heads]
    elif isinstance(out, (tuple, list)) and len(out) == k:
        found = [_vector(t, n) for t in out]
    if found is None or any(v is None for v in found):
        if k == 1:
            expected = f"a tensor [{n}] or [{n}, 1]"
        else:
            expected = (
                f"a tensor [{n}, {k}], a tuple or list of {k} tensors [{n}], "
                f"or a dict with keys {sorted(heads)}"
            )
        raise OutputMismatch(
            f"model returned {describe(out)}; output.score_columns names {k} head(s) {heads}, so "
            f"expected {expected} (rows: {n})"
        )
    return found


def map_embedding(out: Any, n: int, dim: int | None = None) -> Any:
    """The [n, d] embedding tensor; OutputMismatch when `out` is not one (or d differs from `dim`)."""
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    if isinstance(out, dict) and len(out) == 1:
        out = next(iter(out.values()))
    ok = _is_tensor(out) and out.dim() == 2 and out.shape[0] == n and out.shape[1] >= 1
    if ok and dim is not None and out.shape[1] != dim:
        raise OutputMismatch(
            f"model returned {describe(out)}; output.kind 'embedding' expected [{n}, {dim}] "
            f"(the dimension its first batch had)"
        )
    if not ok:
        raise OutputMismatch(
            f"model returned {describe(out)}; output.kind 'embedding' expects one tensor [{n}, d] (rows: {n})"
        )
    return out


EMBEDDING_DTYPES = ("float32", "float16")


def embedding_type(dim: int, dtype: str = "float32") -> pa.DataType:
    """The Arrow type of an embedding column."""
    if dtype == "float16":
        return pa.binary()
    return pa.list_(pa.float32(), dim)


def embedding_column(matrix: np.ndarray, dtype: str = "float32") -> pa.Array:
    """An [N, d] array as the embedding column (no per-row Python)."""
    n, d = matrix.shape
    if dtype == "float16":
        data = np.ascontiguousarray(matrix, dtype="<f2").view(np.uint8).reshape(-1)
        offsets = (np.arange(n + 1, dtype=np.int32) * (2 * d)).astype(np.int32)
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    values = from_numpy(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, d)


def embedding_matrix(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An embedding column (either storage) back as an [N, d] float32 array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        width_type = np.int32 if pa.types.is_binary(col.type) else np.int64
        offsets = np.frombuffer(col.buffers()[1], dtype=width_type)
        offsets = offsets[col.offset : col.offset + n + 1]
        if n == 0:
            return np.zeros((0, 0), dtype=np.float32)
        width = int(offsets[1] - offsets[0])
        data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        return data.view("<f2").reshape(n, width // 2).astype(np.float32)
    if pa.types.is_fixed_size_list(col.type):
        d = col.type.list_size
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        d = int(pc.list_value_length(col)[0].as_py()) if n else 0
    else:
        raise TypeError(f"not an embedding column: {col.type}")
    values = to_numpy(col.flatten())
    return values.astype(np.float32, copy=False).reshape(n, d)


def vector_norms(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The L2 norm of each embedding (what the report profiles for kind `embedding`)."""
    m = embedding_matrix(col).astype(np.float64)
    return np.sqrt(np.square(m).sum(axis=1))


def profiled_values(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values a column's profile summarizes: scores as they are, embeddings (a fixed-size list or
    binary column) by their norm, the ranked scores of output.top_k (a variable-size list per group)
    by the scores the lists hold."""
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        return to_numpy(col.flatten())
    if pa.types.is_fixed_size_list(t) or pa.types.is_binary(t):
        return vector_norms(col)
    return to_numpy(col)
