"""Unit tests for the preprocess and predict stages, called directly (no Ray cluster).

The key property: the tensors the scoring pipeline feeds the model are exactly the tensors training
fed it for the same rows, and the scores equal a direct call of the model on them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import models.training
from models.checkpoint import save_checkpoint
from models.dlrm import build_dlrm
from models.features import CategoricalFeature, DenseFeature, FeatureSpec, transform_table
from pipeline.errors import StageError
from pipeline.stages.predict import ModelSource, Predictor
from pipeline.stages.preprocess import Preprocessor, tensor_column_to_numpy

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]

PASSTHROUGH = ["event_id", "user_id", "ds"]
SMALL = {"embedding_dim": 4, "bottom_mlp": [8], "top_mlp": [8]}


@pytest.fixture
def spec() -> FeatureSpec:
    return FeatureSpec(
        categorical=[CategoricalFeature("user_id", 31), CategoricalFeature("item_id", 17)],
        dense=[
            DenseFeature("price", fill=1.0, clip_min=0.0, clip_max=500.0, log1p=True, mean=2.0, std=1.5),
            DenseFeature("age", fill=35.0, mean=35.0, std=10.0),
        ],
    )


def make_table(n: int = 48, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    price = rng.lognormal(3.0, 1.0, n)
    price[::9] = np.nan
    return pa.table(
        {
            "event_id": pa.array([f"ev-{seed}-{i}" for i in range(n)]),
            "user_id": pa.array(
                [None if i % 10 == 3 else int(v) for i, v in enumerate(rng.integers(0, 10**9, n))]
            ),
            "item_id": pa.array(
                [None if i % 7 == 0 else f"item-{v}" for i, v in enumerate(rng.integers(0, 50, n))]
            ),
            "price": pa.array(price),
            "age": pa.array(
                [None if i % 5 == 0 else int(v) for i, v in enumerate(rng.integers(18, 80, n))], pa.int32()
            ),
            "clicked": pa.array(rng.integers(0, 2, n).astype(np.int8)),
            "ds": pa.array(["2026-11-04"] * n),
            "unused": pa.array(rng.normal(size=n)),
        }
    )


@pytest.fixture
def table() -> pa.Table:
    return make_table()


def tensors(batch: pa.Table) -> dict[str, np.ndarray]:
    return {name: tensor_column_to_numpy(batch.column(name)) for name in ("cat", "dense")}


# ---------------------------------------------------------------------------------------------
# Preprocessor
# ---------------------------------------------------------------------------------------------


def test_preprocessor_output_columns(table, spec):
    out = Preprocessor(spec, PASSTHROUGH)(table)
    assert out.column_names == [*PASSTHROUGH, "cat", "dense"]
    assert out.num_rows == table.num_rows


def test_preprocessor_passthrough_unchanged_and_not_copied(table, spec):
    out = Preprocessor(spec, PASSTHROUGH)(table)
    for c in PASSTHROUGH:
        assert out.column(c).equals(table.column(c)), c
        assert out.schema.field(c).type == table.schema.field(c).type
        # same buffers: the pass-through columns are not copied
        assert out.column(c).chunk(0).buffers()[-1].address == table.column(c).chunk(0).buffers()[-1].address


def test_preprocessor_tensors_equal_transform_table(table, spec):
    out = tensors(Preprocessor(spec, PASSTHROUGH)(table))
    want = transform_table(table, spec)
    assert out["cat"].dtype == np.int64 and out["cat"].shape == (table.num_rows, 2)
    assert out["dense"].dtype == np.float32 and out["dense"].shape == (table.num_rows, 2)
    np.testing.assert_array_equal(out["cat"], want["cat"])
    np.testing.assert_array_equal(out["dense"], want["dense"])
    # nulls really went through the transform (bucket 0) and the check compares real data
    assert (out["cat"][3::10, 0] == 0).all()
    assert len(np.unique(out["cat"][:, 0])) > 10


def test_preprocessor_multi_chunk_and_sliced_batches(table, spec):
    """Ray hands batches that are slices of bigger tables or concatenations; results don't change."""
    want = transform_table(table, spec)
    chunked = pa.concat_tables([table.slice(0, 20), table.slice(20)])
    assert chunked.column("item_id").num_chunks == 2
    np.testing.assert_array_equal(tensors(Preprocessor(spec, PASSTHROUGH)(chunked))["cat"], want["cat"])
    part = tensors(Preprocessor(spec, PASSTHROUGH)(table.slice(13, 20)))
    np.testing.assert_array_equal(part["cat"], want["cat"][13:33])
    np.testing.assert_array_equal(part["dense"], want["dense"][13:33])


