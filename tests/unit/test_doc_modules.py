"""INTERNALS' Modules table names every module of the package, so a newcomer who meets a file
finds what it is for. The per-plugin folders are one row (`plugins/<task>/`), except for the
modules beyond their `route.py`, `task.py` and `algorithm.py`, which are named like any other."""

from __future__ import annotations

import re
from pathlib import Path

import compute

PACKAGE = Path(compute.__file__).resolve().parent
INTERNALS = PACKAGE.parents[1] / "INTERNALS.md"
#: What every plugin folder holds, covered by the `plugins/<task>/` row.
PLUGIN_MODULES = frozenset({"__init__.py", "route.py", "task.py", "algorithm.py"})


def _modules_table() -> str:
    text = INTERNALS.read_text(encoding="utf-8")
    return text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]


def _named(table: str) -> set[str]:
    """The paths in the table's first column (`server/routes/*.py` stands for a folder's files)."""
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def _unnamed(named: set[str]) -> list[str]:
    folders = {name[: -len("*.py")] for name in named if name.endswith("/*.py")}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        parts = rel.split("/")
        if path.name == "__init__.py" or rel in named:
            continue
        if parts[0] == "plugins" and len(parts) == 3 and parts[2] in PLUGIN_MODULES:
            continue
        if any(rel.startswith(folder) and "/" not in rel[len(folder) :] for folder in folders):
            continue
        missing.append(rel)
    return missing


def test_every_module_has_a_row() -> None:
    missing = _unnamed(_named(_modules_table()))
    assert not missing, f"add a row to INTERNALS.md's Modules table for: {', '.join(missing)}"


def test_a_module_left_out_is_noticed() -> None:
    named = _named(_modules_table())
    assert _unnamed(named - {"config.py"}) == ["config.py"]
