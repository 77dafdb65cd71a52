"""A run on the Ray path never imports pandas, in its replicas or its driver (models/arrays.py).

pyarrow imports pandas on its own from `pa.array`, `pa.scalar`, `to_numpy` and
`to_pandas_dtype`; in a fresh replica that was 0.13-0.15 s of CPU before its first scored
batch (issue 20). Each process of the run here (the job's own Ray: its workers inherit the
environment) carries an import hook that leaves a file naming the process and the import's
stack when pandas is first looked for."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from support import DATES, KEYS, run_cli

pytestmark = pytest.mark.integration

HOOK = """
import os, sys, traceback

class _Report:
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            sys.meta_path.remove(self)
            where = os.path.join(os.environ["PANDAS_IMPORT_LOG"], f"pandas-{os.getpid()}.txt")
            with open(where, "w") as f:
                f.write(" ".join(sys.argv) + "\\n" + "".join(traceback.format_stack()))
        elif name == "torch" and "default_worker.py" in " ".join(sys.argv):
            open(os.path.join(os.environ["PANDAS_IMPORT_LOG"], f"torch-{os.getpid()}"), "w").close()
        return None

if os.environ.get("PANDAS_IMPORT_LOG"):
    sys.meta_path.insert(0, _Report())
"""


def test_a_ray_run_with_replicas_imports_no_pandas(dataset, checkpoints, tmp_path, monkeypatch):
    assert importlib.util.find_spec("pandas") is not None  # installed (Ray Data needs it): the check can fail
    hook, log = tmp_path / "hook", tmp_path / "imports"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    model_uri, _ = checkpoints.entries["safetensors"]
    config = tmp_path / "job.yaml"
    raw = {
        "name": "no-pandas",
        "input": {"uri": str(dataset)},
        "model": {"uri": model_uri},
        "predict": {"batch_size": 1024, "mode": "actors"},
        "preprocessing": {"batch_size": 1024},
        "output": {"uri": str(tmp_path / "out"), "key_columns": KEYS, "verify": "keys"},
        "ray": {"runner": "ray", "num_cpus": 2},
        "report": {"html": False},
    }
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("PANDAS_IMPORT_LOG", str(log))
    proc = run_cli([str(config), "--date", DATES[0], "--date", DATES[1]], None, module="jobs.score")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["status"] == "succeeded" and last["rows_in"] == last["rows_out"] == 6000
    # the hook was in the replicas: Ray workers that imported torch (the model) reported it
    assert any(p.name.startswith("torch-") for p in log.iterdir())
    imports = {p.name: p.read_text() for p in log.iterdir() if p.name.startswith("pandas-")}
    assert not imports, "\n\n".join(imports.values())[-6000:]
