"""A worker node removed mid-run (its processes killed): the run still ends exact."""

from __future__ import annotations

import threading
import time

import pytest
from support import DATES, assert_keys_exact, plugin_config

from pipeline.run.score import run_score

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_node_removed_mid_run(ray_cluster, dataset, checkpoints, tmp_path):
    node = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    model_uri, _ = checkpoints.entries["safetensors"]
    out = tmp_path / "preds"
    cfg = plugin_config(
        str(dataset),
        model_uri,
        str(out),
        "slow_features",
        predict={"min_replicas": 2, "max_replicas": 2, "mode": "actors"},
    )
    result: dict = {}

    def run():
        try:
            result["report"] = run_score(cfg, DATES)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(8)  # replicas started and working (the slow preprocessing needs ~15 s)
    assert t.is_alive(), f"the run ended before the node could be removed: {result}"
    ray_cluster.remove_node(node, allow_graceful=False)
    t.join(timeout=400)
    assert not t.is_alive(), "run did not finish after the node was removed"
    assert "error" not in result, result.get("error")
    for d in DATES:
        assert_keys_exact(str(dataset), str(out), d)
