"""Several claims of one task through one plugin process together (WORKER_BATCH, issue 19).

The slot's runner hands its jobs to the plugin host as one `execute_batch` (the embedding tasks
run the stacked images through their model once) and each job ends on its own: its own
`started`, then its own `completed` or `failed`, from its own outcome. What is the job's own
before the batch runs stays its own too: params that do not validate, inputs that do not
arrive, a cancel that came before the batch started (the job is left out of it).

A cancel that comes while the batch runs (the server's, or a lease found gone) drops that job:
nothing is sent for it, and the batch goes on for the others, whose results are sent as they
come. Killing the process would throw away its batch-mates' work for one job's sake, and an
embedding batch takes seconds at most; only when every job of the batch is cancelled is the
process killed at once. A stop hands every job back at once (the process is killed, `released`).

The batch runs within the shortest timeout of its jobs (no job runs past its own); past it,
every job fails as a timeout, retried while attempts remain. A process that dies mid-batch (a
segfault, the kernel's OOM killer) may have died of one job: the jobs then run again one at a
time, in a fresh process, so only the one that kills it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from cl_ml_tools import ComputeModule

from compute.db.repository import JobRecord
from compute.jobs import JobEvent
from compute.worker.attempt import Attempt
from compute.worker.job_folder import JobFolder
from compute.worker.plugin_process import PluginCrashed
from compute.worker.runner import JobRunner, succeeded

log = logging.getLogger(__name__)


class _Member:
    """One job of the batch, ready to go."""

    def __init__(self, attempt: Attempt, params: Any, folder: JobFolder, started: float) -> None:
        self.attempt = attempt
        self.params = params
        self.folder = folder
        self.started = started


async def run_many(runner: JobRunner, attempts: list[Attempt]) -> list[JobEvent | None]:
    """Execute claims of one task handed over together: as one batch when there are several
    and the plugin takes batches, else one after another. Each one's outcome, in order."""
    if len(attempts) > 1 and not runner.releasing:
        try:
            runner.takes_batches = await runner.host.batchable(attempts[0].task_type)
        except PluginCrashed as exc:  # no process to ask: each job fails with the reason
            log.warning("plugin %s: %s", attempts[0].task_type, exc)
        else:
            if runner.takes_batches:
                return await BatchRun(runner, attempts).run()
    return [await runner.run(attempt) for attempt in attempts]


