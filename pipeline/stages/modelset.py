"""Top-K with challengers (output.top_k and `challengers`): every model on the same preprocessed
rows in each replica, then each model's own top-K per group through one shuffle.

    preprocessed --ModelSetPredictor--> each model's predictions, stacked (a `__model` column;
                                        a challenger's heads renamed `__m<i>:<head>`)
                 --ModelSetTopKPartial--> each model's TopKPartial, stacked the same way
                 --hash shuffle by (date, group)--> every partial of a group, all models, in one block
                 --ModelSetTopKMerge--> the champion's merged groups (on to the write stage);
                                        each challenger's merged groups written to its own table

The stacked blocks always hold every model's columns (nulls where a row is another model's), so
the shuffle sees one schema. A challenger that fails here (its model does not load or raises, a
group over its max_group_rows, its write) is left out of this process from then on and leaves a
failure marker the driver reads before its commit (as in the actors mode): the champion's rows
never wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.arrays import from_numpy, to_numpy
from models.features import row_hash64
from pipeline.stages.topk import TopKMerge, TopKPartial, TopKSpec

MODEL_COLUMN = "__model"


def side_column(i: int, head: str) -> str:
    """The i-th challenger's head in a stacked block (never equal to a champion's column)."""
    return f"__m{i}:{head}"


@dataclass
class PairSpec:
    """Where a challenger's per-row (champion, challenger) scores go before the ranking, for the
    comparison: a deterministic sample by key hash (the rows whose hash is below the date's cut,
    at most compare.max_rows of a date), one small Parquet file per batch and date."""

    where: Any  # pipeline.storage.Location of the folder (under its table's _runs/RUN_ID/)
    keys: list[str]
    champion: str  # the champion's head compared
    challenger: str  # the challenger's
    cuts: dict[str, int]  # date -> key hashes below it are kept


@dataclass
class SideModel:
    """A challenger as the staged top-K stages need it (picklable)."""

    name: str
    predictor: dict[str, Any]  # its Predictor's arguments
    dates: set[str]
    spec: TopKSpec
    dead_letter: Any  # its DeadLetterWriter
    files: Any  # pipeline.stages.layout.OutputFiles of its table
    file_prefix: str  # this attempt's prediction file prefix (pipeline.tablefiles.run_file_prefix)
    failed_at: Any  # pipeline.storage.Location of its failure marker
    pairs: PairSpec | None = None


def write_pairs(spec: PairSpec, col: str, champion: pa.Table, challenger: pa.Table) -> None:
    """The sampled (key hash, champion score, challenger score) of rows both models scored (row i
    of each table is the same input row), per date; named after their key hashes, so a retried
    batch rewrites its own file."""
    import pyarrow.parquet as pq

    h = row_hash64([challenger.column(k) for k in spec.keys], seed=13)
    dates = challenger.column(col).to_pylist()
    cut = np.array([spec.cuts.get(d, 0) for d in dates], dtype=np.uint64)
    keep = h < cut
    if not keep.any():
        return
    a = to_numpy(champion.column(spec.champion))
    b = to_numpy(challenger.column(spec.challenger))
    day = np.array(dates, dtype=object)
    for d in sorted(set(day[keep])):
        mine = keep & (day == d)
        rows = pa.table({"h": h[mine], "a": a[mine], "b": b[mine]})
        name = hashlib.sha1(h[mine].tobytes()).hexdigest()[:20]
        folder = spec.where.join(f"{col}={d}")
        with contextlib.suppress(OSError):  # S3 has no folders; a local one may exist already
            folder.fs.create_dir(folder.path, recursive=True)
        with folder.fs.open_output_stream(folder.join(f"{name}.parquet").path) as f:
            pq.write_table(rows, f)


class _Sides:
    """The challengers of one stage in one process, each left out after its first failure."""

    def __init__(self, sides: list[SideModel]) -> None:
        self.sides = sides
        self.failed: set[str] = set()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "failed": set()}

    def live(self) -> list[tuple[int, SideModel]]:
        return [(i, m) for i, m in enumerate(self.sides, 1) if m.name not in self.failed]

    def guard(self, m: SideModel, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # this challenger alone stops; the driver reads why
            from pipeline.storage import write_bytes

            self.failed.add(m.name)
            brief = " ".join(str(e).split())[:1000]
            why = f"{type(e).__name__}: {brief} (top-K stage, pid {os.getpid()})"
            with contextlib.suppress(Exception):
                write_bytes(m.failed_at, why.encode())
            return None


def _stacked(tables: list[pa.Table], columns: list[str], extra: dict[str, pa.DataType]) -> pa.Table:
    """`tables` (each with its MODEL_COLUMN) as one table of `columns`: the base columns as the
    first table has them, then `extra` (null where a row is another model's)."""
    t = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    for name, kind in extra.items():
        if name not in t.column_names:
            t = t.append_column(name, pa.nulls(t.num_rows, kind))
    return t.select([*columns, *extra, MODEL_COLUMN])


def _tag(table: pa.Table, i: int) -> pa.Table:
    return table.append_column(MODEL_COLUMN, from_numpy(np.full(table.num_rows, i, dtype=np.int8)))


def _own(block: pa.Table, i: int) -> pa.Table:
    return block.filter(from_numpy(to_numpy(block.column(MODEL_COLUMN)) == i))


def _as_side(table: pa.Table, i: int, heads: list[str]) -> pa.Table:
    names = {h: side_column(i, h) for h in heads}
    return table.rename_columns([names.get(c, c) for c in table.column_names])


def _from_side(block: pa.Table, i: int, heads: list[str], columns: list[str]) -> pa.Table:
    """The i-th challenger's rows with its own head names: `columns` (heads among them, by their
    own names) taken from the stacked block."""
    rows = _own(block, i)
    own = set(heads)
    return pa.table({c: rows.column(side_column(i, c) if c in own else c) for c in columns})


def _side_heads(sides: list[SideModel]) -> dict[str, pa.DataType]:
    return {side_column(i, h): pa.float32() for i, m in enumerate(sides, 1) for h in m.spec.heads}


class ModelSetPredictor:
    """The actor pool's stage with challengers: each batch through the champion's Predictor (loaded
    in `__init__`, as the Predictor stage) and every challenger's (loaded on its first batch, so a
    model that does not load fails that challenger alone), stacked."""

    name = "predict"

    def __init__(self, champion: dict[str, Any], sides: list[SideModel], partition_column: str) -> None:
        from pipeline.stages.predict import Predictor

        self.champion = Predictor(**champion)
        self.sides = _Sides(sides)
        self.partition_column = partition_column
        self.predictors: dict[str, Any] = {}

    def __call__(self, batch: Any) -> pa.Table:
        """`batch`: a preprocessed table, or the FusedScorer's FeatureBatch (as one table here:
        the challengers' rows are filtered by date)."""
        if not isinstance(batch, pa.Table):
            batch = batch.to_table()
        out = self.champion(batch)
        tables = [_tag(out, 0)]
        for i, m in self.sides.live():
            rows, mask = self._dates_of(batch, m)
            if rows.num_rows:
                mine = self.sides.guard(m, self._predict, m, rows)
                if mine is not None:
                    tables.append(_tag(_as_side(mine, i, m.spec.heads), i))
                if mine is not None and m.pairs is not None and out.num_rows == batch.num_rows:
                    champ = out if mask is None else out.filter(mask)
                    self.sides.guard(m, write_pairs, m.pairs, self.partition_column, champ, mine)
        return _stacked(tables, out.column_names, _side_heads(self.sides.sides))

    def _dates_of(self, batch: pa.Table, m: SideModel) -> tuple[pa.Table, Any]:
        """The batch's rows of the challenger's dates, and the mask taken (None: every row)."""
        dates = batch.column(self.partition_column)
        if batch.num_rows == 0 or pc.all(pc.is_in(dates, pa.array(sorted(m.dates)))).as_py():
            return batch, None
        mask = pc.is_in(dates, pa.array(sorted(m.dates)))
        return batch.filter(mask), mask

    def _predict(self, m: SideModel, rows: pa.Table) -> pa.Table:
        from pipeline.stages.predict import Predictor

        if m.name not in self.predictors:
            self.predictors[m.name] = Predictor(**m.predictor)
        return self.predictors[m.name](rows)


class FusedModelSet:
    """FusedScorer (preprocess and predict inside the read task) with a ModelSetPredictor, cached
    per worker process as FusedScorer's predictor is."""

    name = "score"

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer  # a pipeline.stages.predict.FusedScorer whose predictor_kwargs are the set's

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline.stages.predict import _FUSED_PREDICTORS

        key = self.scorer.key
        predictor = _FUSED_PREDICTORS.get(key)
        if predictor is None:
            _FUSED_PREDICTORS.clear()  # one run's models per process, as FusedScorer
            predictor = _FUSED_PREDICTORS[key] = ModelSetPredictor(**self.scorer.predictor_kwargs)
        return self.scorer.score(batch, predictor)


class ModelSetTopKPartial:
    """TopKPartial of each model's rows of a stacked block (its own dead letters), stacked again."""

    name = "top-k partial"

    def __init__(self, champion: TopKSpec, dead_letter: Any, sides: list[SideModel]) -> None:
        self.champion = TopKPartial(champion, dead_letter)
        self.sides = _Sides(sides)
        self.partials = {m.name: TopKPartial(m.spec, m.dead_letter) for m in sides}

    def __call__(self, block: pa.Table) -> pa.Table:
        out = self.champion(_own(block, 0).drop_columns([MODEL_COLUMN]))
        tables = [_tag(out, 0)]
        for i, m in self.sides.live():
            if m.name in self.partials:
                mine = self.sides.guard(m, self._partial, i, m, block)
                if mine is not None and mine.num_rows:
                    tables.append(_tag(_as_side(mine, i, m.spec.heads), i))
        return _stacked(tables, out.column_names, _side_heads(self.sides.sides))

    def _partial(self, i: int, m: SideModel, block: pa.Table) -> pa.Table:
        partial = self.partials[m.name]
        return partial(_from_side(block, i, m.spec.heads, partial.columns))


class ModelSetTopKMerge:
    """Each model's TopKMerge of a shuffled block: the champion's groups are returned (the write
    stage writes them), each challenger's are written to its table here, named after their content
    (a retried task rewrites its own files)."""

    name = "top-k merge"

    def __init__(self, champion: TopKSpec, sides: list[SideModel]) -> None:
        self.champion = TopKMerge(champion)
        self.sides = _Sides(sides)

    def __call__(self, block: pa.Table) -> pa.Table:
        if MODEL_COLUMN not in block.column_names:  # an empty partition of the shuffle, schema-less
            return block
        spec = self.champion.spec
        cols = [*spec.group_columns, *spec.items, *spec.heads, "model_version", "run_id", spec.count_column]
        merged = self.champion(_own(block, 0).select(cols))
        for i, m in self.sides.live():
            self.sides.guard(m, self._write, i, m, block)
        return merged

    def _write(self, i: int, m: SideModel, block: pa.Table) -> None:
        s = m.spec
        cols = [*s.group_columns, *s.items, *s.heads, "model_version", "run_id", s.count_column]
        rows = _from_side(block, i, s.heads, cols)
        if not rows.num_rows:
            return
        merged = TopKMerge(s)(rows)
        h = row_hash64([merged.column(c) for c in s.group_columns], seed=5)
        token = hashlib.sha1(np.sort(h).tobytes()).hexdigest()[:16]
        m.files.write(merged, lambda j: f"{m.file_prefix}topk-{token}-{j}.parquet")


def model_set_top_k_dataset(
    ds, champion: TopKSpec, sides: list[SideModel], partitions: int, dead_letter: Any = None
):
    """The stacked predictions reduced to one row per group and date for every model: the
    champion's rows go on (lazy: nothing runs here), the challengers' are written by the merge."""
    ds = ds.map_batches(
        ModelSetTopKPartial(champion, dead_letter.tagged("topk") if dead_letter is not None else None, sides),
        batch_format="pyarrow",
        batch_size=None,
    )
    ds = ds.repartition(partitions, keys=champion.group_columns)
    return ds.map_batches(ModelSetTopKMerge(champion, sides), batch_format="pyarrow", batch_size=None)
