"""Run one claimed job through its plugin and report what happens.

A worker that does not share the server's disk fetches the job's inputs first and delivers its
outputs before the completion is reported (worker/job_folder.py); either transfer failing fails
the attempt, and a server that says the claim is over ends it like a cancel: nothing is sent.

The plugin runs in a plugin host: by default a child process the worker kills on cancel or
timeout (worker/plugin_process.py), or a thread of the worker (worker/plugin_thread.py,
PLUGIN_ISOLATION=thread). Either way the worker's own event loop stays free for MQTT keepalives,
hints, cancel requests and lease heartbeats while a plugin computes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cl_ml_tools import ComputeModule

from compute.config import Settings
from compute.db.repository import JobRecord
from compute.jobs import EventType, JobEvent, bounded_error, result_too_large
from compute.plugins.environment import current as plugin_environment
from compute.plugins.tools import scrub
from compute.worker.attempt import Attempt
from compute.worker.file_client import ClaimGone, TransferFailed
from compute.worker.job_folder import JobFolder, JobFolders, SharedFolders
from compute.worker.plugin_process import PluginCrashed, PluginProcess
from compute.worker.plugin_thread import PluginThreadHost
from compute.worker.results import ResultOutbox

log = logging.getLogger(__name__)


class PluginHost(Protocol):
    def warm_up(self) -> None:
        """Get ready for the next job in the background (a plugin process starts)."""

    async def ready(self) -> None:
        """Wait until the host can start a plugin at once (a fresh process is set up)."""

    async def batchable(self, task_type: str) -> bool:
        """Whether the plugin of `task_type` takes several jobs in one call (its model a batch)."""

    async def execute(
        self, plugin: ComputeModule, job: JobRecord, params: Any, report: Callable[[int], None]
    ) -> Any:
        """The plugin's result. Cancelling the caller stops the plugin (as well as the host can)."""

    async def execute_batch(
        self, plugin: ComputeModule, jobs: Sequence[tuple[JobRecord, Any, Callable[[int], None]]]
    ) -> list[Any]:
        """Per job, in order, the plugin's result or the exception that was that job's crash.
        Raised: what ended the whole batch (the plugin's process died). Cancelling as `execute`."""

    def close(self) -> None: ...


def plugin_host(
    settings: Settings, tasks: dict[str, ComputeModule], preload: dict[str, ComputeModule] | None = None
) -> PluginHost:
    """A host for `tasks`; `preload`: every task of the worker (what its plugin processes' fork
    server imports once, when several hosts share it)."""
    if settings.plugin_isolation == "thread":
        return PluginThreadHost(tasks)
    return PluginProcess(settings, tasks, preload)


