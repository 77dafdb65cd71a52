"""The project's source files as ASTs, for the tests that read the code (tests/unit/test_layers.py,
tests/unit/test_docs.py) without importing it.

Why a child process: CPython 3.11 counts the AST constructor's recursion in one place per
interpreter, so `ast.parse` fails with "SystemError: AST constructor recursion depth mismatch"
when another thread of the same process compiles at the same moment (python/cpython#106905); in
the test process, a thread left by an earlier test that imports a module with no .pyc yet does
(seen once in CI, on a clean clone). A fresh process has no other thread."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

_PARSE = """
import ast, pickle, sys
sys.stdout.buffer.write(pickle.dumps([ast.parse(open(p).read(), p) for p in sys.argv[1:]]))
"""


def parse_files(paths: list[Path]) -> dict[Path, ast.Module]:
    """The AST of each file in `paths`, parsed in a child process."""
    out = subprocess.run([sys.executable, "-c", _PARSE, *map(str, paths)], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return dict(zip(paths, pickle.loads(out.stdout), strict=True))
