"""Output kinds end to end on the local S3 server: a multi-head model (a TorchScript dict of heads)
and a TorchScript two-tower user tower (embeddings), each exact against the model called directly
on the same rows, read back through Delta; a model whose output does not fit is refused before any
scoring, naming what it returned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import DATES, SYNTH, latest_commit, make_config, read_delta, read_input, read_output
from testmodels import TwoHeads, upload_scripted
from torch import nn

from jobs.synthetic import write_days
from models.features import transform_table
from models.outputs import embedding_matrix
from pipeline.config import StorageConfig
from pipeline.errors import UserError
from pipeline.run.score import run_score
from pipeline.stages.predict import NON_FINITE_EMBEDDING
from pipeline.storage import resolve

pytestmark = pytest.mark.integration


class UserTower(nn.Module):
    """[N, 8] user vectors; rows with a large first dense feature get NaN (a numerical failure)."""

    def __init__(self, num_dense: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, 8)
        self.lin = nn.Linear(num_dense, 8)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        v = self.emb(cat[:, 0]) + self.lin(dense)
        return torch.where(dense[:, :1] > 2.0, torch.full_like(v, float("nan")), v)


@pytest.fixture(scope="module")
def kinds_job(s3, checkpoints, tmp_path_factory):
    torch.manual_seed(0)
    bucket = s3.make_bucket("batchscore-kinds")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    write_days(resolve(f"s3://{bucket}/events", storage), DATES, SYNTH)
    local = tmp_path_factory.mktemp("kind-models")
    num_dense = len(checkpoints.spec.dense)
    models = {"heads": TwoHeads(num_dense).eval(), "tower": UserTower(num_dense).eval()}
    for name, module in models.items():
        upload_scripted(module, local / f"{name}.ts", f"s3://{bucket}/models/{name}.ts", storage)
    return bucket, storage, models


def _config(bucket, s3, checkpoints, model: str, out: str, runner: str = "auto", **output):
    return make_config(
        f"s3://{bucket}/events",
        f"s3://{bucket}/models/{model}.ts",
        f"s3://{bucket}/{out}",
        storage={"endpoint_url": s3.endpoint},
        preprocessing={"features": checkpoints.spec.to_dict()},
        output=output,
        ray={"runner": runner},
    )


def _direct(module, table, spec):
    feats = transform_table(table, spec)
    with torch.inference_mode():
        return module(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"]))


def test_heads_exact_with_a_profile_and_drift_per_head(ray_cluster, s3, kinds_job, checkpoints):
    bucket, storage, models = kinds_job
    cfg = _config(bucket, s3, checkpoints, "heads", "heads", score_columns=["p_click", "p_convert"])
    report = run_score(cfg, DATES)

    for d in DATES:
        inp = read_input(f"s3://{bucket}/events", d, storage)
        got = read_output(f"s3://{bucket}/heads", d, storage)
        assert got.num_rows == inp.num_rows
        assert "score" not in got.column_names
        expected = _direct(models["heads"], inp, checkpoints.spec)
        order = {k: i for i, k in enumerate(got.column("event_id").to_pylist())}
        idx = np.array([order[k] for k in inp.column("event_id").to_pylist()])
        for head in ("p_click", "p_convert"):
            np.testing.assert_allclose(got.column(head).to_numpy()[idx], expected[head].numpy(), atol=1e-6)
        commit = latest_commit(f"s3://{bucket}/heads", d, storage)
        assert set(commit["score_profiles"]) == {"p_click", "p_convert"}
        assert commit["score_profile"] == commit["score_profiles"]["p_click"]

    assert report.output_columns == ["p_click", "p_convert"]
    assert set(report.heads) == {"p_click", "p_convert"}
    first, second = report.partitions
    assert first.scores.mean == pytest.approx(first.heads["p_click"].scores.mean)
    assert first.heads["p_convert"].scores.count == first.input_rows
    # the second date is compared, per head, with the first date of the same run
    for head in ("p_click", "p_convert"):
        check = second.heads[head].drift.previous
        assert check is not None and check.reference == f"ds={DATES[0]}" and check.psi is not None
    assert second.drift.previous.psi == second.heads["p_click"].drift.previous.psi

    # the next run reads the per-head profiles from the Delta log: a rescore compares every head
    again = run_score(cfg, [DATES[1]], force=True)
    (part,) = again.partitions
    assert part.heads["p_convert"].drift.previous.reference == f"ds={DATES[0]}"


def test_heads_mismatch_is_refused_before_scoring(ray_cluster, s3, kinds_job, checkpoints):
    bucket, _, _ = kinds_job
    cfg = _config(bucket, s3, checkpoints, "heads", "refused", score_columns=["p_click", "p_dwell"])
    with pytest.raises(UserError) as ei:
        run_score(cfg, DATES)
    msg = str(ei.value)
    assert "model returned dict(p_convert: Tensor[16], p_click: Tensor[16])" in msg
    assert "['p_click', 'p_dwell']" in msg
    # (the output probe's delete leaves pyarrow's directory marker `refused/`, an empty object)
    written = [k for k in s3.keys(bucket, "refused/") if not k.endswith("/")]
    assert not written, "nothing may be written when the model is refused"


@pytest.mark.parametrize("runner", ["ray", "local"])
def test_a_single_score_column_refuses_a_multi_head_model_at_its_first_batch(
    ray_cluster, s3, kinds_job, checkpoints, runner
):
    """One score column: no probe on the driver; the predict stage refuses the first batch with the
    same message, carried out of the Ray task (or the local runner's thread) as the user error it
    is, and nothing is committed."""
    bucket, _, _ = kinds_job
    cfg = _config(bucket, s3, checkpoints, "heads", f"single-{runner}", runner)
    with pytest.raises(UserError) as ei:
        run_score(cfg, DATES)
    assert "model returned dict(p_convert: Tensor[" in str(ei.value)
    assert not [k for k in s3.keys(bucket, f"single-{runner}/_delta_log/")], "nothing may be committed"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embeddings_exact_with_non_finite_vectors_as_dead_letters(
    ray_cluster, s3, kinds_job, checkpoints, dtype
):
    bucket, storage, models = kinds_job
    out = f"emb-{dtype}"
    cfg = _config(
        bucket,
        s3,
        checkpoints,
        "tower",
        out,
        kind="embedding",
        embedding_dtype=dtype,
        max_bad_row_fraction=0.5,
    )
    report = run_score(cfg, [DATES[0]])

    inp = read_input(f"s3://{bucket}/events", DATES[0], storage)
    expected = _direct(models["tower"], inp, checkpoints.spec).numpy()
    if dtype == "float16":
        expected = expected.astype(np.float16).astype(np.float32)
    bad = ~np.isfinite(expected).all(axis=1)
    assert 0 < bad.sum() < len(bad) // 2
    got = read_output(f"s3://{bucket}/{out}", DATES[0], storage)
    assert set(got.column_names) == {
        "event_id",
        "user_id",
        "item_id",
        "embedding",
        "model_version",
        "run_id",
        "ds",
    }
    vectors = embedding_matrix(got.column("embedding"))
    assert vectors.shape == (int((~bad).sum()), 8)
    keys = inp.column("event_id").to_pylist()
    want = {k: expected[i] for i, k in enumerate(keys) if not bad[i]}
    got_keys = got.column("event_id").to_pylist()
    assert set(got_keys) == set(want)
    np.testing.assert_array_equal(vectors, np.stack([want[k] for k in got_keys]))

    dead = read_delta(f"s3://{bucket}/{out}/_dead_letter", storage, date=DATES[0])
    assert sorted(dead.column("event_id").to_pylist()) == sorted(k for i, k in enumerate(keys) if bad[i])
    assert set(dead.column("reason").to_pylist()) == {NON_FINITE_EMBEDDING}

    (part,) = report.partitions
    assert report.output_kind == "embedding" and report.output_columns == ["embedding"]
    assert part.dead_letter_reasons == {NON_FINITE_EMBEDDING: int(bad.sum())}
    norms = np.linalg.norm(np.stack(list(want.values())).astype(np.float64), axis=1)
    assert part.scores.count == len(norms)
    assert part.scores.mean == pytest.approx(norms.mean(), rel=1e-6)
    assert part.scores.max == pytest.approx(norms.max(), rel=1e-6)


def test_embedding_run_refuses_a_model_returning_scores(ray_cluster, s3, kinds_job, checkpoints):
    bucket, _, _ = kinds_job
    cfg = _config(bucket, s3, checkpoints, "heads", "emb-refused", kind="embedding")
    with pytest.raises(
        UserError,
        match=r"model returned dict\(p_convert: Tensor\[16\], p_click: Tensor\[16\]\); "
        r"output.kind 'embedding' expects one tensor \[16, d\]",
    ):
        run_score(cfg, DATES)
