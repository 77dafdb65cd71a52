"""Predictor replicas on a multi-node Ray with logical GPUs (no CUDA needed).

A node with 2 logical GPUs joins the session's cluster; with 2 replicas of 1 GPU each, every
replica is pinned to its own GPU id by Ray, and all of them run on the GPU node.
"""

from __future__ import annotations

import pytest
from ray.data import DataContext
from support import DATES, make_config, read_input

from pipeline.run.execute import build_dataset
from pipeline.run.preflight import prepare
from pipeline.run.resources import cluster_nodes, plan_pool

pytestmark = pytest.mark.integration


@pytest.fixture
def gpu_node(ray_cluster):
    node = ray_cluster.add_node(num_cpus=2, num_gpus=2, resources={"gpu_node": 2})
    ray_cluster.wait_for_nodes()
    yield node
    ray_cluster.remove_node(node)
    ray_cluster.wait_for_nodes()


def test_replicas_get_distinct_gpus(ray_cluster, gpu_node, dataset, checkpoints, tmp_path):
    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = make_config(
        str(dataset),
        model_uri,
        str(tmp_path / "out"),
        predict={"min_replicas": 2, "max_replicas": 2, "batch_size": 200},
        preprocessing={"batch_size": 200},
    )
    p = prepare(cfg, DATES)
    pool = plan_pool(cfg.predict, cluster_nodes())
    assert pool.num_gpus == 1.0 and pool.max_replicas == 2  # 'auto' took the GPUs

    # Small blocks and one batch in flight per actor, so 6000 rows spread over both replicas.
    ctx = DataContext.get_current()
    saved = ctx.target_max_block_size, ctx.max_tasks_in_flight_per_actor
    ctx.target_max_block_size, ctx.max_tasks_in_flight_per_actor = 32 * 1024, 1
    try:
        ds = build_dataset(p, pool, run_id="gpu-test", device_column="_device")
        rows = ds.select_columns(["event_id", "_device"]).take_all()
    finally:
        ctx.target_max_block_size, ctx.max_tasks_in_flight_per_actor = saved
    assert len(rows) == 2 * 3000
    ids = [r["event_id"] for r in rows]
    assert len(set(ids)) == len(ids), "duplicated rows"
    want = set()
    for d in DATES:
        want |= set(read_input(str(dataset), d).column("event_id").to_pylist())
    assert set(ids) == want, "lost rows"
    by_replica: dict[str, str] = {}
    for r in rows:
        device, gpus, pid, node = r["_device"].split()
        by_replica[pid] = gpus
        assert node == f"node={gpu_node.node_id}", "a predictor replica ran on a node without GPUs"
    assert len(by_replica) == 2, f"expected 2 replicas to do work, saw {by_replica}"
    gpu_ids = list(by_replica.values())
    assert all(g.startswith("gpu_ids=") and g != "gpu_ids=" for g in gpu_ids), gpu_ids
    assert len(set(gpu_ids)) == 2, f"two replicas share a GPU: {by_replica}"


def test_labels_keep_preprocessing_on_cpu_nodes_and_replicas_on_gpu_nodes(
    ray_cluster, dataset, checkpoints, tmp_path
):
    """Head (unlabeled) + a CPU node + a GPU node: replicas only on the GPU node, preprocessing
    only on the CPU node, output exact."""
    import os
    from pathlib import Path

    from support import assert_keys_exact, plugin_config

    from pipeline.run.score import run_score

    cpu_node = ray_cluster.add_node(num_cpus=2, labels={"pool": "cpu"})
    gpu_node = ray_cluster.add_node(num_cpus=2, num_gpus=2, labels={"pool": "gpu"})
    ray_cluster.wait_for_nodes()
    log = Path(os.environ["BATCHSCORE_TEST_NODE_LOG"])
    for f in log.iterdir():
        f.unlink()
    try:
        out = tmp_path / "out"
        cfg = plugin_config(
            str(dataset),
            checkpoints.entries["safetensors"][0],
            str(out),
            "record_node_features",
            preprocessing={"batch_size": 500, "label_selector": {"pool": "cpu"}},
            predict={"min_replicas": 2, "max_replicas": 2, "label_selector": {"pool": "gpu"}},
        )
        report = run_score(cfg, DATES)
        assert report.pool.num_gpus == 1.0 and report.pool.max_replicas == 2
        for d in DATES:
            assert_keys_exact(str(dataset), str(out), d)
        # the driver's own 16-row output check (preflight) runs the function too, in this process
        runs = [f.read_text().split() for f in log.iterdir()]
        nodes = {node for node, pid in runs if pid != str(os.getpid())}
        assert nodes == {cpu_node.node_id}, "preprocessing ran off the CPU node"
    finally:
        ray_cluster.remove_node(gpu_node)
        ray_cluster.remove_node(cpu_node)
        ray_cluster.wait_for_nodes()
