"""The scoring job end to end on a real local Ray, local files and real checkpoints."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from support import DATES, KEYS, direct_scores, make_config, read_input, read_output, scores_by_key

from pipeline.config import ConfigError
from pipeline.errors import InputError
from pipeline.run.score import run_score

pytestmark = pytest.mark.integration


def _load_kwargs(extra: dict) -> dict:
    if "model" in extra and "class_path" in extra["model"]:
        return {"architecture": {"class": extra["model"]["class_path"], "kwargs": extra["model"]["kwargs"]}}
    return {}


def assert_exact_output(inp, got, expected_scores: np.ndarray) -> None:
    """One output row per input row, same keys, no duplicates, scores = direct model call."""
    assert got.num_rows == inp.num_rows
    out_keys = got.column("event_id").to_pylist()
    assert len(set(out_keys)) == len(out_keys), "duplicate keys in output"
    assert set(out_keys) == set(inp.column("event_id").to_pylist())
    got_by_key = scores_by_key(got)
    want_by_key = dict(zip(inp.column("event_id").to_pylist(), expected_scores.tolist(), strict=True))
    diff = max(abs(got_by_key[k] - want_by_key[k]) for k in want_by_key)
    assert diff < 1e-6, f"pipeline scores differ from a direct model call by {diff}"
    for k in KEYS[1:]:  # key columns pass through unchanged
        want = dict(zip(inp.column("event_id").to_pylist(), inp.column(k).to_pylist(), strict=True))
        got_k = dict(zip(out_keys, got.column(k).to_pylist(), strict=True))
        assert got_k == want


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "export", "class_path"])
def test_pipeline_scores_equal_direct_model_call(ray_cluster, dataset, checkpoints, tmp_path, fmt):
    model_uri, extra = checkpoints.entries[fmt]
    out = tmp_path / "preds"
    cfg = make_config(str(dataset), model_uri, str(out), **extra)
    report = run_score(cfg, [DATES[0]])

    inp = read_input(str(dataset), DATES[0])
    got = read_output(str(out), DATES[0])
    expected = direct_scores(model_uri, inp, checkpoints.spec, **_load_kwargs(extra))
    assert_exact_output(inp, got, expected)
    assert set(got.column("run_id").to_pylist()) == {report.run_id}
    want_version = f"test-{fmt}" if fmt != "class_path" else "weights.safetensors"
    assert set(got.column("model_version").to_pylist()) == {want_version}


@pytest.mark.parametrize("function", [None, "batchscore_test_plugins:my_features"])
def test_actors_mode_replicas_score_and_write_every_unit_exactly(
    ray_cluster, dataset, checkpoints, tmp_path, function
):
    """Replicas that read, preprocess, predict and write their units themselves (the GPU path's
    shape, here on CPU replicas): both dates exact, with the built-in transforms on the replica's
    device or a user's numpy function; files per unit, none written twice."""
    from batchscore_test_plugins import PLUGIN_FEATURES

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    extra = {"preprocessing": {"function": function}, "input": {"columns": PLUGIN_FEATURES.columns}}
    cfg = make_config(
        str(dataset), model_uri, str(out), predict={"mode": "actors"}, **(extra if function else {})
    )
    report = run_score(cfg, DATES)
    assert (report.pool.mode, report.pool.max_replicas) == ("actors", 3)
    assert [s.name for s in report.stages] == ["ReadParquet", "Score", "Write"]
    assert len({r.pid for r in report.replicas}) >= 2, report.replicas  # the units were shared
    for d in DATES:
        inp = read_input(str(dataset), d)
        spec = PLUGIN_FEATURES if function else checkpoints.spec
        assert_exact_output(inp, read_output(str(out), d), direct_scores(model_uri, inp, spec))


def _commits(out) -> list[dict]:
    from deltalake import DeltaTable

    from pipeline.commit.tables import commits_of_history

    return commits_of_history(DeltaTable(str(out)))


