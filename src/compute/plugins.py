"""Compute plugins: ComputeModule classes from the `cl_ml_tools.tasks` entry points."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cl_ml_tools import ComputeModule
from cl_ml_tools.worker import get_task_registry

log = logging.getLogger(__name__)


class UnknownTasks(ValueError):
    pass


def load_tasks(wanted: Iterable[str] | None = None) -> dict[str, ComputeModule]:
    """Installed tasks, limited to `wanted` when given; unknown names are an error."""
    registry: dict[str, ComputeModule] = get_task_registry()
    if wanted is None:
        return dict(registry)
    wanted = list(wanted)
    unknown = [t for t in wanted if t not in registry]
    if unknown:
        raise UnknownTasks(
            f"unknown task type(s) {', '.join(unknown)}; installed: {', '.join(sorted(registry))}"
        )
    return {name: registry[name] for name in wanted}
