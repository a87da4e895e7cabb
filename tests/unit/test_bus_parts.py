"""Server and worker parts that talk to the bus, against a recording fake bus."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cl_ml_tools import Job

from compute.bus.base import MessageHandler, topic_matches
from compute.db.repository import JobRecord, JobRepository
from compute.db.transitions import JobTransitions
from compute.jobs import EventType
from compute.server.dispatch import Dispatcher
from compute.server.ingest import EventIngest
from compute.server.queues import QueueReporter
from compute.server.workers import WorkerRegistry
from compute.topics import Topics, encode, job_event_payload
from compute.worker.announce import Announcer
from compute.worker.results import ResultOutbox
from tests.helpers import signed


class FakeBus:
    def __init__(self, connected: bool = True) -> None:
        self.is_connected = connected
        self.sent: list[tuple[str, bytes, bool]] = []
        self.subs: list[tuple[str, MessageHandler]] = []
        self.hooks: list[Callable[[], Awaitable[None] | None]] = []

    @property
    def connected(self) -> bool:
        return self.is_connected

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        if not self.is_connected:
            return False
        self.sent.append((topic, payload.encode() if isinstance(payload, str) else payload, retain))
        return True

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        self.subs.append((topic_filter, handler))

    def on_connect(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        self.hooks.append(hook)

    def deliver(self, topic: str, payload: bytes, retained: bool = False) -> None:
        for topic_filter, handler in self.subs:
            if topic_matches(topic_filter, topic):
                handler(topic, payload, retained)

    def on(self, topic: str) -> list[Any]:
        return [json.loads(p) if p else p for t, p, _ in self.sent if t == topic]


T = Topics()


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


def info(worker_id: str, tasks: list[str], idle: bool, session: str = "s") -> bytes:
    return encode({"worker_id": worker_id, "session": session, "state": "online", "tasks": tasks,
                   "idle": idle, "timestamp": 1})


def will(worker_id: str, session: str = "s") -> bytes:
    return encode({"worker_id": worker_id, "session": session, "state": "offline", "timestamp": 1})


def test_registry_counts_live_workers_and_idle_per_task(bus: FakeBus) -> None:
    lost: list[tuple[str, str | None]] = []
    reg = WorkerRegistry(bus, T, on_worker_lost=lambda w, s: lost.append((w, s)))
    bus.deliver(T.worker_info("a"), info("a", ["image_resize", "image_conversion"], True), retained=True)
    bus.deliver(T.worker_info("b"), info("b", ["image_resize"], False))
    assert reg.capabilities() == {"num_workers": 2,
                                  "capabilities": {"image_resize": 1, "image_conversion": 1}}
    bus.deliver(T.worker_info("a"), will("a"))
    assert reg.capabilities() == {"num_workers": 1, "capabilities": {"image_resize": 0}}
    # An offline worker's CL Server capability is cleared for it (its Will could not), and its
    # session's jobs are handed to the rescue.
    assert (T.legacy_worker("a"), b"", True) in bus.sent
    assert lost == [("a", "s")]


def test_registry_ignores_an_older_sessions_will(bus: FakeBus) -> None:
    lost: list[tuple[str, str | None]] = []
    reg = WorkerRegistry(bus, T, on_worker_lost=lambda w, s: lost.append((w, s)))
    bus.deliver(T.worker_info("a"), info("a", ["image_resize"], True, session="new"))
    bus.deliver(T.worker_info("a"), will("a", session="old"))
    assert reg.capabilities()["num_workers"] == 1
    assert (T.legacy_worker("a"), b"", True) not in bus.sent
    assert lost == [("a", "old")]  # only the old session's jobs are rescued


def test_registry_drops_malformed_messages(bus: FakeBus) -> None:
    reg = WorkerRegistry(bus, T)
    bus.deliver(T.worker_info("a"), b"{not json")
    bus.deliver(T.worker_info("b"), encode({"worker_id": "b", "session": "s", "state": "maybe"}))
    bus.deliver(T.worker_info("c"), info("someone-else", ["image_resize"], True))
    assert reg.dropped == 3
    assert reg.capabilities() == {"num_workers": 0, "capabilities": {}}
    bus.deliver(T.worker_info("a"), info("a", ["image_resize"], True))
    bus.deliver(T.worker_info("a"), b"")  # retained info cleared
    assert reg.capabilities()["num_workers"] == 0


def test_dispatcher_publishes_hint_and_legacy_queued(engine: Any, bus: FakeBus) -> None:
    changes: list[int] = []
    dispatcher = Dispatcher(bus, T, lambda: changes.append(1))
    repo = JobRepository(engine, on_job_added=dispatcher.job_added)
    repo.add_job(Job(job_id="j1", task_type="image_resize", params={}), priority=8)
    [hint] = bus.on(T.job_available("image_resize"))
    assert hint["job_id"] == "j1" and hint["priority"] == 8
    [legacy] = bus.on(T.legacy_events)
    assert legacy["job_id"] == "j1" and legacy["event_type"] == "queued" and legacy["progress"] == 0
    assert changes == [1] and dispatcher.unsent == 0


def test_dispatcher_counts_unsent_hints(engine: Any) -> None:
    dispatcher = Dispatcher(FakeBus(connected=False), T, lambda: None)
    JobRepository(engine, on_job_added=dispatcher.job_added).add_job(
        Job(job_id="j1", task_type="image_resize", params={}))
    assert dispatcher.unsent == 1


def test_queue_reporter_publishes_retained_counts(repo: JobRepository, bus: FakeBus) -> None:
    reporter = QueueReporter(bus, T, repo)
    repo.add_job(Job(job_id="a", task_type="image_resize", params={}))
    repo.add_job(Job(job_id="b", task_type="image_resize", params={}))
    reporter.publish_now()
    [state] = bus.on(T.queue("image_resize"))
    assert (state["queued"], state["running"]) == (2, 0) and state["oldest_queued_age_ms"] >= 0
    assert all(retain for t, _, retain in bus.sent if t == T.queue("image_resize"))
    for _ in range(2):
        repo.claim_next(["image_resize"], "w")
    reporter.publish_now()
    repo.delete_job("a")
    repo.delete_job("b")
    reporter.publish_now()
    reporter.publish_now()  # unchanged and empty: not published again
    states = [(s["queued"], s["running"]) for s in bus.on(T.queue("image_resize"))]
    assert states == [(2, 0), (0, 2), (0, 0)]


def make_ingest(repo: JobRepository, bus: FakeBus) -> tuple[EventIngest, list[str]]:
    requeued: list[str] = []
    transitions = JobTransitions(repo.engine, repo.policies)
    ingest = EventIngest(transitions, bus, T, lambda: None, lambda task, job, at: requeued.append(job))
    return ingest, requeued


def claim_one(repo: JobRepository, job_id: str = "j1") -> JobRecord:
    repo.add_job(Job(job_id=job_id, task_type="image_resize", params={}))
    job = repo.claim_next(["image_resize"], "w1", "s1")
    assert job is not None
    return job


def test_ingest_persists_confirms_and_republishes(repo: JobRepository, bus: FakeBus) -> None:
    ingest, _ = make_ingest(repo, bus)
    job = claim_one(repo)
    for seq, (kind, progress) in enumerate(
        ((EventType.STARTED, 0), (EventType.PROGRESS, 40), (EventType.COMPLETED, 100)), start=1
    ):
        event = signed(job, kind, seq, progress=progress, task_output={"ok": 1} if progress == 100 else None)
        bus.deliver(T.job_event("image_resize", "j1"), encode(job_event_payload(event, "image_resize")))
    bus.deliver(T.job_event("image_resize", "j1"), b"garbage")
    bus.deliver(T.job_event("image_resize", "other"), encode(job_event_payload(
        signed(job, EventType.FAILED, 9, error="x"), "image_resize")))  # topic/payload differ
    assert ingest.rejected["malformed"] == 2 and ingest.queue.qsize() == 3
    ingest.persist([ingest.queue.get_nowait() for _ in range(3)])
    stored = repo.get("j1")
    assert stored is not None and stored.status == "completed" and stored.task_output == {"ok": 1}
    assert [c["status"] for c in bus.on(T.worker_confirm("w1"))] == ["completed"]
    legacy = bus.on(T.legacy_events)
    assert [m["event_type"] for m in legacy] == ["processing", "processing", "completed"]
    assert [m["progress"] for m in legacy] == [0, 40, 100]


def test_ingest_drops_forged_events_and_counts_them(repo: JobRepository, bus: FakeBus) -> None:
    ingest, _ = make_ingest(repo, bus)
    job = claim_one(repo)
    forged = signed(job, EventType.COMPLETED, 1, token="0" * 32, task_output={"forged": True})
    ingest.persist([forged])
    assert ingest.rejected["bad signature"] == 1 and bus.on(T.worker_confirm("w1")) == []
    assert repo.get("j1") == job


def test_ingest_confirms_a_duplicate_terminal_event(repo: JobRepository, bus: FakeBus) -> None:
    """A worker re-sends until confirmed: a duplicate must be confirmed too, or it resends forever."""
    ingest, _ = make_ingest(repo, bus)
    job = claim_one(repo)
    done = signed(job, EventType.COMPLETED, 1, progress=100, task_output={})
    ingest.persist([done])
    ingest.persist([done])
    assert len(bus.on(T.worker_confirm("w1"))) == 2
    assert len([m for m in bus.on(T.legacy_events) if m["event_type"] == "completed"]) == 1


def test_ingest_requeues_a_retryable_failure(repo: JobRepository, bus: FakeBus) -> None:
    ingest, requeued = make_ingest(repo, bus)
    job = claim_one(repo)
    ingest.persist([signed(job, EventType.FAILED, 1, error="crash", retryable=True)])
    assert requeued == ["j1"]
    assert [c["status"] for c in bus.on(T.worker_confirm("w1"))] == ["queued"]
    assert bus.on(T.legacy_events)[-1]["event_type"] == "queued"


def make_outbox(repo: JobRepository, bus: FakeBus) -> ResultOutbox:
    return ResultOutbox(bus, T, JobTransitions(repo.engine, repo.policies), "w1")


def test_outbox_keeps_results_until_confirmed(repo: JobRepository, bus: FakeBus) -> None:
    outbox = make_outbox(repo, bus)
    job = claim_one(repo)
    outbox.send(signed(job, EventType.COMPLETED, 1, progress=100, task_output={}), "image_resize",
                job.lease_token or "")
    assert list(outbox.pending) == ["j1"] and len(bus.on(T.job_event("image_resize", "j1"))) == 1
    # Until confirmed, the claim stays the worker's: its lease is renewed with the running job's.
    assert outbox.held_leases() == [("j1", job.lease_token)]
    outbox.resend_all()
    assert len(bus.on(T.job_event("image_resize", "j1"))) == 2
    bus.deliver(T.worker_confirm("w1"), b"junk")
    assert list(outbox.pending) == ["j1"]
    bus.deliver(T.worker_confirm("w1"), encode({"job_id": "j1", "status": "completed", "timestamp": 1}))
    assert outbox.pending == {} and outbox.written_directly == 0 and outbox.held_leases() == []
    assert repo.get("j1").status == "processing"  # type: ignore[union-attr]  # the server writes it


def test_outbox_writes_the_result_itself_when_the_broker_is_gone(repo: JobRepository) -> None:
    bus = FakeBus()
    outbox = make_outbox(repo, bus)
    j1, j2 = claim_one(repo, "j1"), claim_one(repo, "j2")
    outbox.send(signed(j1, EventType.COMPLETED, 1, progress=100, task_output={"a": 1}), "image_resize",
                j1.lease_token or "")
    bus.is_connected = False
    outbox.send(signed(j2, EventType.FAILED, 1, error="bad"), "image_resize", j2.lease_token or "")
    assert repo.get("j2").status == "failed"  # type: ignore[union-attr]  # at once, nobody to send to
    outbox.check()  # the broker is down: pending results go to the database
    assert repo.get("j1").status == "completed" and outbox.pending == {}  # type: ignore[union-attr]
    assert outbox.written_directly == 2


def test_outbox_flush_writes_unconfirmed_results(repo: JobRepository, bus: FakeBus) -> None:
    outbox = make_outbox(repo, bus)
    job = claim_one(repo)
    outbox.send(signed(job, EventType.COMPLETED, 1, progress=100, task_output={}), "image_resize",
                job.lease_token or "")
    outbox.flush()
    assert repo.get("j1").status == "completed"  # type: ignore[union-attr]


def test_announcer_online_info_and_goodbye(bus: FakeBus) -> None:
    presence = FakeBus()
    ann = Announcer(bus, presence, T, "w1", ["image_resize"], "sess1")
    ann.publish_online()
    ann.publish_info()
    ann.set_idle(False)
    assert (T.worker_status("w1"), b"online", True) in presence.sent
    legacy = bus.on(T.legacy_worker("w1"))
    assert legacy[0]["capabilities"] == ["image_resize"] and legacy[0]["id"] == legacy[0]["worker_id"] == "w1"
    assert [m["idle_count"] for m in legacy] == [1, 0]
    assert [m["idle"] for m in bus.on(T.worker_info("w1"))] == [True, False]
    ann.publish_offline()
    assert bus.sent[-2:] == [(T.legacy_worker("w1"), b"", True), (T.worker_info("w1"), b"", True)]
    assert presence.sent[-1] == (T.worker_status("w1"), b"offline", True)


def test_announcer_repairs_what_an_older_sessions_will_overwrote(bus: FakeBus) -> None:
    presence = FakeBus()
    ann = Announcer(bus, presence, T, "w1", ["image_resize"], "new")
    presence.deliver(T.worker_status("w1"), b"offline", retained=True)
    assert presence.sent[-1] == (T.worker_status("w1"), b"online", True)
    presence.deliver(T.worker_info("w1"), will("w1", session="old"))
    assert bus.on(T.worker_info("w1"))[-1]["session"] == "new"
    presence.deliver(T.legacy_worker("w1"), b"")
    assert bus.on(T.legacy_worker("w1"))[-1]["worker_id"] == "w1"
    sent = len(bus.sent)
    presence.deliver(T.worker_info("w1"), info("w1", ["image_resize"], True, session="new"))
    assert len(bus.sent) == sent  # its own message: nothing to repair
    ann.publish_offline()
