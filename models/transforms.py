"""The numeric half of the built-in feature transforms, as torch operations on any device.

`models.features.encode_table` does on CPU only what needs the Arrow buffers (string bytes) and
hands over one plain column per feature; `models.features.stack_encoded` lays them out feature-major
(one contiguous copy each, into pinned memory on a GPU replica); `FeatureTransform` turns them into
the model's inputs on the device they live on (the replica's GPU, or the CPU in training and CPU
scoring). It is the only implementation: `models.features.transform_table` (training, tests, user
plug-ins) runs it on the CPU, the predict stage on the replica's device.

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

from models.featurespec import FeatureError, FeatureSpec, check_spec

_M64 = (1 << 64) - 1
_SPLITMIX_C1 = 0xBF58476D1CE4E5B9
_SPLITMIX_C2 = 0x94D049BB133111EB


def _signed(u: int) -> int:
    """The int64 with the bits of the uint64 `u`."""
    u &= _M64
    return u - (1 << 64) if u >= 1 << 63 else u


def _xor_shr_(x: torch.Tensor, k: int, tmp: torch.Tensor) -> None:
    """x ^= x >>> k (logical shift: torch's >> on int64 is arithmetic, so the sign bits are masked)."""
    torch.bitwise_right_shift(x, k, out=tmp)
    x.bitwise_xor_(tmp.bitwise_and_((1 << (64 - k)) - 1))


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors holding uint64 bits; returns a new tensor.
    In place on one copy and one scratch tensor: allocations cost more than these ops on CPU."""
    x = x.clone()
    tmp = torch.empty_like(x)
    _xor_shr_(x, 30, tmp)
    x.mul_(_signed(_SPLITMIX_C1))
    _xor_shr_(x, 27, tmp)
    x.mul_(_signed(_SPLITMIX_C2))
    _xor_shr_(x, 31, tmp)
    return x


def umod(x: torch.Tensor, m: torch.Tensor, two64_mod_m: torch.Tensor) -> torch.Tensor:
    """(x as uint64) mod m, for int64 `x` and 0 < m < 2**63 (broadcast), `two64_mod_m` = 2**64 mod m.

    torch.remainder takes the divisor's sign, so r = x mod m is in [0, m) for any int64 x; an
    x < 0 stands for x + 2**64, whose remainder is (r + 2**64 mod m) mod m. Every intermediate
    stays in (-m, m), so nothing overflows; the selections are bit masks (x >> 63 is all ones
    for negative x), several times faster on CPU than torch.where. Returns a new tensor."""
    r = torch.remainder(x, m)
    wrapped = r - (m - two64_mod_m)  # r + 2**64 mod m - m, in (-m, m)
    wrapped.add_(m & (wrapped >> 63))  # (r + 2**64 mod m) mod m, in [0, m)
    # select wrapped where x < 0: r ^ ((r ^ wrapped) & sign mask of x)
    return wrapped.bitwise_xor_(r).bitwise_and_(x >> 63).bitwise_xor_(r)


def from_numpy(arr) -> torch.Tensor:
    """A tensor sharing the array's memory, also for read-only arrays (zero-copy Arrow buffers):
    the transforms never write to their inputs, so torch's warning about them does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


class FeatureTransform:
    """The spec's numeric transforms with their parameters as tensors on one device.

    Call it with the feature-major arrays of `models.features.stack_encoded` as tensors on that
    device: keys int64 [C, N], null flags bool [C, N], values float64 [D, N] (NaN where null).
    Returns the model inputs `{"cat": int64 [N, C], "dense": float32 [N, D]}`, contiguous, on the
    same device. The inputs are not modified.

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

        def column(values: list, dtype: torch.dtype) -> torch.Tensor:  # one parameter per feature row
            return torch.tensor(values, dtype=dtype, device=self.device).reshape(-1, 1)

        mods = [f.buckets - 1 for f in spec.categorical]
        self.mod = column(mods, torch.int64)
        self.two64_mod = column([(1 << 64) % m for m in mods], torch.int64)
        dense = spec.dense
        self.fill = column([float(f.fill) for f in dense], torch.float64)
        self.clip = any(f.clip_min is not None or f.clip_max is not None for f in dense)
        self.clip_min = column(
            [float("-inf") if f.clip_min is None else float(f.clip_min) for f in dense], torch.float64
        )
        self.clip_max = column(
            [float("inf") if f.clip_max is None else float(f.clip_max) for f in dense], torch.float64
        )
        logged = [i for i, f in enumerate(dense) if f.log1p]
        self.log1p_all = len(logged) == len(dense)
        self.log1p_rows = torch.tensor(logged, dtype=torch.int64, device=self.device) if logged else None
        self.mean = column([float(f.mean) for f in dense], torch.float64)
        self.std = column([float(f.std) if f.std > 0 else 1.0 for f in dense], torch.float64)
        self._fill_wide = self.fill  # the fill values repeated along the rows (see dense)

    def categorical(self, key: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """Bucket ids in 1..buckets-1 from the 64-bit keys [C, n], 0 where the value is null."""
        ids = umod(splitmix64(key), self.mod, self.two64_mod).add_(1)
        return ids.mul_(~null)

    def dense(self, raw: torch.Tensor) -> torch.Tensor:
        """fill -> clip -> log1p -> standardize in float64, [D, n]."""
        n = raw.shape[1]
        if self._fill_wide.shape[1] < n:  # torch.where is much faster without a broadcast operand
            self._fill_wide = self.fill.expand(-1, n).contiguous()
        x = torch.where(raw.abs() < float("inf"), raw, self._fill_wide[:, :n])  # NaN < inf is False
        if self.clip:
            x.clamp_(self.clip_min, self.clip_max)  # max(x, min) then min(., max), as numpy's clip
        if self.log1p_all:
            x = x.clamp_min_(0.0).log1p_()
        elif self.log1p_rows is not None:
            x.index_copy_(0, self.log1p_rows, x.index_select(0, self.log1p_rows).clamp_min_(0.0).log1p_())
        return x.sub_(self.mean).div_(self.std)

    def __call__(self, key: torch.Tensor, null: torch.Tensor, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        c, d = len(self.spec.categorical), len(self.spec.dense)
        self._check("keys", key, torch.int64, c)
        self._check("null flags", null, torch.bool, c)
        self._check("values", raw, torch.float64, d)
        n = key.shape[1]
        if null.shape[1] != n or raw.shape[1] != n:
            raise FeatureError(
                f"feature transform: row counts differ: keys {n}, null flags {null.shape[1]}, "
                f"values {raw.shape[1]}"
            )
        cat = torch.empty((n, c), dtype=torch.int64, device=self.device)
        dense = torch.empty((n, d), dtype=torch.float32, device=self.device)
        step = max(n, 1)
        if self.device.type == "cpu":
            step = max(64, self.cpu_block_elements // max(c, d, 1))
        for i in range(0, n, step):
            rows = slice(i, i + step)
            # copy_ transposes to row-major and rounds float64 -> float32 once (to nearest)
            cat[rows].copy_(self.categorical(key[:, rows], null[:, rows]).T)
            dense[rows].copy_(self.dense(raw[:, rows]).T)
        return {"cat": cat, "dense": dense}

    def _check(self, name: str, t: torch.Tensor, dtype: torch.dtype, features: int) -> None:
        if t.dtype != dtype or t.dim() != 2 or t.shape[0] != features:
            raise FeatureError(
                f"feature transform: {name} must be {dtype} [{features}, N] (feature-major), "
                f"got {t.dtype} {list(t.shape)}"
            )
        if t.device.type != self.device.type or (
            self.device.index is not None and t.device.index != self.device.index
        ):
            raise FeatureError(f"feature transform: {name} on {t.device}, the transform on {self.device}")
