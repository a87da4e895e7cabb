"""Run one claimed job through its plugin and report what happens.

Plugins run on a separate thread with its own event loop: a plugin that computes without
awaiting (Pillow, models) then cannot starve the worker's MQTT keepalive, hints, cancel
requests or lease heartbeats. A plugin that overruns its timeout or is cancelled and does not
stop is left behind on its thread, and the next job gets a fresh thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from cl_ml_tools import ComputeModule

from compute.bus.base import Bus
from compute.db.repository import JobRecord
from compute.jobs import EventType, JobEvent, now_ms
from compute.plugins.environment import current as plugin_environment
from compute.plugins.tools import scrub
from compute.signing import signature, verify_cancel
from compute.topics import CancelRequest, Topics, encode, job_event_payload
from compute.worker.results import ResultOutbox

log = logging.getLogger(__name__)

STOP_GRACE = 1.0  # seconds a cancelled plugin gets to stop before its thread is abandoned


class PluginThread:
    """A long-lived thread running an event loop for plugin coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="plugins", daemon=True)
        self._thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class JobRunner:
    def __init__(self, worker_id: str, tasks: dict[str, ComputeModule], bus: Bus, topics: Topics,
                 outbox: ResultOutbox) -> None:
        self.worker_id = worker_id
        self.tasks = tasks
        self.bus = bus
        self.topics = topics
        self.outbox = outbox
        self.plugins = PluginThread()
        self._current: tuple[str, concurrent.futures.Future[Any]] | None = None
        #: The claim being run: cancel requests must be signed with its lease token.
        self._job: JobRecord | None = None
        self._cancelled: set[str] = set()
        self._seq: dict[str, int] = {}

    # -- events ----------------------------------------------------------------------------

    def _event(self, job: JobRecord, kind: EventType, **fields: Any) -> JobEvent:
        """A signed event for `job`'s current claim, with the next sequence number."""
        seq = self._seq.get(job.job_id, 0) + 1
        self._seq[job.job_id] = seq
        unsigned = JobEvent(job_id=job.job_id, worker_id=self.worker_id, event=kind,
                            timestamp=now_ms(), attempt=job.attempt, seq=seq, **fields)
        sig = signature(job.lease_token or "", unsigned)
        return JobEvent(**{**unsigned.__dict__, "sig": sig})

    def _publish(self, job: JobRecord, event: JobEvent) -> None:
        topic = self.topics.job_event(job.task_type, job.job_id)
        self.bus.publish(topic, encode(job_event_payload(event, job.task_type)), qos=1)

    def _progress_reporter(self, job: JobRecord) -> Callable[[int], None]:
        """The plugin's progress callback: thread-safe, forward-only, capped at 99."""
        loop = asyncio.get_running_loop()
        last = -1

        def publish(value: int) -> None:
            self._publish(job, self._event(job, EventType.PROGRESS, progress=value))

        def report(percent: int) -> None:
            nonlocal last
            value = max(0, min(99, int(percent)))
            if value > last:
                last = value
                loop.call_soon_threadsafe(publish, value)

        return report

    # -- running -------------------------------------------------------------------------------

    def verified_cancel(self, request: CancelRequest) -> bool:
        """True if `request` is signed with the running claim's lease token, for its attempt."""
        job = self._job
        return (job is not None and job.job_id == request["job_id"] and job.attempt == request["attempt"]
                and verify_cancel(job.lease_token, request["job_id"], request["attempt"],
                                  request["timestamp"], request["sig"]))

    def cancel(self, job_id: str) -> bool:
        """Stop the running job `job_id`; True if it was running here.

        Only for a verified cancel request or a lease found gone: the database already says the
        job is not this claim's any more, so nothing is sent for it.
        """
        if self._current is None or self._current[0] != job_id:
            return False
        self._cancelled.add(job_id)
        self._current[1].cancel()
        return True

    async def run(self, job: JobRecord) -> JobEvent | None:
        """Execute `job`; the terminal event goes to the outbox. None when it was cancelled."""
        self._seq[job.job_id] = 0
        self._job = job
        try:
            self._publish(job, self._event(job, EventType.STARTED))
            outcome = await self._execute(job)
            if outcome is not None:
                self.outbox.send(outcome, job.task_type, job.lease_token or "")
            return outcome
        finally:
            self._job = None
            self._seq.pop(job.job_id, None)
            self._cancelled.discard(job.job_id)

    async def _execute(self, job: JobRecord) -> JobEvent | None:
        plugin = self.tasks.get(job.task_type)
        if plugin is None:
            return self._event(job, EventType.FAILED, error=f"no plugin for task {job.task_type}")
        try:
            params = plugin.get_schema()(**job.params)
        except Exception as exc:  # bad params are the job's fault: retrying cannot help
            return self._event(job, EventType.FAILED, error=f"invalid params: {exc}")
        future = self.plugins.submit(plugin.execute(job.to_job(), params, self._progress_reporter(job)))
        self._current = (job.job_id, future)
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)),
                                            job.timeout_seconds or None)
        except TimeoutError:
            await self._abandon(future)
            return self._event(job, EventType.FAILED, retryable=True,
                               error=f"timed out after {job.timeout_seconds:g} s")
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            if job.job_id in self._cancelled:
                await self._abandon(future)
                log.info("job %s cancelled", job.job_id)
                return None
            return self._event(job, EventType.FAILED, retryable=True, error="plugin task cancelled")
        except Exception as exc:
            log.exception("job %s: plugin %s raised", job.job_id, job.task_type)
            return self._event(job, EventType.FAILED, retryable=True,
                               error=_without_paths(job, f"{type(exc).__name__}: {exc}"))
        finally:
            self._current = None
        if isinstance(result, dict) and result.get("status") == "ok":
            output = result.get("task_output")
            return self._event(job, EventType.COMPLETED, progress=100,
                               task_output=output if isinstance(output, dict) else {"result": output})
        error = result.get("error") if isinstance(result, dict) else None
        return self._event(job, EventType.FAILED,
                           error=_without_paths(job, str(error or f"plugin returned {result!r}")))

    async def _abandon(self, future: concurrent.futures.Future[Any]) -> None:
        """Cancel a plugin run; if it does not stop in time, give later jobs a fresh thread."""
        future.cancel()
        done, _ = await asyncio.wait([asyncio.wrap_future(future)], timeout=STOP_GRACE)
        if not done:
            log.warning("plugin did not stop; leaving its thread behind and starting a new one")
            self.plugins.stop()
            self.plugins = PluginThread()


def _without_paths(job: JobRecord, message: str) -> str:
    """An error message that names files as /jobs/{id}/files/ does, not by server paths."""
    env = plugin_environment()
    return scrub(message, [env.job_dir(job.job_id), env.storage_dir])
