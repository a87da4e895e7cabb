"""Topic names and payload parsing: everything off the bus is checked before use."""

from __future__ import annotations

import json

import pytest

from compute.bus.interface import topic_matches
from compute.jobs import NEXT, OPEN, TERMINAL, EventType, JobEvent, JobStatus, may_move, now_ms
from compute.signing import (
    cancel_signature,
    confirmation_signature,
    info_signature,
    verify_cancel,
    verify_confirmation,
    verify_info,
)
from compute.topics import (
    MAX_INFO_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_TASKS,
    MalformedMessage,
    Topics,
    check_segment,
    encode,
    job_event_payload,
    parse_cancel,
    parse_confirmation,
    parse_job_event,
    parse_worker_info,
)

GOOD_EVENT = {
    "job_id": "j1",
    "worker_id": "w1",
    "event": "progress",
    "progress": 40,
    "timestamp": 1,
    "attempt": 2,
    "seq": 3,
    "sig": "ab" * 32,
}
GOOD_INFO = {"worker_id": "w1", "session": "s", "tasks": ["image_resize"], "idle": True, "timestamp": 5}


def test_default_topic_names_match_cl_server() -> None:
    t = Topics()
    assert t.job_available("image_resize") == "compute/jobs/available/image_resize"
    assert t.job_event("image_resize", "j1") == "compute/events/image_resize/j1"
    assert t.all_job_events == "compute/events/+/+"
    assert t.worker_status("w1") == "compute/workers/w1/status"
    assert t.worker_info("w1") == "compute/workers/w1/info"
    assert t.worker_confirm("w1") == "compute/workers/w1/confirm"
    assert t.queue("image_resize") == "compute/queues/image_resize"
    assert t.legacy_events == "inference/events"
    assert t.legacy_worker("w1") == "inference/workers/w1"


def test_job_states() -> None:
    # CL Server's SDK waits for completed/failed: a failed job must never read "error".
    assert {s.value for s in JobStatus} >= {"queued", "processing", "completed", "failed"}
    assert JobStatus.QUEUED not in TERMINAL and JobStatus.PROCESSING not in TERMINAL
    assert {JobStatus.COMPLETED, JobStatus.FAILED} <= TERMINAL
    assert 1_600_000_000_000 < now_ms() < 10_000_000_000_000  # milliseconds, not seconds


def test_which_status_may_follow_which() -> None:
    assert set(NEXT) == set(JobStatus) and OPEN == ("queued", "processing")
    assert {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED} == TERMINAL
    assert may_move("queued", JobStatus.PROCESSING) and not may_move("queued", JobStatus.COMPLETED)
    assert may_move("processing", JobStatus.QUEUED)  # a retry, or a lost worker's job rescued
    assert all(may_move(s, JobStatus.CANCELLED) for s in OPEN)
    # Finished is final, except that an operator may queue a failed or cancelled job again.
    assert {to for s in TERMINAL for to in NEXT[s]} == {JobStatus.QUEUED}
    assert not NEXT[JobStatus.COMPLETED] and may_move("failed", JobStatus.QUEUED)
    assert not may_move("error", JobStatus.QUEUED)  # not a status of ours


def test_worker_of_reads_only_worker_topics_under_the_root() -> None:
    t = Topics(root="a/compute")
    assert t.worker_of("a/compute/workers/w-1/status") == "w-1"
    assert t.worker_of("a/compute/workers/w-1/info") == "w-1"
    assert t.worker_of("b/compute/workers/w-1/status") is None
    assert t.worker_of("a/compute/queues/w-1/status") is None
    assert t.worker_of("a/compute/workers/w-1") is None


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "a#", "has space", "x" * 129])
def test_check_segment_refuses_topic_breaking_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        check_segment(bad, "worker id")


def test_check_segment_accepts_normal_ids() -> None:
    assert check_segment("worker-host_1.a:b@c", "worker id") == "worker-host_1.a:b@c"


def test_job_event_round_trips() -> None:
    ev = JobEvent("j1", "w1", EventType.COMPLETED, 100, {"files": ["x"]}, None, 123)
    assert parse_job_event(encode(job_event_payload(ev, "image_resize"))) == ev


def test_parse_job_event_reads_fields() -> None:
    ev = parse_job_event(json.dumps(GOOD_EVENT).encode())
    assert (ev.job_id, ev.worker_id, ev.event, ev.progress, ev.timestamp, ev.attempt, ev.seq) == (
        "j1",
        "w1",
        EventType.PROGRESS,
        40,
        1,
        2,
        3,
    )
    assert ev.sig == "ab" * 32 and ev.retryable is False


