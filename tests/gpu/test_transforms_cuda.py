"""GPU tier: the feature transforms on CUDA against the CPU and the numpy reference (skipped
without CUDA). Bucket ids must be bit-exact (int64 arithmetic is exact on any device); dense values
within 1 float32 ulp (CUDA's float64 log1p may differ from glibc's/SLEEF's in the last float64
bit; tests/feature_parity.py says why that is at most one float32 step)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

_M64 = (1 << 64) - 1


def _on(device: str, encoded, spec):
    from models.features import stack_encoded
    from models.transforms import FeatureTransform

    with torch.inference_mode():
        out = FeatureTransform(spec, device)(
            *(torch.from_numpy(a).to(device) for a in stack_encoded(encoded, spec))
        )
        assert all(t.device.type == torch.device(device).type and t.is_contiguous() for t in out.values())
    return {k: v.cpu().numpy() for k, v in out.items()}


def test_uint64_arithmetic_on_cuda_int64():
    from feature_parity import INT64_EDGES

    from models.transforms import splitmix64, umod

    rng = np.random.default_rng(5)
    values = INT64_EDGES + [int(v) for v in rng.integers(-(2**63), 2**63 - 1, 100_000, endpoint=True)]
    x = torch.tensor(values, dtype=torch.int64)
    assert torch.equal(splitmix64(x.cuda()).cpu(), splitmix64(x))
    for m in (1, 96, 1_000_002, 2**31 - 2, 2**62 + 6, 2**63 - 1):
        got = umod(x.cuda(), torch.tensor(m).cuda(), torch.tensor((1 << 64) % m).cuda()).cpu().tolist()
        assert got == [(v & _M64) % m for v in values], m


@pytest.mark.parametrize("views", [False, True])
def test_mixed_table_on_cuda_matches_cpu_and_numpy(views):
    from feature_parity import assert_dense_parity, mixed_table
    from feature_parity import transform_table as np_transform_table

    from models.features import encode_table

    table, spec = mixed_table(20_000, views=views)
    enc = encode_table(table, spec)
    gpu, cpu = _on("cuda:0", enc, spec), _on("cpu", enc, spec)
    np.testing.assert_array_equal(gpu["cat"], cpu["cat"])
    assert_dense_parity(gpu["dense"], cpu["dense"], "cuda vs cpu")
    if not views:
        want = np_transform_table(table, spec)
        np.testing.assert_array_equal(gpu["cat"], want["cat"])
        assert_dense_parity(gpu["dense"], want["dense"], "cuda vs numpy")


def test_demo_features_a_million_rows_on_cuda():
    from feature_parity import assert_dense_parity
    from feature_parity import transform_table as np_transform_table

    from jobs.synthetic import FEATURES, SyntheticSpec, generate_day
    from models.features import encode_table, fit_dense_stats

    table = generate_day("2026-10-01", SyntheticSpec(rows_per_day=1_000_000))
    spec = fit_dense_stats(table.slice(0, 100_000), FEATURES)
    enc = encode_table(table, spec)
    gpu = _on("cuda:0", enc, spec)
    want = np_transform_table(table, spec)
    np.testing.assert_array_equal(gpu["cat"], want["cat"])
    assert_dense_parity(gpu["dense"], want["dense"], "cuda vs numpy")
    identical = float((gpu["dense"] == want["dense"]).mean())
    print(f"dense values identical to numpy on CUDA: {identical:.7f}")


def test_predictor_on_cuda_transforms_on_the_device(checkpoints, dataset):
    """The pipeline's split: encoded batch -> predictor on CUDA scores like the CPU predictor."""
    from support import DATES, read_input

    from pipeline.stages.predict import ModelSource, Predictor
    from pipeline.stages.preprocess import Preprocessor

    table = read_input(str(dataset), DATES[0])
    batch = Preprocessor(checkpoints.spec, ["event_id", "ds"], device_transforms=True)(table)
    src = ModelSource(uri=checkpoints.entries["safetensors"][0])
    cpu = Predictor(src, ["event_id"], run_id="t", device="cpu")(batch).column("score").to_numpy()
    gpu_pred = Predictor(src, ["event_id"], run_id="t", device="cuda")
    gpu = gpu_pred(batch).column("score").to_numpy()
    assert gpu_pred.transform is not None and gpu_pred.transform.device.type == "cuda"
    assert np.abs(gpu - cpu).max() < 1e-4
    # the same batch transformed on CPU in preprocessing (the old split) scores the same on CUDA
    full = Preprocessor(checkpoints.spec, ["event_id", "ds"])(table)
    assert np.abs(gpu_pred(full).column("score").to_numpy() - gpu).max() < 1e-6
