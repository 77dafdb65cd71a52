"""The execute phase: Ray started (or joined), the pool sized, and the stages folded over one lazy
Dataset:

    read -> preprocess (CPU tasks) -> predict (actor pool) -> write
    read -> preprocess + predict, fused in one task per file -> write   (CPU-only pools)

Preprocessing on CPU does only what needs the Arrow data (string hashes, keys, numbers out of
their buffers, dead-letter checks); the numeric feature transforms run in the predictor, on the
replica's device (models.transforms).

Nothing is materialized on the driver; the write streams rows through all stages."""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import math
import os
import sys
import time
from dataclasses import replace
from typing import Any

from pipeline.config import JobConfig
from pipeline.errors import ConfigError
from pipeline.raystate import running_ray
from pipeline.run.preflight import Prepared
from pipeline.run.rayauth import check_token_accepted, join_refused
from pipeline.run.resources import PoolPlan, cluster_nodes, plan_pool
from pipeline.stages.deadletter import DeadLetterWriter
from pipeline.stages.predict import FusedScorer, OutputSpec, Predictor
from pipeline.stages.preprocess import Preprocessor
from pipeline.stages.read import read_dataset


def ensure_ray(cfg: JobConfig) -> None:
    """Join the cluster at ray.address / RAY_ADDRESS, else start a Ray of our own. A cluster that
    refuses this driver's authentication token is a UserError (exit 2) naming the address and
    the token sources, found on the first refusal instead of after ray.init's ~20 s of retries."""
    import ray
    from ray.exceptions import AuthenticationError

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        kwargs["address"] = address
        check_token_accepted(address)
    else:
        # "local": a new Ray of our own, as documented. Without it ray.init() joins whatever
        # cluster /tmp/ray/ray_current_cluster names (another user's `ray start`, a test's).
        kwargs["address"] = "local"
        kwargs["num_cpus"] = cfg.ray.num_cpus
        if cfg.ray.num_gpus is not None:
            kwargs["num_gpus"] = cfg.ray.num_gpus
        kwargs["include_dashboard"] = False
        if config := socket_retries():
            kwargs["_system_config"] = config
    try:
        with contextlib.ExitStack() as stack:
            if not address:
                stack.enter_context(_without_unused_head_processes())
                stack.enter_context(_one_malloc_arena())
            ray.init(**kwargs)
    except AuthenticationError as e:  # e.g. RAY_AUTH_MODE=token and no token anywhere
        raise join_refused(kwargs["address"], e.message) from None
    if not address:  # before Ray's own shutdown at exit (atexit runs the last registered first)
        atexit.register(kill_autoscaler_monitor)


@contextlib.contextmanager
def _without_unused_head_processes():
    """A Ray of our own started without two head processes it never uses here. Ray offers no
    option to leave them out, so Ray's `Node.start_api_server` and `Node.start_monitor` are
    replaced for the length of `ray.init` (and put back after); any surprise there (a Ray without
    them) leaves the start as it was. Why each:
    - the dashboard's API server: with include_dashboard False, `ray.init` still starts it (for
      usage stats alone) and waits for it to publish its address before it starts the raylet:
      measured here 0.6-1.5 s of `ray.init`'s 2.6-3.6 s. A local Ray of batchscore's serves no
      dashboard, state API or job submission (a cluster the run joins keeps its own); Ray's
      dashboard agent then logs, in Ray's session logs only, that it finds no dashboard.
    - the autoscaler's monitor: a Ray of one machine with fixed resources has nothing to scale;
      its start took 0.35 CPU-s beside the replicas' start (2 CPUs), and at the end it delayed
      Ray's shutdown (`kill_autoscaler_monitor`)."""
    try:
        from ray._private.node import Node

        originals = {"start_api_server": Node.start_api_server, "start_monitor": Node.start_monitor}
    except (ImportError, AttributeError):
        yield
        return

    def no_api_server(self, *args: Any, **kwargs: Any) -> None:
        self._webui_url = None

    def no_monitor(self, *args: Any, **kwargs: Any) -> None:
        return None

    Node.start_api_server, Node.start_monitor = no_api_server, no_monitor
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(Node, name, method)


ARENA_ENV = "MALLOC_ARENA_MAX"


