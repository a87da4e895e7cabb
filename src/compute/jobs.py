"""The job vocabulary, no I/O: statuses, which status may follow which, worker events, what a
write changed (`JobChange`), time.

`NEXT` is the state machine: the repository's claim moves queued -> processing; transitions.py
moves a running job on by its worker's events (completed, failed, or queued again for a retry),
rescues a lost worker's claim (queued or failed), cancels, and on an operator's retry queues a
failed or cancelled job again. Nothing else moves a finished (`TERMINAL`) job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class JobStatus(StrEnum):
    """Values of `jobs.status`.

    A failed job is `failed`, not cl_ml_tools' `error`: the CL Server SDK waits for
    `completed` or `failed` and would wait forever on `error`.
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


def sdk_status(status: str) -> str:
    """The status CL Server's clients see: `cancelled` reads as `failed`.

    The SDK waits (by polling and on `inference/events`) until `completed` or `failed`; a
    cancelled job must release it. GET /jobs/{id} adds `cancelled: true` beside it.
    """
    return JobStatus.FAILED.value if status == JobStatus.CANCELLED.value else status


#: The statuses a job may move to from each status.
NEXT: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.CANCELLED}),
        JobStatus.PROCESSING: frozenset(
            {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.QUEUED, JobStatus.CANCELLED}
        ),
        JobStatus.COMPLETED: frozenset(),
        JobStatus.FAILED: frozenset({JobStatus.QUEUED}),  # an operator's retry
        JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),  # an operator's retry
    }
)
#: Finished: no worker, rescue or cancel changes these; only an operator's retry (see NEXT).
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
#: Not finished: a worker's event, a rescue or a cancel may still move the job, as stored.
OPEN = tuple(status.value for status in NEXT if status not in TERMINAL)


def may_move(status: str, to: JobStatus) -> bool:
    """Whether a job whose stored status is `status` may move to `to`."""
    return status in NEXT and to in NEXT[JobStatus(status)]


class EventType(StrEnum):
    """What a worker reports about a job it runs."""

    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    #: The worker is stopping and hands the claim back unfinished: queued again at once.
    RELEASED = "released"


#: The events that end a claim: kept by the worker until the server confirms them.
FINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.FAILED, EventType.RELEASED})


def now_ms() -> int:
    """Wall-clock time in milliseconds, the unit of every stored and published timestamp."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class JobEvent:
    """A state change a worker reports; applied by `JobTransitions.apply_events`.

    `attempt` and `seq` bind the event to one claim and order it within that claim; `sig` is
    an HMAC keyed by the claim's lease token (see signing.py). `retryable` marks a failure
    that was not the plugin's own verdict (exception, crash, timeout).
    """

    job_id: str
    worker_id: str
    event: EventType
    progress: int = 0
    task_output: dict[str, Any] | None = None
    error: str | None = None
    timestamp: int = 0
    attempt: int = 0
    seq: int = 0
    retryable: bool = False
    sig: str = ""


class Cause(StrEnum):
    """Why a job changed: the write that changed it."""

    SUBMITTED = "submitted"
    #: A worker's events (db/transitions.py `apply_events`); a failed attempt may queue the job again.
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    #: A lost worker's claim taken back: queued again, or failed when no attempts remain.
    RESCUED = "rescued"
    #: A stopping worker handed its claim back (a `released` event): queued again.
    RELEASED = "released"
    CANCELLED = "cancelled"
    #: An operator queued a failed or cancelled job again.
    RETRIED = "retried"
    #: An operator gave a queued job a new priority.
    REPRIORITISED = "reprioritised"


#: What a client sees of a change: the fields of `inference/events` and of the live views.
SHOWN_FIELDS = ("job_id", "status", "progress", "timestamp", "task_type")


@dataclass(frozen=True)
class JobChange:
    """What one write did to one job, as the database layer returns it: the job's state after
    the write (the first five fields, what clients see: `as_dict`), why, and what the server's
    announcer (server/flow/announcer.py) needs to act on it. `status` is Compute's own
    (`cancelled` stays `cancelled`)."""

    job_id: str
    status: str
    progress: int = 0
    #: When it happened (ms); 0: when it is announced.
    timestamp: int = 0
    #: Empty when the writer did not know it: the live views look it up.
    task_type: str = ""
    cause: Cause | None = None
    priority: int = 5
    #: When workers should look for the job (ms; 0: now), None when it is not claimable.
    wake_at: int | None = None
    #: The job's creator, known when it was just submitted (live views' owner cache).
    created_by: str | None = None
    #: For a worker's event: its attempt, and the job's creation and the attempt's start (ms).
    attempt: int = 0
    created_at: int | None = None
    started_at: int | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def shown(self) -> bool:
        """Whether clients hear of it (a new priority is not a change they see)."""
        return self.cause is not Cause.REPRIORITISED

    def as_dict(self) -> dict[str, Any]:
        """The fields clients see."""
        return {name: getattr(self, name) for name in SHOWN_FIELDS}


# -- what a plugin may hand back -----------------------------------------------------------------

#: Default of MAX_RESULT_BYTES: a result's `task_output` as JSON, at most. With the event around
#: it, a result then fits the 1 MiB bus payloads (topics.MAX_PAYLOAD_BYTES, Mosquitto's
#: max_packet_size in deploy/).
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024 - 64 * 1024
#: Longest error message kept (characters): a plugin's error can quote anything it read.
MAX_ERROR_CHARS = 4000


def result_bytes(task_output: Any) -> int:
    """The size of `task_output` as stored (compact JSON, UTF-8)."""
    return len(json.dumps(task_output, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def result_too_large(task_output: Any, limit: int | None) -> str | None:
    """Why `task_output` may not be stored (the error the job fails with), or None when it fits."""
    if limit is None:
        return None
    size = result_bytes(task_output)
    if size <= limit:
        return None
    return f"the result is {size} bytes, over the limit of {limit} (MAX_RESULT_BYTES): not stored"


def bounded_error(message: str) -> str:
    """`message`, cut and marked to MAX_ERROR_CHARS in all when longer (cut again, it is unchanged)."""
    if len(message) <= MAX_ERROR_CHARS:
        return message
    mark = f"…[truncated: {len(message)} characters]"
    return message[: MAX_ERROR_CHARS - len(mark)] + mark
