"""Background tasks that are watched: a task that dies is logged at once, then restarted or fatal.

A long-running task (the server's event ingest, its sweeps; a worker's heartbeat) that ended on
an exception used to show only at shutdown, when its result was finally gathered: the server
kept answering HTTP while it no longer persisted worker events, or rescued no job. Each task is
started here under its name with a policy, and its end is looked at when it happens (as
procrastinate's worker watches its side tasks):

- `restart` (the default): the failure is logged with its traceback and the task starts again
  after a pause that doubles with each failure in a row (RESTART_DELAY up to RESTART_MAX); a
  task that ran for RESTART_MAX before it failed starts again after the shortest pause. A task
  that returns is done (nothing to do, e.g. a sweep switched off) and is not restarted;
- `fatal`: the process cannot work without it (the server's ingest of worker events): the
  failure, or an unexpected return, is logged as critical and `on_fatal` stops the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Seconds before a failed task starts again, doubling per failure in a row up to RESTART_MAX.
RESTART_DELAY, RESTART_MAX = 1.0, 60.0

TaskFactory = Callable[[], Coroutine[Any, Any, object]]


@dataclass
class _Watched:
    name: str
    factory: TaskFactory
    fatal: bool
    task: asyncio.Task[object] | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY
    restarts: int = 0
    pending: asyncio.TimerHandle | None = field(default=None, repr=False)


class BackgroundTasks:
    def __init__(
        self,
        on_fatal: Callable[[], None] | None = None,
        *,
        restart_delay: float = RESTART_DELAY,
        restart_max: float = RESTART_MAX,
    ) -> None:
        """`on_fatal` stops the process (called once, on the event loop); needed for fatal tasks."""
        self.on_fatal = on_fatal
        self.restart_delay = restart_delay
        self.restart_max = restart_max
        self._watched: dict[str, _Watched] = {}
        self._closing = False
        self.failed: str | None = None

    def start(self, name: str, factory: TaskFactory, *, fatal: bool = False) -> None:
        """Run `factory()` as the task `name`, watched (see the module docstring)."""
        if fatal and self.on_fatal is None:
            raise ValueError(f"{name}: a fatal task needs on_fatal")
        watched = _Watched(name, factory, fatal, delay=self.restart_delay)
        self._watched[name] = watched
        self._run(watched)

    def restarts(self, name: str) -> int:
        """How often the task `name` was started again after a failure."""
        return self._watched[name].restarts

    def _run(self, watched: _Watched) -> None:
        watched.pending = None
        if self._closing:
            return
        watched.started = time.monotonic()
        watched.task = asyncio.create_task(watched.factory(), name=watched.name)
        watched.task.add_done_callback(lambda task: self._ended(watched, task))

    def _ended(self, watched: _Watched, task: asyncio.Task[object]) -> None:
        if self._closing or task.cancelled():
            return
        exc = task.exception()
        if watched.fatal:
            what = "failed" if exc is not None else "ended"
            log.critical("background task %s %s: stopping the process", watched.name, what, exc_info=exc)
            if self.failed is None and self.on_fatal is not None:
                self.failed = watched.name
                self.on_fatal()
            return
        if exc is None:
            return  # done: nothing (more) to do
        if time.monotonic() - watched.started >= self.restart_max:
            watched.delay = self.restart_delay  # it ran a good while: a new streak of failures
        log.error(
            "background task %s failed; starting it again in %.0f s",
            watched.name,
            watched.delay,
            exc_info=exc,
        )
        watched.restarts += 1
        watched.pending = asyncio.get_running_loop().call_later(watched.delay, self._run, watched)
        watched.delay = min(self.restart_max, watched.delay * 2)

    async def close(self) -> None:
        """Cancel every task (and every pending restart) and wait for them to end."""
        self._closing = True
        tasks = []
        for watched in self._watched.values():
            if watched.pending is not None:
                watched.pending.cancel()
            if watched.task is not None:
                watched.task.cancel()
                tasks.append(watched.task)
        await asyncio.gather(*tasks, return_exceptions=True)
