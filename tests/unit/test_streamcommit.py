"""The per-date committer on real files (no Ray: fingerprints and profiles run inline): a date is
published only once all its rows are staged, in date order, and a refused date stops the ones
after it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.commit import CommitPolicy, RunIdentity
from pipeline.config import DriftConfig
from pipeline.read import discover
from pipeline.storage import resolve
from pipeline.streamcommit import DateCommitter

DATES = ["2026-10-01", "2026-10-02", "2026-10-03"]
RNG = np.random.default_rng(3)


def _setup(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i, d in enumerate(DATES):
        (inp / f"ds={d}").mkdir(parents=True)
        keys = np.arange(i * 1000, i * 1000 + 1000)
        pq.write_table(pa.table({"event_id": keys}), inp / f"ds={d}" / "a.parquet")
    plan = discover(resolve(str(inp)), DATES, "ds")
    staging = resolve(str(out)).join("_staging", "run-1")
    committer = DateCommitter(
        resolve(str(out)),
        staging,
        plan,
        RunIdentity("run-1", "t", "v1", "sha-1", "cfg", "scoring"),
        CommitPolicy(["event_id"]),
        DriftConfig(),
        "score",
        None,
    )
    return out, committer


def _stage(out, date, keys, name):
    d = out / "_staging" / "run-1" / f"ds={date}"
    d.mkdir(parents=True, exist_ok=True)
    table = pa.table({"event_id": keys, "score": RNG.beta(2, 20, len(keys)).astype(np.float32)})
    pq.write_table(table, d / name)


def _manifest(out, date):
    path = out / f"ds={date}" / "_manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_a_date_is_committed_once_all_its_rows_are_staged_in_date_order(tmp_path):
    out, c = _setup(tmp_path)
    _stage(out, DATES[0], np.arange(0, 600), "p0.parquet")
    _stage(out, DATES[1], np.arange(1000, 2000), "p0.parquet")  # complete, but after an incomplete date
    c.step()
    assert c.committed == [] and _manifest(out, DATES[0]) is None

    _stage(out, DATES[0], np.arange(600, 1000), "p1.parquet")
    c.step()
    assert c.committed == DATES[:2] and c.during_run == DATES[:2]
    m = _manifest(out, DATES[0])
    assert m["output_rows"] == 1000 and m["extra"]["score_profile"]["count"] == 1000
    assert m["extra"]["drift"]["previous"] is None
    # the second date was compared with the first (committed a moment before)
    assert _manifest(out, DATES[1])["extra"]["drift"]["previous"]["reference"] == f"ds={DATES[0]}"
    assert (out / "_staging" / "run-1").exists(), "the run still writes there: no cleanup"

    _stage(out, DATES[2], np.arange(2000, 3000), "p0.parquet")
    c.drain()
    assert c.committed == DATES and c.during_run == DATES[:2]
    assert c.summary()["committed"] == DATES and c.summary()["held_for_final_commit"] == {}


def test_a_refused_date_holds_itself_and_the_dates_after_it(tmp_path):
    out, c = _setup(tmp_path)
    _stage(out, DATES[0], np.arange(0, 1000), "p0.parquet")
    # right count, wrong rows: 500 keys twice, 500 missing -> key reconciliation refuses it
    _stage(out, DATES[1], np.concatenate([np.arange(1000, 1500), np.arange(1000, 1500)]), "p0.parquet")
    _stage(out, DATES[2], np.arange(2000, 3000), "p0.parquet")
    c.drain()
    assert c.committed == [DATES[0]]
    assert "keys differ" in c.held[DATES[1]]
    assert _manifest(out, DATES[1]) is None and _manifest(out, DATES[2]) is None
