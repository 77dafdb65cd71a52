"""Scaling benchmark: batchscore on a `ray.cluster_utils.Cluster` of 1..N nodes and several data sizes.

For each node count in --nodes it starts a local multi-node Ray cluster (a head node plus
`cluster.add_node(...)` worker nodes, each with --cpus-per-node CPUs, all on this machine), connects
the driver to it, and runs `run_score` end to end (read -> score -> write -> commit with key
reconciliation) once per data size in --rows. Data: synthetic, 2 dates, files of --rows-per-file
rows (bigger data = more files = more read/score tasks), generated once per size under --root and
reused. Model: the built-in DLRM `dlrm-demo` preset, random weights, a fitted feature spec.

Per run it records rows/s end to end (rows / wall time of `run_score`), the pipeline's own rows/s,
the stage timings, how many worker processes (on how many nodes) scored, and the peak memory of
the whole process tree (this process, the cluster's GCS/raylets and every Ray worker are its
descendants): summed RSS, sampled every 0.2 s as in bench.py, and summed PSS (shared pages such as
torch's libraries and the object store split between the processes mapping them), sampled every
second where /proc/<pid>/smaps_rollup exists.

Writes scaling.json, scaling.md (table + machine + command) and scaling.png (needs matplotlib:
`pip install -e '.[bench]'`; skipped with a message without it) into --out. `--plot-only JSON`
rewrites the .md and .png from a scaling.json, e.g. one fetched from another machine.

Needs only ray, pyarrow, numpy and torch (psutil optional) so it also runs from a bundle.

    python benchmarks/scaling.py --nodes 1,2,4 --cpus-per-node 4              # 16-CPU machine
    python benchmarks/scaling.py --nodes 1,2 --cpus-per-node 1 --rows 500000,1000000   # 2 CPUs
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # before anything imports ray

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATES = ["2026-10-01", "2026-10-02"]
GIB = 2**30


from common import PeakMemory, make_model  # noqa: E402

# --- data and model -------------------------------------------------------------------------------


def make_data(root: Path, rows: int, rows_per_file: int) -> tuple[Path, int]:
    """`rows` rows over DATES in files of about `rows_per_file` rows, made once and reused."""
    from jobs.synthetic import SyntheticSpec, write_days
    from pipeline.storage import resolve

    per_day = rows // len(DATES)
    shards = max(1, math.ceil(per_day / rows_per_file))
    base = root / f"rows-{rows}-per-file-{rows_per_file}"
    marker = base / ".done"
    if not marker.exists():
        shutil.rmtree(base, ignore_errors=True)
        t0 = time.perf_counter()
        write_days(
            resolve(str(base / "data")), DATES, SyntheticSpec(rows_per_day=per_day, shards_per_day=shards)
        )
        marker.touch()
        print(
            f"data: {rows:,} rows in {shards * len(DATES)} files -> {base} ({time.perf_counter() - t0:.0f} s)"
        )
    return base / "data", shards * len(DATES)


def job_config(data: Path, model: Path, out: Path, args, total_cpus: int):
    from pipeline.config import config_from_dict

    predict = {
        "batch_size": args.batch,
        # actors: as many replicas as fit; fused: unset, so one task per CPU (set, it would cap them)
        **({"min_replicas": 1, "max_replicas": max(1, total_cpus)} if args.mode == "actors" else {}),
        "mode": args.mode,
        # fused (the CPU-only default) reads inside the scoring tasks: nothing else needs a free CPU,
        # and 1 node x 1 CPU would otherwise be refused
        "reserve_cpus": args.reserve_cpus,
    }
    return config_from_dict(
        {
            "name": "scaling",
            "input": {"uri": str(data)},
            "model": {"uri": str(model)},
            "preprocessing": {"batch_size": args.batch},
            "predict": predict,
            "output": {"uri": str(out), "key_columns": ["event_id"], "verify": "keys"},
            "report": {"html": False},
        }
    )


# --- one cluster, several sizes -------------------------------------------------------------------


def start_cluster(nodes: int, args):
    from ray.cluster_utils import Cluster

    store = int(args.object_store_gib * GIB)
    head = {
        "num_cpus": args.cpus_per_node,
        "num_gpus": args.head_gpus,
        "object_store_memory": store,
        "include_dashboard": False,
    }
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=args.cpus_per_node, num_gpus=0, object_store_memory=store)
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def score_once(cfg, rows_expected: int) -> dict:
    from pipeline.run.score import run_score

    with PeakMemory() as mem:
        rss0, pss0 = mem.sample(with_pss=True)
        t0 = time.perf_counter()
        report = run_score(cfg, DATES, force=True)
        wall = time.perf_counter() - t0
    rows = report["rows"]["input"]
    if rows != rows_expected:
        raise RuntimeError(f"scored {rows} input rows, expected {rows_expected}")
    replicas = report.get("replicas") or []
    return {
        "seconds": round(wall, 2),
        "rows_per_s": round(rows / wall),
        "pipeline_rows_per_s": report.get("throughput_rows_per_s"),
        "rows_out": report["rows"]["output"],
        "timings_s": report.get("timings_s"),
        "mode": (report.get("pool") or {}).get("mode"),
        "torch_threads": (report.get("pool") or {}).get("torch_threads"),
        "workers": len({(r.get("node_id"), r.get("pid")) for r in replicas}),
        "worker_nodes": len({r.get("node_id") for r in replicas}),
        "idle_rss_gib": round(rss0 / GIB, 2),
        "idle_pss_gib": round(pss0 / GIB, 2) if pss0 is not None else None,
        "peak_rss_gib": round(mem.peak_rss / GIB, 2),
        "peak_pss_gib": round(mem.peak_pss / GIB, 2) if mem.peak_pss is not None else None,
    }


def run_cluster(nodes: int, sizes: list[tuple[int, Path, int]], model: Path, args) -> list[dict]:
    import ray

    cpus = nodes * args.cpus_per_node
    base = {"nodes": nodes, "cpus_per_node": args.cpus_per_node, "cpus": cpus}
    results: list[dict] = []
    out = Path(args.root).resolve() / "out"
    t0 = time.perf_counter()
    cluster = None
    try:
        cluster = start_cluster(nodes, args)
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        started = round(time.perf_counter() - t0, 2)
        print(f"\n== {nodes} node(s) x {args.cpus_per_node} CPU: cluster up in {started} s", flush=True)
        if args.warmup:  # start the worker processes and load the model in them, not measured
            rows, data, _ = sizes[0]
            shutil.rmtree(out, ignore_errors=True)
            tw = time.perf_counter()
            try:
                score_once(job_config(data, model, out, args, cpus), rows)
                print(f"   warm-up on {rows:,} rows: {time.perf_counter() - tw:.1f} s", flush=True)
            except Exception as e:
                print(f"   warm-up failed: {type(e).__name__}: {e}", flush=True)
        for rows, data, files in sizes:
            r = {**base, "rows": rows, "files": files, "cluster_start_s": started, "warm": args.warmup}
            shutil.rmtree(out, ignore_errors=True)
            try:
                r.update(score_once(job_config(data, model, out, args, cpus), rows))
            except Exception as e:
                r["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                traceback.print_exc()
            print("  ", json.dumps(r), flush=True)
            results.append(r)
    except Exception as e:  # the cluster itself did not come up
        err = f"cluster: {type(e).__name__}: {e}"
        traceback.print_exc()
        done = {r["rows"] for r in results}
        results += [
            {**base, "rows": rows, "files": files, "error": err}
            for rows, _, files in sizes
            if rows not in done
        ]
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(out, ignore_errors=True)
    return results


# --- report ---------------------------------------------------------------------------------------


def machine_info() -> dict:
    import numpy
    import pyarrow
    import ray
    import torch

    try:
        import psutil

        ram = psutil.virtual_memory().total
    except ImportError:
        ram = 0
        try:
            with open("/proc/meminfo") as f:
                ram = int(f.readline().split()[1]) * 1024
        except OSError:
            pass
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "ram_gib": round(ram / GIB, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "ray": ray.__version__,
            "pyarrow": pyarrow.__version__,
            "numpy": numpy.__version__,
        },
    }


def _fmt(v, spec: str = ",") -> str:
    return "–" if v is None else format(v, spec)


def table(runs: list[dict]) -> str:
    one_node = {r["rows"]: r["rows_per_s"] for r in runs if r["nodes"] == 1 and "rows_per_s" in r}
    lines = [
        "| nodes | CPUs | rows | files | run_score s | rows/s end to end | speed-up vs 1 node "
        "| pipeline rows/s | workers (nodes) | peak RSS GiB | peak PSS GiB | idle PSS GiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(runs, key=lambda r: (r["nodes"], r["rows"])):
        head = f"| {r['nodes']} | {r['cpus']} | {r['rows']:,} | {r.get('files', '–')} "
        if "error" in r:
            lines.append(head + f"| failed: {r['error'][:120].replace('|', '/')} |" + " |" * 7)
            continue
        ref = one_node.get(r["rows"])
        speedup = f"{r['rows_per_s'] / ref:.2f}" if ref else "–"
        pipe = r.get("pipeline_rows_per_s")
        lines.append(
            head + f"| {r['seconds']:.1f} | {r['rows_per_s']:,} | {speedup} "
            f"| {_fmt(round(pipe) if pipe else None)} "
            f"| {r['workers']} ({r['worker_nodes']}) | {r['peak_rss_gib']:.2f} "
            f"| {_fmt(r.get('peak_pss_gib'), '.2f')} | {_fmt(r.get('idle_pss_gib'), '.2f')} |"
        )
    return "\n".join(lines)


def machine_line(m: dict) -> str:
    v = m["versions"]
    gpu = f", GPU {m['gpu']} (not used unless --head-gpus)" if m.get("gpu") else ""
    return (
        f"{m['machine']}, {m['cpus']} CPUs, {m['ram_gib']} GiB RAM{gpu}; Python {m['python']}, "
        f"torch {v['torch']}, ray {v['ray']}, pyarrow {v['pyarrow']}"
    )


def write_markdown(results: dict, path: Path) -> None:
    a = results["args"]
    warmup = (
        "after one unmeasured warm-up run per cluster (worker processes started, model loaded)"
        if a["warmup"]
        else "no warm-up run (the first size of each cluster pays worker start-up)"
    )
    total = f" Whole benchmark: {results['total_s']:.0f} s." if results.get("total_s") else ""
    text = f"""# batchscore scaling on a local multi-node Ray cluster

