"""Resume inside a date (issue 22): real `batchscore score` processes SIGKILLed once a share of a
20-file date is recorded as finished in their attempt record, then rerun (a new run id, or the
same one as a scheduler's retry). Each time the rerun adopts the finished units and scores only
the rest; the table then holds exactly the rows and scores of an uninterrupted run (read with
deltalake), its dead letters too, and after `vacuum --retain-hours 0` the files on storage are
exactly those the tables reference. Adoption is refused, and the unit scored again, when a
written file was deleted or truncated or the input file changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from support import delta_options, plugin_config

from jobs.synthetic import SyntheticSpec, write_days
from pipeline.config import StorageConfig
from pipeline.storage import Location, list_files, read_bytes, resolve

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-10-05"
FILES, ROWS_PER_FILE = 20, 200
SPEC = SyntheticSpec(rows_per_day=FILES * ROWS_PER_FILE, shards_per_day=FILES, n_users=2000, n_items=1000)


def _cfg(input_uri: str, out_uri: str, checkpoints, runner: str = "local", **extra):
    """One unit per input file (target_rows_per_file = the file's rows), a steady pace, and
    batches that fail into the dead letters."""
    extra.setdefault("output", {})
    extra["output"] = {"target_rows_per_file": ROWS_PER_FILE, "max_bad_row_fraction": 1.0, **extra["output"]}
    return plugin_config(
        input_uri,
        checkpoints.entries["safetensors"][0],
        out_uri,
        "paced_failing_features",
        ray={"runner": runner},
        preprocessing={"batch_size": 50},
        **extra,
    )


def _start(cfg, tmp_path: Path, name: str, run_id: str | None = None, ray_address=None, force=False):
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    args = [
        "--start",
        DATE,
        "--end",
        DATE,
        *(["--run-id", run_id] if run_id else []),
        *(["--force"] if force else []),
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.score", str(config), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return err


def _records(out_uri: str, storage=None) -> list[dict]:
    """Every attempt record under the output (one being rewritten is read on the next poll)."""
    out = resolve(out_uri, storage)
    recs = []
    for info in list_files(out.join("_runs"), suffix=".json"):
        if "/attempts/" in info.path:
            try:
                recs.append(json.loads(read_bytes(Location(out.fs, info.path, info.path))))
            except (OSError, ValueError):
                continue
    return recs


def recorded_units(out_uri: str, storage=None, status=("running",)) -> int:
    """Units the attempts in `status` scored and recorded themselves (adopted ones aside)."""
    return sum(
        len([u for u in r.get("work", {}).get("units", []) if "adopted_from" not in u])
        for r in _records(out_uri, storage)
        if r.get("status") in status
    )


def kill_at(proc: subprocess.Popen, out_uri: str, share: float, storage=None, timeout_s: float = 240) -> int:
    """SIGKILL `proc` once its record holds `share` of the date's units; returns the units recorded."""
    want = max(1, round(share * FILES))
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if recorded_units(out_uri, storage) >= want:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return recorded_units(out_uri, storage, ("running", "dead"))
        time.sleep(0.02)
    raise AssertionError(f"never reached {want} units: {proc.communicate()[1][-3000:]}")


def report(out_uri: str, run_id: str, storage=None) -> dict:
    return json.loads(read_bytes(resolve(out_uri, storage).join("_runs", run_id, "report.json")))


def table_rows(uri: str, storage=None, sub: str = ""):
    """The committed rows (deltalake), sorted by key, without the column naming the run."""
    from deltalake import DeltaTable

    t = DeltaTable(uri + sub, storage_options=delta_options(uri + sub, storage)).to_pyarrow_table()
    t = t.drop_columns([c for c in ("run_id",) if c in t.column_names])
    return t.take(pc.sort_indices(t, [("event_id", "ascending"), ("user_id", "ascending")]))


def assert_same_as(baseline: str, out_uri: str, storage=None) -> None:
    got, want = table_rows(out_uri, storage), table_rows(baseline)
    dl_got = table_rows(out_uri, storage, "/_dead_letter")
    dl_want = table_rows(baseline, None, "/_dead_letter")
    assert 0 < dl_want.num_rows < want.num_rows, "the test wants predictions and dead letters"
    assert want.num_rows + dl_want.num_rows == FILES * ROWS_PER_FILE
    assert got.select(want.column_names).equals(want), "keys or scores differ from an uninterrupted run"
    assert dl_got.select(dl_want.column_names).equals(dl_want)


def assert_no_stray_files(out_uri: str, storage=None, s3=None) -> None:
    from test_runid import Store

    store = Store(out_uri, s3, storage)
    assert set(store.parquet()) == store.live(), "files left that no table references, or missing"


def assert_vacuumed_clean(out_uri: str, storage=None, s3=None) -> None:
    from test_runid import Store

    from jobs.cli import main as cli

    vacuum = ["vacuum", out_uri, "--retain-hours", "0"]
    if storage is not None and storage.endpoint_url:
        vacuum += ["--endpoint-url", storage.endpoint_url]
    assert cli(vacuum) == 0
    store = Store(out_uri, s3, storage)
    assert set(store.parquet()) == store.live(), "files left that no table references, or missing"


@pytest.fixture(scope="module")
def date_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "events"
    write_days(resolve(str(root)), [DATE], SPEC)
    return root


@pytest.fixture(scope="module")
def baseline(date_files, checkpoints, tmp_path_factory) -> str:
    """The uninterrupted run the resumed ones must equal."""
    tmp = tmp_path_factory.mktemp("baseline")
    out = str(tmp / "preds")
    _finish(_start(_cfg(str(date_files), out, checkpoints), tmp, "baseline", "baseline"))
    return out


def _resume_case(
    tmp_path, cfg, out: str, baseline: str, share: float, same_id: bool, storage=None, s3=None, ray=None
):
    first = _start(cfg, tmp_path, "first", "nightly" if same_id else None, ray_address=ray)
    done = kill_at(first, out, share, storage)
    assert done < FILES, "killed too late: every unit was finished"
    rerun_id = "nightly" if same_id else "rerun"
    rerun = _start(cfg, tmp_path, "rerun", rerun_id, ray_address=ray)
    summary, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-4000:]
    assert f"resumed  {done * ROWS_PER_FILE:,} rows adopted" in summary, summary
    rows = report(out, rerun_id, storage)["rows"]
    assert rows["adopted"] == done * ROWS_PER_FILE, err[-3000:]
    assert rows["scored"] <= (FILES - done + 1) * ROWS_PER_FILE
    assert f"resume: {done * ROWS_PER_FILE} rows adopted" in err
    assert_no_stray_files(out, storage, s3)  # the dead attempt's unadopted files went with the rerun
    assert_same_as(baseline, out, storage)
    assert_vacuumed_clean(out, storage, s3)


