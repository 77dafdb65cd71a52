"""The feature spec: which columns a model reads and how each is transformed, and the check of its
parameters. Below both halves of the transforms, models/features.py (Arrow, numpy) and
models/transforms.py (torch), so neither has to import the other for it. No numpy, pyarrow or torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


class FeatureError(ValueError):
    """A batch does not fit the feature spec (missing column, wrong type)."""


TYPE_FAMILIES = ("integer", "string")


@dataclass
class CategoricalFeature:
    """A categorical column hashed into `buckets` ids. Null goes to bucket 0, values to 1..buckets-1.

    An integer hashes by its value and a string by its bytes, so the same id as int64 and as
    string lands in different buckets. `dtype` records which family the model was trained on
    ('integer': any integer width; 'string': string, large_string, binary, views, dictionaries of
    them); a column of the other family is refused, unless `cast_from` names that family: its
    values are then converted to `dtype` before hashing (integers to their decimal text, text
    parsed as a base-10 int64), so 123 and "123" get the same bucket. `dtype` None: a spec saved
    before types were recorded; either family is taken, one per column within a run."""

    name: str
    buckets: int
    dtype: str | None = None
    cast_from: str | None = None


@dataclass
class DenseFeature:
    """A numeric column: fill nulls/NaN -> clip -> log1p -> standardize (in that order).

    `on_nonfinite="reject"` sends rows whose value is null, NaN or +-inf to the dead-letter
    output instead of filling them."""

    name: str
    fill: float = 0.0
    on_nonfinite: str = "fill"
    clip_min: float | None = None
    clip_max: float | None = None
    log1p: bool = False
    mean: float = 0.0
    std: float = 1.0


@dataclass
class FeatureSpec:
    categorical: list[CategoricalFeature] = field(default_factory=list)
    dense: list[DenseFeature] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.categorical] + [f.name for f in self.dense]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for c in d["categorical"]:  # unset type fields left out: older specs keep their digest
            for k in ("dtype", "cast_from"):
                if c[k] is None:
                    del c[k]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        unknown = set(d) - {"categorical", "dense"}
        if unknown:
            raise FeatureError(f"feature spec: unknown keys {sorted(unknown)}")
        try:
            return cls(
                categorical=[CategoricalFeature(**c) for c in d.get("categorical", [])],
                dense=[DenseFeature(**x) for x in d.get("dense", [])],
            )
        except TypeError as e:
            raise FeatureError(f"feature spec: {e}") from e


def check_spec(spec: FeatureSpec) -> None:
    """Refuse parameters the transforms cannot apply (before any data is touched)."""
    for f in spec.categorical:
        if not 2 <= f.buckets <= 2**63:
            raise FeatureError(
                f"categorical feature {f.name!r}: buckets must be >= 2 (and <= 2**63), got {f.buckets}"
            )
        if f.dtype is not None and f.dtype not in TYPE_FAMILIES:
            raise FeatureError(f"categorical feature {f.name!r}: dtype must be one of {TYPE_FAMILIES}")
        if f.cast_from is not None and (
            f.dtype is None or f.cast_from not in TYPE_FAMILIES or f.cast_from == f.dtype
        ):
            raise FeatureError(
                f"categorical feature {f.name!r}: cast_from needs a dtype and must be the other of "
                f"{TYPE_FAMILIES}, got dtype={f.dtype!r} cast_from={f.cast_from!r}"
            )
