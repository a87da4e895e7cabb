"""Plugins on a thread of the worker (PLUGIN_ISOLATION=thread).

The thread has its own event loop: a plugin that computes without awaiting (Pillow, models)
then cannot starve the worker's MQTT keepalive, hints, cancel requests or lease heartbeats. A
plugin that is cancelled (or overruns its timeout) and does not stop within STOP_GRACE is left
behind on its thread, still using CPU and memory, and the next job gets a fresh thread: a thread
cannot be killed. worker/plugin_process.py can; this mode remains for plugins that cannot be
pickled into a child process, and for tests that share state with their plugin.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any

from cl_ml_tools import ComputeModule

from compute.db.repository import JobRecord
from compute.loop_thread import loop_thread

log = logging.getLogger(__name__)

STOP_GRACE = 1.0  # seconds a cancelled plugin gets to stop before its thread is abandoned


class PluginThread:
    """A long-lived thread running an event loop for plugin coroutines."""

    def __init__(self) -> None:
        self.loop, self._thread = loop_thread("plugins")
        self._thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class PluginThreadHost:
    """Runs plugins on a PluginThread, replacing it when a plugin does not stop."""

    def __init__(self, tasks: dict[str, ComputeModule] | None = None) -> None:
        self.tasks = tasks or {}
        self.thread = PluginThread()

    def warm_up(self) -> None:
        """Nothing to prepare: the thread is there."""

    async def ready(self) -> None:
        """Nothing to wait for: the thread is there."""

    async def batchable(self, task_type: str) -> bool:
        """Whether the plugin of `task_type` takes several jobs in one call."""
        check = getattr(self.tasks.get(task_type), "batchable", None)
        # On a thread of its own: the first call may load the plugin's model.
        return callable(check) and bool(await asyncio.to_thread(check))

    async def execute(
        self, plugin: ComputeModule, job: JobRecord, params: Any, report: Callable[[int], None]
    ) -> Any:
        """The plugin's result; what it raises is raised here.

        Cancelling the calling task cancels the plugin, waits up to STOP_GRACE for it to stop,
        and abandons its thread if it does not.
        """
        return await self._on_thread(plugin.execute(job.to_job(), params, report))

    async def execute_batch(
        self, plugin: ComputeModule, jobs: Sequence[tuple[JobRecord, Any, Callable[[int], None]]]
    ) -> list[Any]:
        """Per job, in order, the plugin's result or the exception that was that job's crash;
        what the plugin's `execute_batch` itself raises is raised here. Cancelling as `execute`."""
        batch = [(job.to_job(), params, report) for job, params, report in jobs]
        return list(await self._on_thread(plugin.execute_batch(batch)))

    async def _on_thread(self, coro: Any) -> Any:
        worker_loop = asyncio.get_running_loop()
        stopped = asyncio.Event()

        async def run() -> Any:
            try:
                return await coro
            finally:
                worker_loop.call_soon_threadsafe(stopped.set)

        future = self.thread.submit(run())
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            try:
                await asyncio.wait_for(stopped.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("plugin did not stop; leaving its thread behind and starting a new one")
                self.thread.stop()
                self.thread = PluginThread()
            raise

    def close(self) -> None:
        self.thread.stop()
