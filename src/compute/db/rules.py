"""How a job moves on after its claim, decided in Python on what a transition read: no SQL here.

`transitions.py` reads the affected rows as `Claim`s under the write lock and writes what these
rules decide. The rules:

* an event counts only if its HMAC verifies with the job's current lease token, its attempt
  is the current attempt, and its sequence number is above the last accepted one;
* progress only rises; a terminal state is final;
* a retryable failure (exception, crash, timeout) or a lost worker requeues the job with
  backoff while attempts remain (attempts = max_retries + 1); past that the job fails;
* a lost worker's claim is rescued only when its lease has stopped renewing: expired, or (after
  the worker's verified Last Will) unchanged for `stall_grace`. A Will alone never takes a job
  from a worker that still renews it;
* a worker that stops hands its running claims back (`released`): queued again at once, and the
  attempt does not count against the job's retries;
* every failed attempt's error is kept in `attempt_errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from compute.db.tables import dumps, loads
from compute.jobs import (
    FINAL_EVENTS,
    Cause,
    EventType,
    JobChange,
    JobEvent,
    JobStatus,
    bounded_error,
    result_too_large,
)
from compute.policies import TaskPolicy
from compute.signing import verify


class Verdict(StrEnum):
    APPLIED = "applied"  # the event moved the job
    DUPLICATE = "duplicate"  # a terminal event for a job already finished: confirm again
    #: A verified event the job already went past: the same event again (re-sent, or received
    #: by every server of a deployment and applied by another first), or an older one arriving
    #: late. Nothing to change, nothing to report.
    SEEN = "seen"
    REJECTED = "rejected"  # forged, stale or unknown: dropped


@dataclass(frozen=True)
class Outcome:
    """What became of one worker event."""

    event: JobEvent
    verdict: Verdict
    #: The job's status after this event (None for rejected events of unknown jobs).
    status: str | None = None
    reason: str = ""
    task_type: str = ""
    #: The claim's lease token, for signing the confirmation (verified events only).
    lease_token: str | None = None
    #: What the event changed (applied events only).
    change: JobChange | None = None

    @property
    def retry_at(self) -> int | None:
        """For a requeued job: when it may run again (ms)."""
        return None if self.change is None else self.change.wake_at


#: A claim as the server saw it: (lease token, lease expiry ms), per job id.
LeaseSnapshot = dict[str, tuple[str, int]]


def renewal_interval(lease_seconds: float, renew_seconds: float) -> float:
    """How often a worker renews its leases: every `renew_seconds` (JOB_LEASE_RENEW_SECONDS),
    at least three times per lease, at most five times a second."""
    return max(0.2, min(renew_seconds, lease_seconds / 3))


def stall_grace(lease_seconds: float, renew_seconds: float) -> float:
    """How long a lease must stay unrenewed, after a Will, before its job is rescued.

    Two renewal intervals: a live worker renews within one, so by then it has renewed at least
    once even when that renewal came late by up to a whole interval (a busy machine, a slow
    write); a dead worker renews nothing. With the default 1 s renewals, a killed worker's
    claims are rescued 2 s after its Will.
    """
    return renewal_interval(lease_seconds, renew_seconds) * 2


@dataclass(frozen=True)
class Claim:
    """What a transition reads of a job's row under the write lock (fields named as columns).

    The claim itself (attempt, lease token, worker) is what the UPDATE is guarded by and never
    changes within a transaction; `updated` carries status, progress, sequence and errors
    forward from one event of a batch to the next.
    """

    job_id: str
    task_type: str
    status: str
    progress: int
    attempt: int
    max_retries: int
    lease_token: str | None
    event_seq: int
    attempt_errors: str | None  # JSON text, as stored
    worker_id: str | None
    priority: int
    created_at: int
    started_at: int | None

    def updated(self, values: Mapping[str, Any]) -> Claim:
        """The job as the next event of the batch sees it, once `values` (column -> value) apply."""
        return replace(self, **{k: v for k, v in values.items() if k in _EVENT_STATE})


#: What events change that later events of the same batch check.
_EVENT_STATE = frozenset({"status", "progress", "event_seq", "attempt_errors"})


def decide(
    ev: JobEvent, claim: Claim | None, policy: TaskPolicy, now: int, max_result_bytes: int | None = None
) -> tuple[Outcome, dict[str, Any]]:
    """The event's outcome, and the columns it changes (none unless applied).

    A result over `max_result_bytes` is not stored: the job fails with an error that says so
    (the event is applied, so its worker gets a confirmation and stops sending it)."""
    if claim is None:
        return Outcome(ev, Verdict.REJECTED, reason="unknown job"), {}
    status, task_type = claim.status, claim.task_type
    if not verify(claim.lease_token, ev):
        return Outcome(ev, Verdict.REJECTED, status, "bad signature", task_type), {}
    # A claim queued again (a retryable failure, a rescue, a release) has no worker any more but
    # keeps its lease token until the next claim: the signature still proves the sender held it,
    # so a re-sent final event of that claim is confirmed again below.
    if ev.attempt != claim.attempt or claim.worker_id not in (None, ev.worker_id):
        return Outcome(ev, Verdict.REJECTED, status, "not the current claim", task_type), {}
    terminal_event = ev.event in FINAL_EVENTS
    if status != JobStatus.PROCESSING.value:
        # Already finished (or requeued) under this claim: a re-sent result is confirmed again;
        # anything else of it was seen already (re-sent, or applied by another server first).
        verdict = Verdict.DUPLICATE if terminal_event else Verdict.SEEN
        return Outcome(
            ev, verdict, status, "job no longer running", task_type, lease_token=claim.lease_token
        ), {}
    if ev.seq <= claim.event_seq:
        return Outcome(ev, Verdict.SEEN, status, "already applied", task_type), {}

    # Stored times are the database's (`now`), never the event's `timestamp`: that is the
    # worker's clock, which may be seconds off the one that set `started_at` and that the claim
    # compares a retry's `next_attempt_at` with.
    values: dict[str, Any] = {"event_seq": ev.seq, "updated_at": now}
    retry_at = None
    if ev.event is EventType.PROGRESS and ev.progress > claim.progress:
        values["progress"] = ev.progress
    elif ev.event is EventType.COMPLETED and (refused := result_too_large(ev.task_output, max_result_bytes)):
        ev = replace(ev, event=EventType.FAILED, task_output=None, error=refused, retryable=False)
        failed, retry_at = failed_attempt(claim, refused, False, now, policy)
        values.update(failed)
    elif ev.event is EventType.COMPLETED:
        values.update(
            status=JobStatus.COMPLETED.value,
            progress=100,
            completed_at=now,
            error_message=None,
            task_output=dumps(ev.task_output),
        )
    elif ev.event is EventType.FAILED:
        failed, retry_at = failed_attempt(claim, ev.error or "unknown error", ev.retryable, now, policy)
        values.update(failed)
    elif ev.event is EventType.RELEASED:
        values.update(released(claim))
        retry_at = 0
    after = values.get("status", status)
    change = JobChange(
        ev.job_id,
        after,
        progress=100 if ev.event is EventType.COMPLETED else ev.progress,
        timestamp=now,
        task_type=task_type,
        cause=Cause(ev.event.value),
        priority=claim.priority,
        wake_at=retry_at,
        attempt=ev.attempt,
        created_at=claim.created_at,
        started_at=claim.started_at,
    )
    return Outcome(ev, Verdict.APPLIED, after, "", task_type, claim.lease_token, change), values


def released(claim: Claim) -> dict[str, Any]:
    """A claim its worker handed back unfinished (it was stopping): queued again, ready at once.

    The attempt keeps its number (events and cancels are bound to it), but it does not count
    against the job's retries: an operator stopping a worker is not the job failing.
    """
    return {
        "status": JobStatus.QUEUED.value,
        "next_attempt_at": None,
        "worker_id": None,
        "lease_expires_at": None,
        "progress": 0,
        "max_retries": claim.max_retries + 1,
    }


def failed_attempt(
    claim: Claim, error: str, retryable: bool, now: int, policy: TaskPolicy
) -> tuple[dict[str, Any], int | None]:
    """A failed attempt's columns: requeued with backoff while attempts remain, else failed.

    Returns them and, when requeued, when the job may run again (ms).
    """
    error = bounded_error(error)
    errors = [*(loads(claim.attempt_errors) or []), {"attempt": claim.attempt, "error": error, "at": now}]
    values: dict[str, Any] = {"attempt_errors": dumps(errors)}
    retry = (retryable or policy.retry_plugin_errors) and claim.attempt <= claim.max_retries
    if retry:
        retry_at = now + policy.backoff_ms(claim.attempt)
        values.update(
            status=JobStatus.QUEUED.value,
            next_attempt_at=retry_at,
            worker_id=None,
            lease_expires_at=None,
            error_message=error,
            progress=0,
        )
        return values, retry_at
    values.update(
        status=JobStatus.FAILED.value,
        completed_at=now,
        error_message=error
        if claim.attempt <= 1
        else f"{error} (attempt {claim.attempt} of {claim.max_retries + 1})",
    )
    return values, None