def _with(**changes: object) -> bytes:
    data = {**GOOD_EVENT, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b"null",
        _with(event="exploded"),
        _with(event=...),
        _with(progress=101),
        _with(progress=-1),
        _with(progress=True),
        _with(progress="50"),
        _with(job_id=...),
        _with(job_id=7),
        _with(worker_id=None),
        _with(timestamp=...),
        _with(timestamp=True),
        _with(timestamp="1"),
        _with(task_output=[1]),
        _with(error=3),
        _with(attempt=...),
        _with(attempt="1"),
        _with(seq=...),
        _with(seq=1.5),
        _with(sig=...),
        _with(sig=7),
        _with(retryable="yes"),
        b"{" + b" " * MAX_PAYLOAD_BYTES + b"}",
    ],
    ids=lambda raw: raw[:40].decode("utf-8", "replace"),
)
def test_malformed_job_events_raise(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_job_event(raw)


def test_parse_worker_info() -> None:
    info = parse_worker_info(json.dumps(GOOD_INFO).encode())
    assert info["tasks"] == ["image_resize"] and info["idle"] is True and info["pid"] == 0
    assert info["state"] == "online"
    will = parse_worker_info(encode({"worker_id": "w1", "session": "s", "state": "offline", "timestamp": 1}))
    assert (will["state"], will["tasks"], will["idle"]) == ("offline", [], False)


@pytest.mark.parametrize(
    "changes",
    [
        {"tasks": "image_resize"},
        {"tasks": [1]},
        {"idle": "yes"},
        {"worker_id": None},
        {"timestamp": 1.5},
        {"state": "gone"},
        {"session": None},
        {"session": "a/b"},
        {"tasks": ["bad/task"]},
        {"tasks": [f"t{i}" for i in range(MAX_TASKS + 1)]},
        {"hostname": "x" * MAX_INFO_BYTES},
    ],
)
def test_malformed_worker_info_raises(changes: dict[str, object]) -> None:
    with pytest.raises(MalformedMessage):
        parse_worker_info(json.dumps({**GOOD_INFO, **changes}).encode())


def test_worker_info_signature_binds_every_field() -> None:
    info = parse_worker_info(json.dumps(GOOD_INFO).encode())
    info["sig"] = info_signature("secret", info)
    assert verify_info("secret", info)
    assert not verify_info("other secret", info) and not verify_info(None, info)
    for field, value in (
        ("idle", False),
        ("tasks", ["image_resize", "x"]),
        ("session", "t"),
        ("state", "offline"),
        ("timestamp", 6),
    ):
        assert not verify_info("secret", {**info, field: value}), field
    # The Will is signed over the defaults the parser fills in for its missing fields.
    will = parse_worker_info(encode({"worker_id": "w1", "session": "s", "state": "offline", "timestamp": 1}))
    will["sig"] = info_signature("secret", will)
    raw = encode({"worker_id": "w1", "session": "s", "state": "offline", "timestamp": 1, "sig": will["sig"]})
    assert verify_info("secret", parse_worker_info(raw))


def test_parse_confirmation_and_cancel() -> None:
    raw = encode({"job_id": "j", "attempt": 2, "status": "completed", "timestamp": 3, "sig": "ab"})
    assert parse_confirmation(raw) == {
        "job_id": "j",
        "attempt": 2,
        "status": "completed",
        "timestamp": 3,
        "sig": "ab",
    }
    for bad in (
        b'{"job_id": "j"}',
        encode({"job_id": "j", "status": "completed", "timestamp": 3}),
        encode({"job_id": "j", "attempt": 2, "status": "completed", "timestamp": 3}),
    ):
        with pytest.raises(MalformedMessage):
            parse_confirmation(bad)
    assert parse_cancel(encode({"job_id": "j", "attempt": 1, "timestamp": 3, "sig": "cd"}))["sig"] == "cd"
    with pytest.raises(MalformedMessage):
        parse_cancel(encode({"job_id": "j", "timestamp": 3}))  # what anyone could forge before


def test_confirmation_and_cancel_signatures_bind_claim_and_kind() -> None:
    sig = confirmation_signature("token", "j", 2, "completed", 3)
    assert verify_confirmation("token", "j", 2, "completed", 3, sig)
    wrong: list[tuple[str | None, str, int, str, int]] = [
        ("other", "j", 2, "completed", 3),
        ("token", "k", 2, "completed", 3),
        ("token", "j", 1, "completed", 3),
        ("token", "j", 2, "failed", 3),
        ("token", "j", 2, "completed", 4),
        (None, "j", 2, "completed", 3),
    ]
    for args in wrong:
        assert not verify_confirmation(*args, sig)
    assert not verify_confirmation("token", "j", 2, "completed", 3, "")
    cancel = cancel_signature("token", "j", 2, 3)
    assert verify_cancel("token", "j", 2, 3, cancel)
    assert not verify_cancel("token", "j", 3, 3, cancel) and not verify_cancel("other", "j", 2, 3, cancel)
    # A signature of one kind never passes for another.
    assert not verify_cancel("token", "j", 2, 3, sig) and cancel != sig


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/b/c", "a/b/d", False),
        ("a/+/c", "a/x/c", True),
        ("a/+/c", "a/x/y/c", False),
        ("a/+/+", "a/x/y", True),
        ("a/+/+", "a/x", False),
        ("a/#", "a/x/y/z", True),
        ("a/#", "b/x", False),
        ("#", "anything/at/all", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
