"""The numeric half of the built-in feature transforms, as torch operations on any device.

`models.features.encode_table` does on CPU only what needs the Arrow buffers (string bytes, null
bitmaps) and hands over three plain arrays; `FeatureTransform` turns them into the model's inputs
on the device they live on (the replica's GPU, or the CPU in training and CPU scoring). It is the
only implementation: `models.features.transform_table` (training, tests, user plug-ins) runs it on
the CPU, the predict stage on the replica's device.

Categorical: splitmix64 of the 64-bit key, modulo `buckets - 1`, plus 1; null -> 0. Torch has no
uint64 arithmetic, so the hash runs on int64 with the same bits: wrapping int64 multiplication is
uint64 multiplication mod 2**64, a logical right shift is the arithmetic one masked, and the
unsigned modulo of a negative int64 (an uint64 >= 2**63) is corrected by 2**64 mod m. Bit-exact
with the uint64 definition on CPU and CUDA (tested against a Python-int reference).

Dense: fill (null/NaN/+-inf) -> clip -> log1p(max(x, 0)) -> standardize, in float64, rounded to
float32 once at the end, the same IEEE operations in the same order as the numpy path this
replaced; only log1p's last float64 bit may differ between math libraries (glibc, SLEEF, CUDA).
"""

from __future__ import annotations

import warnings

import torch

from models.features import CAT_KEY, CAT_NULL, DENSE_RAW, FeatureError, FeatureSpec, check_spec

_M64 = (1 << 64) - 1
_SPLITMIX_C1 = 0xBF58476D1CE4E5B9
_SPLITMIX_C2 = 0x94D049BB133111EB


def _signed(u: int) -> int:
    """The int64 with the bits of the uint64 `u`."""
    u &= _M64
    return u - (1 << 64) if u >= 1 << 63 else u


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> on int64 is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors holding uint64 bits; returns a new tensor."""
    x = x ^ _shr(x, 30)
    x = x * _signed(_SPLITMIX_C1)
    x = x ^ _shr(x, 27)
    x = x * _signed(_SPLITMIX_C2)
    return x ^ _shr(x, 31)


def umod(x: torch.Tensor, m: torch.Tensor, two64_mod_m: torch.Tensor) -> torch.Tensor:
    """(x as uint64) mod m, for int64 `x` and 0 < m < 2**63 (broadcast), `two64_mod_m` = 2**64 mod m.

    torch.remainder takes the divisor's sign, so r = x mod m is in [0, m) for any int64 x; an
    x < 0 stands for x + 2**64, whose remainder is (r + 2**64 mod m) mod m. Every intermediate
    stays in (-m, m), so nothing overflows; the selections are bit masks (x >> 63 is all ones
    for negative x), several times faster on CPU than torch.where."""
    r = torch.remainder(x, m)
    d = r - (m - two64_mod_m)  # r + 2**64 mod m - m, in (-m, m)
    wrapped = d + (m & (d >> 63))  # (r + 2**64 mod m) mod m
    return r ^ ((r ^ wrapped) & (x >> 63))


def from_numpy(arr) -> torch.Tensor:
    """A tensor sharing the array's memory, also for read-only arrays (zero-copy Arrow buffers):
    the transforms never write to their inputs, so torch's warning about them does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


