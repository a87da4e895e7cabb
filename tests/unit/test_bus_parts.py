"""Server and worker parts that talk to the bus, against a recording fake bus."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import pytest
from cl_ml_tools import Job
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from compute.db.repository import JobRecord, JobRepository
from compute.db.rules import Outcome
from compute.db.tables import worker_sessions_table
from compute.db.transitions import JobTransitions
from compute.db.worker_sessions import WorkerSessions, new_secret
from compute.jobs import EventType, JobEvent, now_ms
from compute.logs import LogLimiter
from compute.policies import Policies, TaskPolicy
from compute.server.dbcalls import DatabaseUnavailable, RouteDatabase
from compute.server.flow.announcer import ChangeAnnouncer
from compute.server.flow.cancel import Canceller
from compute.server.flow.dispatch import Dispatcher
from compute.server.flow.ingest import EventIngest
from compute.server.flow.rescue import Rescuer
from compute.server.flow.submit import JobSubmitter
from compute.server.flow.workers import LOOKUPS_PER_SECOND, NEGATIVE_MAX, WorkerRegistry
from compute.server.live.changes import ChangeFeed
from compute.server.live.queue_summary import QueueReporter
from compute.server.metrics import ServerMetrics
from compute.signing import (
    confirmation_signature,
    info_signature,
    verify_cancel,
    verify_confirmation,
    verify_info,
)
from compute.topics import MAX_INFO_BYTES, Topics, WorkerInfo, encode, job_event_payload, parse_worker_info
from compute.worker.announce import Announcer, offline_will
from compute.worker.attempt import Attempt
from compute.worker.results import ResultOutbox
from compute_bench.harness import wait_until
from tests.support.events import signed
from tests.support.fakes import FakeBus, no_staging
from tests.support.waits import wait_for

T = Topics()


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


SECRETS: dict[str, str] = {}
_RUN = {"suffix": ""}


@pytest.fixture(autouse=True)
def _fresh_session_ids() -> None:
    # worker_sessions outlives a test on the shared PostgreSQL database: ids of this test only.
    _RUN["suffix"] = uuid.uuid4().hex[:8]


def sid(label: str) -> str:
    """The session id a test calls `label`."""
    return f"{label}-{_RUN['suffix']}"


@pytest.fixture
def sessions(engine: Any) -> WorkerSessions:
    return WorkerSessions(engine)


@pytest.fixture
def queues(repo: JobRepository, bus: FakeBus) -> QueueReporter:
    return QueueReporter(bus, T, repo)


def register(
    sessions: WorkerSessions,
    worker_id: str,
    session: str = "s",
    tasks: tuple[str, ...] = ("image_resize", "image_conversion"),
) -> str:
    """Register a worker session as a worker does at start; returns its secret."""
    secret = SECRETS[sid(session)] = new_secret()
    sessions.register(sid(session), worker_id, secret, list(tasks), "host", 1, "test")
    return secret


def silent(engine: Any, session: str, ms: int) -> None:
    """Make `session`'s last heartbeat `ms` old."""
    with engine.begin() as conn:
        conn.execute(
            update(worker_sessions_table)
            .where(worker_sessions_table.c.session == sid(session))
            .values(last_seen=now_ms() - ms)
        )


def info(
    worker_id: str,
    tasks: list[str],
    idle: bool,
    session: str = "s",
    secret: str | None = None,
    timestamp: int | None = None,
) -> bytes:
    """A worker's info, signed with its session's secret (or `secret`)."""
    message = WorkerInfo(
        worker_id=worker_id,
        session=sid(session),
        state="online",
        tasks=tasks,
        idle=idle,
        hostname="host",
        pid=1,
        started_at=1,
        timestamp=now_ms() if timestamp is None else timestamp,
        sig="",
    )
    key = SECRETS.get(sid(session), "none") if secret is None else secret
    message["sig"] = info_signature(key, message)
    return encode(message)


def will(worker_id: str, session: str = "s", secret: str | None = None) -> bytes:
    key = SECRETS.get(sid(session), "none") if secret is None else secret
    return offline_will(worker_id, sid(session), key)


class LostWorkers:
    """Stands in for the Rescuer: records the sessions the registry hands it."""

    def __init__(self) -> None:
        self.lost: list[tuple[str, str]] = []

    def worker_lost(self, worker_id: str, session: str) -> None:
        self.lost.append((worker_id, session))


