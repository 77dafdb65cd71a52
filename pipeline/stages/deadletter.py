"""Rows that cannot be scored, written under the dead-letter table (OUTPUT/_dead_letter) with the
reason; each date's files are committed to that Delta table in the same step as its predictions.

File names are unique per attempt (the process running the run id), Ray Data task and batch, and
deterministic within the attempt: a retried task (same task index, its batches in the same order)
rewrites the same files instead of adding copies, and two batches never share a name, even when
their keys are equal (every null key hashes alike). Another attempt of the same run id never
shares a name: it could be alive, or its files committed.
Like the predictions, each file's footer holds the key fingerprint of its rows."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.features import row_hash64
from pipeline.constcols import constant_strings
from pipeline.filestats import write_parquet
from pipeline.storage import Location, is_s3
from pipeline.tablefiles import run_file_prefix

REASON_COLUMN = "reason"


def _task_token() -> str | None:
    """The current Ray Data task's operator and index (stable across retries of that task)."""
    try:
        from ray.data._internal.execution.interfaces.task_context import TaskContext
    except ImportError:  # pragma: no cover - Ray moved it; the content hash below still works
        return None
    ctx = TaskContext.get_current()
    if ctx is None:
        return None
    op = hashlib.sha1(str(ctx.op_name).encode()).hexdigest()[:6]
    return f"{op}{ctx.task_idx:06d}"


def _content_token(batch: pa.Table) -> str:
    """Outside a Ray Data task: a hash of the whole batch (every column), which tells batches with
    equal keys apart."""
    h = row_hash64([batch.column(c) for c in batch.column_names], seed=5)
    return hashlib.sha1(h.tobytes() + str(batch.num_rows).encode()).hexdigest()[:12]


class DeadLetterWriter:
    def __init__(
        self, root: Location, partition_column: str, key_columns: list[str], run_id: str, attempt: str = ""
    ) -> None:
        self.root = root
        self.partition_column = partition_column
        self.key_columns = list(key_columns)
        self.run_id = run_id
        self.attempt = attempt
        self.tag = ""
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()  # the local runner's threads share one writer

    def __getstate__(self) -> dict:  # shipped to Ray workers: each process gets its own lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def tagged(self, tag: str) -> DeadLetterWriter:
        """A writer for another stage of the same task (fused mode runs preprocess and predict in
        one task): its files get `tag` in their names, so the two stages never share a name."""
        other = DeadLetterWriter(
            self.root, self.partition_column, self.key_columns, self.run_id, self.attempt
        )
        other.tag = tag
        return other

    def _name(self, batch: pa.Table) -> str:
        token = _task_token() or _content_token(batch)
        with self._lock:
            seq = self._seq.get(token, 0)
            self._seq[token] = seq + 1
        return f"{run_file_prefix(self.run_id, 'dl', self.attempt)}{self.tag}{token}-{seq:04d}"

    def write(self, rows: pa.Table, reasons: np.ndarray, batch: pa.Table | None = None) -> int:
        """Write `rows` (with one reason each) under root/<partition>=<date>/. `batch`: the whole
        batch the rows came from (names the file outside Ray). Returns rows written."""
        if rows.num_rows == 0:
            return 0
        keep = [
            c for c in dict.fromkeys([*self.key_columns, self.partition_column]) if c in rows.column_names
        ]
        table = rows.select(keep)
        table = table.append_column(REASON_COLUMN, pa.array(reasons.tolist(), type=pa.string()))
        table = table.append_column("run_id", constant_strings(self.run_id, table.num_rows))
        name = self._name(batch if batch is not None else rows)
        for d in pc.unique(table.column(self.partition_column)).to_pylist():
            part = table.filter(pc.equal(table.column(self.partition_column), d))
            part = part.drop_columns([self.partition_column])
            target = self.root.join(f"{self.partition_column}={d}", f"{name}.parquet")
            if not is_s3(self.root.uri):  # S3 needs no directories; pyarrow's would be marker objects
                self.root.fs.create_dir(target.path.rsplit("/", 1)[0], recursive=True)
            keys = [c for c in self.key_columns if c in part.column_names]
            write_parquet(self.root.fs, target.path, part, keys, compression="zstd")  # stats in the footer
        return table.num_rows


def dead_letter_schema(input_schema: pa.Schema, key_columns: list[str], partition_column: str) -> pa.Schema:
    """The dead-letter table's columns: the keys as in the input, the reason, the run, the date."""
    fields = [input_schema.field(c).remove_metadata() for c in key_columns if c in input_schema.names]
    fields += [pa.field(REASON_COLUMN, pa.string()), pa.field("run_id", pa.string())]
    return pa.schema([*fields, pa.field(partition_column, pa.string())])