def test_two_dates_are_two_delta_commits_with_their_metadata(ray_cluster, dataset, checkpoints, tmp_path):
    from deltalake import DeltaTable

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(dataset), model_uri, str(out))
    report = run_score(cfg, DATES)

    table = DeltaTable(str(out))
    assert table.metadata().partition_columns == ["ds"]
    commits = {c["date"]: c for c in _commits(out)}
    files = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    for entry in report.partitions:
        d = entry.partition["ds"]
        inp, got = read_input(str(dataset), d), read_output(str(out), d)
        assert got.num_rows == inp.num_rows
        c = commits[d]
        assert c["input_rows"] == c["output_rows"] == inp.num_rows and c["dead_letter_rows"] == 0
        assert c["run_id"] == report.run_id and c["model_sha256"] == report.model.sha256
        assert c["version"] == entry.table_version
        assert sorted(f["uri"].rsplit("/", 1)[1] for f in c["input_files"]) == sorted(
            p.name for p in (dataset / f"ds={d}").glob("*.parquet")
        )
        assert all(f["bytes"] > 0 and f["mtime_ns"] > 0 for f in c["input_files"])
        # target_rows_per_file=2000 and 3000 rows: more than one file, none over the target
        mine = [f for f in files if f["partition.ds"] == d]
        assert len(mine) > 1 and max(f["num_records"] for f in mine) <= 2000
        assert sum(f["num_records"] for f in mine) == inp.num_rows
        assert all(f["path"].split("/")[-1].startswith(f"part-{report.run_id}.") for f in mine)
    saved = json.loads((out / "_runs" / report.run_id / "report.json").read_text())
    assert saved["rows"] == {
        "input": 2 * 3000,
        "output": 2 * 3000,
        "dead_letter": 0,
        "duplicate_key_rows": 0,
        "adopted": 0,  # nothing left by a killed run (resume)
        "scored": 2 * 3000,
    }
    assert [p["partition"]["ds"] for p in saved["partitions"]] == DATES
    assert (out / "_runs" / report.run_id / "config.yaml").exists()
    assert not (out / "_staging").exists() and not (out / "_locks").exists()


def test_rerun_is_a_no_op_and_force_replaces_never_appends(ray_cluster, dataset, checkpoints, tmp_path):
    from deltalake import DeltaTable

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(dataset), model_uri, str(out))
    from ray.data import DataContext

    caller = DataContext.get_current()  # a library caller's Ray Data settings stay theirs
    saved = caller.use_datasource_v2, caller.enable_progress_bars
    caller.use_datasource_v2 = caller.enable_progress_bars = True  # a run sets both False for itself
    try:
        first = run_score(cfg, [DATES[0]])
        assert (
            DataContext.get_current() is caller and caller.use_datasource_v2 and caller.enable_progress_bars
        )
    finally:
        caller.use_datasource_v2, caller.enable_progress_bars = saved
    version = DeltaTable(str(out)).version()

    again = run_score(cfg, [DATES[0]])  # same model, same scoring config: nothing to do
    assert again.status == "skipped" and again.skipped_committed == [DATES[0]]
    assert DeltaTable(str(out)).version() == version, "a no-op rerun committed something"

    # a different batch size does not change the scores: still a no-op
    resized = make_config(str(dataset), model_uri, str(out), predict={"batch_size": 333})
    assert run_score(resized, [DATES[0]]).status == "skipped"

    second = run_score(cfg, [DATES[0]], force=True)
    assert second.rescored_because == {DATES[0]: "--force"}
    got = read_output(str(out), DATES[0])
    assert got.num_rows == 3000
    assert set(got.column("run_id").to_pylist()) == {second.run_id}
    # the first run's files are still on disk for readers of the older version, not in the table
    on_disk = {p.name for p in (out / f"ds={DATES[0]}").glob("*.parquet")}
    assert any(first.run_id in n for n in on_disk)
    live = DeltaTable(str(out)).file_uris()
    assert live and all(second.run_id in u for u in live)

    # another model replaces the partition without --force, and says why
    other_uri, _ = checkpoints.entries["torchscript"]
    third = run_score(make_config(str(dataset), other_uri, str(out)), [DATES[0]])
    assert third.status == "succeeded"
    assert third.rescored_because == {DATES[0]: "committed with another model or scoring config"}
    assert set(read_output(str(out), DATES[0]).column("model_version").to_pylist()) == {"test-torchscript"}


