"""Every change the server makes to a job is announced: one test walks every write path.

Each step runs one of the server's real write paths (submit, a worker's events through the
ingest, cancel, an operator's retry and new priority, a rescue by lease sweep and after a Last
Will) against a real database, then compares the `jobs` table before and after with what the
announcer told: every job whose status or progress changed was published on `inference/events`
and to the live views with its stored state, the queue summary was marked stale, and a job
that became claimable (or more urgent) was hinted. Claims are the workers' own writes (the
server hears of them through the `started` event), so they happen between the steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
from cl_ml_tools import Job
from sqlalchemy import select

from compute.db.repository import JobRecord, JobRepository
from compute.db.tables import jobs_table
from compute.db.transitions import JobTransitions
from compute.jobs import Cause, EventType, JobChange, sdk_status
from compute.policies import Policies, TaskPolicy
from compute.server.dbcalls import RouteDatabase
from compute.server.flow.actions import JobActions
from compute.server.flow.announcer import ChangeAnnouncer
from compute.server.flow.cancel import Canceller
from compute.server.flow.dispatch import Dispatcher
from compute.server.flow.ingest import EventIngest
from compute.server.flow.rescue import Rescuer
from compute.server.flow.submit import JobSubmitter
from compute.server.live.changes import ChangeFeed
from compute.server.live.queue_summary import QueueReporter
from compute.server.metrics import ServerMetrics
from compute.topics import Topics, encode, job_event_payload
from tests.support.events import signed
from tests.support.fakes import FakeBus, no_staging
from tests.support.waits import wait_for

T = Topics()
TASK = "image_resize"
#: Per job id: (status, progress, priority) as stored.
Rows = dict[str, tuple[str, int, int]]


class RecordingFeed(ChangeFeed):
    def __init__(self) -> None:
        super().__init__(lambda _job_id: None)
        self.shown: list[JobChange] = []

    def publish(self, change: JobChange) -> None:
        self.shown.append(change)


class RecordingQueues(QueueReporter):
    def __init__(self, bus: FakeBus, repo: JobRepository) -> None:
        super().__init__(bus, T, repo)
        self.marked = 0

    def mark_dirty(self) -> None:
        self.marked += 1


class RecordingAnnouncer(ChangeAnnouncer):
    """The real announcer, which also keeps what it was handed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.handed: list[JobChange] = []

    def announce(self, changes: Iterable[JobChange | None]) -> None:
        found = list(changes)
        self.handed.extend(c for c in found if c is not None)
        super().announce(found)


class Server:
    """The server's write paths, wired as services.py wires them, around recording ends."""

    def __init__(self, repo: JobRepository) -> None:
        self.repo = repo
        self.bus = FakeBus()
        self.feed = RecordingFeed()
        self.queues = RecordingQueues(self.bus, repo)
        transitions = JobTransitions(repo.engine, repo.policies)
        self.announcer = RecordingAnnouncer(
            self.bus, T, Dispatcher(self.bus, T), self.feed, self.queues, ServerMetrics()
        )
        self.submitter = JobSubmitter(repo, self.announcer, RouteDatabase(5.0))
        self.ingest = EventIngest(transitions, self.bus, T, self.announcer, no_staging())
        self.canceller = Canceller(transitions, self.bus, T, self.announcer)
        self.actions = JobActions(transitions, self.announcer)
        self.rescuer = Rescuer(transitions, self.announcer, lease_seconds=0.6)

    def rows(self) -> Rows:
        with self.repo.engine.connect() as conn:
            found = conn.execute(
                select(jobs_table.c.job_id, jobs_table.c.status, jobs_table.c.progress, jobs_table.c.priority)
            )
            return {r.job_id: (r.status, r.progress, r.priority) for r in found}

    def claim(self, job_id: str, lease_ms: int = 60_000) -> JobRecord:
        job = self.repo.claim_next([TASK], "w1", "s1", lease_ms=lease_ms)
        assert job is not None and job.job_id == job_id
        return job

    async def events(self, *events: Any) -> None:
        """Worker events over the bus, through the ingest's queue and its batch."""
        done = self.ingest.applied + len(events)
        for event in events:
            self.bus.deliver(T.job_event(TASK, event.job_id), encode(job_event_payload(event, TASK)))
        await wait_for(lambda: self.ingest.applied >= done, what="the events applied")


