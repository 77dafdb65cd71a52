"""Unit tests for jobs.cli: --help start-up cost, exit codes for user errors, date resolution."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser, main
from jobs.common import resolve_dates
from pipeline.config import config_from_dict
from pipeline.errors import EXIT_USER, ConfigError

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "name": "unit",
    "input": {"uri": "/data/in"},
    "model": {"uri": "/models/m"},
    "output": {"uri": "/data/out", "key_columns": ["event_id"]},
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output ('import time: self | cumulative | name')."""
    mods = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                mods.add(name)
    return mods


def test_help_exits_zero():
    proc = run_cli("-m", "jobs.cli", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: batchscore" in proc.stdout
    for cmd in ("score", "validate", "demo", "train", "generate"):
        assert cmd in proc.stdout


def test_help_imports_neither_torch_nor_ray():
    proc = run_cli("-X", "importtime", "-m", "jobs.cli", "--help")
    assert proc.returncode == 0, proc.stderr
    mods = imported_modules(proc.stderr)
    # the parsing works (so an empty set cannot pass the test by accident)
    assert "argparse" in mods and "jobs" in mods
    heavy = sorted(m for m in mods if m.split(".")[0] in {"torch", "ray"})
    assert not heavy, f"`batchscore --help` imports {heavy[:10]}"


@pytest.mark.parametrize("command", ["score", "validate"])
def test_help_of_subcommand(command):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args([command, "--help"])
    assert ei.value.code == 0


def test_missing_command_is_usage_error(capsys):
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2
    assert "usage: batchscore" in capsys.readouterr().err


def test_score_nonexistent_config_exits_2(tmp_path, capsys):
    path = tmp_path / "missing.yaml"
    rc = main(["score", str(path), "--date", "2026-11-01"])
    assert rc == EXIT_USER == 2
    err = capsys.readouterr().err
    assert "batchscore score: error:" in err
    assert str(path) in err
    assert "does not exist" in err


def test_score_unknown_key_exits_2_naming_key_path(tmp_path, capsys):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["predict"] = {"batch_size": 16, "replicas": 3}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc = main(["score", str(path), "--date", "2026-11-01"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "predict.replicas: unknown key" in err
    assert str(path) in err


def test_score_bad_override_exits_2(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(BASE))
    rc = main(["score", str(path), "--date", "2026-11-01", "--set", "predict.batch_size"])
    assert rc == 2
    assert "expected key.path=value" in capsys.readouterr().err


def test_validate_nonexistent_config_exits_2(tmp_path, capsys):
    path = tmp_path / "absent.yaml"
    assert main(["validate", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# resolve_dates
# ---------------------------------------------------------------------------------------------


def args_for(*argv: str):
    return build_parser().parse_args(["score", "job.yaml", *argv])


def cfg_with(**inp):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["input"].update(inp)
    return config_from_dict(raw)


def test_dates_from_date_flags_sorted_and_deduplicated():
    got = resolve_dates(
        args_for("--date", "2026-11-03", "--date", "2026-11-01", "--date", "2026-11-03"), cfg_with()
    )
    assert got == ["2026-11-01", "2026-11-03"]


def test_dates_range_inclusive_across_month_end():
    got = resolve_dates(args_for("--start", "2026-10-30", "--end", "2026-11-02"), cfg_with())
    assert got == ["2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02"]


def test_dates_single_day_range_and_leap_day():
    assert resolve_dates(args_for("--start", "2028-02-29", "--end", "2028-02-29"), cfg_with()) == [
        "2028-02-29"
    ]
    assert resolve_dates(args_for("--start", "2028-02-28", "--end", "2028-03-01"), cfg_with()) == [
        "2028-02-28",
        "2028-02-29",
        "2028-03-01",
    ]


def test_dates_flag_and_range_combined():
    got = resolve_dates(
        args_for("--date", "2026-12-25", "--start", "2026-11-01", "--end", "2026-11-02"), cfg_with()
    )
    assert got == ["2026-11-01", "2026-11-02", "2026-12-25"]


def test_dates_today_and_yesterday():
    before = dt.datetime.now(dt.timezone.utc).date()
    got = resolve_dates(args_for("--date", "today", "--date", "yesterday"), cfg_with())
    after = dt.datetime.now(dt.timezone.utc).date()
    options = [[(d - dt.timedelta(days=1)).isoformat(), d.isoformat()] for d in {before, after}]
    assert got in options


def test_dates_range_with_keywords():
    today = dt.datetime.now(dt.timezone.utc).date()
    got = resolve_dates(args_for("--start", "yesterday", "--end", "today"), cfg_with())
    assert len(got) == 2
    assert dt.date.fromisoformat(got[1]) - dt.date.fromisoformat(got[0]) == dt.timedelta(days=1)
    assert abs((dt.date.fromisoformat(got[1]) - today).days) <= 1


def test_dates_end_before_start():
    with pytest.raises(ConfigError, match="--start/--end: end 2026-11-01 is before start 2026-11-03"):
        resolve_dates(args_for("--start", "2026-11-03", "--end", "2026-11-01"), cfg_with())


def test_dates_start_without_end():
    with pytest.raises(ConfigError, match="--start and --end go together"):
        resolve_dates(args_for("--start", "2026-11-03"), cfg_with())


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["--date", "2026-13-01"], "--date"),
        (["--date", "20261101"], "--date"),
        (["--date", "tomorrow"], "--date"),
        (["--start", "2026-11-01", "--end", "2026-11-31"], "--end"),
    ],
)
def test_dates_invalid_value_names_argument(argv, what):
    with pytest.raises(ConfigError, match=f"^{what}: expected a date YYYY-MM-DD"):
        resolve_dates(args_for(*argv), cfg_with())


def test_no_dates_error():
    with pytest.raises(ConfigError, match="no dates"):
        resolve_dates(args_for(), cfg_with())


def test_dates_from_config():
    cfg = cfg_with(dates=["2026-11-05", "2026-11-04"])
    assert resolve_dates(args_for(), cfg) == ["2026-11-04", "2026-11-05"]
    cfg = cfg_with(start_date="2026-11-01", end_date="2026-11-03")
    assert resolve_dates(args_for(), cfg) == ["2026-11-01", "2026-11-02", "2026-11-03"]


def test_command_line_dates_override_config():
    cfg = cfg_with(dates=["2026-11-05"])
    assert resolve_dates(args_for("--date", "2026-01-01"), cfg) == ["2026-01-01"]


def test_config_range_errors():
    with pytest.raises(ConfigError, match="input.start_date and input.end_date go together"):
        resolve_dates(args_for(), cfg_with(start_date="2026-11-01"))
    with pytest.raises(ConfigError, match="input.start_date/end_date: end 2026-10-01 is before start"):
        resolve_dates(args_for(), cfg_with(start_date="2026-11-01", end_date="2026-10-01"))


def test_today_is_read_in_the_configured_time_zone():
    from zoneinfo import ZoneInfo

    for tz in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):  # UTC+14 and UTC-11: never the same day
        want = dt.datetime.now(ZoneInfo(tz)).date()
        got = resolve_dates(args_for("--date", "today"), cfg_with(timezone=tz))
        assert got == [want.isoformat()]
    assert resolve_dates(
        args_for("--date", "today"), cfg_with(timezone="Pacific/Kiritimati")
    ) != resolve_dates(args_for("--date", "today"), cfg_with(timezone="Pacific/Pago_Pago"))


def test_unknown_time_zone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        cfg_with(timezone="Mars/Olympus")


def test_backfill_arguments_parse():
    args = build_parser().parse_args(
        ["backfill", "configs/demo.yaml", "--start", "2026-10-01", "--end", "2026-10-31", "--dry-run"]
    )
    assert args.dry_run and not args.force and args.dates_per_run == 0


@pytest.mark.parametrize("bad", ["../x", "a/b", "with space", "x" * 129, ""])
def test_run_id_is_checked_when_parsed(bad, capsys):
    from jobs.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["score", "configs/demo.yaml", "--date", "2026-11-01", "--run-id", bad])
    assert e.value.code == 2
    assert "--run-id" in capsys.readouterr().err


