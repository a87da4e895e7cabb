"""Which task plugins are installed, and which of them can run on this machine.

Plugins come from the `cl_ml_tools.tasks` (ComputeModule classes) and `cl_ml_tools.routes`
(router factories) entry-point groups. When two distributions register the same name,
this project's own plugin wins: cl_ml_tools 0.2.0 registers `image_conversion` and
`image_resize` too, and the contract CL Server's SDK speaks is ours.

A plugin may say it cannot run here (a missing tool or model file) with an `unavailable()`
method returning the reason; a worker then neither advertises nor claims that task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from cl_ml_tools import ComputeModule

from compute.errors import ConfigError

log = logging.getLogger(__name__)

TASK_GROUP = "cl_ml_tools.tasks"
ROUTE_GROUP = "cl_ml_tools.routes"
OWN_DISTRIBUTION = "compute"

#: (repository, file_storage, get_current_user) -> APIRouter, as cl_ml_tools defines it.
RouterFactory = Callable[..., Any]

#: Plugins registered in-process (by a launcher that wraps the command lines) rather than by
#: entry points: name -> (ComputeModule class, router factory).
_registered: dict[str, tuple[type[ComputeModule], RouterFactory]] = {}


class UnknownTasks(ConfigError, ValueError):
    """WORKER_TASKS names a task no installed plugin provides."""


class UnavailableTasks(ConfigError, ValueError):
    """A task WORKER_TASKS names cannot run on this machine (a tool or model is missing)."""


def register(name: str, task_class: type[ComputeModule], create_router: RouterFactory) -> None:
    """Add a plugin for this process only, beside the installed ones."""
    _registered[name] = (task_class, create_router)


def unregister(name: str) -> None:
    """Forget what register() added under `name` (nothing if it added nothing)."""
    _registered.pop(name, None)


def _preferred(group: str) -> dict[str, EntryPoint]:
    """Entry points of `group` by name; this project's own win over same-named ones."""
    chosen: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        current = chosen.get(ep.name)
        if current is None or (_is_own(ep) and not _is_own(current)):
            chosen[ep.name] = ep
    return chosen


def _is_own(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == OWN_DISTRIBUTION


def _load_group(group: str) -> dict[str, Any]:
    """The loaded objects of a group. A plugin that fails to import is logged and left out:
    one broken third-party package must not take the server or every task down with it."""
    loaded: dict[str, Any] = {}
    for name, ep in sorted(_preferred(group).items()):
        try:
            loaded[name] = ep.load()
        except Exception as exc:
            log.error(
                "plugin %s (%s) failed to load and is left out: %s: %s",
                name,
                ep.value,
                type(exc).__name__,
                exc,
            )
    return loaded


def installed_tasks() -> dict[str, ComputeModule]:
    """Every installed task, instantiated (instantiating a plugin loads no model)."""
    tasks = {name: task_class() for name, task_class in _load_group(TASK_GROUP).items()}
    tasks.update({name: task_class() for name, (task_class, _) in _registered.items()})
    return tasks


def route_factories() -> dict[str, RouterFactory]:
    """Every installed task's router factory, by task name."""
    factories = _load_group(ROUTE_GROUP)
    factories.update({name: factory for name, (_, factory) in _registered.items()})
    return factories


def unavailable_reason(task: ComputeModule) -> str | None:
    """Why `task` cannot run on this machine (a missing tool or model), or None when it can."""
    check = getattr(task, "unavailable", None)
    return check() if callable(check) else None


def load_tasks(wanted: Iterable[str] | None = None) -> dict[str, ComputeModule]:
    """The tasks a worker runs.

    `wanted` None: every installed task that can run here; the others are logged with their
    reason. Otherwise exactly those tasks: an unknown name, or one that cannot run here, is an
    error naming the reason.
    """
    installed = installed_tasks()
    if wanted is None:
        ready: dict[str, ComputeModule] = {}
        for name, task in installed.items():
            reason = unavailable_reason(task)
            if reason is None:
                ready[name] = task
            else:
                log.warning("task %s skipped: %s", name, reason)
        return ready
    wanted = list(dict.fromkeys(wanted))
    unknown = [t for t in wanted if t not in installed]
    if unknown:
        raise UnknownTasks(
            f"unknown task type(s) {', '.join(unknown)}; installed: {', '.join(sorted(installed))}"
        )
    problems = [f"{t}: {reason}" for t in wanted if (reason := unavailable_reason(installed[t]))]
    if problems:
        raise UnavailableTasks("cannot run " + "; ".join(problems))
    return {name: installed[name] for name in wanted}