def make_registry(
    bus: FakeBus, sessions: WorkerSessions, **kwargs: Any
) -> tuple[WorkerRegistry, list[tuple[str, str]]]:
    rescue = LostWorkers()
    reg = WorkerRegistry(bus, T, sessions, cast(Rescuer, rescue), **kwargs)
    return reg, rescue.lost


def test_registry_counts_verified_workers_and_idle_per_task(bus: FakeBus, sessions: WorkerSessions) -> None:
    reg, lost = make_registry(bus, sessions)
    register(sessions, "a", "sa")
    register(sessions, "b", "sb", ("image_resize",))
    bus.deliver(
        T.worker_info("a"), info("a", ["image_resize", "image_conversion"], True, "sa"), retained=True
    )
    bus.deliver(T.worker_info("b"), info("b", ["image_resize"], False, "sb"))
    assert reg.capabilities() == {
        "num_workers": 2,
        "capabilities": {"image_resize": 1, "image_conversion": 1},
    }
    bus.deliver(T.worker_info("a"), will("a", "sa"))
    assert reg.capabilities() == {"num_workers": 1, "capabilities": {"image_resize": 0}}
    # An offline worker's CL Server capability is cleared for it (its Will could not), and its
    # session is handed to the rescue (which checks its leases).
    assert (T.legacy_worker("a"), b"", True) in bus.sent
    assert lost == [("a", sid("sa"))]
    assert reg.dropped == 0


def test_registry_ignores_an_older_sessions_will(bus: FakeBus, sessions: WorkerSessions) -> None:
    reg, lost = make_registry(bus, sessions)
    register(sessions, "a", "old")
    register(sessions, "a", "new")
    bus.deliver(T.worker_info("a"), info("a", ["image_resize"], True, session="new"))
    bus.deliver(T.worker_info("a"), will("a", session="old"))
    assert reg.capabilities()["num_workers"] == 1
    assert (T.legacy_worker("a"), b"", True) not in bus.sent
    assert lost == [("a", sid("old"))]  # only the old session's claims are looked at


def test_registry_believes_only_what_the_database_confirms(
    bus: FakeBus, sessions: WorkerSessions, engine: Any
) -> None:
    reg, lost = make_registry(bus, sessions)
    secret = register(sessions, "a", "sa", ("image_resize",))
    register(sessions, "b", "sb")
    register(sessions, "a", "so", ("image_resize",))  # an older run of a, silent since
    silent(engine, "so", reg.stale_after_ms + 1)
    unsigned = json.loads(info("a", ["image_resize"], True, "sa"))
    unsigned.pop("sig")
    for topic, payload in [
        (T.worker_info("a"), b"{not json"),
        (T.worker_info("a"), encode({"worker_id": "a", "session": sid("sa"), "state": "maybe"})),
        (T.worker_info("a"), info("someone-else", ["image_resize"], True, "sa")),  # topic names a
        (T.worker_info("a"), encode(unsigned)),  # the forgery: copied session, no signature
        (T.worker_info("a"), info("a", ["image_resize"], True, "sa", secret="guessed")),
        (T.worker_info("a"), info("a", ["image_resize"], True, "ghost")),  # no such session
        (T.worker_info("a"), info("a", ["image_resize"], True, "sb", secret=SECRETS[sid("sb")])),  # b's
        (T.worker_info("a"), info("a", ["image_resize", "image_conversion"], True, "sa")),  # not registered
        (T.worker_info("a"), info("a", ["image_resize"], True, "so")),  # old, retained
        (T.worker_info("a"), b"x" * (MAX_INFO_BYTES + 1)),
        # A forged Last Will: the session is public, the secret is not.
        (
            T.worker_info("a"),
            encode({"worker_id": "a", "session": sid("sa"), "state": "offline", "timestamp": 1}),
        ),
        (T.worker_info("a"), will("a", "sa", secret="guessed")),
    ]:
        bus.deliver(topic, payload)
    assert reg.dropped == 12 and lost == []
    assert reg.capabilities() == {"num_workers": 0, "capabilities": {}}
    bus.deliver(T.worker_info("a"), info("a", ["image_resize"], True, "sa", secret=secret))
    assert reg.capabilities()["num_workers"] == 1
    # Its earlier info replayed: older by its own clock, so it changes nothing.
    bus.deliver(T.worker_info("a"), info("a", ["image_resize"], False, "sa", timestamp=now_ms() - 60_000))
    assert reg.rejected["older info"] == 1 and reg.capabilities()["capabilities"] == {"image_resize": 1}


