"""Progress lines, the Prometheus textfile and the choice of drift references, on real files."""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.scoreprofile import profile_array
from pipeline.commit.tables import WrittenRows
from pipeline.config import DriftConfig
from pipeline.quality.drift import evaluate_drift
from pipeline.reporting.metrics import prometheus_text, write_prometheus
from pipeline.reporting.progress import ProgressView, duration, human
from pipeline.reporting.schema import load
from pipeline.storage import resolve

RNG = np.random.default_rng(1)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_are_plain_when_not_a_terminal(tmp_path):
    staging = tmp_path / "staging"
    (staging / "ds=2026-10-01").mkdir(parents=True)
    pq.write_table(pa.table({"score": np.zeros(1500, np.float32)}), staging / "ds=2026-10-01" / "a.parquet")
    (staging / "ds=2026-10-01" / "partial.parquet").write_bytes(b"PAR1 not yet complete")
    out = io.StringIO()
    view = ProgressView(None, 6000, WrittenRows(resolve(str(staging))), interval_s=0.05, stream=out)
    view.last = {"rows": {"read": 3000, "scored": 2500}, "replicas": []}
    view.start()
    import time

    time.sleep(0.3)
    view.stop()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.strip().split("\n")
    assert len(lines) >= 2 and view.lines == len(lines)
    assert re.match(
        r"progress +42% \| read 3\.0k/6\.0k \| scored 2\.5k \| written 1\.5k \| .* rows/s \| ETA ", lines[-1]
    )


def test_progress_redraws_in_place_on_a_terminal():
    out = _Tty()
    view = ProgressView(None, 100, None, stream=out)
    assert view.interval == 1.0
    view.last = {"rows": {"read": 100, "scored": 50}}
    view.emit()
    view.emit(final=True)
    text = out.getvalue()
    assert text.startswith("\r\x1b[K") and text.endswith("\n") and text.count("\n") == 1


def test_human_and_duration():
    assert [human(x) for x in (999, 1500, 2_500_000, 3e9)] == ["999", "1.5k", "2.5M", "3.0G"]
    assert [duration(x) for x in (5, 75, 3700)] == ["5s", "1m15s", "1h01m"]


def test_drift_compares_with_the_latest_earlier_date_of_the_same_model():
    base = RNG.beta(2, 20, 20_000)
    committed = {  # date -> (model sha256, profile), as read from the Delta log's commits
        "2026-10-01": ("sha-a", profile_array(base)),
        "2026-10-03": ("sha-a", profile_array(base + 0.3)),  # shifted, and the latest
        "2026-10-04": ("sha-other", profile_array(base)),  # another model: ignored
        "2026-10-09": ("sha-a", profile_array(base)),  # after the date: ignored
    }
    today = {"2026-10-05": profile_array(RNG.beta(2, 20, 20_000))}
    drift = evaluate_drift(DriftConfig(), committed, "ds", today, "sha-a", None)
    prev = drift["2026-10-05"]["previous"]
    assert prev["reference"] == "ds=2026-10-03" and prev["breach"] and drift["2026-10-05"]["breach"]
    assert drift["2026-10-05"]["training"] is None


def test_drift_in_a_run_compares_with_the_date_before_and_with_training():
    base = RNG.beta(2, 20, 20_000)
    committed = {"2026-10-01": ("sha-a", profile_array(base + 0.5))}
    run = {
        "2026-10-02": profile_array(RNG.beta(2, 20, 20_000)),
        "2026-10-03": profile_array(RNG.beta(2, 20, 20_000)),
    }
    training = profile_array(RNG.beta(2, 20, 20_000))
    drift = evaluate_drift(DriftConfig(), committed, "ds", run, "sha-a", training)
    assert drift["2026-10-02"]["previous"]["reference"] == "ds=2026-10-01"
    assert drift["2026-10-02"]["previous"]["breach"]
    assert drift["2026-10-03"]["previous"]["reference"] == "ds=2026-10-02"  # from this run
    assert not drift["2026-10-03"]["breach"]
    assert drift["2026-10-03"]["training"]["psi"] < 0.05
    off = evaluate_drift(DriftConfig(enabled=False), committed, "ds", run, "sha-a", training)
    assert not any(d["breach"] for d in off.values())


def _report():
    return {
        "run_id": "nightly-1",
        "job": 'nightly"x',
        "status": "succeeded",
        "finished_at": "2026-11-26T07:00:00+00:00",
        "timings_s": {"total_s": 12.5},
        "rows": {"input": 10, "output": 9, "dead_letter": 1},
        "throughput_rows_per_s": 1234.5,
        "drift": {"breach": True},
        "partitions": [
            {"partition": {"ds": "2026-11-25"}, "drift": {"previous": {"psi": 0.31}, "training": None}}
        ],
    }


def test_prometheus_textfile_format(tmp_path):
    text = prometheus_text(load(_report()))
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    pattern = re.compile(r'^[a-z_]+\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)+\} [-+0-9.e]+$')
    assert all(pattern.match(s) for s in samples), samples
    assert 'batchscore_last_run_timestamp_seconds{job="nightly\\"x"} 1795676400.0' in text
    assert 'batchscore_rows_total{job="nightly\\"x",kind="dead_letter"} 1.0' in text
    assert 'batchscore_score_psi{job="nightly\\"x",date="2026-11-25",reference="previous"} 0.31' in text
    assert 'batchscore_drift_breach{job="nightly\\"x"} 1.0' in text
    path = tmp_path / "textfile" / "batchscore.prom"
    write_prometheus(str(path), load(_report()))
    assert path.read_text() == text
    assert [p.name for p in path.parent.iterdir()] == ["batchscore.prom"]  # no temp file left
