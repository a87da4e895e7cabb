"""Job states and the rules that keep them moving forward only."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
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


#: A job in one of these states never changes again.
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
#: States an event may still move a job out of.
OPEN = (JobStatus.QUEUED.value, JobStatus.PROCESSING.value)


class EventType(StrEnum):
    """What a worker reports about a job it runs."""

    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"


def now_ms() -> int:
    """Wall-clock time in milliseconds, the unit of every stored and published timestamp."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class JobEvent:
    """A state change a worker reports; applied by `JobRepository.apply_events`.

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
