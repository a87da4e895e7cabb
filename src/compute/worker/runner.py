"""Run one claimed job through its plugin and report what happens.

Plugins run on a separate thread with its own event loop: a plugin that computes without
awaiting (Pillow, models) then cannot starve the worker's MQTT keepalive and hints.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from cl_ml_tools import ComputeModule

from compute.bus.base import Bus
from compute.db.repository import JobRecord
from compute.jobs import EventType, JobEvent, now_ms
from compute.topics import Topics, encode, job_event_payload
from compute.worker.results import ResultOutbox

log = logging.getLogger(__name__)


class PluginThread:
    """A long-lived thread running an event loop for plugin coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="plugins", daemon=True)
        self._thread.start()

    async def run(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class JobRunner:
    def __init__(self, worker_id: str, tasks: dict[str, ComputeModule], bus: Bus, topics: Topics,
                 outbox: ResultOutbox) -> None:
        self.worker_id = worker_id
        self.tasks = tasks
        self.bus = bus
        self.topics = topics
        self.outbox = outbox
        self.plugins = PluginThread()

    def _event(self, job: JobRecord, kind: EventType, **fields: Any) -> JobEvent:
        return JobEvent(job_id=job.job_id, worker_id=self.worker_id, event=kind,
                        timestamp=now_ms(), **fields)

    def _publish(self, job: JobRecord, event: JobEvent) -> None:
        topic = self.topics.job_event(job.task_type, job.job_id)
        self.bus.publish(topic, encode(job_event_payload(event, job.task_type)), qos=1)

    def _progress_reporter(self, job: JobRecord) -> Callable[[int], None]:
        """The plugin's progress callback: thread-safe, forward-only, capped at 99."""
        loop = asyncio.get_running_loop()
        last = -1

        def report(percent: int) -> None:
            nonlocal last
            value = max(0, min(99, int(percent)))
            if value <= last:
                return
            last = value
            loop.call_soon_threadsafe(self._publish, job, self._event(job, EventType.PROGRESS,
                                                                      progress=value))

        return report

    async def run(self, job: JobRecord) -> JobEvent:
        """Execute `job`; the terminal event goes to the outbox. Never raises for plugin faults."""
        self._publish(job, self._event(job, EventType.STARTED))
        outcome = await self._execute(job)
        self.outbox.send(outcome, job.task_type)
        return outcome

    async def _execute(self, job: JobRecord) -> JobEvent:
        plugin = self.tasks.get(job.task_type)
        if plugin is None:
            return self._event(job, EventType.FAILED, error=f"no plugin for task {job.task_type}")
        try:
            params = plugin.get_schema()(**job.params)
            result = await self.plugins.run(
                plugin.execute(job.to_job(), params, self._progress_reporter(job))
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: plugin %s raised", job.job_id, job.task_type)
            return self._event(job, EventType.FAILED, error=f"{type(exc).__name__}: {exc}")
        if isinstance(result, dict) and result.get("status") == "ok":
            output = result.get("task_output")
            return self._event(job, EventType.COMPLETED, progress=100,
                               task_output=output if isinstance(output, dict) else {"result": output})
        error = result.get("error") if isinstance(result, dict) else None
        return self._event(job, EventType.FAILED, error=str(error or f"plugin returned {result!r}"))