def test_registry_takes_a_worker_whose_clock_is_off(bus: FakeBus, sessions: WorkerSessions) -> None:
    """Liveness is the session's heartbeat by the database's clock, not the info's timestamp
    against the server's: a worker host ten minutes off is still a live worker."""
    reg, _ = make_registry(bus, sessions)
    for name, skew in (("behind", -600_000), ("ahead", 600_000)):
        register(sessions, name, f"s-{name}")
        bus.deliver(
            T.worker_info(name), info(name, ["image_resize"], True, f"s-{name}", timestamp=now_ms() + skew)
        )
    assert set(reg.workers) == {"behind", "ahead"} and reg.dropped == 0
    reg.refresh()
    assert set(reg.workers) == {"behind", "ahead"}


def test_registry_keeps_a_worker_whose_info_someone_else_cleared(
    bus: FakeBus, sessions: WorkerSessions
) -> None:
    reg, _ = make_registry(bus, sessions)
    register(sessions, "a", "sa")
    bus.deliver(T.worker_info("a"), info("a", ["image_resize"], True, "sa"))
    bus.deliver(T.worker_info("a"), b"")  # anyone can publish an empty retained message
    assert reg.capabilities()["num_workers"] == 1
    sessions.stop(sid("sa"))  # what a worker does before clearing its info on a clean shutdown
    bus.deliver(T.worker_info("a"), b"")
    assert reg.capabilities()["num_workers"] == 0
    bus.deliver(T.worker_info("a"), info("a", ["image_resize"], True, "sa"))  # replayed after the stop
    assert reg.capabilities()["num_workers"] == 0


def test_registry_memory_stays_bounded_under_ghosts(bus: FakeBus, sessions: WorkerSessions) -> None:
    reg, _ = make_registry(bus, sessions, max_workers=3)
    started = time.monotonic()
    for i in range(2000):
        bus.deliver(T.worker_info(f"ghost-{i}"), info(f"ghost-{i}", ["image_resize"], True, f"g{i}"))
    elapsed = time.monotonic() - started
    assert reg.capabilities()["num_workers"] == 0 and reg.dropped == 2000
    # Look-ups are rate-limited (a burst, then a rate): many ghosts never reached the database, and
    # the negative cache is capped.
    looked_up = reg.rejected["unknown session"]
    assert looked_up + reg.rejected["too many look-ups"] == 2000
    burst = 2 * LOOKUPS_PER_SECOND
    assert looked_up <= burst + LOOKUPS_PER_SECOND * elapsed + 1
    assert reg.cached_sessions["unknown"] <= NEGATIVE_MAX
    for i in range(5):
        register(sessions, f"real-{i}", f"r{i}")

    def heard(worker_id: str, session: str) -> bool:
        """One heartbeat's info; a look-up refused while the ghosts' budget refills is heard again
        at the next heartbeat, as a real worker's would be."""
        bus.deliver(T.worker_info(worker_id), info(worker_id, ["image_resize"], True, session))
        return worker_id in reg.workers

    for i in range(5):
        wait_until(functools.partial(heard, f"real-{i}", f"r{i}"), 5, f"real-{i} registered", interval=0.01)
    assert reg.capabilities()["num_workers"] == 3  # the cap; the longest silent made room
    assert set(reg.workers) == {"real-2", "real-3", "real-4"}


def test_registry_refresh_drops_stopped_and_silent_sessions(
    bus: FakeBus, sessions: WorkerSessions, engine: Any
) -> None:
    reg, _ = make_registry(bus, sessions)
    for name in ("a", "b", "c"):
        register(sessions, name, f"s{name}")
        bus.deliver(T.worker_info(name), info(name, ["image_resize"], True, f"s{name}"))
    sessions.stop(sid("sa"))
    silent(engine, "sb", reg.stale_after_ms + 1)  # b crashed long ago: its heartbeat stopped
    assert sessions.touch(sid("sc")) and not sessions.touch(sid("sa"))
    reg.refresh()
    assert set(reg.workers) == {"c"}
    assert {t for t, p, _ in bus.sent if p == b""} == {T.legacy_worker("a"), T.legacy_worker("b")}


