"""Unit tests for pipeline.run.resources.plan_pool (pure function of the config and node resources)."""

from __future__ import annotations

import logging

import pytest

from pipeline.config import PredictConfig
from pipeline.errors import ConfigError
from pipeline.run.resources import plan_pool


def predict(**kw) -> PredictConfig:
    """A staged CPU pool unless the test says otherwise (separate read tasks beside the replicas:
    the sizing rules below keep CPUs free for them; actors mode has its own tests at the end)."""
    return PredictConfig(**{"mode": "staged", **kw})


def test_cpu_only_two_cpu_node_min_two_replicas_refused():
    with pytest.raises(ConfigError) as ei:
        plan_pool(predict(min_replicas=2, max_replicas=2), [{"CPU": 2.0}])
    msg = str(ei.value)
    assert "cannot be scheduled" in msg
    assert "reserve_cpus" in msg
    assert "predict.min_replicas=2" in msg
    assert "at most 1 replica(s) fit" in msg


def test_cpu_only_two_cpu_node_one_replica_fits():
    plan = plan_pool(predict(min_replicas=1, max_replicas=4), [{"CPU": 2.0}])
    assert (plan.min_replicas, plan.max_replicas) == (1, 1)
    assert (plan.num_cpus, plan.num_gpus) == (1.0, 0.0)
    assert (plan.cluster_cpus, plan.cluster_gpus) == (2.0, 0.0)


def test_zero_reserve_lets_replicas_take_every_cpu():
    plan = plan_pool(predict(min_replicas=2, max_replicas=2, reserve_cpus=0), [{"CPU": 2.0}])
    assert plan.max_replicas == 2


def test_max_replicas_capped_by_cpus(caplog):
    with caplog.at_level(logging.INFO, logger="batchscore"):
        plan = plan_pool(predict(min_replicas=1, max_replicas=10, num_cpus_per_replica=2), [{"CPU": 8.0}])
    # (8 - 1 reserved) / 2 = 3.5 -> 3
    assert plan.max_replicas == 3
    assert plan.min_replicas == 1
    assert "capped to 3" in caplog.text


def test_max_replicas_not_raised_above_config():
    plan = plan_pool(predict(min_replicas=1, max_replicas=2), [{"CPU": 64.0}])
    assert plan.max_replicas == 2


def test_gpus_auto_one_per_replica_capped_by_gpu_count():
    nodes = [{"CPU": 16.0, "GPU": 2.0}]
    plan = plan_pool(predict(min_replicas=1, max_replicas=8), nodes)
    assert plan.num_gpus == 1.0
    assert plan.max_replicas == 2
    assert plan.cluster_gpus == 2.0


def test_gpus_auto_across_nodes():
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}]
    plan = plan_pool(predict(min_replicas=2, max_replicas=8), nodes)
    assert plan.num_gpus == 1.0
    assert plan.max_replicas == 2
    with pytest.raises(ConfigError, match=r"1 CPU \+ 1 GPU each"):
        plan_pool(predict(min_replicas=3, max_replicas=8), nodes)


def test_gpus_auto_is_zero_without_gpus_or_with_device_cpu():
    assert plan_pool(predict(max_replicas=3), [{"CPU": 8.0}]).num_gpus == 0.0
    plan = plan_pool(predict(max_replicas=3, device="cpu"), [{"CPU": 8.0, "GPU": 1.0}])
    assert plan.num_gpus == 0.0
    assert plan.max_replicas == 3


def test_fractional_gpus_share_a_gpu():
    plan = plan_pool(predict(max_replicas=8, num_gpus_per_replica=0.5), [{"CPU": 16.0, "GPU": 2.0}])
    assert plan.num_gpus == 0.5
    assert plan.max_replicas == 4


def test_explicit_gpus_on_cpu_cluster_refused():
    with pytest.raises(ConfigError, match="cannot be scheduled"):
        plan_pool(predict(num_gpus_per_replica=1), [{"CPU": 8.0}])


@pytest.mark.parametrize("gpus", ["auto", 0, 1])
def test_device_cuda_without_gpus_refused(gpus):
    with pytest.raises(ConfigError, match="predict.device is 'cuda' but the cluster has 0 GPUs"):
        plan_pool(predict(device="cuda", num_gpus_per_replica=gpus), [{"CPU": 8.0}])


def test_device_cuda_with_zero_gpus_per_replica_refused():
    with pytest.raises(ConfigError, match="num_gpus_per_replica is 0"):
        plan_pool(predict(device="cuda", num_gpus_per_replica=0), [{"CPU": 8.0, "GPU": 1.0}])


def test_device_cuda_with_gpus_ok():
    plan = plan_pool(predict(device="cuda"), [{"CPU": 8.0, "GPU": 1.0}])
    assert plan.num_gpus == 1.0


def test_replica_larger_than_any_node_does_not_fit():
    """8 CPUs in total, but a 4-CPU replica fits on none of the 2-CPU nodes."""
    nodes = [{"CPU": 2.0}] * 4
    with pytest.raises(ConfigError) as ei:
        plan_pool(predict(num_cpus_per_replica=4), nodes)
    msg = str(ei.value)
    assert "cannot be scheduled" in msg
    assert "at most 0 replica(s) fit" in msg
    assert "8 CPUs" in msg and "4 node(s)" in msg


def test_multi_node_sum_of_per_node_fits():
    # 3-CPU nodes hold one 2-CPU replica each (not 1.5): 3 replicas, not floor((9-1)/2) = 4
    nodes = [{"CPU": 3.0}] * 3
    plan = plan_pool(predict(max_replicas=10, num_cpus_per_replica=2), nodes)
    assert plan.max_replicas == 3
    assert plan.cluster_cpus == 9.0