def test_changed_input_files_are_rescored_not_skipped(ray_cluster, dataset, checkpoints, tmp_path):
    data = tmp_path / "events"
    shutil.copytree(dataset, data)
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(data), model_uri, str(out))
    run_score(cfg, [DATES[0]])
    assert run_score(cfg, [DATES[0]]).status == "skipped"

    # a late-arriving rewrite of one input file: same size, new modification time
    f = data / f"ds={DATES[0]}" / "part-00002.parquet"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    report = run_score(cfg, [DATES[0]])
    assert report.status == "succeeded"
    assert "input files changed" in report.rescored_because[DATES[0]]
    assert read_output(str(out), DATES[0]).num_rows == 3000


def test_a_file_whose_date_column_disagrees_with_its_directory_is_an_input_error(
    ray_cluster, dataset, checkpoints, tmp_path
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "events"
    shutil.copytree(dataset, data)
    f = data / f"ds={DATES[0]}" / "part-00001.parquet"
    t = pq.read_table(f)
    pq.write_table(t.append_column("ds", pa.array([DATES[1]] * t.num_rows)), f)
    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = make_config(str(data), model_uri, str(tmp_path / "preds"))
    with pytest.raises(InputError, match=rf"part-00001.parquet: its column 'ds' holds \['{DATES[1]}'\]"):
        run_score(cfg, [DATES[0]])


def test_run_ids_are_checked_and_a_reused_one_is_a_new_attempt(ray_cluster, dataset, checkpoints, tmp_path):
    """A run id given again (a scheduler's retry) is taken up by a new attempt, whose files never
    share a name with the first's: its committed dates stay as they are (killed reruns, two live
    processes: tests/integration/test_runid.py)."""
    from pipeline.errors import UserError

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(dataset), model_uri, str(out))
    with pytest.raises(UserError, match="--run-id '../x': use 1-128 letters"):
        run_score(cfg, [DATES[0]], run_id="../x")
    run_score(cfg, [DATES[0]], run_id="nightly-1")
    first = {p.name for p in (out / f"ds={DATES[0]}").glob("*.parquet")}
    again = run_score(cfg, DATES, run_id="nightly-1")
    assert again.skipped_committed == [DATES[0]] and again.rows.output == 3000
    assert {p.name for p in (out / f"ds={DATES[0]}").glob("*.parquet")} == first
    for d in DATES:
        assert read_output(str(out), d).num_rows == 3000
    assert {p.name.split(".")[1] for p in out.glob("ds=*/*.parquet")} != {next(iter(first)).split(".")[1]}


def test_only_the_requested_partitions_are_opened(ray_cluster, dataset, checkpoints, tmp_path):
    data = tmp_path / "events"
    shutil.copytree(dataset, data)
    (data / f"ds={DATES[1]}" / "part-99999.parquet").write_bytes(b"PAR1 this is not parquet")
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(data), model_uri, str(out))

    run_score(cfg, [DATES[0]])  # the corrupt file of the other date is never opened
    assert read_output(str(out), DATES[0]).num_rows == 3000

    with pytest.raises(InputError, match=r"part-99999\.parquet.*not a readable Parquet file"):
        run_score(cfg, [DATES[1]])
    assert not (out / f"ds={DATES[1]}").exists()


def test_bad_inputs_fail_before_model_work_naming_path_and_column(
    ray_cluster, dataset, checkpoints, tmp_path
):
    import pyarrow.parquet as pq

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(str(dataset), model_uri, str(out))
    with pytest.raises(InputError, match=r"ds=2031-01-01 does not exist"):
        run_score(cfg, ["2031-01-01"])

    data = tmp_path / "dropped"
    src = dataset / f"ds={DATES[0]}"
    (data / f"ds={DATES[0]}").mkdir(parents=True)
    for f in sorted(src.glob("*.parquet")):
        t = pq.read_table(f)
        if f.name == "part-00001.parquet":
            t = t.drop_columns(["price"])
        pq.write_table(t, data / f"ds={DATES[0]}" / f.name)
    cfg = make_config(str(data), model_uri, str(out))
    with pytest.raises(InputError) as err:
        run_score(cfg, [DATES[0]])
    msg = str(err.value)
    assert "part-00001.parquet" in msg and "missing columns ['price']" in msg
    assert not out.exists() or not any(out.iterdir())


