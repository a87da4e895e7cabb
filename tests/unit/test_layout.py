"""The package's shape stays what INTERNALS describes: no import circle, no module name twice.

Read from the source (every `import`, type-only and function-local ones included), so a circle
closed by an `if TYPE_CHECKING:` import counts too. Two levels:

* modules: no module imports itself through others;
* packages: a package without sub-packages (`db/`, `server/flow/`, `worker/` ...) is one layer;
  no two layers import each other, so dependencies between them point one way.

Module names are unique under `src/compute`, except the per-plugin folders' `route.py`,
`task.py` and `algorithm.py`, which repeat by design (and every `__init__.py`).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import compute

ROOT = Path(compute.__file__).resolve().parent
#: Module names every plugin folder repeats.
PLUGIN_MODULES = frozenset({"route.py", "task.py", "algorithm.py"})


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module and package under src/compute."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of `known` that `name` imports, anywhere in its file."""
    known = set(known)

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            target = resolve(candidate)
            if target is not None and target != name:
                targets.add(target)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in graph:
                    continue
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
    return circles


def _layer(name: str, packages: set[str]) -> str:
    """The package `name` belongs to when that package has no sub-packages, else `name`."""
    parent = name.rpartition(".")[0]
    if name in packages:
        parent = name
    has_subpackages = any(p.startswith(parent + ".") for p in packages)
    return name if has_subpackages or parent == "" else parent


def test_no_import_circle_between_modules() -> None:
    assert _circles(_graph()) == []


def test_no_import_circle_between_packages() -> None:
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    layers: dict[str, set[str]] = defaultdict(set)
    for name, targets in _graph().items():
        layer = _layer(name, packages)
        layers[layer].update(_layer(t, packages) for t in targets)
        layers[layer].discard(layer)
    assert _circles(layers) == []


def test_no_module_name_twice() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in ROOT.rglob("*.py"):
        in_plugin_folder = path.parent.parent.name == "plugins" and path.parent.parent.parent == ROOT
        if path.name == "__init__.py" or (in_plugin_folder and path.name in PLUGIN_MODULES):
            continue
        seen[path.name].append(str(path.relative_to(ROOT)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def test_the_checks_see_a_circle() -> None:
    """The walk finds what it looks for: a made-up circle is reported."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