@contextlib.contextmanager
def _one_malloc_arena():
    """The processes of a Ray of our own (its workers: the replicas) start with glibc's malloc
    in one arena, unless the user's environment says otherwise. Why: a replica's forward pass
    runs on a thread of Ray's (the actor is threaded, pipeline/run/pool.py), and glibc gives
    such threads arenas of their own whose heaps are at most 64 MiB, so every activation of a
    65,536-row batch (64 MiB and more) is a fresh mmap, faulted in and zeroed by the kernel on
    every batch, whatever `keep_freed_memory` asks (measured: the DLRM's forward on one thread
    of a process, 12,796 page faults per batch and 1.33-1.38 us per row; with one arena, none
    and 0.93-1.00 us; in `perf record` of a GPU-shape run, 46 % of the replicas' CPU was the
    kernel clearing those pages). glibc reads it when a process starts: the variable is set
    for the length of `ray.init`, which starts Ray's processes, and the driver's own
    environment is left as it was. A cluster's workers take it from their own environment
    (docs/cluster.md)."""
    if ARENA_ENV in os.environ:
        yield
        return
    os.environ[ARENA_ENV] = "1"
    try:
        yield
    finally:
        os.environ.pop(ARENA_ENV, None)


# How often Ray's processes try a local socket that is not there yet, and how long they wait in
# between: Ray's default is 10 tries 1 s apart. The same 10 s in all, in steps of 50 ms.
SOCKET_RETRIES = {"raylet_client_connect_timeout_milliseconds": 50, "raylet_client_num_connect_attempts": 200}


def socket_retries() -> dict[str, int]:
    """The system config of a Ray of our own: local sockets retried every 50 ms instead of every
    second, unless the user's environment sets them (RAY_<name>). Why: the raylet starts its
    object store on a thread and connects to the store's socket at once; when the socket is not
    there yet (a race, lost in 3 of 8 starts measured here), the raylet slept a whole second
    before it tried again, and `ray.init` took 3.4-4.0 s instead of 2.3-2.5 s (raylet.out: the
    object manager started 1.00 s after the store). With it: 8 of 8 starts 2.3-2.8 s. The two
    go together: a user's setting of either leaves both to the user, and a Ray that no longer
    knows them (its GCS does not start with an unknown key) is started as it would be without them."""
    from ray._raylet import Config

    if any(f"RAY_{k}" in os.environ or not hasattr(Config, k) for k in SOCKET_RETRIES):
        return {}
    return dict(SOCKET_RETRIES)


def kill_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of the Ray this process started. Why: `ray.shutdown()` stops
    Ray's processes one after another, giving each 1 s to exit on SIGTERM, and the monitor never
    exits within it (measured here: 1.0 s of a 1.5 s shutdown, at the end of every run). A
    fixed-size Ray of one machine has nothing for it to scale, and the cluster is going away.
    Ray offers no option to start without it (`ray.init` does not pass `no_monitor`), so this
    reaches into the node Ray keeps for the processes it started; any surprise there leaves the
    shutdown as it was."""
    with contextlib.suppress(Exception):
        from ray._private import worker

        node = worker._global_node
        if node is not None and node.is_head():
            for info in node.all_processes.get("monitor", []):
                info.process.kill()


def fused_task_cap(cfg: JobConfig, pool: PoolPlan) -> int | None:
    """Fused mode with predict.max_replicas set: the most tasks (model copies) at once. Read and
    score get the same cap (Ray Data fuses task-pool stages only when their sizes are equal); the
    write then runs as its own stage (measured: capping it too split the read off instead)."""
    capped = pool.mode == "fused" and cfg.predict.max_replicas is not None
    return pool.max_replicas if capped else None


def stage_objects(
    p: Prepared,
    pool: PoolPlan,
    run_id: str,
    device_column: str | None = None,
    dead_letter: DeadLetterWriter | None = None,
    progress: Any = None,
) -> tuple[Preprocessor, dict[str, Any]]:
    """The preprocessing stage and the predictor's arguments, the same for either runner."""
    cfg = p.cfg
    predictor_kwargs = {
        "source": p.source,
        "passthrough": p.passthrough,
        "run_id": run_id,
        "output": OutputSpec.from_config(cfg, p.embedding_dim),
        "dead_letter": dead_letter.tagged("out") if dead_letter is not None else None,
        "device": "cpu" if pool.runner == "local" else cfg.predict.device,
        "precision": cfg.predict.precision,
        "num_threads": pool.torch_threads,
        "device_column": device_column,
        "progress": progress,
    }
    pre = Preprocessor(
        p.model_meta.spec() if not cfg.preprocessing.function else None,
        p.passthrough,
        cfg.preprocessing.function,
        required=p.requirements.columns,
        key_columns=cfg.output.key_columns,
        dead_letter=dead_letter,
        progress=progress,
        device_transforms=True,  # the numeric transforms run in the predictor, on its device
        duplicates=p.duplicates if cfg.output.duplicate_keys == "dead_letter" else None,
    )
    return pre, predictor_kwargs


