"""Docs that must match the code."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import JobConfig, reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_generated_from_the_models():
    assert (ROOT / "docs" / "config.md").read_text() == reference_markdown(), (
        "docs/config.md is stale: run `batchscore config-reference > docs/config.md`"
    )


def test_report_reference_is_generated_from_the_report_model():
    from pipeline.reporting.schema import docs_section
    from pipeline.reporting.schema import reference_markdown as report_reference

    text = (ROOT / "docs" / "reports.md").read_text()
    assert docs_section(text) == report_reference(), (
        "docs/reports.md is stale: replace its generated part with `batchscore report-reference`"
    )


def test_every_key_of_a_report_is_in_the_model():
    """The sample report (the shape docs/reports.md describes) has no key the model does not know."""
    from pydantic import BaseModel
    from reportdata import sample_report

    from pipeline.reporting.schema import RunReport

    def extras(m: BaseModel, path: str) -> list[str]:
        found = [f"{path}.{k}" for k in (m.model_extra or {})]
        for name in type(m).model_fields:
            value = getattr(m, name)
            for i, v in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(v, BaseModel):
                    found += extras(v, f"{path}.{name}[{i}]" if isinstance(value, list) else f"{path}.{name}")
        return found

    assert extras(RunReport.model_validate(sample_report()), "report") == []


def test_config_reference_lists_every_top_level_section():
    text = (ROOT / "docs" / "config.md").read_text()
    for name in JobConfig.model_fields:
        assert f"`{name}" in text


def test_readme_shows_the_two_setup_commands_first():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_layout_table_matches_the_tree():
    """Every path the README's layout table names exists, and every package under pipeline/ is
    named there."""
    import re

    root = Path(__file__).resolve().parents[2]
    text = (root / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([^`]+)`", table, re.M))
    assert named and all((root / p).exists() for p in named), [p for p in named if not (root / p).exists()]
    packages = {f"pipeline/{p.name}/" for p in (root / "pipeline").iterdir() if (p / "__init__.py").exists()}
    assert packages <= named, packages - named


def test_models_and_pipeline_import_only_what_the_layout_allows():
    import ast

    from sourcetree import parse_files

    root = Path(__file__).resolve().parents[2]

    def imported(folder: str) -> set[str]:
        mods = set()
        for tree in parse_files(list((root / folder).rglob("*.py"))).values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    mods.add(node.module.split(".")[0])
                elif isinstance(node, ast.Import):
                    mods |= {a.name.split(".")[0] for a in node.names}
        return mods

    assert not imported("models") & {"pipeline", "jobs"}
    assert "jobs" not in imported("pipeline")


def readme_block(marker: str) -> str:
    blocks = (ROOT / "README.md").read_text().split("```python\n")[1:]
    found = [b.split("```", 1)[0] for b in blocks if marker in b]
    assert len(found) == 1, f"one python block of README.md holding {marker!r}"
    return found[0]


def test_readme_reading_snippet_runs_as_printed_offline(tmp_path):
    """The README's reading snippet (deltalake, polars, DuckDB with the wheel's extension folder),
    run in a new process against a Delta table, with OUTPUT its path and nothing else changed.
    DuckDB's `LOAD` reads the extension folder and never downloads, and autoinstall is off in
    the snippet: it cannot pass by fetching the extension from the internet."""
    import subprocess
    import sys

    import pyarrow as pa
    from deltalake import write_deltalake

    table = tmp_path / "preds"
    rows = pa.table({"event_id": ["a", "b", "c"], "score": [0.1, 0.2, 0.3], "ds": ["2026-11-03"] * 3})
    write_deltalake(str(table), rows, partition_by=["ds"])
    code = readme_block("delta_scan")
    assert '"autoinstall_known_extensions": False' in code
    proc = subprocess.run(
        [sys.executable, "-c", code.replace("OUTPUT", str(table))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2026-11-03" in proc.stdout and "│" in proc.stdout  # DuckDB's table of the counts
