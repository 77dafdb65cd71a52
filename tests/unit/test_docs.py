"""Docs that must match the code."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import JobConfig, reference_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_generated_from_the_models():
    assert (ROOT / "docs" / "config.md").read_text() == reference_markdown(), (
        "docs/config.md is stale: run `batchscore config-reference > docs/config.md`"
    )


def test_config_reference_lists_every_top_level_section():
    text = (ROOT / "docs" / "config.md").read_text()
    for name in JobConfig.model_fields:
        assert f"`{name}" in text


def test_readme_shows_the_two_setup_commands_first():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()
