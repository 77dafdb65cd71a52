"""Top-K per group end to end on the local S3 server: one row per user and date with the k best
items, equal to a sort done in pyarrow on the scores of the model called directly on the same
rows; a skewed user (about half of each date's rows, in every input file) stays exact with
output.top_k.max_group_rows far below its size, since each block keeps only its top k before the
shuffle; a cap below what reaches a merge task stops the run naming the group and its size."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from support import DATES, latest_commit, make_config, read_delta, read_input, read_output
from testmodels import TwoHeads, upload_scripted

from jobs.synthetic import SyntheticSpec, generate_day
from models.features import transform_table
from pipeline.config import StorageConfig
from pipeline.errors import UserError
from pipeline.run.score import run_score
from pipeline.stages.topk import NON_FINITE_SCORE
from pipeline.storage import resolve

pytestmark = pytest.mark.integration

HEAVY_USER = 7
K = 20
SHARDS = 4


def _skewed_day(date: str) -> pa.Table:
    """Synthetic rows of a few hundred users, about half of them given to one user."""
    table = generate_day(date, SyntheticSpec(rows_per_day=4000, n_users=400, n_items=800))
    rng = np.random.default_rng(3)
    users = table.column("user_id").to_numpy().copy()
    users[rng.random(len(users)) < 0.5] = HEAVY_USER
    return table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(users))


@pytest.fixture(scope="module")
def topk_job(s3, checkpoints, tmp_path_factory):
    torch.manual_seed(0)
    bucket = s3.make_bucket("batchscore-topk")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    root = resolve(f"s3://{bucket}/events", storage)
    for d in DATES:
        table = _skewed_day(d)
        part = root.join(f"ds={d}")
        bounds = np.linspace(0, table.num_rows, SHARDS + 1).astype(int)
        for i in range(SHARDS):
            with part.fs.open_output_stream(part.join(f"part-{i:05d}.parquet").path) as f:
                pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), f)
    # p_click NaN for rows with a large first dense value: dead letters of order_by
    model = TwoHeads(len(checkpoints.spec.dense), nan_click_above=2.0).eval()
    local = tmp_path_factory.mktemp("topk-model") / "heads.ts"
    upload_scripted(model, local, f"s3://{bucket}/models/heads.ts", storage)
    return bucket, storage, model


def _config(bucket, s3, checkpoints, out: str, **top_k):
    return make_config(
        f"s3://{bucket}/events",
        f"s3://{bucket}/models/heads.ts",
        f"s3://{bucket}/{out}",
        storage={"endpoint_url": s3.endpoint},
        preprocessing={"features": checkpoints.spec.to_dict()},
        output={
            "score_columns": ["p_click", "p_convert"],
            "max_bad_row_fraction": 0.5,
            "top_k": {"group_by": ["user_id"], "k": K, "order_by": "p_click", "partitions": 3, **top_k},
        },
    )


def _expected(model, inp: pa.Table, spec) -> pa.Table:
    """The top K per user, sorted in pyarrow, on scores computed by calling the model directly."""
    feats = transform_table(inp, spec)
    with torch.inference_mode():
        out = model(torch.from_numpy(feats["cat"]), torch.from_numpy(feats["dense"]))
    scored = inp.select(["event_id", "user_id", "item_id"]).append_column(
        "p_click", pa.array(out["p_click"].numpy())
    )
    scored = scored.append_column("p_convert", pa.array(out["p_convert"].numpy()))
    finite = scored.filter(pc.is_finite(scored.column("p_click")))
    return finite.sort_by(
        [
            ("user_id", "ascending"),
            ("p_click", "descending"),
            ("event_id", "ascending"),
            ("item_id", "ascending"),
        ]
    )


def test_top_k_per_user_exact_with_a_skewed_user_under_a_small_cap(ray_cluster, s3, topk_job, checkpoints):
    bucket, storage, model = topk_job
    # the heavy user has ~2000 rows a date; what reaches its merge task is at most K per input block
    cap = K * SHARDS
    cfg = _config(bucket, s3, checkpoints, "topk", max_group_rows=cap)
    report = run_score(cfg, DATES)

    for d in DATES:
        inp = read_input(f"s3://{bucket}/events", d, storage)
        heavy_rows = int(pc.sum(pc.equal(inp.column("user_id"), HEAVY_USER)).as_py())
        assert heavy_rows > 10 * cap
        want = _expected(model, inp, checkpoints.spec)
        got = read_output(f"s3://{bucket}/topk", d, storage).sort_by("user_id")
        assert got.column_names == [
            "user_id",
            "event_id",
            "item_id",
            "p_click",
            "p_convert",
            "candidates",
            "model_version",
            "run_id",
            "ds",
        ]
        assert pa.types.is_list(got.schema.field("event_id").type)
        # every user with a scorable row appears exactly once
        users = got.column("user_id").to_pylist()
        assert users == sorted(set(want.column("user_id").to_pylist()))
        dead = read_delta(f"s3://{bucket}/topk/_dead_letter", storage, date=d)
        assert dead.num_rows > 0 and set(dead.column("reason").to_pylist()) == {NON_FINITE_SCORE}
        assert sum(got.column("candidates").to_pylist()) + dead.num_rows == inp.num_rows

        by_user: dict[int, dict[str, list]] = {}
        for row in want.to_pylist():
            g = by_user.setdefault(
                row["user_id"], {c: [] for c in ("event_id", "item_id", "p_click", "p_convert")}
            )
            for c in g:
                g[c].append(row[c])
        for row in got.to_pylist():
            exp = by_user[row["user_id"]]
            assert row["candidates"] == len(exp["event_id"])
            assert row["event_id"] == exp["event_id"][:K], row["user_id"]
            assert row["item_id"] == exp["item_id"][:K]
            np.testing.assert_allclose(row["p_click"], exp["p_click"][:K], atol=1e-6)
            np.testing.assert_allclose(row["p_convert"], exp["p_convert"][:K], atol=1e-6)
        heavy = next(r for r in got.to_pylist() if r["user_id"] == HEAVY_USER)
        assert len(heavy["event_id"]) == K and heavy["candidates"] > 10 * cap

        commit = latest_commit(f"s3://{bucket}/topk", d, storage)
        assert commit["output_rows"] == got.num_rows
        assert commit["dead_letter_rows"] == dead.num_rows

    assert report.output_columns == ["p_click", "p_convert"]
    first = report.partitions[0]
    # the profile describes the ranked scores: K per user at most
    assert first.heads["p_click"].scores.count == sum(
        min(K, n)
        for n in read_output(f"s3://{bucket}/topk", DATES[0], storage).column("candidates").to_pylist()
    )


def test_top_k_cap_names_the_group_and_its_size(ray_cluster, s3, topk_job, checkpoints):
    bucket, storage, _ = topk_job
    # users with rows in every input file reach their merge task as K rows per file: over K + 1
    cfg = _config(bucket, s3, checkpoints, "topk-capped", max_group_rows=K + 1)
    with pytest.raises(UserError) as ei:
        run_score(cfg, [DATES[0]])
    assert re.search(
        rf"group ds='{DATES[0]}', user_id=\d+ reached its merge task as {K * SHARDS} rows \(k={K} per input "
        rf"block\), over output.top_k.max_group_rows={K + 1}",
        str(ei.value),
    )
    assert latest_commit(f"s3://{bucket}/topk-capped", DATES[0], storage) is None
