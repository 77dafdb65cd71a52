"""Small real datasets, checkpoints and helpers shared by the integration and cluster tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.synthetic import FEATURES, SyntheticSpec, date_range
from models.features import FeatureSpec, transform_table
from pipeline.config import StorageConfig, config_from_dict
from pipeline.storage import resolve

DATES = date_range("2026-10-01", 2)
ROWS = 3000
KEYS = ["event_id", "user_id", "item_id"]

# The demo features with small hash spaces: same transforms, small and fast models.
SMALL_FEATURES = FeatureSpec(
    categorical=[replace(f, buckets=min(f.buckets, 997)) for f in FEATURES.categorical],
    dense=list(FEATURES.dense),
)
SYNTH = SyntheticSpec(rows_per_day=ROWS, shards_per_day=3, n_users=2000, n_items=1000)


@dataclass
class Checkpoints:
    """Paths and the config additions each model format needs."""

    root: Path
    entries: dict[str, tuple[str, dict[str, Any]]]
    spec: FeatureSpec


def make_config(input_uri: str, model_uri: str, output_uri: str, **sections: dict[str, Any]):
    raw: dict[str, Any] = {
        "name": "itest",
        "input": {"uri": input_uri},
        "model": {"uri": model_uri},
        "predict": {"batch_size": 1024},
        "preprocessing": {"batch_size": 1024},
        "output": {"uri": output_uri, "key_columns": KEYS, "target_rows_per_file": 2000},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def read_input(root: str, date: str, storage=None) -> pa.Table:
    loc = resolve(root, storage).join(f"ds={date}")
    from pipeline.storage import list_files

    files = [f.path for f in list_files(loc, ".parquet")]
    return pq.read_table(files, filesystem=loc.fs)


def delta_options(root: str, storage: StorageConfig | None = None) -> dict[str, str] | None:
    from pipeline.commit.tables import storage_options

    return storage_options(str(root), storage or StorageConfig())


def read_delta(root: str, storage=None, version: int | None = None, date: str | None = None) -> pa.Table:
    """What a Delta reader (deltalake) sees of the table, at `version` (default: the latest)."""
    from deltalake import DeltaTable

    table = DeltaTable(str(root), version=version, storage_options=delta_options(root, storage))
    return table.to_pyarrow_table(filters=[("ds", "=", date)] if date else None)


def latest_commit(root: str, date: str, storage=None) -> dict[str, Any] | None:
    """batchscore's metadata of the date's latest commit in the Delta log (None: never committed)."""
    from deltalake import DeltaTable

    from pipeline.commit.tables import commits_of_history

    if not DeltaTable.is_deltatable(str(root), storage_options=delta_options(root, storage)):
        return None
    table = DeltaTable(str(root), storage_options=delta_options(root, storage))
    return next((c for c in commits_of_history(table) if c.get("date") == date), None)


def read_output(root: str, date: str, storage=None) -> pa.Table:
    """The committed predictions of one date, read through the Delta log."""
    table = read_delta(root, storage, date=date)
    assert table.num_rows, f"no committed rows for {date} in the table {root}"
    return table


def direct_scores(model_path: str, table: pa.Table, spec: FeatureSpec, **load_kwargs) -> np.ndarray:
    """Scores from calling the model directly (no Ray, no pipeline) on the same rows."""
    import torch

    from models.checkpoint import load_model

    loaded = load_model(model_path, **load_kwargs)
    feats = transform_table(table, spec)
    with torch.inference_mode():
        out = loaded.module(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"]))
    return out.reshape(-1).numpy()


def scores_by_key(table: pa.Table) -> dict[str, float]:
    return dict(zip(table.column("event_id").to_pylist(), table.column("score").to_pylist(), strict=True))


def plugin_config(input_uri: str, model_uri: str, output_uri: str, function: str, **sections: dict[str, Any]):
    """A config whose preprocessing is a test plug-in (tests/integration/plugins): `slow_features`
    keeps a run going long enough for a fault to hit it mid-run; `failing_features` raises."""
    from batchscore_test_plugins import PLUGIN_FEATURES

    sections.setdefault("preprocessing", {})
    sections["preprocessing"] = {
        "function": f"batchscore_slow_plugins:{function}",
        "batch_size": 100,
        **sections["preprocessing"],
    }
    sections.setdefault("input", {}).setdefault("columns", PLUGIN_FEATURES.columns)
    return make_config(input_uri, model_uri, output_uri, **sections)


def assert_keys_exact(input_uri: str, output_uri: str, date: str, storage=None) -> None:
    """Every input key exactly once in the committed output: nothing lost, nothing duplicated."""
    inp = read_input(str(input_uri), date, storage)
    keys = read_output(str(output_uri), date, storage).column("event_id").to_pylist()
    assert len(keys) == len(set(keys)) == inp.num_rows, "lost or duplicated rows"
    assert set(keys) == set(inp.column("event_id").to_pylist())


ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    args: list[str],
    ray_address: str | None,
    timeout: int = 300,
    module: str = "jobs.cli",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the repo root (or `cwd`), as a user runs it (`jobs.cli` or a command's
    own module, e.g. `jobs.score`); connected to the session's Ray when `ray_address` is given,
    else with no RAY_ADDRESS at all."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary_row(stdout: str, date: str) -> list[str]:
    """The cells of `date`'s row in a run summary (pipeline/reporting/summary.py): date, rows in,
    out, dead letter, mean, p50, p90, p99, PSI/shift vs previous and training, version, drift."""
    rows = [line.split() for line in stdout.splitlines() if line.startswith(f"  {date} ")]
    assert len(rows) == 1, f"no single summary row for {date} in:\n{stdout[-3000:]}"
    return rows[0]


def with_null_keys(dataset, tmp_path, every: int = 50, offset: int = 0):
    """A copy of DATES[0] where every `every`-th event_id (from `offset`) is null."""
    data = tmp_path / "nullkeys"
    dst = data / f"ds={DATES[0]}"
    dst.mkdir(parents=True)
    for f in sorted((dataset / f"ds={DATES[0]}").glob("*.parquet")):
        t = pq.read_table(f)
        ids = t.column("event_id").to_pylist()
        ids = [None if i % every == offset else v for i, v in enumerate(ids)]
        t = t.set_column(t.schema.get_field_index("event_id"), "event_id", pa.array(ids, pa.string()))
        pq.write_table(t, dst / f.name)
    return data
