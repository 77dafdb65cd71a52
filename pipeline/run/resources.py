"""Size the predictor pool from the cluster's resources, or refuse it before anything runs.

An actor pool whose replicas take every CPU leaves the read tasks unschedulable and Ray Data
waits forever without an error. We check up front instead."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

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
    placement: Placement | None = None  # with challengers: where each model runs (plan_placement)


# Of a replica's memory, the share the models' weights may take together: the rest holds the
# batches, the activations of the forward pass and (on a GPU) the CUDA context.
WEIGHTS_SHARE = 0.5
# GPU memory by the accelerator type Ray reports (`accelerator_type:<type>`), in GiB (nominal).
GPU_MEMORY_GB = {
    "V100": 16, "P100": 16, "T4": 16, "P4": 8, "K80": 12, "A10G": 24, "L4": 24, "L40S": 48,
    "A100": 40, "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141, "H20": 96, "B200": 180,
    "B300": 288, "GB200": 186, "GB300": 288, "RTX-PRO-6000": 96,
}  # fmt: skip
UNKNOWN_GPU_GB = 16.0  # the smallest of the common data-centre GPUs: never more than there is


@dataclass
class Placement:
    """Where the challengers run beside the champion: in the champion's replicas (`shared`) or in
    replica pools of their own (`own`: those named in `own`), with the sizes and the memory the
    decision was made from, and why."""

    challengers: str  # "shared" (every model in each replica) or "own" (some or all in their own pools)
    setting: str  # predict.challengers_placement
    why: str
    replica_memory_gb: float | None = None
    model_mb: dict[str, float] = field(default_factory=dict)  # "champion" and each challenger
    own: list[str] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)  # each pool's replicas: champion's first


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


def replica_memory_gb(predict: PredictConfig, nodes: list[dict[str, float]], pool: PoolPlan) -> float | None:
    """The memory one replica has for its models: predict.replica_memory_gb, or on GPU replicas the
    smallest GPU of the GPU nodes (by the accelerator type Ray reports) times the replica's share
    of it. None: CPU replicas (host memory, shared by the replicas of a node)."""
    if predict.replica_memory_gb != "auto":
        return float(predict.replica_memory_gb)
    if pool.num_gpus <= 0:
        return None
    sizes = [_gpu_memory_gb(n) for n in nodes if n.get("GPU", 0.0) > 0]
    return round(min(sizes, default=UNKNOWN_GPU_GB) * min(1.0, pool.num_gpus), 3)


def _gpu_memory_gb(node: dict[str, float]) -> float:
    kinds = [k.split(":", 1)[1] for k in node if k.startswith("accelerator_type:")]
    return min((float(GPU_MEMORY_GB.get(k, UNKNOWN_GPU_GB)) for k in kinds), default=UNKNOWN_GPU_GB)


def plan_placement(
    setting: str, pool: PoolPlan, champion_bytes: int, challengers: dict[str, int], memory_gb: float | None
) -> Placement:
    """Whether the challengers (name -> weight bytes) share the champion's replicas or get pools
    of their own, and each pool's replicas (pool.max_replicas split between them). `setting`:
    predict.challengers_placement; `memory_gb`: a replica's memory (None: CPU replicas).

    auto: on CPU replicas shared (a pool of its own would only split the same CPUs, and a
    replica's models share the host's memory); on GPUs, the challengers, smallest first, share
    the champion's replicas while all their weights fit in WEIGHTS_SHARE of a replica's memory,
    the others get their own pools. A pool needs a replica: with too few, shared (auto) or
    refused (own)."""
    mb = {"champion": _mb(champion_bytes), **{n: _mb(b) for n, b in challengers.items()}}
    place = Placement("shared", setting, "", memory_gb, mb)
    if not challengers:
        place.why = "no challenger to score"
    elif pool.runner == "local" or pool.mode != "actors":
        _refuse_own(setting, pool)
        local = pool.runner == "local"
        where = "the local runner's process" if local else f"each {pool.mode} task or replica"
        place.why = f"{where} holds every model (pools of their own need predict.mode actors)"
    elif setting == "shared":
        place.why = "predict.challengers_placement is 'shared'"
    elif setting == "own":
        place.own, place.why = sorted(challengers), "predict.challengers_placement is 'own'"
    elif memory_gb is None:
        place.why = "CPU replicas: the models share each replica (own pools would split the same CPUs)"
    else:
        place.own, place.why = _by_size(champion_bytes, challengers, memory_gb)
    return _split(place, pool)


def _refuse_own(setting: str, pool: PoolPlan) -> None:
    if setting == "own":
        runner = "ray.runner local" if pool.runner == "local" else f"predict.mode {pool.mode}"
        raise ConfigError(
            f"predict.challengers_placement 'own' needs the Ray runner's actors mode (predict.mode: "
            f"actors), not {runner}; allowed values: auto, shared, own"
        )


def _by_size(champion: int, challengers: dict[str, int], memory_gb: float) -> tuple[list[str], str]:
    budget = WEIGHTS_SHARE * memory_gb * 2**30
    used, own = champion, []
    for name, size in sorted(challengers.items(), key=lambda x: (x[1], x[0])):
        if used + size <= budget:
            used += size
        else:
            own.append(name)
    limit = f"{WEIGHTS_SHARE:.0%} of a replica's {memory_gb:g} GiB"
    if not own:
        return [], f"the models' weights ({_mb(used):g} MB) fit in {limit}"
    return sorted(own), (
        f"beside the champion ({_mb(champion):g} MB) the weights of {', '.join(sorted(own))} "
        f"({_mb(sum(challengers[n] for n in own)):g} MB) do not fit in {limit}"
    )


def _split(place: Placement, pool: PoolPlan) -> Placement:
    """Each pool's replicas: every own pool an equal share (at least one), the champion the rest."""
    total = pool.max_replicas
    pools = 1 + len(place.own)
    if place.own and total < pools:
        if place.setting == "own":
            raise ConfigError(
                f"predict.challengers_placement 'own': {pools} pools (the champion's and "
                f"{len(place.own)} challenger(s)) need a replica each, and the cluster fits {total}; "
                "raise predict.replicas_per_gpu or lower predict.num_cpus_per_replica, or set it to shared"
            )
        place.why += f"; but {total} replica(s) cannot make {pools} pools: shared"
        place.own = []
    if not place.own:
        place.replicas = {"champion": total}
        return place
    each = max(1, total // pools)
    place.challengers = "own"
    place.replicas = {"champion": total - each * len(place.own), **{n: each for n in place.own}}
    return place


def _mb(n: int) -> float:
    return round(n / 1e6, 3)
