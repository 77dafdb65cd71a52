"""Resume inside a date (issue 22): a date killed at 90 % and rerun, against a full rescore, as
whole `batchscore score` processes timed from start to exit.

    python benchmarks/resume_bench.py [--files 40] [--rows-per-file 25000] [--kill-at 0.9]

On one generated date of `--files` Parquet files (the built-in DLRM demo preset, random weights,
as benchmarks/bench.py): `output.target_rows_per_file` is the file's rows, so each input file is
one unit.
  full     `batchscore score` of the date into a fresh table: wall time from start to exit
  killed   the same into another fresh table, SIGKILLed once its attempt record lists
           `--kill-at` of the units as finished (not timed)
  resumed  the rerun (a new run id) into the killed run's table: wall time from start to exit,
           and from its report the rows it adopted and scored
The ratio resumed / full is the figure (target <= 0.2 at 90 %). Results: ROOT/resume.json."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import batchscore_command, write_config  # noqa: E402
from common import make_model  # noqa: E402

from jobs.synthetic import SyntheticSpec, write_days  # noqa: E402
from pipeline.storage import resolve  # noqa: E402

DATE = "2026-10-01"


def units_recorded(out: Path) -> int:
    n = 0
    for p in out.glob("_runs/*/attempts/*.json"):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("status") == "running":
            n += len(rec.get("work", {}).get("units", []))
    return n


def score(config: Path, run_id: str) -> subprocess.Popen:
    cmd = [*batchscore_command(), "score", str(config), "--date", DATE, "--run-id", run_id]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def timed(config: Path, run_id: str) -> float:
    t0 = time.perf_counter()
    proc = score(config, run_id)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{run_id} failed:\n{err[-3000:]}")
    return time.perf_counter() - t0


def kill_at(config: Path, out: Path, share: float, files: int) -> int:
    proc = score(config, "killed")
    want = max(1, round(share * files))
    while proc.poll() is None:
        if units_recorded(out) >= want:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return units_recorded(out)  # its record still says running
        time.sleep(0.05)
    raise SystemExit(f"the run ended before {want} units were recorded")


def config_for(root: Path, name: str, data: Path, rows_per_file: int) -> tuple[Path, Path]:
    import yaml

    out = root / f"out-{name}"
    path = write_config(root / f"{name}.yaml", data, root / "model", out, 4096)
    cfg = yaml.safe_load(path.read_text())
    cfg["output"]["target_rows_per_file"] = rows_per_file
    path.write_text(
        f"# Run: batchscore score {path} --date {DATE} (benchmarks/resume_bench.py)\n" + yaml.safe_dump(cfg)
    )
    return path, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="bench-data/resume")
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--rows-per-file", type=int, default=25_000)
    ap.add_argument("--kill-at", type=float, default=0.9)
    args = ap.parse_args()
    root = Path(args.root).resolve()
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    make_model(root)
    spec = SyntheticSpec(rows_per_day=args.files * args.rows_per_file, shards_per_day=args.files)
    write_days(resolve(str(root / "data")), [DATE], spec)
    full_cfg, _ = config_for(root, "full", root / "data", args.rows_per_file)
    resume_cfg, out = config_for(root, "resume", root / "data", args.rows_per_file)
    full_s = timed(full_cfg, "full")
    killed_units = kill_at(resume_cfg, out, args.kill_at, args.files)
    resumed_s = timed(resume_cfg, "resumed")
    report = json.loads((out / "_runs" / "resumed" / "report.json").read_text())
    result = {
        "rows": spec.rows_per_day,
        "files": args.files,
        "killed_at_units": killed_units,
        "full_s": round(full_s, 2),
        "resumed_s": round(resumed_s, 2),
        "ratio": round(resumed_s / full_s, 3),
        "rows_adopted": report["rows"]["adopted"],
        "rows_scored": report["rows"]["scored"],
        "resumed_pipeline_s": report.get("timings_s", {}).get("pipeline_s"),
    }
    (root / "resume.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