def test_vacuum_refuses_a_path_that_is_not_a_delta_table(tmp_path, capsys):
    from jobs.cli import main

    assert main(["vacuum", str(tmp_path)]) == 2
    assert "not a Delta table (no _delta_log)" in capsys.readouterr().err


def test_version_prints_the_package_version():
    proc = run_cli("-m", "jobs.cli", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("batchscore 0.") or proc.stdout.startswith("batchscore 1.")


def help_text(*argv: str) -> str:
    proc = run_cli("-m", "jobs.cli", *argv, "--help")
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())  # argparse wraps at the terminal's width


def test_top_line_names_the_delta_table_not_parquet_out():
    text = help_text()
    assert "Delta Lake table" in text
    assert "-> Parquet." not in text


@pytest.mark.parametrize("command", ["score", "backfill"])
def test_score_help_says_where_output_goes_and_the_exit_codes(command):
    text = help_text(command)
    assert "output.uri/_runs/RUN_ID/report.json" in text
    for code in ("0 success", "2 bad config", "3 scores drifted", "4 another run", "1 anything else"):
        assert code in text, code


def test_score_and_backfill_help_say_how_they_differ():
    assert "see `batchscore backfill`" in help_text("score")
    assert "Like `score --start D1 --end D2`" in help_text("backfill")


@pytest.mark.parametrize("command", ["demo", "train", "generate"])
def test_every_option_has_help_text(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    bare = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not bare, f"`batchscore {command}` options without help: {bare}"
