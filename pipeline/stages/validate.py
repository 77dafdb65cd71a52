"""Validate stage: the input schema is checked against what the job needs, before any model work."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from models.features import (
    CategoricalFeature,
    FeatureSpec,
    check_spec,
    is_numeric_type,
    type_family,
    type_problem,
)
from pipeline.errors import InputError
from pipeline.stages.read import InputPlan, drop_files, raise_problems

log = logging.getLogger("batchscore")


@dataclass
class ColumnRequirements:
    keys: list[str]
    categorical: list[str]
    dense: list[str]
    other: list[str]
    # the categorical features as the model was trained on them (dtype / cast_from), by column
    features: dict[str, CategoricalFeature] = field(default_factory=dict)

    @classmethod
    def for_job(
        cls, keys: list[str], spec: FeatureSpec | None, extra: list[str] | None
    ) -> ColumnRequirements:
        if spec is not None:
            check_spec(spec)  # a bad dtype / cast_from in a checkpoint's spec: refused before any data
        return cls(
            keys=list(keys),
            categorical=[f.name for f in spec.categorical] if spec else [],
            dense=[f.name for f in spec.dense] if spec else [],
            other=list(extra or []),
            features={f.name: f for f in spec.categorical} if spec else {},
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
    if kind == "dense":
        return is_numeric_type(t)
    return True


_EXPECTED = {"dense": "a numeric column"}


def _column_problems(f, req: ColumnRequirements, families: dict[str, dict[str, str]]) -> list[str]:
    """What is wrong with one file's needed columns (their presence checked before); each
    categorical column's type family is noted in `families` (column -> family -> first file)."""
    problems = []
    for c in req.categorical:
        t = f.schema.field(c).type
        feat = req.features.get(c, CategoricalFeature(c, 2))
        why = type_problem(t, feat)
        if why is not None:
            problems.append(f"{f.uri}: column {c!r} {why}")
        elif feat.dtype is None:
            families.setdefault(c, {}).setdefault(type_family(t), f.uri)
    for c in req.dense:
        t = f.schema.field(c).type
        if not _type_ok(t, "dense"):
            problems.append(f"{f.uri}: column {c!r} has type {t}, expected {_EXPECTED['dense']}")
    return problems


def _mixed_families(families: dict[str, dict[str, str]]) -> list[str]:
    """A feature spec without recorded types cannot say which family the model was trained on,
    but one run must not hash one column both ways: integers in some files, strings in others."""
    return [
        f"column {c!r} is {' in some files and '.join(f'{fam} in {uri}' for fam, uri in seen.items())}; "
        "the model's feature spec records no dtype for it, so one of them hashes to other buckets "
        "than the model was trained with: make the files agree, or set dtype (and cast_from) on the "
        "feature in preprocessing.features"
        for c, seen in families.items()
        if len(seen) > 1
    ]


def check_schemas(
    plan: InputPlan, req: ColumnRequirements, on_bad_file: str = "fail", earlier: Sequence[str] = ()
) -> None:
    """Every file has every needed column with a usable type (a categorical column of the type
    family the model was trained on). All problems are reported at once, with `earlier` ones (the
    missing dates and unreadable files `survey` found) first; with on_bad_file='skip' the offending
    files are left out of the plan and recorded instead."""
    problems: list[str] = []
    bad_paths: dict[str, str] = {}
    families: dict[str, dict[str, str]] = {}
    partition_col = plan.partition_column
    for part in plan.partitions:
        for f in part.files:
            names = set(f.schema.names)
            missing = [c for c in req.columns if c not in names and c != partition_col]
            found = (
                [f"{f.uri}: missing columns {missing} (present: {sorted(names)})"]
                if missing
                else _column_problems(f, req, families)
            )
            problems += found
            if found:
                bad_paths[f.path] = found[-1]
    untyped = [c for c in req.categorical if c in req.features and req.features[c].dtype is None]
    if untyped:
        log.warning(
            "the model's feature spec records no dtype for %s: a column whose type changes between "
            "runs would hash to other buckets unnoticed; set dtype in the spec (docs/models.md)",
            untyped,
        )
    if problems and on_bad_file == "skip":
        drop_files(plan, bad_paths)
        if not plan.partitions:
            raise InputError(f"nothing to score: every input file was skipped: {plan.skipped}")
        problems = []
    if len(problems) > 20:
        problems = [*problems[:20], f"... and {len(problems) - 20} more"]
    found = [*earlier, *problems, *_mixed_families(families)]
    if found and not earlier:
        raise InputError("input schema check failed:\n  " + "\n  ".join(found))
    raise_problems(found)  # with missing dates or unreadable files: one report of the whole range


def _run_families(plan: InputPlan, columns: list[str]) -> dict[str, tuple[str, str]]:
    """column -> (family, first file) in this run's files (one family per column: checked before)."""
    found: dict[str, tuple[str, str]] = {}
    for part in plan.partitions:
        for f in part.files:
            for c in columns:
                if c in f.schema.names and type_family(f.schema.field(c).type) is not None:
                    found.setdefault(c, (type_family(f.schema.field(c).type), f.uri))
    return found


def check_untyped_against_history(
    plan: InputPlan, req: ColumnRequirements, history: list[dict], model_sha256: str, read_schema
) -> None:
    """A spec without dtype cannot say which family the model was trained on, but a date this
    model scored before can: its input files' type is what the model has been fed. A column of the
    other family today would hash to other buckets than yesterday, silently, so it is refused.
    `history`: the table's commits, newest first (commit metadata); `read_schema(uri)`: a file's
    Arrow schema (OSError when it is gone: then nothing is known and nothing is refused)."""
    untyped = [c for c in req.categorical if c in req.features and req.features[c].dtype is None]
    now = _run_families(plan, untyped)
    prev = next((h for h in history if h.get("model_sha256") == model_sha256 and h.get("input_files")), None)
    if not now or prev is None:
        return
    uri = prev["input_files"][0]["uri"]
    try:
        schema = read_schema(uri)
    except (OSError, ValueError) as e:  # gone (retention), or unreadable: nothing to compare with
        log.info("could not read %s to compare feature types with %s: %s", uri, prev.get("date"), e)
        return
    problems = [
        f"column {c!r} is {fam} in {first}, but {plan.partition_column}={prev['date']} was scored "
        f"with this model from {type_family(schema.field(c).type)} values ({uri}); the model's feature "
        "spec records no dtype, so one of them hashes to other buckets than the model was trained "
        "with: set dtype (and cast_from) on the feature in preprocessing.features or the checkpoint"
        for c, (fam, first) in now.items()
        if c in schema.names and type_family(schema.field(c).type) not in (None, fam)
    ]
    if problems:
        raise InputError("input schema check failed:\n  " + "\n  ".join(problems))
