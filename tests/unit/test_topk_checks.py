"""Top-K stages called on hand-made batches (no Ray): partial top k per block, then a merge per
group, equal to one sort of all rows whatever the block boundaries; the group checks of the commit
on files written here; the config's refusals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.commit.groups import TopKCheck, check_groups
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError, StageError
from pipeline.keys import Fingerprint, fingerprint_of
from pipeline.stages.topk import NON_FINITE_SCORE, TopKMerge, TopKPartial, TopKSpec

SPEC = TopKSpec(
    partition_column="ds",
    group_by=["user_id"],
    items=["event_id", "item_id"],
    heads=["p_click", "p_convert"],
    order_by="p_click",
    k=3,
    count_column="candidates",
    max_group_rows=1000,
)


def _scored(n: int, seed: int = 0, users: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    user[: n // 2] = 1  # a heavy user
    return pa.table(
        {
            "event_id": pa.array([f"e{i:05d}" for i in range(n)]),
            "user_id": pa.array(user, mask=rng.random(n) < 0.05),  # null users form a group too
            "item_id": pa.array(rng.integers(0, 20, n)),
            # coarse scores: many ties, broken by the item keys
            "p_click": pa.array(np.round(rng.random(n), 1).astype(np.float32)),
            "p_convert": pa.array(rng.random(n).astype(np.float32)),
            "model_version": pa.array(["v1"] * n),
            "run_id": pa.array(["r1"] * n),
            "ds": pa.array(rng.choice(["2026-10-01", "2026-10-02"], n)),
        }
    )


def _reference(table: pa.Table, k: int) -> dict:
    rows = table.sort_by(
        [("ds", "ascending"), ("user_id", "ascending"), ("p_click", "descending"), ("event_id", "ascending")]
    ).to_pylist()
    out: dict = {}
    for r in rows:
        g = out.setdefault((r["ds"], r["user_id"]), {"event_id": [], "item_id": [], "n": 0})
        g["n"] += 1
        if len(g["event_id"]) < k:
            g["event_id"].append(r["event_id"])
            g["item_id"].append(r["item_id"])
    return out


class _Sink:
    def __init__(self) -> None:
        self.rows: list[pa.Table] = []
        self.reasons: list[str] = []

    def write(self, rows, reasons, batch=None) -> int:
        self.rows.append(rows)
        self.reasons += list(reasons)
        return rows.num_rows

    def tagged(self, tag):
        return self


@pytest.mark.parametrize("block_rows", [1, 7, 64, 10_000])
def test_partials_then_merge_equal_one_sort_whatever_the_blocks(block_rows):
    table = _scored(500)
    partial = TopKPartial(SPEC)
    partials = [partial(table.slice(i, block_rows)) for i in range(0, table.num_rows, block_rows)]
    assert all(
        p.num_rows <= 3 * len(set(zip(*[p.column(c).to_pylist() for c in ("ds", "user_id")], strict=True)))
        for p in partials
    )
    # a hash partition holds whole groups; split the partials by group into two "partitions"
    merged_in = pa.concat_tables(partials)
    even = np.array(
        [
            (hash((d, u)) % 2 == 0)
            for d, u in zip(merged_in["ds"].to_pylist(), merged_in["user_id"].to_pylist(), strict=True)
        ]
    )
    out = pa.concat_tables([TopKMerge(SPEC)(merged_in.filter(pa.array(m))) for m in (even, ~even)])
    want = _reference(table, 3)
    got = {(r["ds"], r["user_id"]): r for r in out.to_pylist()}
    assert set(got) == set(want)
    for key, g in want.items():
        assert got[key]["event_id"] == g["event_id"]
        assert got[key]["item_id"] == g["item_id"]
        assert got[key]["candidates"] == g["n"]
        assert got[key]["p_click"] == sorted(got[key]["p_click"], reverse=True)
    assert out.schema.field("p_click").type == pa.list_(pa.float32())


def test_non_finite_order_by_goes_to_dead_letters():
    table = _scored(50)
    clicks = table.column("p_click").to_numpy().copy()
    clicks[[3, 9]] = [np.nan, np.inf]
    table = table.set_column(table.schema.get_field_index("p_click"), "p_click", pa.array(clicks))
    sink = _Sink()
    out = TopKMerge(SPEC)(TopKPartial(SPEC, sink)(table))
    assert sink.reasons == [NON_FINITE_SCORE] * 2
    assert sorted(pa.concat_tables(sink.rows).column("event_id").to_pylist()) == ["e00003", "e00009"]
    assert sum(out.column("candidates").to_pylist()) == 48
    with pytest.raises(StageError, match="2 rows: non-finite score"):
        TopKPartial(SPEC)(table)


def test_merge_refuses_a_group_over_the_cap_naming_it():
    table = _scored(200)
    spec = TopKSpec(**{**SPEC.__dict__, "max_group_rows": 10})
    partials = pa.concat_tables([TopKPartial(spec)(table.slice(i, 10)) for i in range(0, 200, 10)])
    with pytest.raises(
        StageError, match=r"group ds='2026-10-0\d', user_id=1 reached its merge task as \d+ rows"
    ):
        TopKMerge(spec)(partials)


def test_empty_blocks():
    empty = _scored(10).slice(0, 0)
    assert TopKMerge(SPEC)(TopKPartial(SPEC)(empty)).num_rows == 0


def _write(tmp_path, name: str, table: pa.Table) -> str:
    path = str(tmp_path / name)
    pq.write_table(table, path)
    return path


def _check(tmp_path, out: pa.Table, inp: pa.Table, dead_rows: int = 0) -> str | None:
    fs = pafs.LocalFileSystem()
    check = TopKCheck(["user_id"], "candidates", "p_click", 3)
    halves = [out.slice(0, out.num_rows // 2), out.slice(out.num_rows // 2)]
    out_paths = [_write(tmp_path, f"out{i}.parquet", t) for i, t in enumerate(halves)]
    group_keys = (fingerprint_of(inp, ["user_id"]), Fingerprint())  # the input's group keys, no dead letters
    return check_groups("ds=D", inp.num_rows, fs, out_paths, dead_rows, check, group_keys)


def test_group_checks_pass_and_catch_a_duplicate_a_lost_group_and_a_bad_list(tmp_path):
    inp = _scored(300, users=20).filter(pa.array(np.ones(300, dtype=bool)))
    inp = inp.set_column(inp.schema.get_field_index("ds"), "ds", pa.array(["D"] * 300))
    out = TopKMerge(SPEC)(TopKPartial(SPEC)(inp)).drop_columns(["ds"])
    assert _check(tmp_path, out, inp) is None

    # one group split in two rows with the same total: the counts and the weighted keys agree,
    # the count by group does not
    heavy = out.filter(pa.compute.equal(out.column("user_id"), 1)).to_pylist()[0]
    n = heavy["candidates"]
    rest = out.filter(pa.compute.fill_null(pa.compute.not_equal(out.column("user_id"), 1), True))
    split = pa.concat_tables(
        [
            rest,
            pa.Table.from_pylist(
                [{**heavy, "candidates": n - 5}, {**heavy, "candidates": 5}], schema=out.schema
            ),
        ]
    )
    assert "groups appear in more than one output row" in _check(tmp_path, split, inp)

    # a group moved to another key: the counts agree, the keys do not
    moved = out.set_column(
        out.schema.get_field_index("user_id"),
        "user_id",
        pa.array([999 if u == 1 else u for u in out.column("user_id").to_pylist()], type=pa.int64()),
    )
    assert "the groups differ" in _check(tmp_path, moved, inp)

    # a list not in order
    rows = out.to_pylist()
    rows[0]["p_click"] = (
        list(reversed(rows[0]["p_click"])) if len(set(rows[0]["p_click"])) > 1 else rows[0]["p_click"]
    )
    for r in rows:
        if len(set(r["p_click"])) > 1:
            r["p_click"] = sorted(r["p_click"])
            break
    assert "sorted by p_click" in _check(tmp_path, pa.Table.from_pylist(rows, schema=out.schema), inp)

    # a lost group
    assert "input rows but" in _check(tmp_path, out.slice(1), inp)


def _cfg(**top_k):
    return config_from_dict(
        {
            "name": "x",
            "input": {"uri": "/in"},
            "model": {"uri": "/m.pt"},
            "output": {
                "uri": "/out",
                "key_columns": ["event_id", "user_id", "item_id"],
                "score_columns": ["p_click", "p_convert"],
                "top_k": {"group_by": ["user_id"], "k": 5, **top_k},
            },
        }
    )


def test_config_defaults_and_refusals():
    cfg = _cfg()
    assert cfg.output.item_columns == ["event_id", "item_id"] and cfg.output.order_by == "p_click"
    assert _cfg(order_by="p_convert").output.order_by == "p_convert"
    # sizing knobs do not change what is scored
    assert _cfg(partitions=9, max_group_rows=5).scoring_digest() == cfg.scoring_digest()
    assert _cfg(k=6).scoring_digest() != cfg.scoring_digest()
    for bad, msg in [
        ({"group_by": ["country"]}, "must be among output.key_columns"),
        ({"order_by": "p_dwell"}, "is not one of the heads"),
        ({"count_column": "p_click"}, "clashes"),
        ({"k": 0}, "greater than or equal to 1"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            _cfg(**bad)


def test_duplicate_groups_names_each_group_and_its_rows(tmp_path):
    """Without Ray: the groups in more than one output row, each with its keys and `rows` only."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from pipeline.commit.groups import duplicate_groups

    paths = []
    for i, users in enumerate([[1, 2, 3], [4, 2, 5]]):
        paths.append(str(tmp_path / f"part-{i}.parquet"))
        pq.write_table(pa.table({"user_id": users}), paths[-1])
    assert duplicate_groups(pafs.LocalFileSystem(), paths, ["user_id"]) == [{"user_id": 2, "rows": 2}]
