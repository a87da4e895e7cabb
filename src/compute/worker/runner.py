"""Run one claimed job through its plugin and report what happens.

A worker that does not share the server's disk fetches the job's inputs first and delivers its
outputs before the completion is reported (worker/job_folder.py); either transfer failing fails
the attempt, and a server that says the claim is over ends it like a cancel: nothing is sent.

The plugin runs in a plugin host: by default a child process the worker kills on cancel or
timeout (worker/plugin_process.py), or a thread of the worker (worker/plugin_thread.py,
PLUGIN_ISOLATION=thread). Either way the worker's own event loop stays free for MQTT keepalives,
hints, cancel requests and lease heartbeats while a plugin computes.

Several claims of one task handed over together (WORKER_BATCH) go through worker/batch_run.py,
which builds on this module.
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
        #: The attempts being run, by job id, with what stops each (its plugin run; for a batch,
        #: what drops it from the batch).
        self._running: dict[str, tuple[Attempt, Callable[[], Any]]] = {}
        self._cancelled: set[str] = set()
        self._released: set[str] = set()
        #: Set by release_all: every run, running or about to start, is handed back.
        self.releasing = False
        #: Whether the plugin took the last batch handed over (None: none handed over yet).
        self.takes_batches: bool | None = None

    def progress_reporter(self, attempt: Attempt) -> Callable[[int], None]:
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
        found[1]()
        return True

    def dropped(self, job_id: str) -> bool:
        """Whether `job_id` was cancelled here (its claim is not this worker's any more)."""
        return job_id in self._cancelled

    def release_all(self) -> None:
        """The worker is stopping: stop every plugin run and hand its claim back (`released`,
        queued again at once for another worker), and hand back what starts from now on too.

        The plugin is stopped first (its process killed), then the release is sent: a job never
        runs here and elsewhere at once."""
        self.releasing = True
        for job_id, (_, stop) in list(self._running.items()):
            self._released.add(job_id)
            stop()

    async def run(self, attempt: Attempt) -> JobEvent | None:
        """Execute `attempt`; the terminal event goes to the outbox. None when it was cancelled."""
        skipped, outcome = self.not_started(attempt)
        if skipped:
            return outcome
        started = self.start(attempt)
        try:
            outcome = await self._execute(attempt)
            self.finish(attempt, outcome, started)
            return outcome
        finally:
            self.forget(attempt)

    def not_started(self, attempt: Attempt) -> tuple[bool, JobEvent | None]:
        """(True, its outcome) when `attempt` is not to start: cancelled before it started (no
        outcome: nothing to say), or the worker is stopping (handed back, queued again
        untouched); (False, None) when it starts."""
        if attempt.job_id in self._cancelled:
            self._cancelled.discard(attempt.job_id)
            log.info("job %s cancelled before it started", attempt.job_id, extra=attempt.log_fields())
            return True, None
        if self.releasing:
            released = attempt.event(EventType.RELEASED)
            self.outbox.send(attempt, released)
            return True, released
        return False, None

    def start(self, attempt: Attempt, batch: int = 1) -> float:
        """Log and publish that `attempt` started; its start time."""
        log.info(
            "job %s (%s, attempt %d): started%s",
            attempt.job_id,
            attempt.task_type,
            attempt.number,
            f" in a batch of {batch}" if batch > 1 else "",
            extra=attempt.log_fields(),
        )
        attempt.publish(attempt.event(EventType.STARTED))
        return time.monotonic()

    def finish(self, attempt: Attempt, outcome: JobEvent | None, started: float) -> None:
        """Log `attempt`'s outcome and hand it to the outbox (None: nothing to send)."""
        if outcome is None:
            return
        log.info(
            "job %s: %s in %.0f ms%s",
            attempt.job_id,
            outcome.event.value,
            (time.monotonic() - started) * 1000,
            f" ({outcome.error})" if outcome.error else "",
            extra={**attempt.log_fields(), "event": outcome.event.value},
        )
        self.outbox.send(attempt, outcome)

    def forget(self, attempt: Attempt) -> None:
        """`attempt` has ended: its cancel or release marks go."""
        self._cancelled.discard(attempt.job_id)
        self._released.discard(attempt.job_id)

    def register(self, attempt: Attempt, stop: Callable[[], Any]) -> None:
        """`attempt` runs: `stop` is what a cancel or a release calls."""
        self._running[attempt.job_id] = (attempt, stop)

    def unregister(self, attempt: Attempt) -> None:
        self._running.pop(attempt.job_id, None)

    def released(self, job_id: str) -> bool:
        """Whether `job_id` is being handed back (the worker stops)."""
        return job_id in self._released

    def params_of(self, attempt: Attempt) -> tuple[ComputeModule, Any] | JobEvent:
        """The job's plugin and validated params, or the event that fails it (no plugin for its
        task, or params that are the job's fault: retrying cannot help)."""
        job = attempt.job
        plugin = self.tasks.get(job.task_type)
        if plugin is None:
            return attempt.event(EventType.FAILED, error=f"no plugin for task {job.task_type}")
        try:
            return plugin, plugin.get_schema()(**job.params)
        except Exception as exc:
            return attempt.event(EventType.FAILED, error=f"invalid params: {exc}")

    async def _execute(self, attempt: Attempt) -> JobEvent | None:
        found = self.params_of(attempt)
        if isinstance(found, JobEvent):
            return found
        plugin, params = found
        async with self.folders.open(attempt) as folder:
            return await self.execute_in(folder, plugin, attempt, params)

    async def execute_in(
        self, folder: JobFolder, plugin: ComputeModule, attempt: Attempt, params: Any
    ) -> JobEvent | None:
        job = attempt.job
        running = asyncio.ensure_future(self._run_plugin(plugin, attempt, params, folder))
        self.register(attempt, running.cancel)
        if self.releasing:
            self._released.add(job.job_id)
            running.cancel()
        try:
            result = await running
        except (Exception, asyncio.CancelledError) as exc:
            return self.error_event(attempt, exc)
        finally:
            self.unregister(attempt)
        return self.result_event(attempt, result)

    def error_event(
        self, attempt: Attempt, exc: BaseException, timeout: float | None = None
    ) -> JobEvent | None:
        """What ends `attempt` when its run raised `exc` (None: nothing to send). `timeout`:
        the limit that ran out, when not the job's own (a batch's)."""
        job = attempt.job
        if isinstance(exc, ClaimGone):
            log.warning("job %s: %s; dropping it", job.job_id, exc, extra=attempt.log_fields())
            return None
        if isinstance(exc, TransferFailed):
            return attempt.event(
                EventType.FAILED, retryable=exc.retryable, error=_without_paths(job, str(exc))
            )
        if isinstance(exc, TimeoutError):
            limit = timeout if timeout is not None else job.timeout_seconds
            return attempt.event(EventType.FAILED, retryable=True, error=f"timed out after {limit:g} s")
        if isinstance(exc, asyncio.CancelledError):
            if job.job_id in self._cancelled:
                log.info("job %s cancelled", job.job_id, extra=attempt.log_fields())
                return None
            if job.job_id in self._released:
                return attempt.event(EventType.RELEASED)
            return attempt.event(EventType.FAILED, retryable=True, error="plugin task cancelled")
        if isinstance(exc, PluginCrashed):  # raised, died or ran out of memory in its process
            log.warning("job %s: plugin %s: %s", job.job_id, job.task_type, exc)
            return attempt.event(EventType.FAILED, retryable=True, error=_without_paths(job, str(exc)))
        log.error(
            "job %s: plugin %s raised", job.job_id, job.task_type, exc_info=exc, extra=attempt.log_fields()
        )
        return attempt.event(
            EventType.FAILED, retryable=True, error=_without_paths(job, f"{type(exc).__name__}: {exc}")
        )

    def result_event(self, attempt: Attempt, result: Any) -> JobEvent:
        """What ends `attempt` when its plugin returned `result`."""
        job = attempt.job
        if succeeded(result):
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
        report = self.progress_reporter(attempt)
        result = await asyncio.wait_for(
            self.host.execute(plugin, job, params, report), job.timeout_seconds or None
        )
        if succeeded(result):
            await folder.deliver()
        return result


def succeeded(result: Any) -> bool:
    return isinstance(result, dict) and result.get("status") == "ok"


def _without_paths(job: JobRecord, message: str) -> str:
    """An error message that names files as /jobs/{id}/files/ does, not by server paths."""
    env = plugin_environment()
    return bounded_error(scrub(message, [env.job_dir(job.job_id), env.storage_dir]))
