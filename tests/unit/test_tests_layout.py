"""The tests' own shape: helpers in tests/support, fixtures and hooks in conftest.py files.

* every module under tests/ is a test module (`test_*.py`), a `conftest.py`, a package's
  `__init__.py`, or part of tests/support;
* nothing under tests/ imports from `tests` but from `tests.support`: no test imports another
  test module, a conftest, or a helper living beside the tests;
* a conftest.py holds fixtures and pytest hooks (and what only they use: constants, private
  functions); a helper for tests is in tests/support.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SUPPORT = TESTS / "support"


def _python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in `tree`, function-local ones too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "tests.<relative import>"))
    return found


def wrong_imports(source: str, where: str) -> list[str]:
    """Imports of `source` that reach into `tests` anywhere but tests.support."""
    return [
        f"{where}:{line}: {name}"
        for line, name in _imported(ast.parse(source))
        if (name == "tests" or name.startswith("tests."))
        and not (name == "tests.support" or name.startswith("tests.support."))
    ]


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target) in ("pytest.fixture", "fixture"):
            return True
    return False


def not_fixtures(source: str, where: str) -> list[str]:
    """Top-level statements of a conftest other than imports, constants, fixtures, pytest hooks
    and private functions (for its fixtures)."""
    problems = []
    body = ast.parse(source).body
    for index, node in enumerate(body):
        if isinstance(node, ast.Import | ast.ImportFrom | ast.Assign | ast.AnnAssign):
            continue
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
            _is_fixture(node) or node.name.startswith(("pytest_", "_"))
        ):
            continue
        problems.append(f"{where}:{node.lineno}: {ast.unparse(node).splitlines()[0][:80]}")
    return problems


def test_helpers_live_in_tests_support() -> None:
    strays = [
        str(p.relative_to(TESTS))
        for p in _python_files()
        if SUPPORT not in p.parents
        and not (p.name.startswith("test_") or p.name in ("conftest.py", "__init__.py"))
    ]
    assert strays == [], "helpers beside the tests: move them into tests/support"


def test_tests_import_nothing_of_tests_but_tests_support() -> None:
    found = []
    for path in _python_files():
        found += wrong_imports(path.read_text(), str(path.relative_to(TESTS)))
    assert found == [], "import helpers from tests.support (fixtures come from conftest.py by name)"


def test_conftest_files_hold_fixtures_and_hooks_only() -> None:
    found = []
    for path in TESTS.rglob("conftest.py"):
        found += not_fixtures(path.read_text(), str(path.relative_to(TESTS)))
    assert found == [], "conftest.py holds fixtures and hooks; helpers for tests go to tests/support"


def test_the_checks_see_what_they_look_for() -> None:
    assert wrong_imports("from tests.e2e.test_cli import run\nimport tests.conftest\n", "t") == [
        "t:1: tests.e2e.test_cli.run",
        "t:2: tests.conftest",
    ]
    assert wrong_imports("def f():\n    from tests.integration.conftest import bearer\n", "t") != []
    assert wrong_imports("from . import helper\n", "t") != []
    assert wrong_imports("from tests.support.waits import wait_for\nimport tests.support\n", "t") == []
    conftest = (
        '"""Doc."""\nimport pytest\n\n@pytest.fixture\ndef a(): ...\n\ndef pytest_configure(config): ...\n'
    )
    assert not_fixtures(conftest, "c") == []
    assert not_fixtures(conftest + "\nLIMIT = 3\n\ndef _for_fixtures(): ...\n", "c") == []
    assert not_fixtures(conftest + "\ndef helper(): ...\nclass Helper: ...\nfor x in []: pass\n", "c") == [
        "c:9: def helper():",
        "c:10: class Helper:",
        "c:11: for x in []:",
    ]
