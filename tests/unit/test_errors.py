"""One exception hierarchy (errors.ComputeError) and one way to put a message in a log line."""

from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import compute
from compute.errors import ComputeError, first_line

ROOT = Path(compute.__file__).resolve().parent
BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def _classes_on_builtin_exceptions() -> list[tuple[str, str]]:
    """(module, class) of every class in the package with a built-in exception among its bases;
    the `compute` command's own are left out: it imports nothing of the package (INTERNALS)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if "console" in path.relative_to(ROOT).parts:
            continue
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id in BUILTIN_EXCEPTIONS for base in node.bases
            ):
                found.append((module, node.name))
    return found


def test_every_exception_of_the_package_is_a_compute_error() -> None:
    outside = []
    for module, name in _classes_on_builtin_exceptions():
        cls = getattr(importlib.import_module(module), name)
        if not issubclass(cls, ComputeError):
            outside.append(f"{module}.{name}")
    assert outside == []
    assert len(_classes_on_builtin_exceptions()) > 5  # the walk finds them (ComputeError, ValueErrors ...)


def test_first_line_of_a_message() -> None:
    assert first_line(RuntimeError("database is locked\n[SQL: UPDATE jobs ...]")) == "database is locked"
    assert first_line(RuntimeError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError("x" * 500), limit=10) == "x" * 10
    assert first_line(TimeoutError()) == "TimeoutError"  # no message: what it is
    assert first_line(OSError("\n  \nsecond")) == "OSError"
