"""A feature column whose type changes between dates (issue 19): `hour` int32 in the first date,
string in the second. It used to score with exit 0 and silently wrong scores (an integer hashes
by value, a string by its bytes). Now the run refuses it before any model work, under both
runners, naming the column, the file and both types; a spec that declares the conversion
scores the strings exactly as the integers."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from outside_reader import duckdb_connection, read_duckdb
from support import DATES, direct_scores, read_input, read_output, run_cli, scores_by_key

pytestmark = pytest.mark.integration


def _hour_as_string(dataset, tmp_path):
    """DATES[0] as it is; DATES[1] with `hour` cast from int32 to string, as an upstream job
    that changed its schema would write it."""
    data = tmp_path / "events"
    shutil.copytree(dataset / f"ds={DATES[0]}", data / f"ds={DATES[0]}")
    dst = data / f"ds={DATES[1]}"
    dst.mkdir(parents=True)
    for f in sorted((dataset / f"ds={DATES[1]}").glob("*.parquet")):
        t = pq.read_table(f)
        i = t.schema.get_field_index("hour")
        pq.write_table(t.set_column(i, "hour", t.column("hour").cast(pa.string())), dst / f.name)
    return data


def _config(tmp_path, data, model_uri: str, runner: str, features: dict | None = None):
    raw = {
        "name": "types",
        "input": {"uri": str(data)},
        "model": {"uri": model_uri},
        "ray": {"runner": runner},
        "output": {"uri": str(tmp_path / "out"), "key_columns": ["event_id"]},
    }
    if features is not None:
        raw["preprocessing"] = {"features": features}
    cfg = tmp_path / f"job-{runner}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@pytest.mark.parametrize("runner", ["local", "ray"])
def test_a_categorical_column_cast_to_string_is_an_input_error(
    ray_cluster, dataset, checkpoints, tmp_path, runner
):
    data = _hour_as_string(dataset, tmp_path)
    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = _config(tmp_path, data, model_uri, runner)
    address = ray_cluster.address if runner == "ray" else None
    proc = run_cli(["score", str(cfg), "--start", DATES[0], "--end", DATES[1]], address)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "input schema check failed" in err
    assert f"ds={DATES[1]}/" in err and "column 'hour' has type string (string)" in err
    assert "trained on integer values" in err and "cast_from: string" in err
    assert f"ds={DATES[0]}/" not in err.split("input schema check failed")[1]  # the int32 files pass
    assert not (tmp_path / "out" / "_delta_log").exists()  # refused before anything was committed
    # what it was checked against: the type recorded in the checkpoint at training time
    assert {f.name: f.dtype for f in checkpoints.spec.categorical}["hour"] == "integer"


def test_cast_from_declared_in_the_spec_scores_the_strings_as_the_integers(
    ray_cluster, dataset, checkpoints, tmp_path
):
    data = _hour_as_string(dataset, tmp_path)
    model_uri, _ = checkpoints.entries["safetensors"]
    spec = checkpoints.spec.to_dict()
    for f in spec["categorical"]:
        if f["name"] == "hour":
            f["cast_from"] = "string"
    cfg = _config(tmp_path, data, model_uri, "local", features=spec)
    proc = run_cli(["score", str(cfg), "--start", DATES[0], "--end", DATES[1]], None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    original = read_input(str(dataset), DATES[1])  # the same rows with `hour` as integers
    want = dict(
        zip(
            original.column("event_id").to_pylist(),
            direct_scores(model_uri, original, checkpoints.spec).tolist(),
            strict=True,
        )
    )
    got = scores_by_key(read_output(str(out), DATES[1]))
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-6
    # a reader that is not ours sees both dates whole
    counts = read_duckdb(duckdb_connection(), str(out))
    assert {d: counts[d][0] for d in DATES} == {DATES[0]: 3000, DATES[1]: 3000}


def test_a_checkpoint_without_types_refuses_a_type_other_than_the_last_date_it_scored(
    ray_cluster, dataset, checkpoints, tmp_path
):
    """A checkpoint saved before types were recorded: one run scores the integers, the next
    gets strings. What the model was fed before, read from the table's log, decides."""
    data = _hour_as_string(dataset, tmp_path)
    legacy = tmp_path / "legacy"
    shutil.copytree(checkpoints.entries["safetensors"][0], legacy)
    meta = json.loads((legacy / "batchscore.json").read_text())
    for f in meta["feature_spec"]["categorical"]:
        del f["dtype"]  # the weights (and their sha256) are unchanged
    (legacy / "batchscore.json").write_text(json.dumps(meta))
    cfg = _config(tmp_path, data, str(legacy), "local")
    first = run_cli(["score", str(cfg), "--date", DATES[0]], None)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "records no dtype for" in first.stderr  # warned
    second = run_cli(["score", str(cfg), "--date", DATES[1]], None)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"column 'hour' is string in {data}/ds={DATES[1]}/" in second.stderr
    assert f"ds={DATES[0]} was scored with this model from integer values" in second.stderr
    committed = read_duckdb(duckdb_connection(), str(tmp_path / "out"))
    assert list(committed) == [DATES[0]]  # the second date was not published