def fused_scorer(p: Prepared, pre: Preprocessor, predictor_kwargs: dict[str, Any]) -> FusedScorer:
    return FusedScorer(pre, predictor_kwargs, p.cfg.predict.batch_size, p.cfg.preprocessing.batch_size)


def build_dataset(
    p: Prepared,
    pool: PoolPlan,
    run_id: str,
    device_column: str | None = None,
    dead_letter: DeadLetterWriter | None = None,
    progress: Any = None,
    read_keys: Any = None,
    models: Any = None,
):
    """The stages folded over the lazy read, as a Dataset of predictions: fused into one task per
    file, or preprocess tasks feeding an actor pool of model replicas (staged; resources from the
    config and the pool plan). The actors mode's replicas write themselves: pipeline/run/replicas.py.
    `read_keys`: where the read tasks record the input's key fingerprints (see read_dataset).
    `models`: the challengers of a top-K run (pipeline.run.challengers.RayModelSet), or None."""
    cfg = p.cfg
    cap = fused_task_cap(cfg, pool)
    columns = list(dict.fromkeys([*p.requirements.columns, cfg.input.partition_column]))
    ds = read_dataset(p.inputs, columns, cap, read_keys, parallelism=int(cap or pool.cluster_cpus))
    pre, predictor_kwargs = stage_objects(p, pool, run_id, device_column, dead_letter, progress)
    stage: Any = Predictor
    if models is not None:  # every model in each replica (or fused task)
        pre, stage, predictor_kwargs = models(pre, predictor_kwargs)
    if pool.mode == "fused":
        scorer: Any = fused_scorer(p, pre, predictor_kwargs)
        return _fused(ds, cfg, pool, cap, models.fused(scorer) if models is not None else scorer)
    return _actor_pool(ds, cfg, pool, pre, predictor_kwargs, stage)


def _fused(ds, cfg: JobConfig, pool: PoolPlan, cap: int | None, scorer: Any):
    from ray.data import TaskPoolStrategy

    return ds.map_batches(
        scorer,
        batch_format="pyarrow",
        batch_size=None,  # whole blocks: lets Ray Data fuse read -> score into one task per file
        compute=TaskPoolStrategy(size=cap),
        num_cpus=pool.num_cpus,
        label_selector=cfg.predict.label_selector,
    )


def _actor_pool(
    ds, cfg: JobConfig, pool: PoolPlan, pre: Preprocessor, predictor_kwargs: dict, stage: Any = Predictor
):
    from ray.data import ActorPoolStrategy

    ds = ds.map_batches(
        pre,
        batch_format="pyarrow",
        batch_size=cfg.preprocessing.batch_size,
        num_cpus=cfg.preprocessing.num_cpus,
        label_selector=cfg.preprocessing.label_selector,
    )
    return ds.map_batches(
        stage,
        fn_constructor_kwargs=predictor_kwargs,
        compute=ActorPoolStrategy(min_size=pool.min_replicas, max_size=pool.max_replicas),
        batch_size=cfg.predict.batch_size,
        batch_format="pyarrow",
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        label_selector=cfg.predict.label_selector,
    )


def run_data_context():
    """A copy of the caller's Ray Data context with this run's settings, made current for the
    `with` block: Ray Data seals the current context into each Dataset built in it, and the
    caller's own context (a library user's, in a long-lived process) is left as it was."""
    import copy

    from ray.data import DataContext

    ctx = copy.deepcopy(DataContext.get_current())
    ctx.enable_progress_bars = sys.stderr.isatty()
    # Ray 2.60's datasource V2 parquet path spends seconds in its ListFiles step even for a few
    # local files (measured: 2-10 s vs 0.3 s for V1 on 4 files); we pass exact file lists anyway.
    ctx.use_datasource_v2 = False
    # a stage's own error (a StageError naming the column or the model's output) reaches the
    # driver as itself, not only as the text of Ray Data's UserCodeException
    ctx.raise_original_map_exception = True
    return DataContext.current(ctx)


