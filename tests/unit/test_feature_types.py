"""A categorical column's type is checked against the one the model was trained on: an integer
hashes by value and a string by its bytes, so the same id as int64 and as string lands in
different buckets (issue 19: exit 0 and 49,999 of 50,000 scores wrong). The spec records the
type family; another family is an input error naming column, file and both types, unless the
spec says how to convert it, with the same bucket either way."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.features import (
    CategoricalFeature,
    FeatureError,
    FeatureSpec,
    categorical_keys,
    check_spec,
    record_types,
    transform_table,
)
from pipeline.errors import InputError
from pipeline.stages.read import discover
from pipeline.stages.validate import ColumnRequirements, check_schemas
from pipeline.storage import resolve

IDS = [3, 17, 12345, None, 42]


def _hour(dtype: str | None, cast_from: str | None = None) -> FeatureSpec:
    return FeatureSpec(categorical=[CategoricalFeature("hour", 1000, dtype, cast_from)])


def test_a_string_column_for_an_integer_feature_is_refused_where_batches_are_hashed():
    strings = pa.array([None if v is None else str(v) for v in IDS])
    with pytest.raises(FeatureError, match=r"'hour'.*type string \(string\).*trained on integer"):
        transform_table(pa.table({"hour": strings}), _hour("integer"))


def test_an_integer_column_for_a_string_feature_is_refused():
    with pytest.raises(FeatureError, match=r"type int64 \(integer\).*trained on string"):
        categorical_keys(pa.array(IDS), CategoricalFeature("hour", 10, "string"))


@pytest.mark.parametrize(
    "col",
    [
        pa.array(IDS, pa.int32()),
        pa.array(IDS, pa.uint16()),
        pa.chunked_array([pa.array(IDS[:2]), pa.array(IDS[2:])]),
        pa.array(IDS).dictionary_encode(),
    ],
)
def test_any_integer_width_or_encoding_is_the_integer_family(col):
    want = transform_table(pa.table({"hour": pa.array(IDS)}), _hour("integer"))["cat"]
    assert np.array_equal(transform_table(pa.table({"hour": col}), _hour("integer"))["cat"], want)


def test_cast_from_string_gives_the_integers_buckets():
    want = transform_table(pa.table({"hour": pa.array(IDS)}), _hour("integer"))["cat"]
    for typ in (pa.string(), pa.large_string(), pa.string_view()):
        strings = pa.array([None if v is None else str(v) for v in IDS], typ)
        got = transform_table(pa.table({"hour": strings}), _hour("integer", "string"))["cat"]
        assert np.array_equal(got, want), typ
    encoded = pa.array([None if v is None else str(v) for v in IDS]).dictionary_encode()
    got = transform_table(pa.table({"hour": encoded}), _hour("integer", "string"))["cat"]
    assert np.array_equal(got, want)


def test_cast_from_integer_gives_the_decimal_strings_buckets():
    strings = pa.array([None if v is None else str(v) for v in IDS])
    want = transform_table(pa.table({"hour": strings}), _hour("string"))["cat"]
    got = transform_table(pa.table({"hour": pa.array(IDS, pa.int16())}), _hour("string", "integer"))["cat"]
    assert np.array_equal(got, want)


def test_a_string_that_is_not_an_integer_names_the_column():
    with pytest.raises(FeatureError, match=r"'hour'.*cannot convert"):
        transform_table(pa.table({"hour": pa.array(["7", "seven"])}), _hour("integer", "string"))


def test_an_untyped_spec_takes_either_family_as_before():
    for col in (pa.array(IDS), pa.array(["a", None])):
        transform_table(pa.table({"hour": col}), _hour(None))


@pytest.mark.parametrize(
    "dtype,cast_from", [("int", None), (None, "string"), ("string", "float"), ("integer", "integer")]
)
def test_a_bad_dtype_or_cast_from_is_refused(dtype, cast_from):
    with pytest.raises(FeatureError, match="'hour'"):
        check_spec(_hour(dtype, cast_from))


def test_training_records_each_columns_family_and_old_specs_keep_their_dict():
    table = pa.table({"hour": pa.array([1, 2], pa.int8()), "u": pa.array(["a", "b"]).dictionary_encode()})
    spec = FeatureSpec(categorical=[CategoricalFeature("hour", 10), CategoricalFeature("u", 10)])
    assert spec.to_dict() == {
        "categorical": [{"name": "hour", "buckets": 10}, {"name": "u", "buckets": 10}],
        "dense": [],
    }
    recorded = record_types(table, spec)
    assert [f.dtype for f in recorded.categorical] == ["integer", "string"]
    assert FeatureSpec.from_dict(recorded.to_dict()) == recorded
    with pytest.raises(FeatureError, match="spec says string, training data is integer"):
        record_types(table, _hour("string"))


def _inputs(tmp_path, types: dict[str, pa.DataType]):
    """One file per date, the `hour` column of the given type; the plan as preflight builds it."""
    for date, typ in types.items():
        d = tmp_path / f"ds={date}"
        d.mkdir(parents=True)
        hours = pa.array([1, 2, 3]).cast(typ)
        pq.write_table(pa.table({"event_id": pa.array([1, 2, 3]), "hour": hours}), d / "part-0.parquet")
    return discover(resolve(str(tmp_path)), list(types), "ds")


def test_the_schema_check_names_the_column_the_file_and_both_types(tmp_path):
    plan = _inputs(tmp_path, {"2026-10-01": pa.int64(), "2026-10-02": pa.string()})
    req = ColumnRequirements.for_job(["event_id"], _hour("integer"), None)
    with pytest.raises(InputError) as e:
        check_schemas(plan, req)
    msg = str(e.value)
    assert "ds=2026-10-02/part-0.parquet: column 'hour' has type string (string)" in msg
    assert "trained on integer" in msg and "2026-10-01" not in msg


def test_the_schema_check_accepts_what_cast_from_declares(tmp_path):
    plan = _inputs(tmp_path, {"2026-10-01": pa.int64(), "2026-10-02": pa.string()})
    check_schemas(plan, ColumnRequirements.for_job(["event_id"], _hour("integer", "string"), None))


def test_an_untyped_spec_refuses_a_column_of_both_families_in_one_run(tmp_path, caplog):
    plan = _inputs(tmp_path, {"2026-10-01": pa.int32(), "2026-10-02": pa.large_string()})
    req = ColumnRequirements.for_job(["event_id"], _hour(None), None)
    with caplog.at_level(logging.WARNING, logger="batchscore"), pytest.raises(InputError) as e:
        check_schemas(plan, req)
    msg = str(e.value)
    assert "column 'hour' is integer in" in msg and "ds=2026-10-01" in msg and "string in" in msg
    assert "records no dtype for ['hour']" in caplog.text


def test_an_untyped_spec_with_one_family_passes_with_a_warning(tmp_path, caplog):
    plan = _inputs(tmp_path, {"2026-10-01": pa.int32(), "2026-10-02": pa.int64()})
    with caplog.at_level(logging.WARNING, logger="batchscore"):
        check_schemas(plan, ColumnRequirements.for_job(["event_id"], _hour(None), None))
    assert "records no dtype" in caplog.text


def test_the_config_spec_takes_dtype_and_cast_from_and_old_configs_keep_their_identity():
    from pipeline.config import FeatureSpecConfig, JobConfig, _without_unset_types

    cfg = FeatureSpecConfig.model_validate(
        {"categorical": [{"name": "hour", "buckets": 1000, "dtype": "integer", "cast_from": "string"}]}
    )
    assert FeatureSpec.from_dict(cfg.model_dump()) == _hour("integer", "string")
    base = {
        "name": "t",
        "input": {"uri": "/in"},
        "model": {"uri": "/m"},
        "output": {"uri": "/out", "key_columns": ["event_id"]},
    }
    untyped = {**base, "preprocessing": {"features": {"categorical": [{"name": "hour", "buckets": 10}]}}}
    typed = {
        **base,
        "preprocessing": {"features": {"categorical": [{"name": "hour", "buckets": 10, "dtype": "integer"}]}},
    }
    a, b = JobConfig.model_validate(untyped), JobConfig.model_validate(typed)
    assert a.scoring_digest() != b.scoring_digest()
    # the identity of a config from before feature types leaves the unset fields out, so its
    # committed dates are not rescored for an upgrade
    dumped = a.preprocessing.model_dump(mode="json", include={"features", "function"})
    assert dumped["features"]["categorical"][0]["dtype"] is None
    assert _without_unset_types(dumped)["features"]["categorical"][0] == {"name": "hour", "buckets": 10}


def test_the_preprocess_stage_refuses_a_batch_of_the_other_family_exit_2():
    """Defence in depth: where batches are hashed, not only in the schema check."""
    from pipeline.errors import StageError, exit_code_of
    from pipeline.stages.preprocess import Preprocessor

    pre = Preprocessor(_hour("integer"), ["event_id"], device_transforms=True)
    with pytest.raises(StageError, match=r"'hour'.*trained on integer") as e:
        pre(pa.table({"event_id": ["a"], "hour": ["3"]}))
    assert exit_code_of(e.value) == 2


def test_an_untyped_spec_refuses_a_family_other_than_the_last_date_this_model_scored(tmp_path):
    """Across runs: yesterday's input (as committed, in the Delta log's metadata) says what the
    model has been fed; today's string column for yesterday's integers is refused."""
    from pipeline.stages.validate import check_untyped_against_history

    plan = _inputs(tmp_path, {"2026-10-02": pa.string()})
    old = tmp_path / "old.parquet"
    pq.write_table(pa.table({"event_id": [1], "hour": pa.array([1], pa.int32())}), old)
    history = [
        {"date": "2026-10-01", "model_sha256": "other", "input_files": [{"uri": "gone"}]},
        {"date": "2026-10-01", "model_sha256": "abc", "input_files": [{"uri": str(old)}]},
    ]
    req = ColumnRequirements.for_job(["event_id"], _hour(None), None)
    with pytest.raises(
        InputError, match=r"'hour' is string in .*ds=2026-10-01 was scored with this model from integer"
    ):
        check_untyped_against_history(plan, req, history, "abc", pq.read_schema)
    # the same family, another model, or yesterday's file gone: nothing to refuse
    check_untyped_against_history(plan, req, history, "other", pq.read_schema)
    same = _inputs(tmp_path / "same", {"2026-10-02": pa.int64()})
    check_untyped_against_history(same, req, history, "abc", pq.read_schema)
    old.unlink()
    check_untyped_against_history(plan, req, history, "abc", pq.read_schema)
    # a typed spec is checked against its dtype, not the history
    check_untyped_against_history(
        plan, ColumnRequirements.for_job(["event_id"], _hour("string"), None), history, "abc", pq.read_schema
    )
