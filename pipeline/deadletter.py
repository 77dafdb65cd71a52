"""Rows that cannot be scored, written next to the predictions with the reason.

`DeadLetterWriter` is called from the preprocess stage. File names are derived from the rows'
keys, so a retried block rewrites the same file instead of adding a second copy.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.features import row_hash64
from pipeline.storage import Location

DEAD_LETTER_DIR = "_dead_letter"
REASON_COLUMN = "reason"


class DeadLetterWriter:
    def __init__(self, root: Location, partition_column: str, key_columns: list[str], run_id: str) -> None:
        self.root = root
        self.partition_column = partition_column
        self.key_columns = list(key_columns)
        self.run_id = run_id

    def write(self, rows: pa.Table, reasons: np.ndarray) -> int:
        """Write `rows` (with one reason each) under root/<partition>=<date>/. Returns rows written."""
        if rows.num_rows == 0:
            return 0
        keep = [
            c for c in dict.fromkeys([*self.key_columns, self.partition_column]) if c in rows.column_names
        ]
        table = rows.select(keep)
        table = table.append_column(REASON_COLUMN, pa.array(reasons.tolist(), type=pa.string()))
        table = table.append_column("run_id", pa.repeat(pa.scalar(self.run_id), table.num_rows))
        dates = pc.unique(table.column(self.partition_column)).to_pylist()
        for d in dates:
            part = table.filter(pc.equal(table.column(self.partition_column), d))
            part = part.drop_columns([self.partition_column])
            digest = hashlib.sha1(row_hash64([part.column(c) for c in self.key_columns], seed=1).tobytes())
            target = self.root.join(f"{self.partition_column}={d}", f"dl-{digest.hexdigest()[:20]}.parquet")
            self.root.fs.create_dir(target.path.rsplit("/", 1)[0], recursive=True)
            with self.root.fs.open_output_stream(target.path) as f:
                pq.write_table(part, f, compression="zstd")
        return table.num_rows