def test_reserve_counts_across_the_cluster():
    nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    plan = plan_pool(predict(max_replicas=10, num_cpus_per_replica=2, reserve_cpus=2), nodes)
    # 4 would fit on the nodes, 3 leave 2 CPUs free
    assert plan.max_replicas == 3


def test_no_nodes_refused():
    with pytest.raises(ConfigError, match="0 node"):
        plan_pool(predict(), [])


def test_mode_auto_fuses_on_cpu_only_and_uses_actors_with_gpus():
    assert plan_pool(PredictConfig(), [{"CPU": 2.0}]).mode == "fused"
    assert plan_pool(PredictConfig(), [{"CPU": 8.0, "GPU": 2.0}]).mode == "actors"
    assert plan_pool(PredictConfig(mode="actors"), [{"CPU": 2.0}]).mode == "actors"


def test_mode_fused_with_gpu_replicas_is_refused():
    with pytest.raises(ConfigError, match="predict.mode 'actors'"):
        plan_pool(PredictConfig(mode="fused"), [{"CPU": 8.0, "GPU": 1.0}])


def test_torch_threads_auto():
    # fused: one thread per task CPU; parallelism comes from one task per CPU
    assert plan_pool(PredictConfig(), [{"CPU": 16.0}]).torch_threads == 1
    assert plan_pool(PredictConfig(num_cpus_per_replica=2), [{"CPU": 16.0}]).torch_threads == 2
    # CPU actors: the cluster's CPUs shared among the replicas, at most one node's CPUs
    actors = PredictConfig(mode="actors", max_replicas=1)
    assert plan_pool(actors, [{"CPU": 2.0}]).torch_threads == 2
    four = PredictConfig(mode="actors", max_replicas=4)
    assert plan_pool(four, [{"CPU": 16.0}]).torch_threads == 4
    assert plan_pool(PredictConfig(mode="staged"), [{"CPU": 4.0}, {"CPU": 4.0}]).torch_threads == 4
    # GPU replicas: their own CPUs; an explicit value wins
    assert plan_pool(PredictConfig(), [{"CPU": 16.0, "GPU": 1.0}]).torch_threads == 1
    assert plan_pool(PredictConfig(torch_threads=3, mode="actors"), [{"CPU": 16.0}]).torch_threads == 3


def test_fused_keeps_no_cpus_free_and_caps_only_when_max_replicas_is_set():
    one_cpu = plan_pool(PredictConfig(), [{"CPU": 1.0}])  # an actor pool would be refused here
    assert one_cpu.mode == "fused" and one_cpu.max_replicas == 1
    assert plan_pool(PredictConfig(), [{"CPU": 16.0}]).max_replicas == 16  # one task per CPU
    assert plan_pool(PredictConfig(max_replicas=2), [{"CPU": 16.0}]).max_replicas == 2
    assert plan_pool(PredictConfig(num_cpus_per_replica=4), [{"CPU": 16.0}]).max_replicas == 4


def test_fused_task_larger_than_any_node_is_refused():
    with pytest.raises(ConfigError, match="no node has predict.num_cpus_per_replica=4"):
        plan_pool(PredictConfig(num_cpus_per_replica=4), [{"CPU": 2.0}] * 4)


def test_actors_mode_shares_each_gpu_among_its_cpus():
    """Replicas that read, preprocess and write themselves: one per CPU of a GPU node, sharing its
    GPU, no CPU kept free for read tasks."""
    plan = plan_pool(PredictConfig(), [{"CPU": 16.0, "GPU": 1.0}])
    assert plan.mode == "actors"
    assert plan.max_replicas == 16
    assert plan.num_gpus == 0.0625 and plan.num_gpus * 16 <= 1.0
    two = plan_pool(PredictConfig(), [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 4.0}])
    assert two.num_gpus == 0.125 and two.max_replicas == 16  # 8 per GPU; the CPU node has none
    thirds = plan_pool(PredictConfig(), [{"CPU": 3.0, "GPU": 1.0}])
    assert thirds.num_gpus == 0.3333 and thirds.max_replicas == 3  # 1e-4 units: 3 fit on a GPU


def test_actors_mode_replicas_per_gpu_and_cpus_per_replica():
    nodes = [{"CPU": 16.0, "GPU": 1.0}]
    assert plan_pool(PredictConfig(replicas_per_gpu=4), nodes).max_replicas == 4
    two_cpus = plan_pool(PredictConfig(num_cpus_per_replica=2), nodes)
    assert (two_cpus.max_replicas, two_cpus.num_gpus, two_cpus.torch_threads) == (8, 0.125, 2)
    assert plan_pool(PredictConfig(num_gpus_per_replica=1), nodes).max_replicas == 1  # explicit wins
    assert plan_pool(PredictConfig(max_replicas=3), nodes).max_replicas == 3


def test_staged_mode_one_replica_per_gpu_and_cpus_kept_free():
    plan = plan_pool(PredictConfig(), [{"CPU": 16.0, "GPU": 2.0}], staged=True)
    assert plan.mode == "staged" and plan.num_gpus == 1.0 and plan.max_replicas == 1
    cpu = plan_pool(PredictConfig(mode="actors", max_replicas=2), [{"CPU": 2.0}], staged=True)
    assert cpu.mode == "staged" and cpu.max_replicas == 1  # one CPU kept for the read tasks


def test_actors_mode_on_cpus_takes_every_cpu():
    plan = plan_pool(PredictConfig(mode="actors"), [{"CPU": 2.0}])
    assert (plan.mode, plan.max_replicas, plan.num_gpus, plan.torch_threads) == ("actors", 2, 0.0, 1)
