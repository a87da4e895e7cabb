"""The `compute` command runs against any server from any machine, so its package imports nothing
of Compute's but itself (INTERNALS, Modules)."""

from __future__ import annotations

import ast
from pathlib import Path

import compute.console

CONSOLE = Path(compute.console.__file__).parent


def _imported(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_console_imports_only_itself_of_compute() -> None:
    modules = sorted(CONSOLE.glob("*.py"))
    assert len(modules) > 3
    outside = {
        f"{source.name}: {name}"
        for source in modules
        for name in _imported(source)
        if name.split(".")[0] == "compute" and not name.startswith("compute.console")
    }
    assert outside == set()
