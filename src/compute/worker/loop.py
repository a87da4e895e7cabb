"""The worker loop: drain the queue, then wait for a hint, the sweep timer, or stop."""

from __future__ import annotations

import asyncio
import logging

from cl_ml_tools import ComputeModule

from compute.bus.base import Bus
from compute.config import Settings
from compute.db.repository import JobRecord, JobRepository
from compute.db.transitions import JobTransitions
from compute.topics import MalformedMessage, Topics, parse_cancel
from compute.worker.announce import Announcer, new_session
from compute.worker.results import ResultOutbox
from compute.worker.runner import JobRunner

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, repo: JobRepository, bus: Bus, topics: Topics,
                 tasks: dict[str, ComputeModule], *, presence: Bus | None = None,
                 session: str | None = None) -> None:
        self.settings = settings
        self.repo = repo
        self.bus = bus
        self.worker_id = settings.worker_id
        self.session = session or new_session()
        self.task_types = list(tasks)
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.announcer = Announcer(bus, presence, topics, self.worker_id, self.task_types, self.session)
        transitions = JobTransitions(repo.engine, settings.task_policies)
        self.outbox = ResultOutbox(bus, topics, transitions, self.worker_id)
        self.runner = JobRunner(self.worker_id, tasks, bus, topics, self.outbox)
        self.current: JobRecord | None = None
        #: Claim attempts that found nothing (another worker took the job first).
        self.empty_claims = 0
        self.jobs_run = 0
        if settings.wake_events:
            for task_type in self.task_types:
                bus.subscribe(topics.job_available(task_type), self._on_hint, qos=1)
        bus.subscribe(topics.worker_cancel(self.worker_id), self._on_cancel, qos=1)
        bus.on_connect(self.wake.set)  # jobs may have arrived while we were away

    def _on_hint(self, _topic: str, _payload: bytes, _retained: bool) -> None:
        # A hint carries no work: the database says what to run.
        self.wake.set()

    def _on_cancel(self, _topic: str, payload: bytes, _retained: bool) -> None:
        try:
            request = parse_cancel(payload)
        except MalformedMessage as exc:
            log.warning("dropped malformed cancel request: %s", exc)
            return
        self.runner.cancel(request["job_id"])

    def stop(self) -> None:
        """Finish the current job, then leave. Safe to call more than once."""
        self.stopping.set()
        self.wake.set()

    async def run(self) -> None:
        side = [asyncio.create_task(self.outbox.run(), name="outbox"),
                asyncio.create_task(self.announcer.heartbeat(self.settings.heartbeat_interval),
                                    name="heartbeat"),
                asyncio.create_task(self._extend_leases(), name="leases")]
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                await self.drain()
                if self.stopping.is_set():
                    break
                try:
                    await asyncio.wait_for(self.wake.wait(), self.settings.sweep_interval)
                except TimeoutError:
                    pass  # the fallback sweep: a lost hint never strands a job
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            self.outbox.flush()
            self.runner.plugins.stop()

    async def drain(self) -> int:
        """Claim and run jobs until none is left (or stop is asked)."""
        ran = 0
        try:
            while not self.stopping.is_set():
                job = self.repo.claim_next(self.task_types, self.worker_id, self.session,
                                           self.settings.lease_ms)
                if job is None:
                    if ran == 0:
                        self.empty_claims += 1
                    break
                if ran == 0:  # announce idle/busy on transitions only, not per job
                    self.announcer.set_idle(False)
                self.current = job
                try:
                    # Shielded: a shutdown waits for the job and its result instead of cutting it.
                    await asyncio.shield(self.runner.run(job))
                finally:
                    self.current = None
                ran += 1
                self.jobs_run += 1
        finally:
            if ran:
                self.announcer.set_idle(True)
        return ran

    async def _extend_leases(self) -> None:
        """Keep alive the leases of the running job and of results not yet confirmed.

        A statement every third of the lease, and only while there is something to hold.
        """
        interval = max(0.2, self.settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            job = self.current
            running = [(job.job_id, job.lease_token)] if job is not None and job.lease_token else []
            pending = self.outbox.held_leases()
            try:
                if running and not self.repo.extend_leases(running, self.settings.lease_ms):
                    log.warning("job %s: lease lost (rescued or cancelled); stopping it", running[0][0])
                    self.runner.cancel(running[0][0])
                if pending:
                    self.repo.extend_leases(pending, self.settings.lease_ms)
            except Exception:
                log.exception("could not extend leases")
