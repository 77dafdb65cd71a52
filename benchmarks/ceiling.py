"""The local runner's pipeline against this machine's CPU ceiling (issue 11's 0.9 target).

Runs `batchscore score CONFIG --date ...` in this process with the local runner and measures,
for the pipeline alone (`LocalRun._run`: the scoring threads from the model's load to the last
file written; start-up, the final commit and the report left out):

  process CPU   every thread of the process while the pipeline runs: read, key record,
                preprocessing, transforms, forward, write, footer stats, the committer's commits
  ceiling       rows per second if that CPU were spread over all cores without a gap:
                cores x rows / process CPU
  ratio         achieved rows/s over the ceiling (= process CPU / (cores x wall), the share of
                the cores the pipeline kept busy)

The scoring threads' own CPU (time.thread_time) is reported too; it leaves out what PyArrow's
and the committer's threads do. Run it on an idle machine, alternating the variants compared:

    python benchmarks/ceiling.py --runs 3 /tmp/bench4/bench.yaml --date 2026-10-01 --date 2026-10-02
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(argv: list[str]) -> dict:
    """One run in this process: the pipeline's wall and CPU times."""
    sys.path.insert(0, str(REPO))
    from jobs.cli import main
    from pipeline.run import local

    seen: dict = {"threads": []}
    work, run = local.LocalRun._work, local.LocalRun._run

    def timed_work(self, predictor):
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            return work(self, predictor)
        finally:
            seen["threads"].append((time.thread_time() - c0, time.perf_counter() - w0))

    def timed_run(self):
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return run(self)
        finally:
            seen["wall"], seen["cpu"] = time.perf_counter() - w0, time.process_time() - c0
            seen["rows"] = self.score.rows_in

    local.LocalRun._work, local.LocalRun._run = timed_work, timed_run
    if main(["score", *argv, "--force", "--set", "ray.runner=local"]) != 0:
        raise SystemExit("batchscore score failed")
    cores = len(os.sched_getaffinity(0))
    rows, wall, cpu = seen["rows"], seen["wall"], seen["cpu"]
    return {
        "rows": rows,
        "pipeline_wall_s": round(wall, 2),
        "process_cpu_s": round(cpu, 2),
        "cpu_s_per_1m_rows": round(cpu / rows * 1e6, 3),
        "scoring_threads_cpu_s": round(sum(c for c, _ in seen["threads"]), 2),
        "scoring_threads_wall_s": [round(w, 2) for _, w in seen["threads"]],
        "cores": cores,
        "achieved_rows_per_s": round(rows / wall),
        "ceiling_rows_per_s": round(cores * rows / cpu),
        "ratio": round(cpu / (cores * wall), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs, each a new process")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's single run
    args, rest = ap.parse_known_args()
    if args.one:
        print(json.dumps(measure(rest)))
        return 0
    results = []
    for _ in range(args.runs):
        proc = subprocess.run(
            [sys.executable, __file__, "--one", *rest], capture_output=True, text=True, cwd=REPO
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    ratios = sorted(r["ratio"] for r in results)
    summary = {"runs": len(results), "ratio_min": ratios[0], "ratio_median": ratios[len(ratios) // 2]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
