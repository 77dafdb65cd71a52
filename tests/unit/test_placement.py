"""The pool plan's placement of challengers (pipeline.run.resources.plan_placement): shared replicas
or pools of their own, from the models' sizes, a replica's memory and the config's override."""

from __future__ import annotations

import struct

import pytest

from pipeline.config import PredictConfig, config_from_dict
from pipeline.errors import ConfigError
from pipeline.reporting.schema import Pool
from pipeline.run.resources import plan_placement, plan_pool, replica_memory_gb

GB = 2**30
H200 = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H200": 1.0}


def gpu_pool(replicas_per_gpu: int = 8, node: dict | None = None, **kw):
    predict = PredictConfig(mode="actors", replicas_per_gpu=replicas_per_gpu, **kw)
    node = node or H200
    return predict, [node], plan_pool(predict, [node])


def test_small_models_share_the_gpu_replicas():
    predict, nodes, pool = gpu_pool()
    memory = replica_memory_gb(predict, nodes, pool)
    assert memory == pytest.approx(141 / 8, abs=0.01)  # the H200's memory over its 8 replicas
    place = plan_placement("auto", pool, 2 * GB, {"v8": 3 * GB}, memory)
    assert place.challengers == "shared" and place.own == []
    assert place.replicas == {"champion": 8}
    assert "fit in 50% of a replica's" in place.why
    assert place.model_mb == {"champion": pytest.approx(2147.484, abs=0.01), "v8": pytest.approx(3221.226)}


def test_a_big_challenger_gets_replicas_of_its_own():
    predict, nodes, pool = gpu_pool()
    memory = replica_memory_gb(predict, nodes, pool)  # 17.6 GiB: 8.8 for weights
    place = plan_placement("auto", pool, 4 * GB, {"small": 1 * GB, "big": 6 * GB}, memory)
    assert place.challengers == "own" and place.own == ["big"]
    assert place.replicas == {"champion": 4, "big": 4}
    assert "big" in place.why and "do not fit" in place.why


def test_the_smallest_challengers_stay_beside_the_champion():
    _, _, pool = gpu_pool()
    place = plan_placement("auto", pool, 1 * GB, {"a": 3 * GB, "b": 2 * GB, "c": 4 * GB}, 14.0)
    # budget 7 GiB: champion 1 + b 2 + a 3 = 6 fit, c does not
    assert place.own == ["c"] and place.replicas == {"champion": 4, "c": 4}


def test_cpu_replicas_always_share_under_auto():
    predict = PredictConfig(mode="actors")
    pool = plan_pool(predict, [{"CPU": 4.0}])
    assert replica_memory_gb(predict, [{"CPU": 4.0}], pool) is None
    place = plan_placement("auto", pool, 50 * GB, {"huge": 500 * GB}, None)
    assert place.challengers == "shared" and "CPU replicas" in place.why


def test_the_override_forces_own_or_shared():
    _, _, pool = gpu_pool(replicas_per_gpu=4)
    own = plan_placement("own", pool, 1, {"a": 1, "b": 1}, 35.0)
    assert own.own == ["a", "b"] and own.replicas == {"champion": 2, "a": 1, "b": 1}
    assert own.why == "predict.challengers_placement is 'own'"
    shared = plan_placement("shared", pool, 40 * GB, {"a": 40 * GB}, 35.0)
    assert shared.challengers == "shared" and shared.replicas == {"champion": 4}


def test_own_with_fewer_replicas_than_pools_is_refused_and_auto_falls_back():
    _, _, pool = gpu_pool(replicas_per_gpu=1)
    with pytest.raises(ConfigError, match=r"predict.challengers_placement 'own': 2 pools .* fits 1"):
        plan_placement("own", pool, 1, {"a": 1}, 141.0)
    place = plan_placement("auto", pool, 60 * GB, {"a": 60 * GB}, 141.0)
    assert place.challengers == "shared" and "cannot make 2 pools" in place.why


def test_own_outside_the_actors_mode_is_refused():
    pool = plan_pool(PredictConfig(mode="fused"), [{"CPU": 2.0}])
    with pytest.raises(ConfigError, match="needs the Ray runner's actors mode"):
        plan_placement("own", pool, 1, {"a": 1}, None)
    assert "holds every model" in plan_placement("auto", pool, 1, {"a": 1}, None).why


def test_replica_memory_from_the_config_or_an_unknown_gpu():
    predict, nodes, pool = gpu_pool(replicas_per_gpu=2, node={"CPU": 4.0, "GPU": 1.0}, replica_memory_gb=40)
    assert replica_memory_gb(predict, nodes, pool) == 40.0
    predict, nodes, pool = gpu_pool(replicas_per_gpu=2, node={"CPU": 4.0, "GPU": 1.0})
    assert replica_memory_gb(predict, nodes, pool) == 8.0  # 16 GiB when Ray names no known type


def test_a_bad_setting_names_the_key_and_the_allowed_values():
    raw = {
        "name": "x",
        "input": {"uri": "/tmp/in"},
        "model": {"uri": "/tmp/m"},
        "output": {"uri": "/tmp/out", "key_columns": ["k"]},
        "predict": {"challengers_placement": "apart", "replica_memory_gb": 0},
    }
    with pytest.raises(ConfigError) as ei:
        config_from_dict(raw)
    msg = str(ei.value)
    assert "predict.challengers_placement" in msg and "'auto', 'shared' or 'own'" in msg
    assert "predict.replica_memory_gb" in msg


def test_the_placement_is_typed_in_the_report():
    from dataclasses import asdict

    _, _, pool = gpu_pool(replicas_per_gpu=4)
    pool.placement = plan_placement("own", pool, 1, {"a": 1}, 35.0)
    part = Pool(**asdict(pool))
    assert part.placement.challengers == "own" and part.placement.replicas == {"champion": 2, "a": 2}


def test_weight_bytes_read_from_the_safetensors_header(tmp_path):
    from models.checkpoint import weight_bytes

    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    assert weight_bytes(str(path), "safetensors") == 16
    script = tmp_path / "model.ts"
    script.write_bytes(bytes(1234))
    assert weight_bytes(str(script), "torchscript") == 1234


def test_the_summary_names_the_challengers_with_replicas_of_their_own():
    from reportdata import sample_report

    from pipeline.reporting.schema import load
    from pipeline.reporting.summary import pool_line

    data = sample_report()
    data["pool"] = {
        "runner": "ray",
        "mode": "actors",
        "min_replicas": 1,
        "max_replicas": 2,
        "num_cpus": 1.0,
        "num_gpus": 0.25,
        "placement": {"challengers": "own", "own": ["v8"], "replicas": {"champion": 2, "v8": 2}, "why": "w"},
    }
    line = pool_line(load(data))
    assert line.endswith("; challengers with replicas of their own: v8 x2 (w)")
    data["pool"]["placement"] = {"challengers": "shared", "why": "fits"}
    assert "own" not in pool_line(load(data))
