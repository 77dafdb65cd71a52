"""Validate stage: the input schema is checked against what the job needs, before any model work."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from models.features import FeatureSpec, is_numeric_type, is_text_type
from pipeline.errors import InputError
from pipeline.stages.read import InputPlan, drop_files


@dataclass
class ColumnRequirements:
    keys: list[str]
    categorical: list[str]
    dense: list[str]
    other: list[str]

    @classmethod
    def for_job(
        cls, keys: list[str], spec: FeatureSpec | None, extra: list[str] | None
    ) -> ColumnRequirements:
        return cls(
            keys=list(keys),
            categorical=[f.name for f in spec.categorical] if spec else [],
            dense=[f.name for f in spec.dense] if spec else [],
            other=list(extra or []),
        )

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.keys + self.categorical + self.dense + self.other:
            seen.setdefault(c, None)
        return list(seen)


def _type_ok(t: pa.DataType, kind: str) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if kind == "categorical":
        return pa.types.is_integer(t) or is_text_type(t)
    if kind == "dense":
        return is_numeric_type(t)
    return True


_EXPECTED = {"categorical": "an integer or string column", "dense": "a numeric column"}


def check_schemas(plan: InputPlan, req: ColumnRequirements, on_bad_file: str = "fail") -> None:
    """Every file has every needed column with a usable type. All problems are reported at once;
    with on_bad_file='skip' the offending files are left out of the plan and recorded instead."""
    problems: list[str] = []
    bad_paths: dict[str, str] = {}
    partition_col = plan.partition_column
    for part in plan.partitions:
        for f in part.files:
            names = set(f.schema.names)
            missing = [c for c in req.columns if c not in names and c != partition_col]
            if missing:
                problems.append(f"{f.uri}: missing columns {missing} (present: {sorted(names)})")
                bad_paths[f.path] = problems[-1]
                continue
            for kind, cols in (("categorical", req.categorical), ("dense", req.dense)):
                for c in cols:
                    t = f.schema.field(c).type
                    if not _type_ok(t, kind):
                        problems.append(f"{f.uri}: column {c!r} has type {t}, expected {_EXPECTED[kind]}")
                        bad_paths[f.path] = problems[-1]
    if problems and on_bad_file == "skip":
        drop_files(plan, bad_paths)
        if not plan.partitions:
            raise InputError(f"nothing to score: every input file was skipped: {plan.skipped}")
        return
    if problems:
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError("input schema check failed:\n  " + "\n  ".join(shown) + more)