def test_wrong_type_is_reported_with_file_and_column(ray_cluster, dataset, checkpoints, tmp_path):
    import pyarrow.parquet as pq

    model_uri, _ = checkpoints.entries["safetensors"]
    data = tmp_path / "typed"
    (data / f"ds={DATES[0]}").mkdir(parents=True)
    t = pq.read_table(dataset / f"ds={DATES[0]}" / "part-00000.parquet")
    t = t.set_column(t.schema.get_field_index("price"), "price", pc.cast(t.column("price"), "string"))
    pq.write_table(t, data / f"ds={DATES[0]}" / "part-00000.parquet")
    cfg = make_config(str(data), model_uri, str(tmp_path / "preds"))
    with pytest.raises(
        InputError, match=r"part-00000\.parquet: column 'price' has type string, expected a numeric"
    ):
        run_score(cfg, [DATES[0]])


def test_unschedulable_pool_is_refused_up_front(ray_cluster, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = make_config(
        str(dataset),
        model_uri,
        str(tmp_path / "preds"),
        predict={"min_replicas": 4, "max_replicas": 4, "mode": "actors"},  # the session's Ray has 3 CPUs
    )
    with pytest.raises(ConfigError, match="cannot be scheduled"):
        run_score(cfg, [DATES[0]])


def test_user_preprocessing_function_by_import_path(ray_cluster, dataset, checkpoints, tmp_path):
    from batchscore_test_plugins import PLUGIN_FEATURES

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = make_config(
        str(dataset),
        model_uri,
        str(out),
        preprocessing={"function": "batchscore_test_plugins:my_features"},
        input={"columns": PLUGIN_FEATURES.columns},
    )
    run_score(cfg, [DATES[0]])
    inp = read_input(str(dataset), DATES[0])
    got = read_output(str(out), DATES[0])
    assert_exact_output(inp, got, direct_scores(model_uri, inp, PLUGIN_FEATURES))
    # and the checkpoint's own (fitted) spec gives different scores: the plug-in was applied
    own = direct_scores(model_uri, inp, checkpoints.spec)
    assert np.abs(own - direct_scores(model_uri, inp, PLUGIN_FEATURES)).max() > 1e-3


def test_bad_model_checksum_is_refused(ray_cluster, dataset, checkpoints, tmp_path):
    from models.checkpoint import ModelError

    model_uri, _ = checkpoints.entries["torchscript"]
    cfg = make_config(str(dataset), model_uri, str(tmp_path / "preds"), model={"sha256": "0" * 64})
    with pytest.raises(ModelError, match="sha256 mismatch"):
        run_score(cfg, [DATES[0]])


def test_workers_refuse_weights_other_than_the_drivers(ray_cluster, dataset, checkpoints, tmp_path):
    """The driver verifies the weights' sha256 once; a replica loading the model later gets that
    digest and refuses a file that changed in between (the model cache is keyed by URI too)."""
    from models.checkpoint import ModelError
    from pipeline.run.preflight import prepare
    from pipeline.stages.predict import Predictor

    model = tmp_path / "model.ts"
    shutil.copy(checkpoints.entries["torchscript"][0] + "/model.ts", model)
    cfg = make_config(  # a bare file: no checksum recorded beside it, only the driver's check
        str(dataset),
        str(model),
        str(tmp_path / "preds"),
        model={"format": "torchscript"},
        preprocessing={"features": checkpoints.spec.to_dict()},
    )
    p = prepare(cfg, [DATES[0]])
    assert p.source.sha256 == p.model_meta.sha256  # pinned for the workers
    Predictor(p.source, p.passthrough, "run-1")  # the same file loads
    other = checkpoints.root / "export"  # any other bytes
    model.write_bytes(next(other.glob("*.pt2")).read_bytes())
    with pytest.raises(ModelError, match="sha256 mismatch"):
        Predictor(p.source, p.passthrough, "run-1")


def test_a_run_whose_columns_differ_from_the_table_is_refused_naming_them(
    ray_cluster, dataset, checkpoints, tmp_path
):
    from pipeline.errors import UserError

    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    run_score(make_config(str(dataset), model_uri, str(out)), [DATES[0]])
    renamed = make_config(str(dataset), model_uri, str(out), output={"score_column": "p_click"})
    with pytest.raises(UserError, match=r"columns differ from the table's .*p_click: table has -"):
        run_score(renamed, [DATES[1]])
    assert read_output(str(out), DATES[0]).num_rows == 3000  # the table is untouched
    assert not list(out.glob(f"ds={DATES[1]}/*.parquet")), "the refused run left its files"
