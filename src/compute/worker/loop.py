"""The worker loop: drain the queue, then wait for a hint, the sweep timer, or stop.

Side tasks: the result outbox, the heartbeat (refreshes `worker_sessions.last_seen` and the
retained `info`) and lease renewal. None of them, nor the claim loop, lets a database error end
the worker: they log it at a limited rate, back off and try again (worker/dbretry.py).
"""

from __future__ import annotations

import asyncio
import logging

from cl_ml_tools import ComputeModule

from compute.background import BackgroundTasks
from compute.bus.interface import Bus
from compute.config import Settings
from compute.db.repository import JobRecord, JobRepository
from compute.db.rules import renewal_interval
from compute.db.transitions import JobTransitions
from compute.db.worker_sessions import WorkerSessions
from compute.errors import ComputeError, first_line
from compute.logs import LogLimiter
from compute.topics import MalformedMessage, Topics, parse_cancel
from compute.worker.announce import Announcer, new_session
from compute.worker.attempt import Attempt
from compute.worker.dbretry import DB_ERRORS, Backoff
from compute.worker.job_folder import JobFolders
from compute.worker.results import ResultOutbox
from compute.worker.runner import JobRunner, plugin_host

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Seconds a stopping worker waits for the server to confirm its last events (a job handed back
#: just now), before it writes what is left to the database itself.
SETTLE_WAIT = 2.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        repo: JobRepository,
        bus: Bus,
        topics: Topics,
        tasks: dict[str, ComputeModule],
        *,
        presence: Bus | None = None,
        session: str | None = None,
        secret: str = "",
        sessions: WorkerSessions | None = None,
        folders: JobFolders | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.bus = bus
        self.worker_id = settings.worker_id
        self.session = session or new_session()
        self.sessions = sessions
        self.task_types = list(tasks)
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.announcer = Announcer(
            bus, presence, topics, self.worker_id, self.task_types, self.session, secret
        )
        # Named in what the servers are told of a result this worker writes itself (db/notices.py).
        origin = f"worker:{settings.worker_id}"
        transitions = JobTransitions(
            repo.engine, settings.task_policies, settings.max_result_bytes, origin=origin
        )
        self.outbox = ResultOutbox(bus, topics, transitions, self.worker_id)
        self.runner = JobRunner(
            tasks, self.outbox, plugin_host(settings, tasks), settings.max_result_bytes, folders
        )
        self.topics = topics
        #: The claim being run (its lease is renewed, cancel requests must verify for it).
        self.current: Attempt | None = None
        #: Claim attempts that found nothing (another worker took the job first).
        self.empty_claims = 0
        self.jobs_run = 0
        #: Database errors survived (claims, renewals, heartbeats), and cancel requests ignored.
        self.db_errors = 0
        self.rejected_cancels = 0
        self._claim_backoff = Backoff()
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
            self.rejected_cancels += 1
            limited.warning("malformed cancel", "ignored a malformed cancel request: %s", str(exc)[:200])
            return
        current = self.current
        if current is None or not current.verifies_cancel(request):
            # Not for the running claim, or not from the server: a job stops only on the
            # server's word (signed with the lease token) or when its lease is gone.
            self.rejected_cancels += 1
            limited.warning(
                "unverified cancel",
                "ignored a cancel request for job %s: not signed for the running claim",
                request["job_id"][:100],
            )
            return
        log.info(
            "job %s: cancelled by the server",
            request["job_id"],
            extra={"job_id": request["job_id"], "worker_id": self.worker_id},
        )
        self.runner.cancel(request["job_id"])

    def stop(self) -> None:
        """Leave: claim nothing more, and hand the running job back at once (its plugin is
        stopped, and a `released` event queues it again for another worker). Safe to call more
        than once."""
        self.stopping.set()
        self.wake.set()
        self.runner.release_all()

    async def run(self) -> None:
        self.runner.host.warm_up()
        # Watched: one that fails is logged and started again (a worker never exits on an error).
        side = BackgroundTasks()
        side.start("outbox", self.outbox.run)
        side.start("heartbeat", self._heartbeat)
        side.start("leases", self._extend_leases)
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                await self.drain()
                if self.stopping.is_set():
                    break
                if self._claim_backoff.failures:
                    # The database failed: wait out the backoff (hints cannot help), then claim.
                    try:
                        await asyncio.wait_for(self.stopping.wait(), self._claim_backoff.next())
                    except TimeoutError:
                        pass
                    continue
                try:
                    await asyncio.wait_for(self.wake.wait(), self.settings.sweep_interval)
                except TimeoutError:
                    pass  # the fallback sweep: a lost hint never strands a job
        finally:
            await side.close()
            # What the server has not confirmed yet (a release sent a moment ago, say) gets a
            # moment to be; the rest is written to the database directly.
            await self.outbox.settle(SETTLE_WAIT)
            self.outbox.flush()
            self.runner.host.close()

    def _claim(self) -> JobRecord | None:
        """One claim. A database error is logged and raises _ClaimFailed; run() then backs off."""
        try:
            job = self.repo.claim_next(self.task_types, self.worker_id, self.session, self.settings.lease_ms)
        except DB_ERRORS as exc:
            self.db_errors += 1
            self._claim_backoff.failures += 1
            limited.warning("claim", "claim failed (%s); retrying with backoff", first_line(exc))
            raise _ClaimFailed from exc
        if self._claim_backoff.failures:
            log.info("claims work again")
        self._claim_backoff.reset()
        return job

    async def drain(self) -> int:
        """Claim and run jobs until none is left (or stop is asked, or the database fails)."""
        ran = 0
        try:
            while not self.stopping.is_set():
                try:
                    job = self._claim()
                except _ClaimFailed:
                    break
                if job is None:
                    if ran == 0:
                        self.empty_claims += 1
                    break
                if ran == 0:  # announce idle/busy on transitions only, not per job
                    self.announcer.set_idle(False)
                self.current = Attempt(job, self.worker_id, self.bus, self.topics)
                try:
                    # Shielded: a shutdown waits for the job and its result instead of cutting it.
                    await asyncio.shield(self.runner.run(self.current))
                finally:
                    self.current = None
                ran += 1
                self.jobs_run += 1
        finally:
            if ran:
                self.announcer.set_idle(True)
        return ran

    async def _heartbeat(self) -> None:
        """Every heartbeat interval: last_seen in the database, then the retained info."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            if self.sessions is not None:
                try:
                    # On a thread, like the lease renewal below: not latency-bound, and a
                    # database the network lost must not stall MQTT keepalives, results, cancels.
                    await asyncio.to_thread(self.sessions.touch, self.session)
                except DB_ERRORS as exc:
                    self.db_errors += 1
                    limited.warning(
                        "heartbeat", "could not refresh this session in the database (%s)", first_line(exc)
                    )
            self.announcer.publish_info()

    async def _extend_leases(self) -> None:
        """Keep alive the leases of the running job and of results not yet confirmed.

        A statement every renewal interval (JOB_LEASE_RENEW_SECONDS, 1 s by default), and only
        while there is something to hold; the interval is kept from one renewal's start to the
        next, so a slow statement does not stretch it (the server rescues a claim after a Will
        once two renewals are missing). A failed renewal is retried sooner (backoff), well before
        the lease runs out. It runs on a
        thread: a database cut off by the network takes up to twice the engine's wait to fail
        (the pool's ping, then a new connection), and on the event loop that silenced the MQTT
        connection for long enough that the broker published the worker's Will, and the job it
        was finishing was rescued and run again.
        """
        interval = renewal_interval(self.settings.lease_seconds, self.settings.lease_renew_seconds)
        backoff = Backoff(maximum=interval)
        loop = asyncio.get_running_loop()
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due, loop.time()) + interval  # a late one (a stalled loop) sets a new step
            attempt = self.current
            running = [(attempt.job_id, attempt.lease_token)] if attempt and attempt.lease_token else []
            pending = self.outbox.held_leases()
            try:
                if running and not await asyncio.to_thread(
                    self.repo.extend_leases, running, self.settings.lease_ms
                ):
                    log.warning(
                        "job %s: lease lost (rescued or cancelled); stopping it",
                        running[0][0],
                        extra={"job_id": running[0][0], "worker_id": self.worker_id},
                    )
                    self.runner.cancel(running[0][0])
                if pending:
                    await asyncio.to_thread(self.repo.extend_leases, pending, self.settings.lease_ms)
            except DB_ERRORS as exc:
                self.db_errors += 1
                delay = backoff.next()
                due = loop.time() + delay
                limited.warning(
                    "lease", "could not renew leases (%s); retrying in %.1f s", first_line(exc), delay
                )
                continue
            except Exception:
                limited.exception("lease", "could not renew leases")
            backoff.reset()


class _ClaimFailed(ComputeError):
    """The claim statement hit a database error (already logged)."""
