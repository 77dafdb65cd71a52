"""The execute phase: Ray started (or joined), the pool sized, and the stages folded over one lazy
Dataset:

    read -> preprocess (CPU tasks) -> predict (actor pool) -> write
    read -> preprocess + predict, fused in one task per file -> write   (CPU-only pools)

Preprocessing on CPU does only what needs the Arrow data (string hashes, keys, numbers out of
their buffers, dead-letter checks); the numeric feature transforms run in the predictor, on the
replica's device (models.transforms).

Nothing is materialized on the driver; the write streams rows through all stages."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from pipeline.config import JobConfig
from pipeline.run.preflight import Prepared
from pipeline.run.resources import PoolPlan, cluster_nodes, plan_pool
from pipeline.stages.deadletter import DeadLetterWriter
from pipeline.stages.predict import FusedScorer, OutputSpec, Predictor
from pipeline.stages.preprocess import Preprocessor
from pipeline.stages.read import read_dataset


def ensure_ray(cfg: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        kwargs["address"] = address
    else:
        # "local": a new Ray of our own, as documented. Without it ray.init() joins whatever
        # cluster /tmp/ray/ray_current_cluster names (another user's `ray start`, a test's).
        kwargs["address"] = "local"
        kwargs["num_cpus"] = cfg.ray.num_cpus
        kwargs["include_dashboard"] = False
    ray.init(**kwargs)


def fused_task_cap(cfg: JobConfig, pool: PoolPlan) -> int | None:
    """Fused mode with predict.max_replicas set: the most tasks (model copies) at once. Read and
    score get the same cap (Ray Data fuses task-pool stages only when their sizes are equal); the
    write then runs as its own stage (measured: capping it too split the read off instead)."""
    capped = pool.mode == "fused" and cfg.predict.max_replicas is not None
    return pool.max_replicas if capped else None


def build_dataset(
    p: Prepared,
    pool: PoolPlan,
    run_id: str,
    device_column: str | None = None,
    dead_letter: DeadLetterWriter | None = None,
    progress: Any = None,
    read_keys: Any = None,
):
    """The stages folded over the lazy read: fused into one task per file, or preprocess tasks
    feeding an actor pool of model replicas (resources from the config and the pool plan).
    `read_keys`: where the read tasks record the input's key fingerprints (see read_dataset)."""
    cfg = p.cfg
    cap = fused_task_cap(cfg, pool)
    columns = list(dict.fromkeys([*p.requirements.columns, cfg.input.partition_column]))
    ds = read_dataset(p.inputs, columns, cap, read_keys)
    predictor_kwargs = {
        "source": p.source,
        "passthrough": p.passthrough,
        "run_id": run_id,
        "output": OutputSpec.from_config(cfg, p.embedding_dim),
        "dead_letter": dead_letter.tagged("out") if dead_letter is not None else None,
        "device": cfg.predict.device,
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
    )
    if pool.mode == "fused":
        return _fused(ds, cfg, pool, cap, pre, predictor_kwargs)
    return _actor_pool(ds, cfg, pool, pre, predictor_kwargs)


def _fused(ds, cfg: JobConfig, pool: PoolPlan, cap: int | None, pre: Preprocessor, predictor_kwargs: dict):
    from ray.data import TaskPoolStrategy

    return ds.map_batches(
        FusedScorer(pre, predictor_kwargs, cfg.predict.batch_size, cfg.preprocessing.batch_size),
        batch_format="pyarrow",
        batch_size=None,  # whole blocks: lets Ray Data fuse read -> score into one task per file
        compute=TaskPoolStrategy(size=cap),
        num_cpus=pool.num_cpus,
        label_selector=cfg.predict.label_selector,
    )


def _actor_pool(ds, cfg: JobConfig, pool: PoolPlan, pre: Preprocessor, predictor_kwargs: dict):
    from ray.data import ActorPoolStrategy

    ds = ds.map_batches(
        pre,
        batch_format="pyarrow",
        batch_size=cfg.preprocessing.batch_size,
        num_cpus=cfg.preprocessing.num_cpus,
        label_selector=cfg.preprocessing.label_selector,
    )
    return ds.map_batches(
        Predictor,
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


def start_ray(cfg: JobConfig) -> tuple[float, PoolPlan]:
    """Connect to (or start) Ray and size the scoring pool. Returns (seconds taken, pool)."""
    t0 = time.perf_counter()
    ensure_ray(cfg)
    pool = plan_pool(
        cfg.predict,
        cluster_nodes(cfg.predict.label_selector),
        cluster_cpus=sum(n.get("CPU", 0.0) for n in cluster_nodes()),
    )
    return time.perf_counter() - t0, pool
