"""The model output contract per kind (models/outputs.py): heads by position or by name,
embeddings as vectors, and refusals naming what the model returned."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models.outputs import (
    OutputMismatch,
    describe,
    embedding_column,
    embedding_matrix,
    map_embedding,
    map_heads,
    profiled_values,
)
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError, StageError
from pipeline.stages.predict import NON_FINITE_EMBEDDING, OutputSpec

N = 5
A, B = torch.arange(N, dtype=torch.float32), torch.arange(N, dtype=torch.float32) * 10


def _eq(got, want):
    assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_one_head_takes_n_and_n_by_1():
    _eq(map_heads(A, ["score"], N), [A])
    _eq(map_heads(A.unsqueeze(1), ["score"], N), [A])
    _eq(map_heads({"anything": A}, ["score"], N), [A])  # a dict of one tensor is that head
    _eq(map_heads((A,), ["score"], N), [A])


def test_heads_by_position_and_by_name():
    _eq(map_heads(torch.stack([A, B], 1), ["p_click", "p_convert"], N), [A, B])
    _eq(map_heads((A, B.unsqueeze(1)), ["p_click", "p_convert"], N), [A, B])
    _eq(map_heads([A, B], ["p_click", "p_convert"], N), [A, B])
    # by name, whatever the dict's order
    _eq(map_heads({"p_convert": B, "p_click": A}, ["p_click", "p_convert"], N), [A, B])


@pytest.mark.parametrize(
    ("out", "heads", "returned"),
    [
        (torch.stack([A, B], 1), ["score"], "Tensor[5, 2]"),
        (torch.stack([A, B, A], 1), ["p_click", "p_convert"], "Tensor[5, 3]"),
        ((A, B, A), ["p_click", "p_convert"], "tuple(Tensor[5], Tensor[5], Tensor[5])"),
        ({"click": A, "convert": B}, ["p_click", "p_convert"], "dict(click: Tensor[5], convert: Tensor[5])"),
        ({"p_click": A}, ["p_click", "p_convert"], "dict(p_click: Tensor[5])"),
        (A[:3], ["score"], "Tensor[3]"),
        ("text", ["score"], "str"),
    ],
)
def test_mismatch_names_what_was_returned(out, heads, returned):
    with pytest.raises(OutputMismatch) as ei:
        map_heads(out, heads, N)
    msg = str(ei.value)
    assert f"model returned {returned};" in msg
    assert str(heads) in msg


def test_dict_mismatch_lists_the_expected_names():
    with pytest.raises(OutputMismatch, match=r"a dict with keys \['p_click', 'p_convert'\]"):
        map_heads({"click": A, "convert": B}, ["p_click", "p_convert"], N)


def test_embedding_contract():
    m = torch.randn(N, 4)
    assert map_embedding(m, N).shape == (N, 4)
    assert map_embedding((m,), N, 4).shape == (N, 4)
    for bad, returned in ((A, "Tensor[5]"), ((m, m), "tuple(Tensor[5, 4], Tensor[5, 4])")):
        with pytest.raises(OutputMismatch) as ei:
            map_embedding(bad, N)
        assert f"model returned {returned};" in str(ei.value)
    with pytest.raises(OutputMismatch, match=r"expected \[5, 8\]"):
        map_embedding(m, N, 8)
    assert describe({"u": m}) == "dict(u: Tensor[5, 4])"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embedding_column_round_trips_through_parquet(tmp_path, dtype):
    rng = np.random.default_rng(0)
    m = rng.normal(size=(7, 3)).astype(np.float32)
    col = embedding_column(m, dtype)
    assert col.type == (pa.list_(pa.float32(), 3) if dtype == "float32" else pa.binary())
    pq.write_table(pa.table({"e": col}), tmp_path / "f.parquet")
    back = pq.read_table(tmp_path / "f.parquet").column("e")
    want = m if dtype == "float32" else m.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(embedding_matrix(back), want)
    np.testing.assert_allclose(profiled_values(back), np.linalg.norm(want.astype(np.float64), axis=1))
    if dtype == "float16":  # what the docs tell a reader to do with one value
        np.testing.assert_array_equal(np.frombuffer(back[2].as_py(), "<f2"), want[2].astype(np.float16))
    # a slice (offset) reads the right rows
    np.testing.assert_array_equal(embedding_matrix(col.slice(2, 3)), want[2:5])


def test_output_spec_sends_non_finite_vectors_away():
    m = torch.ones(4, 2)
    m[1, 0] = float("nan")
    m[3, 1] = 1e6  # finite in float32, inf in float16
    values, bad = OutputSpec("embedding", ["e"], "float32").values(m, 4)
    assert bad.tolist() == [False, True, False, False]
    values, bad = OutputSpec("embedding", ["e"], "float16").values(m, 4)
    assert bad.tolist() == [False, True, False, True]
    assert NON_FINITE_EMBEDDING.startswith("non-finite embedding")


def test_predictor_without_dead_letters_refuses_non_finite_vectors(tmp_path):
    from pipeline.stages.predict import Predictor

    class _Nan(torch.nn.Module):
        def forward(self, x):
            return x / x.sum(dim=1, keepdim=True)  # rows summing to 0 give NaN/inf

    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(_Nan(), (torch.ones(2, 3),)), str(path))
    from pipeline.stages.predict import ModelSource

    pred = Predictor(
        ModelSource(uri=str(path), inputs=["x"]),
        ["k"],
        run_id="r",
        device="cpu",
        output=OutputSpec("embedding", ["e"], "float32", 3),
    )
    x = np.array([[1, 2, 3], [0, 0, 0]], dtype=np.float32)
    from pipeline.stages.preprocess import to_tensor_column

    batch = pa.table({"k": [1, 2], "x": to_tensor_column(x)})
    with pytest.raises(StageError, match="1 rows: non-finite embedding"):
        pred(batch)


BASE = {
    "name": "t",
    "input": {"uri": "/in"},
    "model": {"uri": "/m.pt"},
    "output": {"uri": "/out", "key_columns": ["k"]},
}


def _cfg(**output):
    return config_from_dict({**BASE, "output": {**BASE["output"], **output}})


def test_config_value_columns_and_identity():
    assert _cfg().output.value_columns == ["score"]
    assert _cfg(score_columns=["a", "b"]).output.value_columns == ["a", "b"]
    assert _cfg(kind="embedding").output.value_columns == ["embedding"]
    # configs from before kinds keep their scoring identity (their committed dates stay done)
    plain = _cfg()
    assert "kinds" not in str(plain.scoring_digest())
    assert _cfg(score_columns=["a", "b"]).scoring_digest() != plain.scoring_digest()
    half = _cfg(kind="embedding", embedding_dtype="float16")
    assert half.scoring_digest() != _cfg(kind="embedding").scoring_digest()


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ({"score_column": "s", "score_columns": ["a"]}, "either score_column"),
        ({"kind": "embedding", "score_columns": ["a"]}, "kind 'embedding' writes embedding_column"),
        ({"score_columns": ["a", "a"]}, "repeat or clash"),
        ({"score_columns": ["k", "a"]}, "repeat or clash"),
        ({"score_columns": []}, "at least 1"),
    ],
)
def test_config_refuses_bad_heads(output, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**output)


def test_renderers_show_every_head():
    from models.scoreprofile import compare, profile_array
    from pipeline.reporting.html import render_html
    from pipeline.reporting.metrics import prometheus_text
    from pipeline.reporting.schema import DateDrift, Head, Partition, RunReport
    from pipeline.reporting.summary import format_summary

    rng = np.random.default_rng(1)
    click, convert = profile_array(rng.beta(2, 20, 500)), profile_array(rng.beta(5, 5, 500))
    breach = compare(convert, click, psi_max=0.25, shift_max=0.5, bins=10)
    ok = compare(click, click, psi_max=0.25, shift_max=0.5, bins=10)
    drift = {
        "p_click": DateDrift(training={"reference": "checkpoint", **ok}),
        "p_convert": DateDrift(training={"reference": "checkpoint", **breach}, breach=True),
    }
    part = Partition(
        partition={"ds": "2026-10-01"},
        input_rows=500,
        output_rows=500,
        scores=click,
        drift=DateDrift(training={"reference": "checkpoint", **ok}, breach=True),
        heads={
            "p_click": Head(scores=click, drift=drift["p_click"]),
            "p_convert": Head(scores=convert, drift=drift["p_convert"]),
        },
    )
    report = RunReport(run_id="r", partitions=[part], output_columns=["p_click", "p_convert"])
    text = format_summary(report)
    assert "per head" in text and "2026-10-01 p_convert" in text
    assert "BREACH 2026-10-01 p_convert vs training (checkpoint): PSI" in text
    assert "2026-10-01 p_convert" in render_html(report)
    assert 'head="p_convert"' in prometheus_text(report)