def test_dispatcher_publishes_hint_and_legacy_queued(
    repo: JobRepository, bus: FakeBus, queues: QueueReporter
) -> None:
    dispatcher = Dispatcher(bus, T)
    submitter = JobSubmitter(repo, announcer_for(bus, queues, dispatcher), RouteDatabase(5.0))
    submitter.add_job(Job(job_id="j1", task_type="image_resize", params={}), priority=8)
    [hint] = bus.on(T.job_available("image_resize"))
    assert hint["job_id"] == "j1" and hint["priority"] == 8
    [legacy] = bus.on(T.legacy_events)
    assert legacy["job_id"] == "j1" and legacy["event_type"] == "queued" and legacy["progress"] == 0
    assert queues.dirty and dispatcher.unsent == 0


async def test_concurrent_submissions_share_transactions_and_hints(
    repo: JobRepository, bus: FakeBus, queues: QueueReporter
) -> None:
    submitter = JobSubmitter(repo, announcer_for(bus, queues), RouteDatabase(5.0))
    ids = [f"j{i}" for i in range(60)]
    stored = await asyncio.gather(
        *(submitter.submit(Job(job_id=i, task_type="image_resize", params={})) for i in ids)
    )
    assert stored == ids and all(repo.get(i) is not None for i in ids)
    # The first request is a batch of one; the 59 that came while it was written share the next.
    assert submitter.batched_jobs == 60 and submitter.batches < 60
    assert len(bus.on(T.job_available("image_resize"))) == submitter.batches  # one hint per batch
    assert sorted(e["job_id"] for e in bus.on(T.legacy_events)) == sorted(ids)  # each job's queued


