"""An outside reader of the predictions table, run as its own process by the tests: it polls each
date's row count and number of model versions through deltalake and through DuckDB's delta
extension (readers that are not batchscore's), and writes one JSON line per read.

    python tests/outside_reader.py TABLE_URI OUT.jsonl --seconds 30
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time


def duckdb_connection():
    import duckdb

    # the delta extension ships in the duckdb-ext-delta wheel: no download at run time
    spec = importlib.util.find_spec("duckdb_ext")
    ext_dir = os.path.join(spec.submodule_search_locations[0], "extensions")
    con = duckdb.connect(config={"extension_directory": ext_dir, "autoinstall_known_extensions": False})
    con.execute("LOAD delta")
    return con


def read_deltalake(uri: str) -> dict[str, list[int]]:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(uri).to_pyarrow_table(columns=["ds", "model_version"])
    out = {}
    for d in pc.unique(table.column("ds")).to_pylist():
        rows = table.filter(pc.equal(table.column("ds"), d))
        models = pc.unique(rows.column("model_version")).to_pylist()
        out[d] = [rows.num_rows, len(models), min(models)]
    return out


def read_duckdb(con, uri: str) -> dict[str, list[int]]:
    rows = con.execute(
        "SELECT ds, count(*), count(DISTINCT model_version), min(model_version) "
        "FROM delta_scan(?) GROUP BY ds",
        [uri],
    ).fetchall()
    return {d: [n, m, v] for d, n, m, v in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("out")
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    con = duckdb_connection()
    deadline = time.monotonic() + args.seconds
    with open(args.out, "w") as f:
        while time.monotonic() < deadline and not os.path.exists(args.out + ".stop"):
            for reader in ("deltalake", "duckdb"):
                rec = {"reader": reader, "t": time.time()}
                try:
                    rec["dates"] = (
                        read_deltalake(args.uri) if reader == "deltalake" else read_duckdb(con, args.uri)
                    )
                except Exception as e:  # a failed read is what the test looks for
                    rec["error"] = f"{type(e).__name__}: {e}"[:500]
                f.write(json.dumps(rec) + "\n")
                f.flush()


if __name__ == "__main__":
    main()