def test_preprocessor_single_and_zero_rows(table, spec):
    one = tensors(Preprocessor(spec, PASSTHROUGH)(table.slice(5, 1)))
    assert one["cat"].shape == (1, 2) and one["dense"].shape == (1, 2)
    zero = Preprocessor(spec, PASSTHROUGH)(table.slice(0, 0))
    assert zero.num_rows == 0


def test_training_and_scoring_tensors_identical(table, spec, monkeypatch):
    """train_dlrm feeds the model transform_table(table, fitted spec); scoring with the fitted spec
    (as stored in the checkpoint) must produce the very same tensors for the same rows."""
    seen: list[tuple[FeatureSpec, dict[str, np.ndarray]]] = []
    real = models.training.transform_table

    def capture(t, s):
        feats = real(t, s)
        seen.append((s, {k: v.copy() for k, v in feats.items()}))
        return feats

    monkeypatch.setattr(models.training, "transform_table", capture)
    result = models.training.train_dlrm(table, spec, "clicked", epochs=1, batch_size=16, holdout=0.25)
    assert len(seen) == 1
    train_spec, train_feats = seen[0]
    assert train_spec == result.spec
    # the fitted statistics differ from the input spec, so this compares the fitted transform
    assert result.spec.dense[0].mean != spec.dense[0].mean

    scored = tensors(Preprocessor(result.spec, PASSTHROUGH)(table))
    np.testing.assert_array_equal(scored["cat"], train_feats["cat"])
    np.testing.assert_array_equal(scored["dense"], train_feats["dense"])


def test_preprocessor_missing_columns_error(table, spec):
    batch = table.drop_columns(["price", "ds"])
    with pytest.raises(StageError) as ei:
        Preprocessor(spec, PASSTHROUGH)(batch)
    msg = str(ei.value)
    assert "stage 'preprocess'" in msg
    assert "missing columns ['ds', 'price']" in msg
    assert f"present columns: {batch.column_names}" in msg


def test_preprocessor_wrong_type_is_stage_error(table, spec):
    batch = table.set_column(table.schema.get_field_index("age"), "age", pa.array(["x"] * table.num_rows))
    with pytest.raises(StageError, match=r"stage 'preprocess': dense feature 'age'"):
        Preprocessor(spec, PASSTHROUGH)(batch)


def test_preprocessor_needs_spec_or_function():
    with pytest.raises(StageError, match="needs a feature spec or a preprocessing function"):
        Preprocessor(None, PASSTHROUGH)


def test_preprocessor_user_function(table):
    def fn(batch: pa.Table) -> dict[str, np.ndarray]:
        x = batch.column("unused").to_numpy()
        return {"x": x.astype(np.float32), "xy": np.stack([x, -x], axis=1)}

    out = Preprocessor(None, ["event_id"], fn, required=["unused"])(table)
    assert out.column_names == ["event_id", "x", "xy"]
    np.testing.assert_array_equal(
        tensor_column_to_numpy(out.column("x")), table.column("unused").to_numpy().astype(np.float32)
    )
    assert tensor_column_to_numpy(out.column("xy")).shape == (table.num_rows, 2)
    with pytest.raises(StageError, match=r"missing columns \['unused'\]"):
        Preprocessor(None, ["event_id"], fn, required=["unused"])(table.drop_columns(["unused"]))


