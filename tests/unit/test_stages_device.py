"""The split of the feature transforms between the stages: the preprocess stage (CPU) hands over
the encoded columns, the predict stage applies the numeric transforms on its device (here the CPU;
tests/gpu/test_transforms_cuda.py runs it on CUDA). Dead letters and scores do not depend on where
the transforms run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from feature_parity import transform_table as np_transform_table

from models.checkpoint import save_checkpoint
from models.dlrm import build_dlrm
from models.features import (
    CategoricalFeature,
    DenseFeature,
    FeatureSpec,
    encode_table,
    encoded_columns,
    stack_encoded,
)
from models.transforms import FeatureTransform
from pipeline.errors import StageError
from pipeline.stages.predict import ModelSource, Predictor
from pipeline.stages.preprocess import Preprocessor, tensor_column_to_numpy

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")]

PASSTHROUGH = ["event_id", "ds"]
SMALL = {"embedding_dim": 4, "bottom_mlp": [8], "top_mlp": [8]}


@pytest.fixture
def spec() -> FeatureSpec:
    return FeatureSpec(
        categorical=[
            CategoricalFeature("user_id", 101),
            CategoricalFeature("item", 13),
            CategoricalFeature("device", 8),
        ],
        dense=[
            DenseFeature("price", log1p=True, clip_min=0.0, mean=2.0, std=1.5),
            DenseFeature("age", fill=30.0, clip_max=90.0, on_nonfinite="reject", mean=35.0, std=10.0),
        ],
    )


@pytest.fixture
def table() -> pa.Table:
    rng = np.random.default_rng(11)
    n = 300
    price = rng.lognormal(2.0, 1.5, n) - 3.0  # some negatives into log1p
    price[::17] = np.nan
    price[5], price[6] = np.inf, -np.inf
    age = [None if i % 23 == 0 else float(v) for i, v in enumerate(rng.integers(10, 120, n))]
    age[40] = float("nan")
    return pa.table(
        {
            "event_id": pa.array([None if i == 77 else f"e{i}" for i in range(n)]),
            "user_id": pa.array(
                [None if i % 11 == 0 else int(v) for i, v in enumerate(rng.integers(0, 10**12, n))]
            ),
            "item": pa.array([None if i % 7 == 0 else f"item-{i % 40}" for i in range(n)], pa.large_string()),
            "device": pa.array([["ios", "web", None][i % 3] for i in range(n)]).dictionary_encode(),
            "price": pa.array(price),
            "age": pa.array(age),
            "ds": pa.array(["2026-11-04"] * n),
        }
    )


@pytest.fixture
def clean(table) -> pa.Table:
    """The rows that can be scored (no null key, no non-finite age)."""
    return table.filter(pa.array([i % 23 != 0 and i not in (40, 77) for i in range(table.num_rows)]))


class CollectDeadLetters:
    def __init__(self) -> None:
        self.rows: list[pa.Table] = []
        self.reasons: list[str] = []

    def write(self, rows: pa.Table, reasons: np.ndarray, batch: pa.Table | None = None) -> int:
        self.rows.append(rows)
        self.reasons.extend(reasons.tolist())
        return rows.num_rows


def test_preprocess_hands_over_plain_encoded_columns(clean, spec):
    out = Preprocessor(spec, PASSTHROUGH, device_transforms=True)(clean)
    assert out.column_names == [*PASSTHROUGH, *encoded_columns(spec)]
    for got, want in zip(
        stack_encoded(out, spec), stack_encoded(encode_table(clean, spec), spec), strict=True
    ):
        np.testing.assert_array_equal(got, want)  # NaN equal to NaN
    # the int64 key and the float64 values are the input columns themselves, not copies
    for c, src in (("cat_key:user_id", "user_id"), ("dense_raw:price", "price")):
        assert out.column(c).chunk(0).buffers()[1].address == clean.column(src).chunk(0).buffers()[1].address


def test_dead_letters_identical_with_and_without_device_transforms(table, spec):
    """Which rows go to the dead letters, with which reasons, does not depend on where the numeric
    transforms run, and the rows that go on get the same model inputs."""
    results = {}
    for device_transforms in (False, True):
        dl = CollectDeadLetters()
        pre = Preprocessor(
            spec, PASSTHROUGH, key_columns=["event_id"], dead_letter=dl, device_transforms=device_transforms
        )
        results[device_transforms] = (pre(table), dl)
    (full, dl_full), (encoded, dl_enc) = results[False], results[True]
    assert dl_full.reasons == dl_enc.reasons
    a, b = pa.concat_tables(dl_full.rows), pa.concat_tables(dl_enc.rows)
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:  # numpy's comparison: NaN equals NaN, Arrow's does not
        np.testing.assert_array_equal(a.column(name).to_numpy(), b.column(name).to_numpy(), err_msg=name)
    assert "null key column 'event_id'" in dl_enc.reasons
    assert "non-finite value in 'age' (spec says reject)" in dl_enc.reasons
    assert len(dl_enc.reasons) == 1 + sum(1 for i in range(300) if i % 23 == 0 or i == 40) - (77 % 23 == 0)
    assert full.select(PASSTHROUGH).equals(encoded.select(PASSTHROUGH))
    feats = FeatureTransform(spec)(*(torch.from_numpy(a) for a in stack_encoded(encoded, spec)))
    np.testing.assert_array_equal(feats["cat"].numpy(), tensor_column_to_numpy(full.column("cat")))
    np.testing.assert_array_equal(feats["dense"].numpy(), tensor_column_to_numpy(full.column("dense")))


def test_preprocess_refuses_passthrough_named_like_encoded_columns(spec):
    with pytest.raises(StageError, match=r"\['dense_raw:age'\] look like encoded feature columns"):
        Preprocessor(spec, ["event_id", "dense_raw:age"], device_transforms=True)


@pytest.fixture
def checkpoint(tmp_path, spec) -> str:
    torch.manual_seed(2)
    model = build_dlrm([f.buckets for f in spec.categorical], len(spec.dense), **SMALL).eval()
    arch = {
        "builtin": "dlrm",
        "kwargs": {"buckets": [f.buckets for f in spec.categorical], "num_dense": 2, **SMALL},
    }
    save_checkpoint(str(tmp_path / "ckpt"), model, version="v1", feature_spec=spec, architecture=arch)
    return str(tmp_path / "ckpt")


def test_predict_applies_the_transforms_from_the_checkpoint_spec(clean, spec, checkpoint):
    """Encoded batch -> predictor (transforms on its device, here the CPU) scores exactly like the
    model inputs computed in preprocessing, and like the numpy reference within float32 rounding."""
    pred = Predictor(ModelSource(uri=checkpoint), ["event_id"], run_id="r", device="cpu")
    keep = clean
    on_device = pred(Preprocessor(spec, PASSTHROUGH, device_transforms=True)(keep))
    on_cpu = pred(Preprocessor(spec, PASSTHROUGH)(keep))
    assert on_device.equals(on_cpu)
    want = np_transform_table(keep, spec)
    with torch.no_grad():
        ref = pred.model(torch.from_numpy(want["cat"]), torch.from_numpy(want["dense"])).numpy()
    assert np.max(np.abs(on_device.column("score").to_numpy() - ref)) < 1e-6
    # an empty batch (every row dead-lettered) still gives an empty result
    assert pred(Preprocessor(spec, PASSTHROUGH, device_transforms=True)(keep.slice(0, 0))).num_rows == 0


def test_predict_encoded_batch_needs_a_spec_and_cat_dense_inputs(clean, spec, checkpoint):
    batch = Preprocessor(spec, PASSTHROUGH, device_transforms=True)(clean.slice(0, 10))
    pred = Predictor(ModelSource(uri=checkpoint, inputs=["dense", "extra"]), [], run_id="r", device="cpu")
    with pytest.raises(StageError, match=r"model inputs \['extra'\] are not made by the built-in"):
        pred(batch)
    pred = Predictor(ModelSource(uri=checkpoint), [], run_id="r", device="cpu")
    with pytest.raises(StageError, match=r"missing columns \['dense_raw:age'\]"):
        pred(batch.drop_columns(["dense_raw:age"]))
    pred = Predictor(ModelSource(uri=checkpoint), [], run_id="r", device="cpu")
    pred.loaded.meta.feature_spec = None  # as for a bare model file without preprocessing.features
    with pytest.raises(StageError, match="has no feature spec"):
        pred(batch)


def test_staging_buffers_for_a_gpu_are_reused_and_filled_in_place(clean, spec, checkpoint, monkeypatch):
    """The GPU path's host side, on CPU: feature-major views of reused buffers, filled by
    stack_encoded (pinning itself needs CUDA; tests/gpu covers the copy to the device)."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **kw: real_empty(*a, **kw))
    pred = Predictor(ModelSource(uri=checkpoint), [], run_id="r", device="cpu")
    batch = Preprocessor(spec, PASSTHROUGH, device_transforms=True)(clean)
    n, c, d = batch.num_rows, len(spec.categorical), len(spec.dense)
    views = [
        pred._pinned_rows("cat_key", c, n, torch.int64),
        pred._pinned_rows("cat_null", c, n, torch.bool),
        pred._pinned_rows("dense_raw", d, n, torch.float64),
    ]
    assert [tuple(v.shape) for v in views] == [(c, n), (c, n), (d, n)] and all(
        v.is_contiguous() for v in views
    )
    stack_encoded(batch, spec, tuple(v.numpy() for v in views))
    for got, want in zip(views, stack_encoded(batch, spec), strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    small = pred._pinned_rows("cat_key", c, n // 2, torch.int64)  # a smaller batch: same memory
    assert small.data_ptr() == views[0].data_ptr() and small.shape == (c, n // 2) and small.is_contiguous()
    bigger = pred._pinned_rows("cat_key", c, 2 * n, torch.int64)  # a bigger one: grown
    assert bigger.shape == (c, 2 * n)
    assert pred._pinned_rows("cat_key", 0, n, torch.int64).shape == (0, n)


def test_sliced_and_multi_chunk_encoded_batches_score_the_same(clean, spec, checkpoint):
    """The fused scorer slices the preprocessed block and Ray concatenates blocks: the encoded
    columns then have offsets and several chunks; the scores do not change."""
    pred = Predictor(ModelSource(uri=checkpoint), ["event_id"], run_id="r", device="cpu")
    encoded = Preprocessor(spec, PASSTHROUGH, device_transforms=True)(clean)
    whole = pred(encoded).column("score").to_numpy()
    parts = pa.concat_tables([encoded.slice(0, 50), encoded.slice(50, 1), encoded.slice(51)])
    assert parts.column("cat_key:item").num_chunks == 3
    np.testing.assert_array_equal(pred(parts).column("score").to_numpy(), whole)
    # a slice: the same model inputs (scores of another batch size may differ in the last bit: matmul)
    cat, dense = pred._model_inputs(pred.encoded_features(encoded))
    part_cat, part_dense = pred._model_inputs(pred.encoded_features(encoded.slice(7, 90)))
    assert torch.equal(part_cat, cat[7:97]) and torch.equal(part_dense, dense[7:97])


def test_a_predictor_takes_features_another_made(clean, spec, checkpoint):
    """A challenger with the champion's feature spec takes the champion's transformed features
    (pipeline/run/challengers.py): the same scores as transforming them itself."""
    champion = Predictor(ModelSource(uri=checkpoint), ["event_id"], run_id="r", device="cpu")
    challenger = Predictor(ModelSource(uri=checkpoint), ["event_id"], run_id="r", device="cpu")
    encoded = Preprocessor(spec, PASSTHROUGH, device_transforms=True)(clean)
    assert challenger.shares_features(champion)
    with torch.inference_mode():
        feats = champion.encoded_features(encoded)
    np.testing.assert_array_equal(
        challenger(encoded, feats).column("score").to_numpy(), challenger(encoded).column("score").to_numpy()
    )


def test_preprocess_tasks_do_not_need_torch(tmp_path):
    """A CPU preprocessing task of the pipeline hashes and hands over plain columns: torch is not
    even imported there (it is in the replica)."""
    import subprocess
    import sys

    code = (
        "import sys, pyarrow as pa\n"
        "from models.features import CategoricalFeature, DenseFeature, FeatureSpec\n"
        "from pipeline.stages.preprocess import Preprocessor\n"
        "cats = [CategoricalFeature('u', 10), CategoricalFeature('s', 10)]\n"
        "spec = FeatureSpec(cats, [DenseFeature('p')])\n"
        "t = pa.table({'k': [1, 2], 'u': [3, None], 's': ['a', None], 'p': [1.0, None]})\n"
        "out = Preprocessor(spec, ['k'], key_columns=['k'], device_transforms=True)(t)\n"
        "assert out.num_rows == 2, out\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
