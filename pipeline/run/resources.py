"""Size the predictor pool from the cluster's resources, or refuse it before anything runs.

An actor pool whose replicas take every CPU leaves the read tasks unschedulable and Ray Data
waits forever without an error. We check up front instead."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pipeline.config import PredictConfig
from pipeline.errors import ConfigError

log = logging.getLogger("batchscore")


@dataclass
class PoolPlan:
    min_replicas: int
    max_replicas: int
    num_cpus: float
    num_gpus: float
    cluster_cpus: float
    cluster_gpus: float
    torch_threads: int = 1
    mode: str = "actors"
    runner: str = "ray"  # or "local": threads in the driver's process (pipeline/run/local.py)


def plan_pool(
    predict: PredictConfig,
    nodes: list[dict[str, float]],
    cluster_cpus: float | None = None,
    staged: bool = False,
) -> PoolPlan:
    """`nodes`: the resources of each alive node replicas may use ({"CPU": .., "GPU": ..});
    `cluster_cpus`: all CPUs of the cluster, when replicas are restricted to some nodes (the
    CPUs kept free for reading may be on other nodes). Default: the CPUs of `nodes`.
    `staged`: separate read/preprocess tasks feed the replicas (top-K, a preprocessing label
    selector), so CPUs are kept free for them and a GPU gets one replica by default."""
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    all_cpus = total_cpus if cluster_cpus is None else cluster_cpus
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    mode = predict.mode
    staged = staged or mode == "staged"
    cpus = float(predict.num_cpus_per_replica)
    gpus = _gpus_per_replica(predict, nodes, 1 if staged else replicas_per_gpu(predict, nodes))
    if mode == "auto":
        mode = "fused" if gpus == 0 else "actors"
    if mode == "fused" and gpus > 0:
        raise ConfigError("predict.mode 'fused' runs on CPU tasks; GPU replicas need predict.mode 'actors'")
    if mode == "actors" and staged:
        mode = "staged"
    by_nodes = sum(_fits_on(n, cpus, gpus) for n in nodes)
    totals = (total_cpus, total_gpus)
    if mode == "fused":
        return _fused_plan(predict, len(nodes), by_nodes, cpus, totals)
    reserve = predict.reserve_cpus
    if reserve == "auto":
        reserve = 1.0 if mode == "staged" else 0.0
    return _actor_plan(predict, nodes, by_nodes, cpus, gpus, totals, all_cpus, mode, float(reserve))


def replicas_per_gpu(predict: PredictConfig, nodes: list[dict[str, float]]) -> int:
    """Replicas sharing a GPU: predict.replicas_per_gpu, or by default as many as the GPU nodes
    have CPUs per GPU (the fewest of any node) over num_cpus_per_replica: a replica's host-side
    work (read, preprocess, copies, write) then never leaves its GPU waiting while CPUs idle."""
    if predict.replicas_per_gpu != "auto":
        return int(predict.replicas_per_gpu)
    per_gpu = [n.get("CPU", 0.0) / n["GPU"] for n in nodes if n.get("GPU", 0.0) > 0]
    if not per_gpu:
        return 1
    return max(1, math.floor(min(per_gpu) / float(predict.num_cpus_per_replica) + 1e-9))


def _gpus_per_replica(predict: PredictConfig, nodes: list[dict[str, float]], sharing: int) -> float:
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    gpus = predict.num_gpus_per_replica
    if gpus == "auto":
        # Ray counts GPU fractions in units of 1e-4: rounded down, `sharing` of them fit on one GPU
        gpus = math.floor(1e4 / sharing) / 1e4 if total_gpus > 0 and predict.device != "cpu" else 0.0
    gpus = float(gpus)
    if predict.device == "cuda" and (gpus == 0 or total_gpus == 0):
        raise ConfigError(
            f"predict.device is 'cuda' but the cluster has {total_gpus:g} GPUs and "
            f"predict.num_gpus_per_replica is {gpus:g}"
        )
    return gpus


def _fits_on(node: dict[str, float], cpus: float, gpus: float) -> int:
    by_cpu = math.floor(node.get("CPU", 0.0) / cpus + 1e-9)
    by_gpu = math.floor(node.get("GPU", 0.0) / gpus + 1e-9) if gpus > 0 else by_cpu
    return max(0, min(by_cpu, by_gpu))


def _fused_plan(predict: PredictConfig, n_nodes: int, by_nodes: int, cpus: float, totals) -> PoolPlan:
    """Every CPU runs read -> score -> write; nothing to keep free for separate read tasks."""
    total_cpus, total_gpus = totals
    if by_nodes < 1:
        raise ConfigError(
            f"predict.mode fused: no node has predict.num_cpus_per_replica={cpus:g} CPUs "
            f"({n_nodes} node(s), {total_cpus:g} CPUs)"
        )
    cap = predict.max_replicas if predict.max_replicas is not None else by_nodes
    threads = max(1, math.floor(cpus)) if predict.torch_threads == "auto" else predict.torch_threads
    return PoolPlan(
        predict.min_replicas, min(cap, by_nodes), cpus, 0.0, total_cpus, total_gpus, int(threads), "fused"
    )


def _actor_plan(
    predict: PredictConfig, nodes, by_nodes: int, cpus: float, gpus: float, totals, all_cpus, mode, reserve
):
    """actors: by default every replica that fits (they do all the work); staged: min_replicas
    unless max_replicas says more (the read and preprocess tasks need the CPUs left)."""
    total_cpus, total_gpus = totals
    by_reserve = math.floor((all_cpus - reserve) / cpus + 1e-9)
    fit = max(0, min(by_nodes, by_reserve))
    if predict.min_replicas > fit:
        gpu_part = f" + {gpus:g} GPU" if gpus else ""
        raise ConfigError(
            f"predict pool cannot be scheduled: predict.min_replicas={predict.min_replicas} replicas x "
            f"{cpus:g} CPU{gpu_part} each, keeping predict.reserve_cpus="
            f"{reserve:g} CPU free for reading and preprocessing, but the cluster has "
            f"{total_cpus:g} CPUs and {total_gpus:g} GPUs ({len(nodes)} node(s)); at most {fit} "
            "replica(s) fit. Lower predict.min_replicas or predict.num_cpus_per_replica, or add nodes."
        )
    wanted = predict.max_replicas
    if wanted is None:
        wanted = fit if mode == "actors" else predict.min_replicas
    max_replicas = min(wanted, fit)
    if max_replicas < wanted:
        log.info("predict.max_replicas %d capped to %d by the cluster's resources", wanted, max_replicas)
    threads = predict.torch_threads
    if threads == "auto":
        threads = max(1, math.floor(cpus))
        if gpus == 0 and max_replicas > 0:
            biggest = max((n.get("CPU", 0.0) for n in nodes), default=cpus)
            threads = max(threads, min(math.floor(all_cpus / max_replicas), math.floor(biggest)))
    return PoolPlan(
        predict.min_replicas, max_replicas, cpus, gpus, total_cpus, total_gpus, int(threads), mode
    )


def cluster_nodes(label_selector: dict[str, str] | None = None) -> list[dict[str, float]]:
    """Resources of the alive nodes (only those carrying `label_selector`'s labels, if given)."""
    import ray

    want = label_selector or {}
    return [
        dict(n["Resources"])
        for n in ray.nodes()
        if n.get("Alive") and all((n.get("Labels") or {}).get(k) == v for k, v in want.items())
    ]