async def check(server: Server, step: str, action: Callable[[], Awaitable[object]]) -> set[Cause | None]:
    """Run one write path; every change it made to the table must have been announced. Returns
    the causes of what the announcer was handed."""
    before, sent, shown = server.rows(), len(server.bus.sent), len(server.feed.shown)
    marked, handed = server.queues.marked, len(server.announcer.handed)
    await action()
    after = server.rows()
    published = [(topic, json.loads(payload)) for topic, payload, _ in server.bus.sent[sent:] if payload]
    events = [m for t, m in published if t == T.legacy_events]
    hints = [m for t, m in published if t == T.job_available(TASK)]
    live = server.feed.shown[shown:]
    moved = {j for j, row in after.items() if before.get(j, (None, None))[:2] != row[:2]}
    raised = {j for j, row in after.items() if j in before and row[2] > before[j][2]}
    for job_id in moved:
        status, progress, _ = after[job_id]
        assert {"job_id": job_id, "status": status, "progress": progress} in [
            {"job_id": c.job_id, "status": c.status, "progress": c.progress} for c in live
        ], f"{step}: {job_id} is {status} at {progress}, the live views were not told"
        assert (job_id, sdk_status(status), progress) in [
            (m["job_id"], m["event_type"], m["progress"]) for m in events
        ], f"{step}: {job_id} is {status} at {progress}, inference/events was not told"
    if moved:
        assert server.queues.marked > marked, f"{step}: the queue summary was not marked stale"
    claimable = {j for j in moved | raised if after[j][0] == "queued"}
    if claimable:
        assert hints, f"{step}: {sorted(claimable)} became claimable and no worker was woken"
    return {c.cause for c in server.announcer.handed[handed:]}


@pytest.fixture
async def server(engine: Any) -> AsyncIterator[Server]:
    # Retries without backoff, so a requeued job's hint goes out at once.
    repo = JobRepository(engine, policies=Policies(TaskPolicy(max_retries=1, backoff_base=0, backoff_max=0)))
    server = Server(repo)
    ingest = asyncio.create_task(server.ingest.run())
    yield server
    ingest.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ingest


async def test_every_change_a_write_makes_is_announced(server: Server) -> None:
    s = server
    causes: set[Cause | None] = set()

    def job(job_id: str) -> Job:
        return Job(job_id=job_id, task_type=TASK, params={})

    async def submit_together() -> None:
        await asyncio.gather(*(s.submitter.submit(job(f"batch-{i}")) for i in range(3)))

    async def submit_with_key() -> None:
        await s.submitter.submit(job("keyed"), "alice", idempotency_key="k")
        await s.submitter.submit(job("keyed-again"), "alice", idempotency_key="k")  # a replay: nothing

    async def cancel(job_id: str) -> None:
        await asyncio.to_thread(s.canceller.cancel, job_id)

    async def retry(job_id: str) -> None:
        await asyncio.to_thread(s.actions.retry, job_id)

    async def raise_priority(job_id: str) -> None:
        await asyncio.to_thread(s.actions.reprioritise, job_id, 9)

    causes |= await check(s, "submit, batched", submit_together)
    causes |= await check(s, "submit, Idempotency-Key", submit_with_key)

    running = s.claim("batch-0")
    started = signed(running, EventType.STARTED, 1)
    progress = signed(running, EventType.PROGRESS, 2, progress=40)
    causes |= await check(s, "started, progress", lambda: s.events(started, progress))
    done = signed(running, EventType.COMPLETED, 3, progress=100, task_output={})
    causes |= await check(s, "completed", lambda: s.events(done))
    crashed = s.claim("batch-1")
    crash = signed(crashed, EventType.FAILED, 1, error="crash", retryable=True)
    causes |= await check(s, "failed, requeued", lambda: s.events(crash))
    handed_back = s.claim("batch-1")
    release = signed(handed_back, EventType.RELEASED, 1)
    causes |= await check(s, "released by a stopping worker", lambda: s.events(release))
    causes |= await check(s, "cancel a queued job", lambda: cancel("batch-2"))
    s.claim("batch-1")
    causes |= await check(s, "cancel a running job", lambda: cancel("batch-1"))
    causes |= await check(s, "retry", lambda: retry("batch-1"))
    causes |= await check(s, "new priority", lambda: raise_priority("keyed"))

    s.claim("keyed", lease_ms=-1)  # its worker is gone: the lease has run out already

    async def lease_sweep() -> None:
        sweeping = asyncio.create_task(s.rescuer.run())
        try:
            await wait_for(lambda: s.rescuer.rescued == 1, what="the lease sweep")
        finally:
            sweeping.cancel()  # its end cancels the Will checks that wait: let it end first
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping

    causes |= await check(s, "rescue, lease expired", lease_sweep)
    lost = s.claim("keyed")  # rescued, and the most urgent: its second and last attempt

    async def last_will() -> None:
        s.rescuer.worker_lost(lost.worker_id or "", "s1")
        await wait_for(lambda: s.rescuer.rescued == 2, what="the rescue after the Will")

    causes |= await check(s, "rescue, Last Will", last_will)

    # Every kind of write was walked (a new kind of change needs its step here).
    assert causes >= set(Cause)