@pytest.mark.parametrize(
    ("share", "same_id"),
    [
        pytest.param(0.3, False, marks=pytest.mark.slow),
        pytest.param(0.6, True, marks=pytest.mark.slow),
        (0.9, False),
    ],
)
def test_a_killed_date_resumes_on_local_disk(date_files, baseline, checkpoints, tmp_path, share, same_id):
    out = str(tmp_path / "preds")
    _resume_case(tmp_path, _cfg(str(date_files), out, checkpoints), out, baseline, share, same_id)


def test_adoption_is_refused_for_a_deleted_or_truncated_file_or_a_changed_input(
    tmp_path, baseline, checkpoints, date_files
):
    """Three finished units spoiled after the kill: each is scored again, the others adopted."""
    import shutil

    data = tmp_path / "events"
    shutil.copytree(date_files, data)
    out = str(tmp_path / "preds")
    cfg = _cfg(str(data), out, checkpoints)
    first = _start(cfg, tmp_path, "first")
    done = kill_at(first, out, 0.5)
    units = _units(out)
    (deleted, truncated, changed) = units[0], units[1], units[2]
    os.remove(deleted["outputs"][0]["path"])
    path = truncated["outputs"][0]["path"]
    Path(path).write_bytes(Path(path).read_bytes()[:100])
    st = os.stat(changed["inputs"][0]["path"])
    os.utime(changed["inputs"][0]["path"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    err = _finish(_start(cfg, tmp_path, "rerun", "rerun"))
    rows = report(out, "rerun")["rows"]
    assert rows["adopted"] == (done - 3) * ROWS_PER_FILE, err[-3000:]
    assert "is gone" in err and "bytes" in err and "changed since it was scored" in err
    assert_same_as(baseline, out)
    assert_vacuumed_clean(out)


def _units(out: str) -> list[dict]:
    recs = [json.loads(p.read_bytes()) for p in Path(out, "_runs").glob("*/attempts/*.json")]
    return [u for r in recs for u in r["work"]["units"] if u["outputs"]]


@pytest.mark.slow
def test_a_killed_date_resumes_on_s3(s3, checkpoints, baseline, tmp_path):
    bucket = s3.make_bucket("resume")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    events, out = f"s3://{bucket}/events", f"s3://{bucket}/preds"
    write_days(resolve(events, storage), [DATE], SPEC)
    cfg = _cfg(events, out, checkpoints, storage={"endpoint_url": s3.endpoint})
    _resume_case(tmp_path, cfg, out, baseline, 0.6, False, storage, s3)


@pytest.mark.slow
def test_a_killed_date_resumes_with_ray_actors(ray_cluster, date_files, baseline, checkpoints, tmp_path):
    out = str(tmp_path / "preds")
    cfg = _cfg(str(date_files), out, checkpoints, "ray", predict={"mode": "actors"})
    _resume_case(tmp_path, cfg, out, baseline, 0.6, False, ray=ray_cluster.address)


@pytest.mark.slow
def test_two_reruns_racing_over_one_dead_run_commit_the_date_once(
    date_files, baseline, checkpoints, tmp_path
):
    from deltalake import DeltaTable

    out = str(tmp_path / "preds")
    cfg = _cfg(str(date_files), out, checkpoints)
    kill_at(_start(cfg, tmp_path, "first"), out, 0.6)
    a, b = _start(cfg, tmp_path, "a", "rerun-a"), _start(cfg, tmp_path, "b", "rerun-b")
    _finish(a), _finish(b)
    commits = [
        h
        for h in DeltaTable(out).history()
        if (h.get("userMetadata") or h.get("operation")) and h["version"] > 0
    ]
    assert len([h for h in commits if h.get("operation") != "CREATE TABLE"]) == 1, commits
    assert_same_as(baseline, out)
    assert_vacuumed_clean(out)


@pytest.mark.slow
def test_force_rescores_from_zero(date_files, baseline, checkpoints, tmp_path):
    out = str(tmp_path / "preds")
    cfg = _cfg(str(date_files), out, checkpoints)
    kill_at(_start(cfg, tmp_path, "first"), out, 0.5)
    err = _finish(_start(cfg, tmp_path, "rerun", "rerun", force=True))
    rows = report(out, "rerun")["rows"]
    assert rows["adopted"] == 0 and rows["scored"] == FILES * ROWS_PER_FILE
    assert "resume: --force" in err
    assert_same_as(baseline, out)
    assert_vacuumed_clean(out)


@pytest.mark.slow
def test_a_date_killed_at_its_commit_is_adopted_whole(date_files, baseline, checkpoints, tmp_path):
    """Every unit finished, the process stopped just before the date's commit (the test hook) and
    killed there: the rerun adopts the whole date, scores nothing, and commits it."""
    out = str(tmp_path / "preds")
    cfg = _cfg(str(date_files), out, checkpoints)
    flag = tmp_path / "paused"
    os.environ["BATCHSCORE_TEST_PAUSE_BEFORE_COMMIT"] = str(flag)
    try:
        first = _start(cfg, tmp_path, "first")
    finally:
        del os.environ["BATCHSCORE_TEST_PAUSE_BEFORE_COMMIT"]
    deadline = time.time() + 240
    while not flag.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert flag.exists(), first.communicate()[1][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    err = _finish(_start(cfg, tmp_path, "rerun", "rerun"))
    rows = report(out, "rerun")["rows"]
    assert rows["adopted"] == FILES * ROWS_PER_FILE and rows["scored"] == 0, err[-3000:]
    assert_same_as(baseline, out)
    assert_vacuumed_clean(out)
