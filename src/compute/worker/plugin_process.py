"""Plugins in a child process the worker can kill (PLUGIN_ISOLATION=process, the default).

One child per worker, started at the first job and kept across jobs, so models and ONNX
sessions load once. Children come from multiprocessing's fork server, never a fork of the
worker's own asyncio process (its loop, connections and threads would be copied mid-flight):
the server is a clean process that imported the plugin code once, so a fresh child after a kill
is ready in tens of milliseconds instead of seconds of imports. The child gets the
worker's settings and its task table (pickled: each plugin's class is imported by name in the
child, so plugins a launcher registered in-process exist there too) and runs
worker/plugin_child.py.

A cancel or timeout kills the child's whole process group (the plugin and any ffmpeg or
exiftool it started) at once: SIGTERM, then SIGKILL after KILL_GRACE. The attempt ends as it
does in thread mode; the next job starts a fresh child. A child that dies by itself (segfault,
the kernel's OOM killer, a kill -9) or exceeds PLUGIN_MEMORY_LIMIT_MB fails the attempt as a
crash (PluginCrashed, retried while attempts remain) and is replaced the same way.

Jobs of a task whose plugin takes batches (the child says which once it is ready) can go over
together (`execute_batch`): each comes back with its own outcome. A kill or death during a
batch ends all of it; what happens to the batch-mates then is the runner's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import ModuleType
from typing import Any

from cl_ml_tools import ComputeModule

from compute.config import Settings
from compute.db.repository import JobRecord
from compute.errors import ComputeError, ConfigError
from compute.plugins import models
from compute.worker import plugin_child

log = logging.getLogger(__name__)

#: Seconds a killed child gets between SIGTERM and SIGKILL (plugins install no SIGTERM handler,
#: so this is only spent when something did).
KILL_GRACE = 0.5

#: Callables run in each plugin process once it is set up (picklable: module-level functions),
#: for launchers that prepare plugin processes as they prepare their own (e.g. measurement probes).
child_setups: list[Callable[[], None]] = []


class PluginCrashed(ComputeError):
    """The plugin's run ended without a result: it raised in its process, exceeded the memory
    limit, or its process died. The message is the reason, as the job's error shows it."""


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    #: Task types whose plugin takes several jobs in one call, as the child said when ready.
    batchable: frozenset[str] = frozenset()


