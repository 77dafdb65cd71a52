"""Unit tests for the report page (pipeline.reporting.html) and `batchscore report` (jobs.report)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from reportdata import DATES, count, parse, sample_report

from jobs.cli import build_parser, main
from jobs.report import find_report
from pipeline.errors import UserError
from pipeline.reporting.html import render_html, score_range
from pipeline.reporting.schema import load
from pipeline.reporting.summary import format_summary

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------


def test_page_has_every_plot_kind_and_one_histogram_per_date():
    report = sample_report()
    page = render_html(load(report))
    plots = parse(page)
    hists = plots.of("score-histogram")
    assert [h["attrs"]["data-date"] for h in hists] == DATES
    for h in hists:
        assert "plot" in h["attrs"]["class"].split()
        assert "viewBox" in h["attrs"] or "viewbox" in h["attrs"]
        assert count(h, "title") >= 1
        assert count(h, "g", "bar") >= 10  # the date's density
    # a line per reference the date's drift checks used: training for the first date, the
    # previous date and training for the others
    assert [count(h, "g", "reference") for h in hists] == [1, 2, 2]
    (stages,) = plots.of("stage-throughput")
    assert count(stages, "g", "bar") == len(report["stages"])
    (parts,) = plots.of("partition-counts")
    assert count(parts, "g", "output") == 3
    assert count(parts, "g", "dead-letter") == 2  # the first date has no dead letter
    assert f"vs previous (ds={DATES[1]})" in page and "vs training (checkpoint)" in page


def test_header_table_and_drift_banner():
    report = sample_report()
    page = render_html(load(report))
    assert "ctr-daily-20261105T020000Z-ab12cd" in page
    assert "dlrm-2026-11-01" in page and report["model"]["sha256"][:16] in page
    assert "succeeded" in page and "2026-11-05T02:07:41+00:00" in page
    assert 'class="banner"' in page and "Score drift over the thresholds" in page
    # the breached date's row is flagged; PSI of the previous-date comparison is shown
    row = re.search(r'<tr class="breach">.*?</tr>', page, re.S).group(0)
    assert "2026-11-04" in row and "BREACH" in row
    assert f"{report['partitions'][2]['drift']['previous']['psi']:.3f}" in row
    assert "32,006" in row and "32,000" in row  # counts in / out

    calm = sample_report(drifted_last_date=False)
    page = render_html(load(calm))
    assert 'class="banner"' not in page and 'class="breach"' not in page


def test_page_and_summary_say_how_the_run_scored():
    report = sample_report()
    report["pool"].update(runner="local", mode="fused", torch_threads=1)
    page, text = render_html(load(report)), format_summary(load(report))
    line = "local runner: 2 scoring thread(s) in this process, one model, 1 torch thread(s) each (no Ray)"
    assert f"<p>Scoring: {line}</p>" in page and line in text
    report["pool"].update(runner="ray", mode="actors")
    assert "replicas 1..2 x (1 CPU, 0 GPU), 1 started" in render_html(load(report))


def test_page_is_self_contained():
    page = render_html(load(sample_report()))
    assert page.startswith("<!DOCTYPE html>")
    assert "<style>" in page
    low = page.lower()
    assert "<script" not in low
    assert "http://" not in low and "https://" not in low
    for needle in ("src=", "@import", "<link", "<iframe", "<img"):
        assert needle not in low, needle
    # matplotlib's SVG refers to its own markers and clip paths (href="#id", url(#id)), nothing else
    assert not re.findall(r'href="(?!#)', low) and not re.findall(r"url\((?!#)", low)
    ids = re.findall(r'\bid="#?([^"]+)"', page)
    assert len(ids) == len(set(ids)), "an id repeated on the page (several plots)"
    refs = {a or b for a, b in re.findall(r'href="#([^"]+)"|url\(#([^)]+)\)', page)}
    assert refs and refs <= set(ids)


def test_text_from_the_report_is_escaped():
    report = sample_report(job="<script>alert('job')</script>")
    report["run_id"] = 'run"><img src=x onerror=alert(1)>'
    report["stages"][0]["name"] = "<script>stage</script>"
    report["partitions"][0]["partition"] = {"ds": "<b>2026</b>"}
    report["drift"]["on_breach"] = "<i>warn</i>"
    page = render_html(load(report))
    low = page.lower()
    assert "<script" not in low and "<img" not in low and "<b>" not in low and "<i>" not in low
    assert "&lt;script&gt;alert(&#x27;job&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;2026&lt;/b&gt;" in page
    # and the page still parses to the same plots
    assert len(parse(page).of("score-histogram")) == 3


def test_without_a_training_reference_each_date_is_drawn_against_its_previous_date():
    """Not against "all dates of this run" (itself among them): the reference the check used."""
    report = sample_report(with_reference=False, with_stages=False)
    page = render_html(load(report))
    hists = parse(page).of("score-histogram")
    assert [count(h, "g", "reference") for h in hists] == [0, 1, 1]
    assert f"vs previous (ds={DATES[0]})" in page and "all dates of this run" not in page
    (stages,) = parse(page).of("stage-throughput")
    assert count(stages, "g", "bar") == 0
    assert "no per-stage statistics" in page


def test_a_previous_date_of_an_earlier_run_is_drawn_from_its_stored_profile():
    """The breach `vs previous (ds=...)` of a nightly run: the previous date is in the Delta log,
    not in this run; the report keeps its profile and the page draws it."""
    report = sample_report()
    earlier = report["partitions"][1]
    report["partitions"] = report["partitions"][2:]
    report["previous_references"] = {f"ds={DATES[1]}": earlier["scores"]}
    page = render_html(load(report))
    (h,) = parse(page).of("score-histogram")
    assert count(h, "g", "reference") == 2
    assert f"vs previous (ds={DATES[1]})" in page
    del report["previous_references"]
    (h,) = parse(render_html(load(report))).of("score-histogram")
    assert count(h, "g", "reference") == 1  # training only: the previous profile is unknown


def test_report_without_any_reference_has_bars_only():
    report = sample_report(with_reference=False)
    for part in report["partitions"]:
        part["drift"] = None  # drift checks off: nothing was compared
    page = render_html(load(report))
    for h in parse(page).of("score-histogram"):
        assert count(h, "g", "bar") >= 10 and count(h, "g", "reference") == 0
    assert "bars only" in page


def test_zero_rows_rejected_and_skipped_reports_render():
    report = sample_report()
    report["status"] = "rejected"
    report["drift"]["on_breach"] = "fail"
    empty = report["partitions"][1]
    empty.update(input_rows=0, output_rows=0, dead_letter_rows=0, output_files=[])
    empty["scores"] = {"count": 0, "nan": 0}
    empty["drift"] = {"previous": None, "training": None, "breach": False}
    page = render_html(load(report))
    assert "rejected" in page and "were not published (drift.on_breach: fail)" in page
    hists = parse(page).of("score-histogram")
    assert len(hists) == 3
    assert count(hists[1], "g", "bar") == 0 and "2026-11-03: no scores" in page

    skipped = {
        "run_id": "r1",
        "job": "j",
        "status": "skipped",
        "dates": [],
        "skipped_committed": ["2026-11-02"],
        "partitions": [],
        "rows": {"input": 0, "output": 0, "dead_letter": 0},
    }
    page = render_html(load(skipped))
    plots = parse(page)
    assert not plots.of("score-histogram")
    assert len(plots.of("stage-throughput")) == 1 and len(plots.of("partition-counts")) == 1
    assert "nothing scored" in page

    # a report from before report_version 1 (no scores, drift, stages) and an empty one
    assert "<svg" in render_html(load({"run_id": "old", "partitions": [{"partition": {"ds": "2026-11-01"}}]}))
    assert "<svg" in render_html(load({"run_id": "empty"}))


def test_score_range_covers_every_profile_on_round_ticks():
    report = sample_report()
    lo, hi = score_range(load(report))
    mins = [p["scores"]["min"] for p in report["partitions"]] + [report["score_reference"]["min"]]
    maxs = [p["scores"]["max"] for p in report["partitions"]] + [report["score_reference"]["max"]]
    assert lo <= min(mins) and hi >= max(maxs)
    assert (lo, hi) == (0.0, 1.0)  # scores in (0, 1) widen to round ticks
    assert score_range(load({"run_id": "r", "partitions": [{"scores": {"count": 0}}]})) is None


# ---------------------------------------------------------------------------------------------
# batchscore report
# ---------------------------------------------------------------------------------------------


def write_run(root: Path, run_id: str, finished_at: str | None, **kw) -> Path:
    report = sample_report(run_id=run_id, **kw)
    if finished_at is None:
        report.pop("finished_at")
    else:
        report["finished_at"] = finished_at
    run = root / "_runs" / run_id
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(report))
    return run


@pytest.fixture
def output_root(tmp_path) -> Path:
    """Two finished runs (the one that sorts last by name finished first) and one still going."""
    root = tmp_path / "preds"
    write_run(root, "ctr-20261105T020000Z-bbbbbb", "2026-11-05T02:07:41+00:00", drifted_last_date=True)
    write_run(root, "ctr-20261104T020000Z-zzzzzz", "2026-11-04T02:09:00+00:00", drifted_last_date=False)
    (root / "_runs" / "ctr-20261106T020000Z-running").mkdir()
    (root / "ds=2026-11-04").mkdir()
    return root


def test_target_output_root_picks_the_run_that_finished_last(output_root):
    loc = find_report(str(output_root))
    assert loc.path == str(output_root / "_runs" / "ctr-20261105T020000Z-bbbbbb" / "report.json")


def test_target_falls_back_to_name_order_without_finished_at(tmp_path):
    root = tmp_path / "preds"
    write_run(root, "run-a", None)
    write_run(root, "run-b", None)
    assert find_report(str(root)).path.endswith("/_runs/run-b/report.json")


def test_target_run_directory_and_report_file(output_root):
    run = output_root / "_runs" / "ctr-20261104T020000Z-zzzzzz"
    assert find_report(str(run)).path == str(run / "report.json")
    assert find_report(str(run / "report.json")).path == str(run / "report.json")
    assert find_report("file://" + str(run)).path == str(run / "report.json")


def test_missing_target_is_a_user_error_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "_runs" / "x"
    with pytest.raises(UserError) as ei:
        find_report(str(missing))
    assert str(missing) in str(ei.value)
    assert "does not exist" in str(ei.value) and "report.json" in str(ei.value)
    # through the CLI: exit 2, the message on stderr
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "batchscore report: error:" in err and str(missing) in err


def test_directory_without_report_or_runs_is_a_user_error(tmp_path):
    (tmp_path / "_runs").mkdir()
    with pytest.raises(UserError, match="no run with a report.json"):
        find_report(str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(UserError, match="neither report.json nor _runs/"):
        find_report(str(other))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        main_raising(["report", str(bad)])


def main_raising(argv: list[str]) -> None:
    from jobs.report import report

    report(build_parser().parse_args(argv))


def test_terminal_summary_marks_the_breached_date():
    text = format_summary(load(sample_report()), color=False)
    assert "\033[" not in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip().startswith("2026-11-")}
    assert set(rows) == set(DATES)
    assert rows["2026-11-04"].rstrip().endswith("BREACH")
    assert "BREACH" not in rows["2026-11-02"] and "BREACH" not in rows["2026-11-03"]
    assert "BREACH 2026-11-04 vs training (checkpoint): PSI" in text
    # aligned columns: the last (left-aligned) column starts at the same place on every line
    table = [line.rstrip() for line in text.splitlines() if line.startswith(("  date", "  ----", "  2026-"))]
    part_table = table[: 2 + len(DATES)]  # header, rule, one row per date
    assert part_table[0].split()[0] == "date" and part_table[-1].split()[0] == DATES[-1]
    assert len({len(line) - len(line.split()[-1]) for line in part_table}) == 1
    for stage in ("ReadParquet", "MapBatches(Predictor)", "44,290"):
        assert stage in text
    assert "dlrm-2026-11-01" in text and "succeeded" in text and "total 17.5 s" in text
    coloured = format_summary(load(sample_report()), color=True)
    assert "\033[31;1mBREACH\033[0m" in coloured


def test_report_command_writes_html_next_to_the_report(output_root, capsys):
    assert main(["report", str(output_root)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    final = json.loads(out[-1])
    run = output_root / "_runs" / "ctr-20261105T020000Z-bbbbbb"
    assert final == {
        "status": "succeeded",
        "run_id": "ctr-20261105T020000Z-bbbbbb",
        "report": str(run / "report.json"),
        "html": str(run / "report.html"),
        "drift_breach": True,
        "rows_in": 93_009,
        "rows_out": 93_000,
    }
    text = "\n".join(out[:-1])
    assert "BREACH" in text and f"html     {run / 'report.html'}" in text
    page = (run / "report.html").read_text()
    assert len(parse(page).of("score-histogram")) == 3


def test_report_command_html_option_and_json(output_root, tmp_path, capsys):
    run = output_root / "_runs" / "ctr-20261104T020000Z-zzzzzz"
    dest = tmp_path / "pages" / "run.html"
    assert main(["report", str(run / "report.json"), "--html", str(dest), "--json"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert json.loads("\n".join(lines[:-1])) == json.loads((run / "report.json").read_text())
    assert json.loads(lines[-1])["html"] == str(dest) and json.loads(lines[-1])["drift_breach"] is False
    assert str(dest) in captured.err
    assert dest.read_text().startswith("<!DOCTYPE html>")
    assert not (run / "report.html").exists()


def test_report_command_falls_back_to_the_working_directory(output_root, tmp_path, monkeypatch, capsys):
    import jobs.report

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(jobs.report.os, "access", lambda path, mode: False)  # a read-only run dir
    run = output_root / "_runs" / "ctr-20261104T020000Z-zzzzzz"
    assert main(["report", str(run)]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["html"] == str(cwd / "report-ctr-20261104T020000Z-zzzzzz.html")
    assert (cwd / "report-ctr-20261104T020000Z-zzzzzz.html").exists()
    assert not (run / "report.html").exists()


def test_report_help():
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["report", "--help"])
    assert ei.value.code == 0
    args = build_parser().parse_args(["report", "s3://b/p", "--endpoint-url", "http://127.0.0.1:9000"])
    assert (args.target, args.endpoint_url, args.html, args.json) == (
        "s3://b/p",
        "http://127.0.0.1:9000",
        None,
        False,
    )


def test_report_command_runs_without_torch_or_ray(output_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "report", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: batchscore report" in proc.stdout and "--html" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jobs.cli", "report", str(output_root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    mods = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "jobs.report" in mods
    heavy = sorted(m for m in mods if m.split(".")[0] in {"torch", "ray"})
    assert not heavy, f"`batchscore report` imports {heavy[:10]}"
    assert json.loads(proc.stdout.strip().splitlines()[-1])["drift_breach"] is True
