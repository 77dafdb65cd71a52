"""The per-date committer on real files and a real Delta table (no Ray: files without footer stats
are read inline): a date is committed only once all its rows are written, in date order, and a
refused date stops the ones after it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import latest_commit, read_delta

from pipeline.commit.partitions import CommitPolicy, RunIdentity
from pipeline.commit.streaming import DateCommitter
from pipeline.commit.tables import DeltaOutput, OutputTables
from pipeline.config import DriftConfig, StorageConfig
from pipeline.filestats import write_parquet
from pipeline.stages.read import discover
from pipeline.storage import resolve

DATES = ["2026-10-01", "2026-10-02", "2026-10-03"]
RNG = np.random.default_rng(3)


def _setup(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i, d in enumerate(DATES):
        (inp / f"ds={d}").mkdir(parents=True)
        keys = np.arange(i * 1000, i * 1000 + 1000)
        pq.write_table(pa.table({"event_id": keys}), inp / f"ds={d}" / "a.parquet")
    plan = discover(resolve(str(inp)), DATES, "ds")
    loc = resolve(str(out))
    tables = OutputTables(
        DeltaOutput(loc, StorageConfig(), ["ds"]),
        DeltaOutput(loc.join("_dead_letter"), StorageConfig(), ["ds"]),
        "ds",
    )
    committer = DateCommitter(
        tables,
        plan,
        RunIdentity("run-1", "t", "v1", "sha-1", "cfg", "scoring"),
        CommitPolicy(["event_id"]),
        DriftConfig(),
        "score",
        None,
    )
    return out, committer


def _stage(out, date, keys, name, stats=True):
    """A file of run-1's predictions, written where the pipeline writes them: with the stats of
    its rows in its footer as the write stage writes them, or without (an older version's file,
    read by the commit)."""
    d = out / f"ds={date}"
    d.mkdir(parents=True, exist_ok=True)
    table = pa.table({"event_id": keys, "score": RNG.beta(2, 20, len(keys)).astype(np.float32)})
    if stats:
        write_parquet(resolve(str(out)).fs, str(d / f"part-run-1.{name}"), table, ["event_id"], "score")
    else:
        pq.write_table(table, d / f"part-run-1.{name}")


def _commit(out, date):
    """The date's latest commit in the Delta log, as a reader of the log finds it."""
    return latest_commit(str(out), date)


@pytest.mark.parametrize("stats", [True, False], ids=["footer stats", "no stats"])
def test_a_date_is_committed_once_all_its_rows_are_staged_in_date_order(tmp_path, stats):
    out, c = _setup(tmp_path)
    _stage(out, DATES[0], np.arange(0, 600), "p0.parquet", stats)
    _stage(out, DATES[1], np.arange(1000, 2000), "p0.parquet", stats)  # complete, after an incomplete date
    c.step()
    assert c.committed == [] and _commit(out, DATES[0]) is None

    _stage(out, DATES[0], np.arange(600, 1000), "p1.parquet", stats)
    c.step()
    assert c.committed == DATES[:2] and c.during_run == DATES[:2]
    m = _commit(out, DATES[0])
    assert m["output_rows"] == 1000 and m["score_profile"]["count"] == 1000
    assert m["drift"]["previous"] is None
    # the second date was compared with the first (committed a moment before)
    assert _commit(out, DATES[1])["drift"]["previous"]["reference"] == f"ds={DATES[0]}"
    assert read_delta(str(out), date=DATES[0]).num_rows == 1000

    _stage(out, DATES[2], np.arange(2000, 3000), "p0.parquet", stats)
    c.drain()
    assert c.committed == DATES and c.during_run == DATES[:2]
    assert c.summary()["committed"] == DATES and c.summary()["held_for_final_commit"] == {}


@pytest.mark.parametrize("stats", [True, False], ids=["footer stats", "no stats"])
def test_a_refused_date_holds_itself_and_the_dates_after_it(tmp_path, stats):
    out, c = _setup(tmp_path)
    _stage(out, DATES[0], np.arange(0, 1000), "p0.parquet", stats)
    # right count, wrong rows: 500 keys twice, 500 missing -> key reconciliation refuses it
    twice = np.concatenate([np.arange(1000, 1500), np.arange(1000, 1500)])
    _stage(out, DATES[1], twice, "p0.parquet", stats)
    _stage(out, DATES[2], np.arange(2000, 3000), "p0.parquet", stats)
    c.drain()
    assert c.committed == [DATES[0]]
    assert "keys differ" in c.held[DATES[1]]
    assert _commit(out, DATES[1]) is None and _commit(out, DATES[2]) is None


def test_a_run_killed_between_the_predictions_and_dead_letter_commits_is_rescored(tmp_path, monkeypatch):
    """The window inside a date's commit: the predictions are committed (readers see the date
    whole), the dead letters are not. The next run must not take the date as done."""
    import pipeline.commit.partitions as commit
    from pipeline.commit.partitions import identity_of

    out, c = _setup(tmp_path)
    _stage(out, DATES[0], np.arange(0, 1000), "p0.parquet")

    def killed(*args, **kwargs):
        raise SystemExit("driver killed here")

    monkeypatch.setattr(commit, "_commit_dead_letters", killed)
    with pytest.raises(SystemExit):
        c.step(drain=True)
    assert read_delta(str(out), date=DATES[0]).num_rows == 1000  # readers: the date, whole
    part = c.inputs.partitions[0]
    state = c.tables.state(DATES[0], identity_of(part, "sha-1", "scoring"))
    assert state.same_model and state.same_inputs and not state.committed_as_asked
    assert "dead letters were not committed" in state.why_rescored()