class PluginProcess:
    """Runs plugins in a persistent, killable child process."""

    def __init__(
        self,
        settings: Settings,
        tasks: dict[str, ComputeModule],
        preload: dict[str, ComputeModule] | None = None,
    ) -> None:
        """`tasks`: what its child runs (and loads models for); `preload`: the tasks whose code
        the fork server imports (every task of the worker: one fork server serves its hosts)."""
        try:
            pickle.dumps(tasks)
        except Exception as exc:
            raise ConfigError(
                f"PLUGIN_ISOLATION=process needs plugins a child process can import by name "
                f"({type(exc).__name__}: {exc}); use PLUGIN_ISOLATION=thread"
            ) from None
        self.settings = settings
        self.tasks = tasks
        # The worker process runs no plugin now: the sessions its availability check loaded
        # would only hold memory (each child loads its own).
        models.forget()
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_preload(preload or tasks))
        self._child: _Child | None = None
        self._lock = asyncio.Lock()  # one child at a time, however many callers want one
        self._warming: asyncio.Task[None] | None = None
        self._closed = False
        #: Children started so far (the first, and one after each kill or crash).
        self.started = 0

    @property
    def pid(self) -> int | None:
        """The running child's pid, if there is one."""
        return self._child.process.pid if self._child is not None else None

    def warm_up(self) -> None:
        """Have a child set up in the background (at worker start, after a kill), so that the
        next job does not wait for it."""
        if not self._closed and (self._warming is None or self._warming.done()):
            self._warming = asyncio.create_task(self._warm(), name="plugin-process")

    async def _warm(self) -> None:
        try:
            await self.ready()
        except PluginCrashed as exc:  # the next job tries again, and fails with the reason
            log.warning("plugin process could not start: %s", exc)

    async def ready(self) -> None:
        """Wait until a child is set up (started if there is none), before a job's clock starts."""
        async with self._lock:
            # In a thread: the first start waits for the fork server to import everything.
            child = self._child
            if child is None:
                child = await asyncio.to_thread(self._start)
            if child.ready:
                return
            try:
                kind, *rest = await self._receive(child)  # ("ready", batchable)
            except (EOFError, OSError):
                reason = await self._death(child)
                await self._stop()  # not started again here: it may fail the same way at once
                raise PluginCrashed(reason) from None
            except asyncio.CancelledError:
                await self._stop()
                raise
            child.ready = kind == "ready"
            child.batchable = frozenset(rest[0]) if rest else frozenset()

    async def batchable(self, task_type: str) -> bool:
        """Whether the plugin of `task_type` takes several jobs in one call (a child is set up
        to ask, if there is none)."""
        await self.ready()
        return self._child is not None and task_type in self._child.batchable

    async def execute(
        self, plugin: ComputeModule, job: JobRecord, params: Any, report: Callable[[int], None]
    ) -> Any:
        """Run `job` in the child; the plugin's result, or PluginCrashed.

        Cancelling the calling task kills the child before the cancellation goes on.
        """
        (outcome,) = await self.execute_batch(plugin, [(job, params, report)])
        if isinstance(outcome, PluginCrashed):
            raise outcome
        return outcome

    async def execute_batch(
        self, plugin: ComputeModule, jobs: Sequence[tuple[JobRecord, Any, Callable[[int], None]]]
    ) -> list[Any]:
        """Run jobs of one task in the child, together: per job, in order, the plugin's result
        or a PluginCrashed (that job raised or ran out of memory; the others keep their results).
        PluginCrashed is raised when the child died, which ends every job of the batch.

        Cancelling the calling task kills the child before the cancellation goes on.
        """
        await self.ready()
        child = self._child
        assert child is not None
        try:
            child.conn.send((jobs[0][0].task_type, [(job.to_job(), params) for job, params, _ in jobs]))
            while True:
                kind, *rest = await self._receive(child)
                if kind == "outcomes":
                    break
                index, percent = rest
                jobs[index][2](percent)
        except (EOFError, OSError):
            reason = await self._death(child)
            await self.kill()
            raise PluginCrashed(reason) from None
        except asyncio.CancelledError:
            await self.kill()
            raise
        results = [value if kind == "result" else PluginCrashed(value) for kind, value in rest[0]]
        if any(kind == "memory" for kind, _ in rest[0]):
            # The cap held, but a process that hit it may be in a poor state.
            await self.kill()
        return results

    def _start(self) -> _Child:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=plugin_child.main,
            args=(theirs, self.settings, self.tasks, list(child_setups)),
            name=f"plugins-{self.settings.worker_id}",
            daemon=True,
        )
        process.start()
        theirs.close()
        self.started += 1
        child = _Child(process, ours)
        if self._closed:  # the worker stopped while this one was starting
            _end(child)
        else:
            self._child = child
            log.info("plugin process %s started", process.pid)
        return child

    async def _receive(self, child: _Child) -> Any:
        """The child's next message, waiting on the event loop; EOFError when it died."""
        if not child.conn.poll():
            loop = asyncio.get_running_loop()
            readable: asyncio.Future[None] = loop.create_future()
            fd = child.conn.fileno()

            def wake() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
        return child.conn.recv()

    async def _death(self, child: _Child) -> str:
        # It closed the pipe: it is exiting, if not gone already.
        await asyncio.to_thread(child.process.join, KILL_GRACE)
        code = child.process.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}" if code is not None else "closed its pipe"
        limit = self.settings.plugin_memory_limit_mb
        hint = f"; memory limit {limit} MB" if limit and code == -signal.SIGKILL else ""
        log.warning("plugin process %s died (%s)", child.process.pid, how)
        return f"the plugin's process died ({how}{hint})"

    async def kill(self) -> None:
        """Kill the child and what it started, and have a fresh one set up for the next job."""
        await self._stop()
        self.warm_up()

    async def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        process = child.process
        _signal_group(process, signal.SIGTERM)
        await asyncio.to_thread(process.join, KILL_GRACE)
        _signal_group(process, signal.SIGKILL)  # also whatever it started that is still there
        await asyncio.to_thread(process.join)
        child.conn.close()
        log.info("plugin process %s stopped (%s)", process.pid, process.exitcode)

    def close(self) -> None:
        """At shutdown: let an idle child leave on its own (end of its pipe), else kill it."""
        self._closed = True
        if self._warming is not None:
            self._warming.cancel()
        child, self._child = self._child, None
        if child is not None:
            _end(child)


def _end(child: _Child) -> None:
    child.conn.close()
    child.process.join(KILL_GRACE)
    _signal_group(child.process, signal.SIGKILL)
    child.process.join()


def _preload(tasks: dict[str, ComputeModule]) -> list[str]:
    """What the fork server imports once, so that a fresh child, a fork of it, need not.

    Imports take seconds on a loaded machine; without this each child after a kill would pay
    them again. multiprocessing also runs this process's main script (or -m module) again in
    each child, so what it imports is preloaded too (the fork server's own "__main__" preload
    does not work in Python 3.11).
    """
    main = sys.modules.get("__main__")
    names = {"compute.worker.plugin_child", "PIL.Image", *(type(t).__module__ for t in tasks.values())}
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        names.add(spec.name)
    for value in vars(main).values() if main is not None else ():
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str):
            names.add(name)
    return sorted(names - {"__main__", "__mp_main__", "builtins"})


def _signal_group(process: BaseProcess, sig: signal.Signals) -> None:
    """`sig` to the child's process group (itself and its tools), or to the child alone when it
    has not made its group yet."""
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