def test_preprocessor_user_function_bad_results(table):
    with pytest.raises(StageError, match=r"must return dict\[str, numpy.ndarray\], got list"):
        Preprocessor(None, [], lambda b: [1, 2])(table)
    with pytest.raises(StageError, match=r"feature 'x' has 3 rows, batch has 48"):
        Preprocessor(None, [], lambda b: {"x": np.zeros(3)})(table)


# ---------------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------------


def arch_for(spec: FeatureSpec) -> dict:
    return {
        "builtin": "dlrm",
        "kwargs": {"buckets": [f.buckets for f in spec.categorical], "num_dense": len(spec.dense), **SMALL},
    }


@pytest.fixture
def trained(spec):
    torch.manual_seed(5)
    return build_dlrm([f.buckets for f in spec.categorical], len(spec.dense), **SMALL).eval()


@pytest.fixture
def checkpoint(tmp_path, trained, spec) -> str:
    d = tmp_path / "ckpt"
    save_checkpoint(str(d), trained, version="dlrm-7", feature_spec=spec, architecture=arch_for(spec))
    return str(d)


def direct_scores(model, feats: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"])).numpy()


def test_predictor_scores_equal_direct_model_call(table, spec, trained, checkpoint):
    batch = Preprocessor(spec, PASSTHROUGH)(table)
    pred = Predictor(ModelSource(uri=checkpoint), PASSTHROUGH, run_id="run-123", device="cpu")
    assert pred.device == "cpu"
    out = pred(batch)
    assert out.column_names == [*PASSTHROUGH, "score", "model_version", "run_id"]
    assert out.schema.field("score").type == pa.float32()
    scores = out.column("score").to_numpy()
    want = direct_scores(trained, transform_table(table, spec))
    assert np.max(np.abs(scores - want)) < 1e-6
    assert len(np.unique(scores)) > 1
    assert out.column("model_version").to_pylist() == ["dlrm-7"] * table.num_rows
    assert out.column("run_id").to_pylist() == ["run-123"] * table.num_rows
    for c in PASSTHROUGH:
        assert out.column(c).equals(table.column(c))


def test_predictor_with_spec_from_checkpoint(table, spec, trained, checkpoint):
    """As in the pipeline: the feature spec comes from the checkpoint metadata."""
    source = ModelSource(uri=checkpoint)
    meta, _ = source.inspect()
    assert meta.spec() == spec
    batch = Preprocessor(meta.spec(), ["event_id"])(table)
    out = Predictor(source, ["event_id"], run_id="r", device="cpu")(batch)
    want = direct_scores(trained, transform_table(table, spec))
    assert np.max(np.abs(out.column("score").to_numpy() - want)) < 1e-6


def test_predictor_version_override_and_score_column(table, spec, checkpoint):
    batch = Preprocessor(spec, PASSTHROUGH)(table)
    source = ModelSource(uri=checkpoint, version="override-v9")
    out = Predictor(source, ["event_id"], run_id="r2", score_column="p_click", device="cpu")(batch)
    assert out.column_names == ["event_id", "p_click", "model_version", "run_id"]
    assert set(out.column("model_version").to_pylist()) == {"override-v9"}


def test_predictor_device_column(table, spec, checkpoint):
    batch = Preprocessor(spec, PASSTHROUGH)(table)
    out = Predictor(ModelSource(uri=checkpoint), [], run_id="r", device="cpu", device_column="where")(batch)
    assert out.column("where")[0].as_py().startswith("cpu gpu_ids= pid=")


def test_predictor_missing_input_column(table, spec, checkpoint):
    batch = Preprocessor(spec, PASSTHROUGH)(table).drop_columns(["dense"])
    pred = Predictor(ModelSource(uri=checkpoint), PASSTHROUGH, run_id="r", device="cpu")
    with pytest.raises(StageError) as ei:
        pred(batch)
    assert "stage 'predict'" in str(ei.value)
    assert "missing columns ['dense']" in str(ei.value)


def test_predictor_sha256_mismatch_refused(checkpoint):
    from models.checkpoint import ModelError

    with pytest.raises(ModelError, match="sha256"):
        Predictor(ModelSource(uri=checkpoint, sha256="0" * 64), [], run_id="r", device="cpu")


def test_predictor_fp16_on_cpu_refused(checkpoint):
    with pytest.raises(StageError, match="fp16"):
        Predictor(ModelSource(uri=checkpoint), [], run_id="r", device="cpu", precision="fp16")


class _Columns(torch.nn.Module):
    """Test model whose output shape is chosen by `mode`."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, cat: torch.Tensor, dense: torch.Tensor):
        s = dense[:, 0] + cat[:, 0].float()
        if self.mode == "n2":
            return torch.stack([s, s], dim=1)
        if self.mode == "n1":
            return s.unsqueeze(1)
        if self.mode == "tuple":
            return s, s
        return s[:1]


def _scripted(tmp_path, mode: str) -> str:
    path = tmp_path / f"{mode}.ts"
    example = (torch.zeros(4, 2, dtype=torch.int64), torch.zeros(4, 2))
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(_Columns(mode), example), str(path))
    return str(path)


def test_predictor_wrong_output_shape(tmp_path, table, spec):
    batch = Preprocessor(spec, PASSTHROUGH)(table)
    pred = Predictor(ModelSource(uri=_scripted(tmp_path, "n2"), version="bad"), [], run_id="r", device="cpu")
    with pytest.raises(StageError) as ei:
        pred(batch)
    msg = str(ei.value)
    assert "stage 'predict'" in msg
    assert f"model returned Tensor[{table.num_rows}, 2]" in msg
    assert f"expected a tensor [{table.num_rows}] or [{table.num_rows}, 1]" in msg


def test_predictor_wrong_number_of_rows(tmp_path, table, spec):
    batch = Preprocessor(spec, PASSTHROUGH)(table)
    pred = Predictor(ModelSource(uri=_scripted(tmp_path, "first")), [], run_id="r", device="cpu")
    with pytest.raises(StageError, match=r"model returned Tensor\[1\]; .* \(rows: 48\)"):
        pred(batch)


def test_predictor_non_tensor_output(tmp_path, table, spec):
    batch = Preprocessor(spec, PASSTHROUGH)(table)
    pred = Predictor(ModelSource(uri=_scripted(tmp_path, "tuple")), [], run_id="r", device="cpu")
    with pytest.raises(StageError, match=r"model returned tuple\(Tensor\[48\], Tensor\[48\]\)"):
        pred(batch)


@pytest.mark.parametrize("mode", ["n2", "tuple"])
def test_predictor_maps_heads_by_position(tmp_path, table, spec, mode):
    """[N, 2] and a tuple of two tensors: one column per head of output.score_columns, in order."""
    from pipeline.stages.predict import OutputSpec

    batch = Preprocessor(spec, PASSTHROUGH)(table)
    out = Predictor(
        ModelSource(uri=_scripted(tmp_path, mode)),
        ["event_id"],
        run_id="r",
        device="cpu",
        output=OutputSpec(columns=["p_click", "p_convert"]),
    )(batch)
    feats = transform_table(table, spec)
    expected = (feats["dense"][:, 0] + feats["cat"][:, 0]).astype(np.float32)
    assert out.column_names[:3] == ["event_id", "p_click", "p_convert"]
    for head in ("p_click", "p_convert"):
        assert out.schema.field(head).type == pa.float32()
        np.testing.assert_array_equal(out.column(head).to_numpy(), expected)


def test_predictor_n_by_1_output_is_squeezed(tmp_path, table, spec):
    batch = Preprocessor(spec, PASSTHROUGH)(table)
    pred = Predictor(ModelSource(uri=_scripted(tmp_path, "n1")), ["event_id"], run_id="r", device="cpu")
    out = pred(batch)
    feats = transform_table(table, spec)
    want = feats["dense"][:, 0] + feats["cat"][:, 0].astype(np.float32)
    np.testing.assert_allclose(out.column("score").to_numpy(), want, rtol=1e-6)
    # a bare file's version defaults to its file name
    assert out.column("model_version")[0].as_py() == "n1.ts"