class BatchRun:
    def __init__(self, runner: JobRunner, attempts: list[Attempt]) -> None:
        self.runner = runner
        self.attempts = attempts
        self.outcomes: dict[str, JobEvent | None] = {}
        self._batch: asyncio.Future[list[Any]] | None = None
        self._members: list[_Member] = []

    async def run(self) -> list[JobEvent | None]:
        """Each attempt's outcome, in order (already sent)."""
        runner = self.runner
        starting = []
        for attempt in self.attempts:
            skipped, outcome = runner.not_started(attempt)
            if skipped:
                self.outcomes[attempt.job_id] = outcome
            else:
                starting.append(attempt)
        try:
            async with contextlib.AsyncExitStack() as folders:
                plugin = await self._prepare(starting, folders)
                if plugin is not None and self._members:
                    await self._execute(plugin)
        finally:
            for attempt in starting:
                runner.unregister(attempt)
                runner.forget(attempt)
        return [self.outcomes.get(attempt.job_id) for attempt in self.attempts]

    async def _prepare(
        self, starting: list[Attempt], folders: contextlib.AsyncExitStack
    ) -> ComputeModule | None:
        """Start each job, and have it ready (params, inputs) or ended on its own; the plugin."""
        runner = self.runner
        plugin: ComputeModule | None = None
        for attempt in starting:
            started = runner.start(attempt, len(starting))
            found = runner.params_of(attempt)
            if isinstance(found, JobEvent):
                self._end(attempt, found, started)
                continue
            plugin, params = found
            folder = await folders.enter_async_context(runner.folders.open(attempt))
            try:
                await folder.fetch()
            except Exception as exc:
                self._end(attempt, runner.error_event(attempt, exc), started)
                continue
            self._members.append(_Member(attempt, params, folder, started))
        return plugin

    async def _execute(self, plugin: ComputeModule) -> None:
        runner = self.runner
        for member in [m for m in self._members if runner.dropped(m.attempt.job_id)]:
            self._end(member.attempt, None)  # cancelled while its inputs arrived: left out
            self._members.remove(member)
        if not self._members:
            return
        timeouts = [m.attempt.job.timeout_seconds for m in self._members if m.attempt.job.timeout_seconds]
        timeout = min(timeouts) if timeouts else None
        jobs: list[tuple[JobRecord, Any, Callable[[int], None]]] = [
            (m.attempt.job, m.params, runner.progress_reporter(m.attempt)) for m in self._members
        ]
        self._batch = asyncio.ensure_future(self._run_batch(plugin, jobs, timeout))
        for member in self._members:
            runner.register(member.attempt, functools.partial(self._stop, member.attempt.job_id))
        if runner.releasing:  # the stop came while the batch was being prepared
            self._batch.cancel()
        try:
            results = await self._batch
        except PluginCrashed as exc:  # the process died: perhaps of one job
            log.warning(
                "a batch of %d %s jobs ended with its process (%s); running them one at a time",
                len(self._members),
                plugin.task_type,
                exc,
            )
            await self._one_at_a_time(plugin)
            return
        except (Exception, asyncio.CancelledError) as exc:
            for member in self._members:
                # A job cancelled while the batch ran has nothing to say, whatever ended it.
                dropped = runner.dropped(member.attempt.job_id)
                self._end(
                    member.attempt, None if dropped else runner.error_event(member.attempt, exc, timeout)
                )
            return
        for member, result in zip(self._members, results, strict=True):
            self._end(member.attempt, await self._deliver(member, result))

    async def _run_batch(
        self,
        plugin: ComputeModule,
        jobs: list[tuple[JobRecord, Any, Callable[[int], None]]],
        timeout: float | None,
    ) -> list[Any]:
        host = self.runner.host
        await host.ready()  # a plugin process being set up is not the jobs' time
        return await asyncio.wait_for(host.execute_batch(plugin, jobs), timeout)

    def _stop(self, job_id: str) -> None:
        """A cancel or a release for `job_id`: a cancelled job is dropped from the batch (its
        result goes nowhere), and the batch stops when nobody wants it any more or on a stop."""
        runner = self.runner
        every_job_cancelled = all(runner.dropped(m.attempt.job_id) for m in self._members)
        if self._batch is not None and (runner.releasing or every_job_cancelled):
            self._batch.cancel()
        elif not runner.released(job_id):
            log.info("job %s cancelled; its batch goes on for the others", job_id)

    async def _deliver(self, member: _Member, result: Any) -> JobEvent | None:
        """The outputs of a job that succeeded where the server serves them; its event."""
        runner, attempt = self.runner, member.attempt
        if runner.dropped(attempt.job_id):
            return None
        if isinstance(result, BaseException):  # that job's own crash or memory error
            return runner.error_event(attempt, result)
        if not succeeded(result):
            return runner.result_event(attempt, result)
        try:
            await member.folder.deliver()
        except Exception as exc:
            return runner.error_event(attempt, exc)
        return None if runner.dropped(attempt.job_id) else runner.result_event(attempt, result)

    async def _one_at_a_time(self, plugin: ComputeModule) -> None:
        runner = self.runner
        for member in self._members:
            attempt = member.attempt
            if runner.dropped(attempt.job_id):
                self._end(attempt, None)
                continue
            self._end(attempt, await runner.execute_in(member.folder, plugin, attempt, member.params))

    def _end(self, attempt: Attempt, outcome: JobEvent | None, started: float | None = None) -> None:
        if started is None:
            started = next(m.started for m in self._members if m.attempt is attempt)
        self.outcomes[attempt.job_id] = outcome
        self.runner.finish(attempt, outcome, started)