- Command: `{results["command"]}`
- Machine: {machine_line(results["machine"])}.{total}
- Cluster: `ray.cluster_utils.Cluster` on this one machine, a head node plus worker nodes of
  {a["cpus_per_node"]} CPU(s) each, {a["object_store_gib"]:g} GiB object store per node; the driver
  connects with `ray.init(address=...)`; a new cluster per node count.
- Job: `run_score(..., force=True)` over {len(results.get("dates", DATES))} dates, Parquet files of
  {a["rows_per_file"]:,} rows (more rows = more files = more tasks); built-in DLRM `dlrm-demo`, random
  weights, fitted feature spec; batches of {a["batch"]:,} rows; predict.mode {a["mode"]}; output.verify
  keys; report.html off; {warmup}.
- rows/s end to end = rows / wall time of `run_score` (checks, pipeline, profile, commit; cluster
  start not included, listed in scaling.json); pipeline rows/s = the pipeline stage alone; workers =
  distinct worker processes that scored (on how many nodes).
- Memory of the whole process tree (driver, GCS, raylets, Ray workers): summed RSS sampled every
  0.2 s (a shared page counts in every process that maps it, so this overstates) and summed PSS
  sampled every 1 s (shared pages split between the processes); idle = the same tree just before
  the run.

{table(results["runs"])}
"""
    path.write_text(text)


def write_plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print(
            f"matplotlib is not installed: {path.name} not written "
            "(pip install -e '.[bench]', then rerun with --plot-only scaling.json)"
        )
        return False
    runs = [r for r in results["runs"] if "error" not in r]
    node_counts = sorted({r["nodes"] for r in runs})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    millions = FuncFormatter(lambda x, _: f"{x / 1e6:g}M")
    for i, n in enumerate(node_counts):
        rs = sorted((r for r in runs if r["nodes"] == n), key=lambda r: r["rows"])
        x = [r["rows"] for r in rs]
        color = f"C{i}"
        label = f"{n} node{'s' if n > 1 else ''} x {rs[0]['cpus_per_node']} CPU"
        ax1.plot(x, [r["rows_per_s"] for r in rs], "o-", color=color, label=f"{label}: end to end")
        pipe = [(r["rows"], r["pipeline_rows_per_s"]) for r in rs if r.get("pipeline_rows_per_s")]
        if pipe:
            ax1.plot(
                *zip(*pipe, strict=True), "s--", color=color, alpha=0.6, label=f"{label}: pipeline stage"
            )
        ax2.plot(x, [r["peak_rss_gib"] for r in rs], "o-", color=color, label=f"{label}: peak RSS (sum)")
        pss = [(r["rows"], r["peak_pss_gib"]) for r in rs if r.get("peak_pss_gib") is not None]
        if pss:
            ax2.plot(*zip(*pss, strict=True), "s--", color=color, alpha=0.6, label=f"{label}: peak PSS (sum)")
    xs = sorted({r["rows"] for r in runs})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(xs)
        ax.xaxis.set_major_formatter(millions)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        ax.set_xlabel("rows scored (2 dates)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax1.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y / 1e3:g}k"))
    ax1.set_ylabel("rows/s")
    ax1.set_title("throughput")
    ax2.set_ylabel("GiB")
    ax2.set_title("peak memory of the process tree")
    fig.suptitle(f"batchscore on a local Ray cluster: {machine_line(results['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(results, out / "scaling.md")
    wrote = write_plot(results, out / "scaling.png")
    print(f"\nwrote {out / 'scaling.md'}" + (f", {out / 'scaling.png'}" if wrote else ""))


# --- main -----------------------------------------------------------------------------------------


def ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=ints, default=[1, 2, 4], help="node counts, e.g. 1,2,4")
    ap.add_argument(
        "--cpus-per-node",
        type=int,
        default=None,
        help="CPUs per node (default: this machine's CPUs / the largest node count, at least 1)",
    )
    ap.add_argument("--rows", type=ints, default=[1_000_000, 2_000_000, 4_000_000], help="data sizes")
    ap.add_argument("--rows-per-file", type=int, default=250_000)
    ap.add_argument("--batch", type=int, default=65_536, help="predict and preprocessing batch size")
    ap.add_argument("--mode", default="auto", choices=["auto", "fused", "actors"], help="predict.mode")
    ap.add_argument(
        "--reserve-cpus",
        type=float,
        default=None,
        help="predict.reserve_cpus (default: 0 for fused/auto on CPU-only nodes, else 1)",
    )
    ap.add_argument("--head-gpus", type=float, default=0, help="GPUs the head node declares (default 0)")
    ap.add_argument("--object-store-gib", type=float, default=1.0, help="object store per node")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up run")
    ap.add_argument("--root", default="bench-data-scaling", help="data (reused), model and scratch output")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="where scaling.* go")
    ap.add_argument("--plot-only", metavar="JSON", help="rewrite scaling.md/.png from this scaling.json")
    args = ap.parse_args()
    out = Path(args.out)

    if args.plot_only:
        write_outputs(json.loads(Path(args.plot_only).read_text()), out)
        return 0

    if args.cpus_per_node is None:
        args.cpus_per_node = max(1, (os.cpu_count() or 1) // max(args.nodes))
    if args.reserve_cpus is None:
        args.reserve_cpus = 0.0 if args.mode in ("auto", "fused") and not args.head_gpus else 1.0
    logging.getLogger("batchscore").setLevel(logging.WARNING)
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(rows, *make_data(root, rows, args.rows_per_file)) for rows in sorted(set(args.rows))]
    make_model(root, version="scaling")
    model = root / "model"
    results = {
        "command": "python benchmarks/scaling.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if k not in ("plot_only",)},
        "dates": DATES,
        "runs": [],
    }
    print(machine_line(results["machine"]), flush=True)
    t0 = time.perf_counter()
    for nodes in sorted(set(args.nodes)):
        results["runs"] += run_cluster(nodes, sizes, model, args)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(results, indent=2))  # partial results survive
    results["total_s"] = round(time.perf_counter() - t0, 1)
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    print("\n" + table(results["runs"]))
    write_outputs(results, out)
    return 1 if any("error" in r for r in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