def ray_running() -> bool:
    """Ray is initialized in this process (checked without importing it)."""
    return running_ray() is not None


def choose_runner(cfg: JobConfig, ray_is_running: bool) -> tuple[str, str]:
    """(runner, why): where this run's stages run, from `ray.runner` (see its description)."""
    if cfg.ray.runner != "auto":
        return cfg.ray.runner, f"ray.runner is {cfg.ray.runner!r}"
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return "ray", "a Ray address is given (ray.address or RAY_ADDRESS)"
    if ray_is_running:
        return "ray", "Ray is initialized in this process"
    if cfg.output.top_k is not None:
        return "ray", "output.top_k shuffles by group (a Ray Data shuffle)"
    if cfg.predict.mode in ("actors", "staged"):
        return "ray", f"predict.mode is {cfg.predict.mode!r}"
    if cfg.ray.num_gpus is not None:
        return "ray", "ray.num_gpus is set (a new local Ray with that many GPUs)"
    if wants_gpu(cfg):
        return "ray", "the job wants a GPU (one replica per GPU in a Ray actor pool)"
    return "local", "one machine and no GPU: threads in this process; ray.runner: ray for a Ray job"


def wants_gpu(cfg: JobConfig) -> bool:
    """predict.device cuda, GPUs per replica > 0, or device auto with an NVIDIA driver and a
    device file present (checked without importing torch: a CPU run does not pay for it)."""
    if asks_for_gpu(cfg):
        return True
    if cfg.predict.device == "cpu" or os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/proc/driver/nvidia/version") and bool(glob.glob("/dev/nvidia[0-9]*"))


def asks_for_gpu(cfg: JobConfig) -> bool:
    gpus = cfg.predict.num_gpus_per_replica
    return cfg.predict.device == "cuda" or (gpus != "auto" and float(gpus) > 0)


def local_cpus(cfg: JobConfig) -> int:
    """CPUs this process may use: ray.num_cpus, else the affinity mask capped by a cgroup CPU
    quota (a container's limit; os.cpu_count() counts the host's). Ray reads the same quota
    when it starts; the local runner does not import Ray, hence these lines."""
    if cfg.ray.num_cpus:
        return cfg.ray.num_cpus
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def local_pool(cfg: JobConfig) -> PoolPlan:
    """The local runner's plan: the fused plan on this machine's CPUs (one scoring thread per
    replica, torch threads per replica as in fused Ray tasks). A GPU needs the Ray runner."""
    if asks_for_gpu(cfg):
        raise ConfigError(
            "ray.runner 'local' scores on CPU; predict.device 'cuda' or predict.num_gpus_per_replica "
            "> 0 need ray.runner 'ray' (or 'auto')"
        )
    if cfg.output.top_k is not None:
        raise ConfigError("output.top_k needs Ray's shuffle by group: set ray.runner to 'ray' or 'auto'")
    predict = cfg.predict.model_copy(update={"mode": "fused"})
    return replace(plan_pool(predict, [{"CPU": float(local_cpus(cfg))}]), runner="local")


def staged_because(cfg: JobConfig) -> str | None:
    """Why this job needs the staged pool (separate read/preprocess tasks feeding the replicas)
    instead of replicas that take their units through every stage; None: it does not."""
    if cfg.output.top_k is not None:
        return "output.top_k shuffles the predictions by group before the write"
    if cfg.preprocessing.label_selector:
        return "preprocessing.label_selector places preprocessing on other nodes than the replicas"
    return None


def start_ray(cfg: JobConfig) -> tuple[float, PoolPlan]:
    """Connect to (or start) Ray and size the scoring pool. Returns (seconds taken, pool)."""
    t0 = time.perf_counter()
    ensure_ray(cfg)
    pool = plan_pool(
        cfg.predict,
        cluster_nodes(cfg.predict.label_selector),
        cluster_cpus=sum(n.get("CPU", 0.0) for n in cluster_nodes()),
        staged=staged_because(cfg) is not None,
    )
    return time.perf_counter() - t0, pool