class FeatureTransform:
    """The spec's numeric transforms with their parameters as tensors on one device.

    Call it with the encoded arrays (`models.features.encode_table`) as tensors on that device:
    `cat_key` int64 [N, C], `cat_null` bool [N, C], `dense_raw` float64 [N, D]. Returns the model
    inputs `{"cat": int64 [N, C], "dense": float32 [N, D]}` on the same device. The inputs are
    not modified.

    On the CPU the rows go through in blocks that stay in cache (measured 2-3x faster than whole
    1 M-row batches, whose temporaries each cost fresh pages), each under torch's grain size so
    that no operation fans out to intra-op threads (a block is too small to pay for it, and the
    process may share its cores with other replicas); on a GPU a batch is one launch per
    operation."""

    cpu_block_elements = 32767  # < at::internal::GRAIN_SIZE: each op runs on the calling thread

    def __init__(self, spec: FeatureSpec, device: str | torch.device = "cpu") -> None:
        check_spec(spec)
        self.spec = spec
        self.device = torch.device(device)
        mods = [f.buckets - 1 for f in spec.categorical]
        self.mod = torch.tensor(mods, dtype=torch.int64, device=self.device)
        self.two64_mod = torch.tensor([(1 << 64) % m for m in mods], dtype=torch.int64, device=self.device)

        def f64(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64, device=self.device)

        dense = spec.dense
        self.fill = f64([float(f.fill) for f in dense])
        self.clip = any(f.clip_min is not None or f.clip_max is not None for f in dense)
        self.clip_min = f64([float("-inf") if f.clip_min is None else float(f.clip_min) for f in dense])
        self.clip_max = f64([float("inf") if f.clip_max is None else float(f.clip_max) for f in dense])
        logged = [i for i, f in enumerate(dense) if f.log1p]
        self.log1p_all = len(logged) == len(dense)
        self.log1p_index = torch.tensor(logged, dtype=torch.int64, device=self.device) if logged else None
        self.mean = f64([float(f.mean) for f in dense])
        self.std = f64([float(f.std) if f.std > 0 else 1.0 for f in dense])
        self._fill_rows = self.fill.reshape(1, -1)  # grown to the largest batch seen (see dense)

    def categorical(self, key: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """Bucket ids in 1..buckets-1 from the 64-bit keys, 0 where the value is null."""
        ids = umod(splitmix64(key), self.mod, self.two64_mod) + 1
        return ids.mul_(~null)

    def dense(self, raw: torch.Tensor) -> torch.Tensor:
        """fill -> clip -> log1p -> standardize in float64, then float32."""
        n = raw.shape[0]
        if self._fill_rows.shape[0] < n:  # torch.where is much faster without a broadcast operand
            self._fill_rows = self.fill.expand(n, -1).contiguous()
        x = torch.where(raw.abs() < float("inf"), raw, self._fill_rows[:n])  # finite; NaN < inf is False
        if self.clip:
            x = torch.minimum(torch.maximum(x, self.clip_min), self.clip_max)
        if self.log1p_all:
            x = torch.log1p(x.clamp_min_(0.0))
        elif self.log1p_index is not None:
            x.index_copy_(
                1, self.log1p_index, torch.log1p(x.index_select(1, self.log1p_index).clamp_min_(0.0))
            )
        return ((x - self.mean) / self.std).to(torch.float32)

    def __call__(self, cat_key: torch.Tensor, cat_null: torch.Tensor, dense_raw: torch.Tensor):
        c, d = len(self.spec.categorical), len(self.spec.dense)
        self._check(CAT_KEY, cat_key, torch.int64, c)
        self._check(CAT_NULL, cat_null, torch.bool, c)
        self._check(DENSE_RAW, dense_raw, torch.float64, d)
        n = cat_key.shape[0]
        if dense_raw.shape[0] != n or cat_null.shape[0] != n:
            raise FeatureError(
                f"feature transform: row counts differ: {CAT_KEY} {n}, {CAT_NULL} {cat_null.shape[0]}, "
                f"{DENSE_RAW} {dense_raw.shape[0]}"
            )
        step = max(n, 1)
        if self.device.type == "cpu":
            step = max(64, self.cpu_block_elements // max(c, d, 1))
        if n <= step:
            return {"cat": self.categorical(cat_key, cat_null), "dense": self.dense(dense_raw)}
        cat = torch.empty((n, c), dtype=torch.int64, device=self.device)
        dense = torch.empty((n, d), dtype=torch.float32, device=self.device)
        for i in range(0, n, step):
            rows = slice(i, i + step)
            cat[rows] = self.categorical(cat_key[rows], cat_null[rows])
            dense[rows] = self.dense(dense_raw[rows])
        return {"cat": cat, "dense": dense}

    def _check(self, name: str, t: torch.Tensor, dtype: torch.dtype, width: int) -> None:
        if t.dtype != dtype or t.dim() != 2 or t.shape[1] != width:
            raise FeatureError(
                f"feature transform: {name!r} must be {dtype} [N, {width}], got {t.dtype} {list(t.shape)}"
            )
        if t.device.type != self.device.type or (
            self.device.index is not None and t.device.index != self.device.index
        ):
            raise FeatureError(
                f"feature transform: {name!r} is on {t.device}, the transform on {self.device}"
            )
