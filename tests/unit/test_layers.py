"""The import graph of jobs/, models/ and pipeline/ (read with ast, nothing imported): no import
circles, and the lower layers of the pipeline do not import the commit layer above them. An import
inside a function counts (it is a dependency all the same); one under `if __name__ == "__main__":`
does not: that block is the program run with `python -m`, above every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from sourcetree import parse_files

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "models", "pipeline")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_main_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """The project modules `tree` imports, outside a `__main__` block. `from a.b import c` is
    a.b.c when that is a module, else a.b (c is a name in it)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_main_guard(node):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    trees = parse_files(list(files.values()))
    return {name: _imported(trees[p], set(files)) - {name} for name, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_graph_is_read():
    # Guards the checks below against passing on an empty graph.
    graph = import_graph()
    assert "pipeline.commit.tables" in graph["pipeline.commit.streaming"]
    assert "pipeline.keys" in graph["pipeline.filestats"]


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_a_circle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_stages_and_quality_do_not_import_the_commit_layer():
    upward = {
        (m, dep)
        for m, deps in import_graph().items()
        if m.startswith(("pipeline.stages.", "pipeline.quality."))
        for dep in deps
        if dep == "pipeline.commit" or dep.startswith("pipeline.commit.")
    }
    assert upward == set()


def test_no_subcommand_imports_the_cli():
    graph = import_graph()
    importers = {m for m, deps in graph.items() if "jobs.cli" in deps}
    assert importers <= {"jobs.__main__"}


@pytest.mark.parametrize(
    "module",
    ["backfill", "demo", "generate", "report", "score", "submit", "tables", "train", "validate"],
)
def test_importing_a_subcommand_does_not_import_the_cli(module):
    code = f"import sys, jobs.{module}; print('jobs.cli' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