async def test_a_failed_batch_fails_each_of_its_requests(
    repo: JobRepository, bus: FakeBus, queues: QueueReporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitter = JobSubmitter(repo, announcer_for(bus, queues), RouteDatabase(5.0))

    def locked(_rows: object) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(repo, "insert_rows", locked)
    outcomes = await asyncio.gather(
        *(submitter.submit(Job(job_id=f"j{i}", task_type="image_resize", params={})) for i in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(o, DatabaseUnavailable) for o in outcomes), outcomes
    assert bus.on(T.job_available("image_resize")) == [] and bus.on(T.legacy_events) == []
    monkeypatch.undo()  # the database is back: the next submission is stored
    assert await submitter.submit(Job(job_id="later", task_type="image_resize", params={})) == "later"


def test_dispatcher_counts_unsent_hints(repo: JobRepository, queues: QueueReporter) -> None:
    down = FakeBus(connected=False)
    dispatcher = Dispatcher(down, T)
    JobSubmitter(repo, announcer_for(down, queues, dispatcher), RouteDatabase(5.0)).add_job(
        Job(job_id="j1", task_type="image_resize", params={})
    )
    assert dispatcher.unsent == 1


async def test_queue_reporter_publishes_retained_counts(repo: JobRepository, bus: FakeBus) -> None:
    reporter = QueueReporter(bus, T, repo)
    repo.add_job(Job(job_id="a", task_type="image_resize", params={}))
    repo.add_job(Job(job_id="b", task_type="image_resize", params={}))
    await reporter.publish_now()
    [state] = bus.on(T.queue("image_resize"))
    assert (state["queued"], state["running"]) == (2, 0) and state["oldest_queued_age_ms"] >= 0
    assert all(retain for t, _, retain in bus.sent if t == T.queue("image_resize"))
    for _ in range(2):
        repo.claim_next(["image_resize"], "w")
    await reporter.publish_now()
    repo.delete_job("a")
    repo.delete_job("b")
    await reporter.publish_now()
    await reporter.publish_now()  # unchanged and empty: not published again
    states = [(s["queued"], s["running"]) for s in bus.on(T.queue("image_resize"))]
    assert states == [(2, 0), (0, 2), (0, 0)]


def unheard() -> ChangeFeed:
    """Live views nobody watches (the feed drops changes while it has no subscribers)."""
    return ChangeFeed(lambda _job_id: None)


def announcer_for(
    bus: FakeBus, queues: QueueReporter, dispatcher: Dispatcher | None = None
) -> ChangeAnnouncer:
    return ChangeAnnouncer(bus, T, dispatcher or Dispatcher(bus, T), unheard(), queues, ServerMetrics())


class RequeueRecorder(Dispatcher):
    """A Dispatcher that records the hints it is asked to send after a backoff."""

    def __init__(self, bus: FakeBus) -> None:
        super().__init__(bus, T)
        self.requeued: list[str] = []

    def hint_at(self, task_type: str, job_id: str, at_ms: int | None) -> None:
        self.requeued.append(job_id)


def make_ingest(repo: JobRepository, bus: FakeBus) -> tuple[EventIngest, list[str]]:
    transitions = JobTransitions(repo.engine, repo.policies)
    queues = QueueReporter(bus, T, repo)
    dispatcher = RequeueRecorder(bus)
    ingest = EventIngest(transitions, bus, T, announcer_for(bus, queues, dispatcher), no_staging())
    return ingest, dispatcher.requeued


def claim_one(repo: JobRepository, job_id: str = "j1") -> JobRecord:
    repo.add_job(Job(job_id=job_id, task_type="image_resize", params={}))
    job = repo.claim_next(["image_resize"], "w1", "s1")
    assert job is not None
    return job


async def test_ingest_persists_confirms_and_republishes(repo: JobRepository, bus: FakeBus) -> None:
    ingest, _ = make_ingest(repo, bus)
    job = claim_one(repo)
    for seq, (kind, progress) in enumerate(
        ((EventType.STARTED, 0), (EventType.PROGRESS, 40), (EventType.COMPLETED, 100)), start=1
    ):
        event = signed(job, kind, seq, progress=progress, task_output={"ok": 1} if progress == 100 else None)
        bus.deliver(T.job_event("image_resize", "j1"), encode(job_event_payload(event, "image_resize")))
    bus.deliver(T.job_event("image_resize", "j1"), b"garbage")
    bus.deliver(
        T.job_event("image_resize", "other"),
        encode(job_event_payload(signed(job, EventType.FAILED, 9, error="x"), "image_resize")),
    )  # topic/payload differ
    assert ingest.rejected["malformed"] == 2 and ingest.queue.qsize() == 3
    await ingest.persist([ingest.queue.get_nowait() for _ in range(3)])
    stored = repo.get("j1")
    assert stored is not None and stored.status == "completed" and stored.task_output == {"ok": 1}
    [confirm] = bus.on(T.worker_confirm("w1"))
    assert (confirm["status"], confirm["attempt"]) == ("completed", 1)
    # Signed with the claim's lease token: the worker can tell it from a forgery.
    assert verify_confirmation(job.lease_token, "j1", 1, "completed", confirm["timestamp"], confirm["sig"])
    legacy = bus.on(T.legacy_events)
    assert [m["event_type"] for m in legacy] == ["processing", "processing", "completed"]
    assert [m["progress"] for m in legacy] == [0, 40, 100]


async def test_ingest_drops_forged_events_and_counts_them(repo: JobRepository, bus: FakeBus) -> None:
    ingest, _ = make_ingest(repo, bus)
    job = claim_one(repo)
    forged = signed(job, EventType.COMPLETED, 1, token="0" * 32, task_output={"forged": True})
    await ingest.persist([forged])
    assert ingest.rejected["bad signature"] == 1 and bus.on(T.worker_confirm("w1")) == []
    assert repo.get("j1") == job


async def test_ingest_confirms_a_duplicate_terminal_event(repo: JobRepository, bus: FakeBus) -> None:
    """A worker re-sends until confirmed: a duplicate must be confirmed too, or it resends forever."""
    ingest, _ = make_ingest(repo, bus)
    job = claim_one(repo)
    done = signed(job, EventType.COMPLETED, 1, progress=100, task_output={})
    await ingest.persist([done])
    await ingest.persist([done])
    assert len(bus.on(T.worker_confirm("w1"))) == 2
    assert len([m for m in bus.on(T.legacy_events) if m["event_type"] == "completed"]) == 1


async def test_ingest_requeues_a_retryable_failure(repo: JobRepository, bus: FakeBus) -> None:
    ingest, requeued = make_ingest(repo, bus)
    job = claim_one(repo)
    await ingest.persist([signed(job, EventType.FAILED, 1, error="crash", retryable=True)])
    assert requeued == ["j1"]
    assert [c["status"] for c in bus.on(T.worker_confirm("w1"))] == ["queued"]
    assert bus.on(T.legacy_events)[-1]["event_type"] == "queued"


def make_outbox(repo: JobRepository, bus: FakeBus) -> ResultOutbox:
    return ResultOutbox(bus, T, JobTransitions(repo.engine, repo.policies), "w1")


def attempt_of(outbox: ResultOutbox, job: JobRecord) -> Attempt:
    return Attempt(job, "w1", outbox.bus, T)


def confirmation(
    job: JobRecord, status: str = "completed", token: str | None = None, attempt: int | None = None
) -> bytes:
    attempt = job.attempt if attempt is None else attempt
    sig = confirmation_signature(token or job.lease_token or "", job.job_id, attempt, status, 5)
    return encode({"job_id": job.job_id, "attempt": attempt, "status": status, "timestamp": 5, "sig": sig})


def test_outbox_keeps_results_until_confirmed(repo: JobRepository, bus: FakeBus) -> None:
    outbox = make_outbox(repo, bus)
    job = claim_one(repo)
    outbox.send(attempt_of(outbox, job), signed(job, EventType.COMPLETED, 1, progress=100, task_output={}))
    assert list(outbox.pending) == ["j1"] and len(bus.on(T.job_event("image_resize", "j1"))) == 1
    # Until confirmed, the claim stays the worker's: its lease is renewed with the running job's.
    assert outbox.held_leases() == [("j1", job.lease_token)]
    outbox.resend_all()
    assert len(bus.on(T.job_event("image_resize", "j1"))) == 2
    bus.deliver(T.worker_confirm("w1"), encode({"job_id": "j1", "status": "completed", "timestamp": 1}))
    assert list(outbox.pending) == ["j1"] and outbox.rejected == 1  # unsigned: the old forgery
    bus.deliver(T.worker_confirm("w1"), confirmation(job))
    assert outbox.pending == {} and outbox.written_directly == 0 and outbox.held_leases() == []
    assert repo.get("j1").status == "processing"  # type: ignore[union-attr]  # the server writes it


def test_outbox_forgets_a_result_only_on_a_verified_confirmation(repo: JobRepository, bus: FakeBus) -> None:
    outbox = make_outbox(repo, bus)
    job = claim_one(repo)
    outbox.send(attempt_of(outbox, job), signed(job, EventType.COMPLETED, 1, progress=100, task_output={}))
    for forged in (
        b"junk",
        encode({"job_id": "j1", "attempt": 1, "status": "completed", "timestamp": 1, "sig": "00" * 32}),
        confirmation(job, token="f" * 32),  # a guessed token
        confirmation(job, attempt=2),
    ):  # signed, but for another attempt
        bus.deliver(T.worker_confirm("w1"), forged)
    assert list(outbox.pending) == ["j1"] and outbox.rejected == 4
    bus.deliver(T.worker_confirm("w1"), confirmation(job, status="queued"))
    assert outbox.pending == {}
    bus.deliver(T.worker_confirm("w1"), confirmation(job))  # a second one changes nothing
    assert outbox.rejected == 4


def test_outbox_keeps_a_result_the_database_refused_and_writes_it_later(
    repo: JobRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = FakeBus(connected=False)
    outbox = make_outbox(repo, bus)
    job = claim_one(repo)
    real = outbox.transitions.apply_events

    def locked(_events: Sequence[JobEvent]) -> list[Outcome]:
        raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))

    monkeypatch.setattr(outbox.transitions, "apply_events", locked)
    outbox.send(
        attempt_of(outbox, job), signed(job, EventType.COMPLETED, 1, progress=100, task_output={"a": 1})
    )
    assert list(outbox.pending) == ["j1"]  # kept: nothing accepted is lost
    monkeypatch.setattr(outbox.transitions, "apply_events", real)
    outbox.check()
    assert outbox.pending == {} and repo.get("j1").status == "completed"  # type: ignore[union-attr]


def test_outbox_writes_the_result_itself_when_the_broker_is_gone(repo: JobRepository) -> None:
    bus = FakeBus()
    outbox = make_outbox(repo, bus)
    j1, j2 = claim_one(repo, "j1"), claim_one(repo, "j2")
    outbox.send(
        attempt_of(outbox, j1), signed(j1, EventType.COMPLETED, 1, progress=100, task_output={"a": 1})
    )
    bus.is_connected = False
    outbox.send(attempt_of(outbox, j2), signed(j2, EventType.FAILED, 1, error="bad"))
    assert repo.get("j2").status == "failed"  # type: ignore[union-attr]  # at once, nobody to send to
    outbox.check()  # the broker is down: pending results go to the database
    assert repo.get("j1").status == "completed" and outbox.pending == {}  # type: ignore[union-attr]
    assert outbox.written_directly == 2


def test_outbox_announces_what_it_wrote_itself(repo: JobRepository, bus: FakeBus) -> None:
    outbox = make_outbox(repo, bus)
    outbox.confirm_timeout = 0
    job = claim_one(repo)
    outbox.send(attempt_of(outbox, job), signed(job, EventType.COMPLETED, 1, progress=100, task_output={}))
    outbox.check()  # no confirmation in time: written by the worker, and said on inference/events
    assert [(m["job_id"], m["event_type"], m["progress"]) for m in bus.on(T.legacy_events)] == [
        ("j1", "completed", 100)
    ]


def test_outbox_flush_writes_unconfirmed_results(repo: JobRepository, bus: FakeBus) -> None:
    outbox = make_outbox(repo, bus)
    job = claim_one(repo)
    outbox.send(attempt_of(outbox, job), signed(job, EventType.COMPLETED, 1, progress=100, task_output={}))
    outbox.flush()
    assert repo.get("j1").status == "completed"  # type: ignore[union-attr]


def test_cancel_requests_are_signed_for_the_claim(
    repo: JobRepository, bus: FakeBus, queues: QueueReporter
) -> None:
    transitions = JobTransitions(repo.engine, repo.policies)
    canceller = Canceller(transitions, bus, T, announcer_for(bus, queues))
    job = claim_one(repo)
    assert canceller.cancel("j1") == "processing"
    [request] = bus.on(T.worker_cancel("w1"))
    assert request["attempt"] == 1
    assert verify_cancel(job.lease_token, "j1", 1, request["timestamp"], request["sig"])
    # CL Server clients read a cancelled job as failed (the SDK waits for completed or failed).
    assert [(m["job_id"], m["event_type"]) for m in bus.on(T.legacy_events)] == [("j1", "failed")]
    assert repo.get("j1").status == "cancelled"  # type: ignore[union-attr]


async def test_rescue_after_a_will_spares_a_renewing_lease_and_announces_the_rest(
    repo: JobRepository, bus: FakeBus, queues: QueueReporter
) -> None:
    transitions = JobTransitions(repo.engine, repo.policies)
    rescuer = Rescuer(transitions, announcer_for(bus, queues), lease_seconds=0.6)
    alive, dead = claim_one(repo, "alive"), claim_one(repo, "dead")
    rescuer.worker_lost("w1", "s1")  # a verified Will for the session of both
    assert repo.get("dead").status == "processing"  # type: ignore[union-attr]  # not at once

    async def renew() -> None:  # the worker behind "alive" still runs
        while True:
            repo.extend_leases([("alive", alive.lease_token or "")], 600)
            await asyncio.sleep(0.05)

    renewing = asyncio.create_task(renew())
    try:
        await wait_for(lambda: rescuer.checks == 1, what="the Will's lease check")
    finally:
        renewing.cancel()
    assert repo.get("alive").status == "processing"  # type: ignore[union-attr]
    assert repo.get("dead").status == "queued" and rescuer.rescued == 1  # type: ignore[union-attr]
    assert [(m["job_id"], m["event_type"]) for m in bus.on(T.legacy_events)] == [("dead", "queued")]
    assert [h["job_id"] for h in bus.on(T.job_available("image_resize"))] == ["dead"]
    assert dead.attempt == 1


async def test_lease_sweep_announces_failures_by_rescue(engine: Any, bus: FakeBus) -> None:
    repo = JobRepository(engine, policies=Policies(TaskPolicy(max_retries=0)))
    queues = QueueReporter(bus, T, repo)
    rescuer = Rescuer(JobTransitions(engine, repo.policies), announcer_for(bus, queues), 60)
    repo.add_job(Job(job_id="j1", task_type="image_resize", params={}))
    assert repo.claim_next(["image_resize"], "w1", "s1", lease_ms=-1) is not None
    assert [r.status for r in await rescuer.sweep()] == ["failed"]
    assert [(m["job_id"], m["event_type"]) for m in bus.on(T.legacy_events)] == [("j1", "failed")]


def test_log_limiter_holds_back_floods_and_says_how_many(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.limiter")
    limiter = LogLimiter(logger, burst=3, interval=60.0, max_keys=2)
    with caplog.at_level(logging.WARNING, logger="test.limiter"):
        written = [limiter.warning("junk", "junk %d", i) for i in range(1000)]
        limiter.warning("other", "other")
        for i in range(10):
            limiter.warning(f"key-{i}", "new key %d", i)  # keys past max_keys share one bucket
    assert written.count(True) == 3 and limiter.suppressed_total == 997 + 7
    assert len(caplog.records) == 3 + 1 + 3
    limiter.interval = 0.0  # the interval is over: one summary line per held-back key
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.limiter"):
        limiter.flush()
    assert sorted(r.getMessage() for r in caplog.records) == [
        "suppressed 7 more '(other reasons)' lines in the last 0 s",
        "suppressed 997 more 'junk' lines in the last 0 s",
    ]


def test_announcer_online_info_and_goodbye(bus: FakeBus) -> None:
    presence = FakeBus()
    ann = Announcer(bus, presence, T, "w1", ["image_resize"], "sess1", "secret")
    ann.publish_online()
    ann.publish_info()
    ann.set_idle(False)
    assert (T.worker_status("w1"), b"online", True) in presence.sent
    legacy = bus.on(T.legacy_worker("w1"))
    assert legacy[0]["capabilities"] == ["image_resize"] and legacy[0]["id"] == legacy[0]["worker_id"] == "w1"
    assert [m["idle_count"] for m in legacy] == [1, 0]
    infos = bus.on(T.worker_info("w1"))
    assert [m["idle"] for m in infos] == [True, False]
    assert all(verify_info("secret", parse_worker_info(encode(m))) for m in infos)
    ann.publish_offline()
    assert bus.sent[-2:] == [(T.legacy_worker("w1"), b"", True), (T.worker_info("w1"), b"", True)]
    assert presence.sent[-1] == (T.worker_status("w1"), b"offline", True)


async def test_announcer_repairs_what_an_older_sessions_will_overwrote(bus: FakeBus) -> None:
    presence = FakeBus()
    ann = Announcer(bus, presence, T, "w1", ["image_resize"], "new", "secret")
    presence.deliver(T.worker_status("w1"), b"offline", retained=True)
    assert presence.sent[-1] == (T.worker_status("w1"), b"online", True)
    # A Will that names this very session (replayed by anyone) is repaired too, not only older ones.
    for session in ("old", "new"):
        before = len(bus.sent)
        presence.deliver(T.worker_info("w1"), offline_will("w1", session, "secret"))

        def repaired(b: int = before) -> bool:
            return len(bus.sent) > b

        await wait_for(repaired, what="info repaired")  # at most once a second
        assert bus.on(T.worker_info("w1"))[-1]["session"] == "new"
    sent = len(bus.sent)
    presence.deliver(T.worker_info("w1"), bus.sent[-2][1])  # its own message: nothing to repair
    presence.deliver(T.legacy_worker("w1"), b"")
    await wait_for(lambda: len(bus.sent) > sent, what="capability repaired")
    assert bus.on(T.legacy_worker("w1"))[-1]["worker_id"] == "w1"
    ann.publish_offline()


async def test_announcer_repairs_a_flood_at_most_once_a_second(bus: FakeBus) -> None:
    presence = FakeBus()
    ann = Announcer(bus, presence, T, "w1", ["image_resize"], "s", "secret")
    presence.deliver(T.worker_info("w1"), b"junk")
    first = len(bus.sent)
    for _ in range(1000):
        presence.deliver(T.worker_info("w1"), b"junk")
    assert len(bus.sent) == first  # held back: one repair is scheduled for the rest
    await wait_for(lambda: len(bus.sent) > first, what="the scheduled repair")
    assert len(bus.sent) == first + 2  # info and capability, once
    ann.publish_offline()
