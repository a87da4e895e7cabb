"""The worker loop: drain the queue, then wait for a hint, the sweep timer, or stop.

Draining: each lane (worker/lanes.py) with free slots claims up to that many of its jobs (times
its batch) in one statement and starts each slot's share in it; when a run ends its slot claims
again, until a claim finds fewer jobs than it asked for. A hint meanwhile makes every lane look
again.

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
from compute.worker.batch_run import run_many
from compute.worker.dbretry import DB_ERRORS, Backoff
from compute.worker.job_folder import JobFolders
from compute.worker.lanes import Lane, Slot, build_lanes, shares
from compute.worker.results import ResultOutbox
from compute.worker.runner import JobRunner

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
        self.lanes = build_lanes(settings, tasks, self.outbox, folders)
        self.topics = topics
        #: The claims this worker holds, running or about to (their leases are renewed, cancel
        #: requests must verify for one of them), and the slot each is in (several share a slot
        #: when they run as a batch).
        self.held: dict[str, Slot] = {}
        #: Set whenever a slot frees (the drain claims again).
        self._slot_freed = asyncio.Event()
        #: Claim statements that found nothing (another worker took the job first, or the
        #: drain looked once more after its last job).
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

    @property
    def runner(self) -> JobRunner:
        """The first slot's runner (the only one without WORKER_CONCURRENCY)."""
        return self.lanes[0].slots[0].runner

    @property
    def runners(self) -> list[JobRunner]:
        return [slot.runner for lane in self.lanes for slot in lane.slots]

    @property
    def current(self) -> Attempt | None:
        """The claim being run, when there is exactly one."""
        attempts = [slot.attempts[job_id] for job_id, slot in self.held.items() if job_id in slot.attempts]
        return attempts[0] if len(attempts) == 1 else None

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
        slot = self.held.get(request["job_id"])
        attempt = slot.attempts.get(request["job_id"]) if slot is not None else None
        if slot is None or attempt is None or not attempt.verifies_cancel(request):
            # Not for the running claim, or not from the server: a job stops only on the
            # server's word (signed with the lease token) or when its lease is gone.
            self.rejected_cancels += 1
            limited.warning(
                "unverified cancel",
                "ignored a cancel request for job %s: not signed for a claim held here",
                request["job_id"][:100],
            )
            return
        log.info(
            "job %s: cancelled by the server",
            request["job_id"],
            extra={"job_id": request["job_id"], "worker_id": self.worker_id},
        )
        slot.runner.cancel(request["job_id"])

    def stop(self) -> None:
        """Leave: claim nothing more, and hand the running jobs back at once (their plugins are
        stopped, and `released` events queue them again for other workers). Safe to call more
        than once."""
        self.stopping.set()
        self.wake.set()
        for runner in self.runners:
            runner.release_all()

    async def run(self) -> None:
        for runner in self.runners:
            runner.host.warm_up()
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
            for runner in self.runners:
                runner.host.close()

    def _claim(self, lane: Lane) -> list[JobRecord]:
        """One claim statement for the lane's free slots. A database error is logged and raises
        _ClaimFailed; run() then backs off."""
        try:
            jobs = self.repo.claim_batch(
                lane.task_types, self.worker_id, self.session, self.settings.lease_ms, lane.claim_limit
            )
        except DB_ERRORS as exc:
            self.db_errors += 1
            self._claim_backoff.failures += 1
            limited.warning("claim", "claim failed (%s); retrying with backoff", first_line(exc))
            raise _ClaimFailed from exc
        if self._claim_backoff.failures:
            log.info("claims work again")
        self._claim_backoff.reset()
        return jobs

    async def drain(self) -> int:
        """Claim and run jobs until none is left (or stop is asked, or the database fails);
        returns when every job it started has ended."""
        ran = 0
        runs: set[asyncio.Task[None]] = set()
        for lane in self.lanes:
            lane.drained = False
        try:
            while not self.stopping.is_set():
                self._slot_freed.clear()
                try:
                    claimed = self._claim_free_slots(runs)
                except _ClaimFailed:
                    break
                if claimed and not ran:  # announce idle/busy on transitions only, not per job
                    self.announcer.set_idle(False)
                ran += claimed
                if not runs:
                    break
                # Until a job ends (its slot claims again) or a hint says there is more.
                await _first_of(self._slot_freed, self.wake, self.stopping)
                if self.wake.is_set():
                    self.wake.clear()
                    for lane in self.lanes:
                        lane.drained = False
                # Jobs that end together free their slots before the next claim: one statement.
                await asyncio.sleep(0)
        finally:
            # A shutdown waits for the jobs (handed back at once) and their events.
            if runs:
                await asyncio.gather(*runs, return_exceptions=True)
            if ran:
                self.announcer.set_idle(True)
        return ran

    def _claim_free_slots(self, runs: set[asyncio.Task[None]]) -> int:
        """Claim for every lane with free slots that is not drained; start what came. The count."""
        claimed = 0
        for lane in self.lanes:
            free = lane.free()
            if lane.drained or not free or self.stopping.is_set():
                continue
            jobs = self._claim(lane)
            if not jobs:
                self.empty_claims += 1
            if len(jobs) < lane.claim_limit:
                lane.drained = True
            for slot, share in shares(jobs, free):
                attempts = [Attempt(job, self.worker_id, self.bus, self.topics) for job in share]
                slot.attempts = {attempt.job_id: attempt for attempt in attempts}
                self.held.update(dict.fromkeys(slot.attempts, slot))
                task = asyncio.create_task(self._run(lane, slot, attempts), name=f"job-{share[0].job_id}")
                runs.add(task)
                task.add_done_callback(runs.discard)
            claimed += len(jobs)
        return claimed

    async def _run(self, lane: Lane, slot: Slot, attempts: list[Attempt]) -> None:
        try:
            await run_many(slot.runner, attempts)
            if len(attempts) > 1 and slot.runner.takes_batches is False:
                log.warning(
                    "%s: its plugin takes no batch (its model's batch is fixed); WORKER_BATCH ignored",
                    attempts[0].task_type,
                )
                lane.batch = 1
        except Exception:  # the runner reports plugin failures itself: this is a bug of ours
            limited.exception("run", "job %s: the worker failed to run it", attempts[0].job_id)
        finally:
            slot.attempts = {}
            for attempt in attempts:
                self.held.pop(attempt.job_id, None)
            self.jobs_run += len(attempts)
            self._slot_freed.set()

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
            # A batch-mate cancelled while its batch runs is no claim of ours any more.
            held = {
                job_id: slot
                for job_id, slot in self.held.items()
                if job_id in slot.attempts and not slot.runner.dropped(job_id)
            }
            running = [(job_id, slot.attempts[job_id].lease_token) for job_id, slot in held.items()]
            leases = running + self.outbox.held_leases()
            try:
                # One statement for every claim held: running, about to run, or waiting for
                # the server to confirm its result.
                lost = await asyncio.to_thread(self.repo.renew_leases, leases, self.settings.lease_ms)
                for job_id in lost & held.keys():
                    log.warning(
                        "job %s: lease lost (rescued or cancelled); stopping it",
                        job_id,
                        extra={"job_id": job_id, "worker_id": self.worker_id},
                    )
                    held[job_id].runner.cancel(job_id)
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


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class _ClaimFailed(ComputeError):
    """The claim statement hit a database error (already logged)."""
