"""GPU tier: runs only where CUDA is available (skipped on CPU-only machines and in CI here)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible"),
]


def _batch(checkpoints, dataset):
    from support import DATES, read_input

    from pipeline.stages.preprocess import Preprocessor

    table = read_input(str(dataset), DATES[0])  # carries ds from the hive path
    return Preprocessor(checkpoints.spec, ["event_id", "ds"])(table)


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("bf16", 3e-2), ("fp16", 5e-3)])
def test_predictor_on_cuda_matches_cpu(checkpoints, dataset, precision, tol):
    from pipeline.stages.predict import ModelSource, Predictor

    batch = _batch(checkpoints, dataset)
    src = ModelSource(uri=checkpoints.entries["safetensors"][0])
    cpu = Predictor(src, ["event_id"], run_id="t", device="cpu")(batch)
    gpu_pred = Predictor(src, ["event_id"], run_id="t", device="cuda", precision=precision)
    assert gpu_pred.device == "cuda:0"
    gpu = gpu_pred(batch)
    a = cpu.column("score").to_numpy()
    b = gpu.column("score").to_numpy()
    assert abs(a - b).max() < tol, f"{precision}: GPU vs CPU max abs diff {abs(a - b).max()}"
    # a smaller second batch reuses the pinned buffers and still matches the CPU
    again = gpu_pred(batch.slice(0, 1000)).column("score").to_numpy()
    assert abs(again - a[:1000]).max() < tol, (
        f"{precision}: reused buffers diff {abs(again - a[:1000]).max()}"
    )


def test_pipeline_replica_runs_on_the_gpu(ray_cluster, dataset, checkpoints, tmp_path):
    from support import DATES, direct_scores, make_config, read_input, read_output, scores_by_key

    from pipeline.run.score import run_score

    model_uri, _ = checkpoints.entries["safetensors"]
    cfg = make_config(str(dataset), model_uri, str(tmp_path / "out"), predict={"max_replicas": 1})
    report = run_score(cfg, [DATES[0]])
    # actors mode: the replica shares the GPU with the others the head's CPUs could feed
    assert report.pool.mode == "actors" and 0 < report.pool.num_gpus <= 1.0
    assert report.replicas and all(r.device.startswith("cuda") for r in report.replicas), report.replicas
    inp = read_input(str(dataset), DATES[0])
    got = scores_by_key(read_output(str(tmp_path / "out"), DATES[0]))
    want = dict(
        zip(
            inp.column("event_id").to_pylist(),
            direct_scores(model_uri, inp, checkpoints.spec).tolist(),
            strict=True,
        )
    )
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-4