class JobRunner:
    def __init__(
        self,
        tasks: dict[str, ComputeModule],
        outbox: ResultOutbox,
        host: PluginHost,
        max_result_bytes: int | None = None,
        folders: JobFolders | None = None,
    ) -> None:
        self.tasks = tasks
        self.outbox = outbox
        self.host = host
        #: A result larger than this (task_output as JSON) fails the job instead of being sent.
        self.max_result_bytes = max_result_bytes
        self.folders: JobFolders = folders or SharedFolders()
        #: The attempts being run, by job id, with their plugin runs (what a cancel stops).
        self._running: dict[str, tuple[Attempt, asyncio.Future[Any]]] = {}
        self._cancelled: set[str] = set()
        self._released: set[str] = set()
        #: Set by release_all: every run, running or about to start, is handed back.
        self.releasing = False

    def _progress_reporter(self, attempt: Attempt) -> Callable[[int], None]:
        """The plugin's progress callback: thread-safe, forward-only, below 100.

        100 belongs to the `completed` event. Most plugins report 100 as they return; sending it
        (as 99) cost every job a message, a database write and an `inference/events` mirror for a
        value the result replaces a moment later, so reports of 100 and more are not sent.
        """
        loop = asyncio.get_running_loop()
        last = -1

        def publish(value: int) -> None:
            attempt.publish(attempt.event(EventType.PROGRESS, progress=value))

        def report(percent: int) -> None:
            nonlocal last
            value = max(0, int(percent))
            if last < value < 100:
                last = value
                loop.call_soon_threadsafe(publish, value)

        return report

    def cancel(self, job_id: str) -> bool:
        """Stop the job `job_id`, handed to this runner: its plugin run when it is running, or
        before it starts when it is not yet; True if it was running.

        Only for a verified cancel request or a lease found gone: the database already says the
        job is not this claim's any more, so nothing is sent for it.
        """
        self._cancelled.add(job_id)  # run() drops it at the start when it has not started yet
        found = self._running.get(job_id)
        if found is None:
            return False
        found[1].cancel()
        return True

    def release_all(self) -> None:
        """The worker is stopping: stop every plugin run and hand its claim back (`released`,
        queued again at once for another worker), and hand back what starts from now on too.

        The plugin is stopped first (its process killed), then the release is sent: a job never
        runs here and elsewhere at once."""
        self.releasing = True
        for job_id, (_, run) in self._running.items():
            self._released.add(job_id)
            run.cancel()

    async def run(self, attempt: Attempt) -> JobEvent | None:
        """Execute `attempt`; the terminal event goes to the outbox. None when it was cancelled."""
        fields = attempt.log_fields()
        if attempt.job_id in self._cancelled:  # cancelled before it started: nothing to say
            self._cancelled.discard(attempt.job_id)
            log.info("job %s cancelled before it started", attempt.job_id, extra=fields)
            return None
        if self.releasing:  # claimed before the stop, not started: back to the queue untouched
            released = attempt.event(EventType.RELEASED)
            self.outbox.send(attempt, released)
            return released
        log.info(
            "job %s (%s, attempt %d): started",
            attempt.job_id,
            attempt.task_type,
            attempt.number,
            extra=fields,
        )
        started = time.monotonic()
        try:
            attempt.publish(attempt.event(EventType.STARTED))
            outcome = await self._execute(attempt)
            if outcome is not None:
                log.info(
                    "job %s: %s in %.0f ms%s",
                    attempt.job_id,
                    outcome.event.value,
                    (time.monotonic() - started) * 1000,
                    f" ({outcome.error})" if outcome.error else "",
                    extra={**fields, "event": outcome.event.value},
                )
                self.outbox.send(attempt, outcome)
            return outcome
        finally:
            self._cancelled.discard(attempt.job_id)
            self._released.discard(attempt.job_id)

    async def _execute(self, attempt: Attempt) -> JobEvent | None:
        job = attempt.job
        plugin = self.tasks.get(job.task_type)
        if plugin is None:
            return attempt.event(EventType.FAILED, error=f"no plugin for task {job.task_type}")
        try:
            params = plugin.get_schema()(**job.params)
        except Exception as exc:  # bad params are the job's fault: retrying cannot help
            return attempt.event(EventType.FAILED, error=f"invalid params: {exc}")
        async with self.folders.open(attempt) as folder:
            return await self._execute_in(folder, plugin, attempt, params)

    async def _execute_in(
        self, folder: JobFolder, plugin: ComputeModule, attempt: Attempt, params: Any
    ) -> JobEvent | None:
        job = attempt.job
        running = asyncio.ensure_future(self._run_plugin(plugin, attempt, params, folder))
        self._running[job.job_id] = (attempt, running)
        if self.releasing:
            self._released.add(job.job_id)
            running.cancel()
        try:
            result = await running
        except ClaimGone as exc:
            log.warning("job %s: %s; dropping it", job.job_id, exc, extra=attempt.log_fields())
            return None
        except TransferFailed as exc:
            return attempt.event(
                EventType.FAILED, retryable=exc.retryable, error=_without_paths(job, str(exc))
            )
        except TimeoutError:
            return attempt.event(
                EventType.FAILED, retryable=True, error=f"timed out after {job.timeout_seconds:g} s"
            )
        except asyncio.CancelledError:
            if job.job_id in self._cancelled:
                log.info("job %s cancelled", job.job_id, extra=attempt.log_fields())
                return None
            if job.job_id in self._released:
                return attempt.event(EventType.RELEASED)
            return attempt.event(EventType.FAILED, retryable=True, error="plugin task cancelled")
        except PluginCrashed as exc:  # raised, died or ran out of memory in its process
            log.warning("job %s: plugin %s: %s", job.job_id, job.task_type, exc)
            return attempt.event(EventType.FAILED, retryable=True, error=_without_paths(job, str(exc)))
        except Exception as exc:
            log.exception("job %s: plugin %s raised", job.job_id, job.task_type, extra=attempt.log_fields())
            return attempt.event(
                EventType.FAILED, retryable=True, error=_without_paths(job, f"{type(exc).__name__}: {exc}")
            )
        finally:
            self._running.pop(job.job_id, None)
        if _succeeded(result):
            output = result.get("task_output")
            output = output if isinstance(output, dict) else {"result": output}
            # Checked before sending: the server would refuse it too, and a payload over the bus's
            # limit would be dropped unread and sent again until the worker wrote it itself.
            too_large = result_too_large(output, self.max_result_bytes)
            if too_large is not None:
                return attempt.event(EventType.FAILED, error=too_large)
            return attempt.event(EventType.COMPLETED, progress=100, task_output=output)
        error = result.get("error") if isinstance(result, dict) else None
        return attempt.event(
            EventType.FAILED, error=_without_paths(job, str(error or f"plugin returned {result!r}"))
        )

    async def _run_plugin(
        self, plugin: ComputeModule, attempt: Attempt, params: Any, folder: JobFolder
    ) -> Any:
        """Inputs in place, the plugin within its timeout, then (when it succeeded) its outputs
        where the server serves them from. The transfers are not the plugin's time."""
        job = attempt.job
        await folder.fetch()
        await self.host.ready()  # a plugin process being set up is not the job's time
        # On timeout, wait_for cancels the run and waits until the host has stopped it.
        report = self._progress_reporter(attempt)
        result = await asyncio.wait_for(
            self.host.execute(plugin, job, params, report), job.timeout_seconds or None
        )
        if _succeeded(result):
            await folder.deliver()
        return result


def _succeeded(result: Any) -> bool:
    return isinstance(result, dict) and result.get("status") == "ok"


def _without_paths(job: JobRecord, message: str) -> str:
    """An error message that names files as /jobs/{id}/files/ does, not by server paths."""
    env = plugin_environment()
    return bounded_error(scrub(message, [env.job_dir(job.job_id), env.storage_dir]))
