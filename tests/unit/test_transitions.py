"""Claims, signed events, retries, rescue and cancellation on a real SQLite database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from cl_ml_tools import Job

from compute import observers
from compute.config import load_settings
from compute.db.repository import JobRecord, JobRepository
from compute.db.rules import Outcome, Verdict, renewal_interval, stall_grace
from compute.db.transitions import Cancelled, JobTransitions
from compute.jobs import EventType, JobStatus, now_ms
from compute.policies import Policies, TaskPolicy
from compute_bench.harness import wait_until
from tests.support.clocks import shifted_clock
from tests.support.events import signed

POLICY = TaskPolicy(max_retries=1, timeout=0, backoff_base=0.0, backoff_max=0.0)


@pytest.fixture
def stores(engine: Any) -> tuple[JobRepository, JobTransitions]:
    """Over SQLite, and PostgreSQL when it answers (the `engine` fixture)."""
    policies = Policies(POLICY)
    return JobRepository(engine, policies=policies), JobTransitions(engine, policies)


def submit(repo: JobRepository, job_id: str = "job-1") -> str:
    return repo.add_job(Job(job_id=job_id, task_type="noop", params={}))


def claim(repo: JobRepository, worker: str = "w1", session: str = "s1") -> JobRecord:
    job = repo.claim_next(["noop"], worker, session, lease_ms=60_000)
    assert job is not None
    return job


event = signed


Stores = tuple[JobRepository, JobTransitions]


def test_claim_records_attempt_session_and_a_fresh_lease(stores: Stores) -> None:
    repo, _ = stores
    submit(repo)
    job = claim(repo)
    assert (job.attempt, job.worker_session, job.status) == (1, "s1", JobStatus.PROCESSING.value)
    # A 128-bit random part drawn for the claim statement, then the row's id: never shared.
    assert job.lease_token and len(job.lease_token.split(".")[0]) == 32
    assert job.lease_expires_at is not None and job.lease_expires_at > now_ms()


def test_signed_events_apply_in_order(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    outcomes = transitions.apply_events(
        [
            event(job, EventType.STARTED, 1),
            event(job, EventType.PROGRESS, 2, progress=40),
            event(job, EventType.COMPLETED, 3, progress=100, task_output={"ok": 1}),
        ]
    )
    assert [o.verdict for o in outcomes] == [Verdict.APPLIED] * 3
    stored = repo.get(job.job_id)
    assert stored is not None
    assert (stored.status, stored.progress, stored.task_output) == ("completed", 100, {"ok": 1})


def test_a_released_claim_is_queued_again_at_once_and_costs_no_attempt(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    [_, released] = transitions.apply_events(
        [event(job, EventType.STARTED, 1), event(job, EventType.RELEASED, 2)]
    )
    assert released.verdict is Verdict.APPLIED and released.status == JobStatus.QUEUED.value
    assert released.change is not None and released.change.wake_at == 0  # hinted at once
    row = repo.get(job.job_id)
    assert row is not None
    assert (row.status, row.worker_id, row.lease_expires_at, row.attempt_errors) == ("queued", None, None, ())
    assert row.max_retries == POLICY.max_retries + 1  # the handed-back attempt does not count
    # Sent again (no confirmation came): confirmed again, nothing changes.
    [again] = transitions.apply_events([event(job, EventType.RELEASED, 2)])
    assert again.verdict is Verdict.DUPLICATE and again.lease_token == job.lease_token
    # The next claim is the next attempt, with every retry still ahead of it.
    nxt = claim(repo, worker="w2")
    crash = event(nxt, EventType.FAILED, 1, error="crash", retryable=True)
    [failed] = transitions.apply_events([crash])
    assert (nxt.attempt, failed.status) == (2, JobStatus.QUEUED.value)


def test_a_forged_release_changes_nothing(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    [outcome] = transitions.apply_events([replace(event(job, EventType.RELEASED, 1), sig="0" * 64)])
    assert outcome.verdict is Verdict.REJECTED
    row = repo.get(job.job_id)
    assert row is not None and row.status == JobStatus.PROCESSING.value


@pytest.mark.parametrize("tamper", ["forged", "wrong_key", "other_worker", "old_attempt", "edited"])
def test_forged_or_stale_events_change_nothing(stores: Stores, tamper: str) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    if tamper == "forged":
        bad = replace(event(job, EventType.COMPLETED, 1, progress=100), sig="0" * 64)
    elif tamper == "wrong_key":
        bad = event(job, EventType.COMPLETED, 1, progress=100, token="f" * 32)
    elif tamper == "other_worker":
        bad = event(job, EventType.COMPLETED, 1, progress=100, worker="intruder")
    elif tamper == "old_attempt":
        bad = event(replace(job, attempt=job.attempt + 1), EventType.COMPLETED, 1, progress=100)
    else:  # a valid signature over different content
        bad = replace(
            event(job, EventType.COMPLETED, 1, progress=100, task_output={"a": 1}), task_output={"a": 2}
        )
    [outcome] = transitions.apply_events([bad])
    assert outcome.verdict is Verdict.REJECTED
    assert repo.get(job.job_id) == job


def test_replayed_and_reordered_events_change_nothing(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    p2 = event(job, EventType.PROGRESS, 2, progress=20)
    p3 = event(job, EventType.PROGRESS, 3, progress=30)
    # Verified but already gone past (another server applied them, or they came late): seen,
    # not rejected, so a deployment of several servers logs no warning for each event.
    assert [o.verdict for o in transitions.apply_events([p3, p2, p3])] == [
        Verdict.APPLIED,
        Verdict.SEEN,
        Verdict.SEEN,
    ]
    stored = repo.get(job.job_id)
    assert stored is not None and stored.progress == 30
    transitions.apply_events([event(job, EventType.COMPLETED, 4, progress=100)])
    finished = repo.get(job.job_id)
    [late] = transitions.apply_events([event(job, EventType.PROGRESS, 5, progress=50)])
    assert late.verdict is Verdict.SEEN and repo.get(job.job_id) == finished


def test_a_requeued_attempts_failure_sent_again_is_confirmed_again(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    failed = event(job, EventType.FAILED, 1, error="boom", retryable=True)
    [first] = transitions.apply_events([failed])
    assert (first.verdict, first.status) == (Verdict.APPLIED, "queued")
    # The requeue cleared the worker; the same failure again (re-sent, or at a second server)
    # still verifies with the attempt's token: confirmed again, nothing changes.
    before = repo.get(job.job_id)
    [again] = transitions.apply_events([failed])
    assert (again.verdict, again.status, again.lease_token) == (Verdict.DUPLICATE, "queued", job.lease_token)
    assert repo.get(job.job_id) == before


def test_resent_result_is_confirmed_but_changes_nothing(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    done = event(job, EventType.COMPLETED, 1, progress=100, task_output={"n": 1})
    transitions.apply_events([done])
    before = repo.get(job.job_id)
    [again] = transitions.apply_events([done])
    assert (again.verdict, again.status) == (Verdict.DUPLICATE, "completed")
    assert repo.get(job.job_id) == before


def test_retryable_failure_requeues_then_fails_when_attempts_run_out(
    stores: Stores,
) -> None:
    repo, transitions = stores
    submit(repo)
    first = claim(repo)
    [o1] = transitions.apply_events([event(first, EventType.FAILED, 1, error="boom", retryable=True)])
    assert (o1.verdict, o1.status) == (Verdict.APPLIED, "queued")
    second = claim(repo, worker="w2")
    assert second.attempt == 2 and second.lease_token != first.lease_token
    # The first attempt's late events no longer count.
    [late] = transitions.apply_events([event(first, EventType.COMPLETED, 2, progress=100)])
    assert late.verdict is Verdict.REJECTED
    [o2] = transitions.apply_events([event(second, EventType.FAILED, 1, error="boom2", retryable=True)])
    assert o2.status == "failed"  # max_retries=1: two attempts in all
    stored = repo.get(first.job_id)
    assert stored is not None
    assert [e["error"] for e in stored.attempt_errors] == ["boom", "boom2"]
    assert "attempt 2 of 2" in (stored.error_message or "")


def test_events_for_unknown_or_unclaimed_jobs_change_nothing(
    stores: Stores,
) -> None:
    repo, transitions = stores
    submit(repo, "waiting")
    waiting = repo.get("waiting")
    assert waiting is not None
    ghost = replace(waiting, job_id="ghost")
    outcomes = transitions.apply_events(
        [
            event(waiting, EventType.COMPLETED, 1, token="a" * 32),
            event(ghost, EventType.COMPLETED, 1, token="a" * 32),
        ]
    )
    assert [o.verdict for o in outcomes] == [Verdict.REJECTED, Verdict.REJECTED]
    assert repo.get("waiting") == waiting


def test_plugin_reported_error_fails_at_once(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    [o] = transitions.apply_events([event(job, EventType.FAILED, 1, error="bad image")])
    assert o.status == "failed"


def test_backoff_delays_the_next_claim(engine: Any) -> None:
    policies = Policies(TaskPolicy(max_retries=3, backoff_base=30.0, backoff_max=60.0))
    repo, transitions = JobRepository(engine, policies=policies), JobTransitions(engine, policies)
    submit(repo)
    job = claim(repo)
    [o] = transitions.apply_events([event(job, EventType.FAILED, 1, error="x", retryable=True)])
    assert o.retry_at is not None and o.retry_at >= now_ms() + 14_000
    assert repo.claim_next(["noop"], "w1", "s1") is None


def test_rescue_only_touches_the_lost_session(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo, "old")
    old = claim(repo, session="s1")
    submit(repo, "new")
    new = claim(repo, session="s2")
    snapshot = transitions.session_leases("w1", "s1")
    assert snapshot == {"old": (old.lease_token, old.lease_expires_at)}
    rescued = transitions.rescue_stalled(snapshot, "worker w1 went offline")
    assert [(r.job_id, r.status) for r in rescued] == [("old", "queued")]
    assert repo.get(new.job_id) == new
    stored = repo.get(old.job_id)
    assert stored is not None and "went offline" in stored.attempt_errors[0]["error"]


def test_a_will_never_takes_a_claim_whose_lease_still_renews(stores: Stores) -> None:
    """The Will is on the bus, so anyone can replay it: only a lease that stopped moving counts."""
    repo, transitions = stores
    submit(repo, "alive")
    alive = claim(repo)
    submit(repo, "dead")
    claim(repo)
    snapshot = transitions.session_leases("w1", "s1")
    assert set(snapshot) == {"alive", "dead"}
    assert repo.extend_leases([("alive", alive.lease_token or "")], 120_000) == 1  # the worker renews
    rescued = transitions.rescue_stalled(snapshot, "worker w1 went offline")
    assert [r.job_id for r in rescued] == ["dead"]
    assert repo.get("alive").status == "processing"  # type: ignore[union-attr]
    assert transitions.rescue_stalled({}, "nothing") == []
    # A snapshot of an older claim never touches the new one (new token).
    again = claim(repo)
    assert again.job_id == "dead" and transitions.rescue_stalled(snapshot, "late") == []


def test_expired_lease_is_rescued_and_heartbeat_prevents_it(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo, "beating")
    beating = repo.claim_next(["noop"], "w1", "s1", lease_ms=-1)
    submit(repo, "silent")
    silent = repo.claim_next(["noop"], "w1", "s1", lease_ms=-1)
    assert beating is not None and silent is not None
    assert repo.extend_leases([(beating.job_id, beating.lease_token or "")], 60_000) == 1
    assert [r.job_id for r in transitions.rescue_expired()] == ["silent"]


#: How far a worker host's wall clock is off in the skew tests: more than a lease.
SKEW = 60.0


@pytest.mark.parametrize("skew", [-SKEW, SKEW], ids=["behind", "ahead"])
def test_a_worker_whose_clock_is_off_claims_renews_and_completes_unrescued(
    stores: Stores, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    repo, transitions = stores
    submit(repo)
    with shifted_clock(monkeypatch, skew):  # the worker's host
        job = repo.claim_next(["noop"], "w1", "s1", lease_ms=10_000)
        assert job is not None
        assert repo.renew_leases([(job.job_id, job.lease_token or "")], 10_000) == set()
        done = event(job, EventType.COMPLETED, 1, progress=100, task_output={"ok": 1})
    # The server's sweep, on a clock a minute away: a 10 s lease computed from the worker's
    # clock would have expired 50 s ago (behind).
    assert transitions.rescue_expired() == []
    renewed = repo.get(job.job_id)
    assert renewed is not None and renewed.status == "processing" and renewed.attempt == 1
    assert abs((renewed.lease_expires_at or 0) - (now_ms() + 10_000)) < 5_000
    [outcome] = transitions.apply_events([done])
    assert outcome.verdict is Verdict.APPLIED
    stored = repo.get(job.job_id)
    assert stored is not None and stored.status == "completed"
    # Stored times are the database's: the run never ends before it started.
    assert stored.started_at is not None and stored.completed_at is not None
    assert stored.started_at <= stored.completed_at < stored.started_at + 5_000


def test_a_dead_worker_whose_clock_is_ahead_is_rescued_when_its_lease_ends(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, transitions = stores
    submit(repo)
    with shifted_clock(monkeypatch, SKEW):
        job = repo.claim_next(["noop"], "w1", "s1", lease_ms=200)
    assert job is not None
    # Then it dies. An expiry from its clock would hold the job a minute longer than its lease.
    rescued = wait_until(transitions.rescue_expired, 30, "the lease sweep to rescue the job")
    assert [r.job_id for r in rescued] == [job.job_id]


def test_a_retry_backoff_runs_on_the_databases_clock(stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    with shifted_clock(monkeypatch, SKEW):  # a worker a minute ahead reports a retryable failure
        failed = event(job, EventType.FAILED, 1, error="crashed", retryable=True)
    [outcome] = transitions.apply_events([failed])
    assert outcome.status == JobStatus.QUEUED.value
    # No backoff in POLICY: claimable at once, not a minute later (the event's own timestamp).
    again = repo.claim_next(["noop"], "w2", "s2")
    assert again is not None and again.attempt == 2


def test_rescue_past_the_last_attempt_fails_with_a_reason(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    claim(repo)
    transitions.rescue_stalled(transitions.session_leases("w1", "s1"), "worker w1 went offline")
    claim(repo)
    [r] = transitions.rescue_stalled(transitions.session_leases("w1", "s1"), "worker w1 went offline")
    assert r.status == "failed"
    stored = repo.get(r.job_id)
    assert stored is not None and "went offline" in (stored.error_message or "")


def test_cancel_running_job_refuses_its_later_result(stores: Stores) -> None:
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    found = transitions.cancel(job.job_id)
    assert found is not None
    assert Cancelled(found.previous, found.worker_id, found.attempt, found.lease_token) == Cancelled(
        "processing", "w1", 1, job.lease_token
    )
    [o] = transitions.apply_events([event(job, EventType.COMPLETED, 1, progress=100)])
    assert (o.verdict, o.status) == (Verdict.DUPLICATE, "cancelled")
    stored = repo.get(job.job_id)
    assert stored is not None and stored.status == "cancelled"
    assert transitions.cancel("missing") is None


def test_policies_parse_per_task_overrides() -> None:
    policies = Policies.parse(TaskPolicy(), json.dumps({"slow": {"timeout": 5, "max_retries": 0}}))
    assert policies.for_task("slow").timeout == 5.0
    assert policies.for_task("slow").max_retries == 0
    assert policies.for_task("other") == TaskPolicy()
    base = TaskPolicy(backoff_base=1.0, backoff_max=4.0)
    assert all(500 <= base.backoff_ms(1) <= 1000 for _ in range(50))
    assert all(2000 <= base.backoff_ms(9) <= 4000 for _ in range(50))


def test_a_will_waits_for_two_renewals_and_at_most_two_thirds_of_the_lease() -> None:
    for lease in (0.3, 3.0, 10.0, 60.0):
        for renew in (0.1, 1.0, 30.0):
            interval = renewal_interval(lease, renew)
            assert stall_grace(lease, renew) == 2 * interval
            assert interval <= max(0.2, lease / 3)


def test_a_killed_workers_jobs_are_rescued_within_seconds_by_default() -> None:
    # Issue 20: kill -9 -> the job running elsewhere in at most 5 s; the Will arrives at once,
    # the rescue waits the grace, the hint and the next claim take milliseconds.
    settings = load_settings({})
    assert stall_grace(settings.lease_seconds, settings.lease_renew_seconds) <= 2.0


def test_applied_events_reach_the_observers_once_committed(stores: Stores) -> None:
    """What the benchmark's commit probe stamps (compute.observers.events_applied)."""
    repo, transitions = stores
    submit(repo)
    job = claim(repo)
    batches: list[list[tuple[str, Verdict, str | None]]] = []

    def committed(outcomes: Sequence[Outcome]) -> None:
        stored = repo.get(job.job_id)  # another connection: the transaction has committed
        batches.append([(o.event.job_id, o.verdict, stored.status if stored else None) for o in outcomes])

    observers.events_applied.append(committed)
    try:
        transitions.apply_events([event(job, EventType.COMPLETED, 1, progress=100, task_output={})])
    finally:
        observers.events_applied.remove(committed)
    assert batches == [[(job.job_id, Verdict.APPLIED, "completed")]]
