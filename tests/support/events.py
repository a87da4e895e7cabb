"""Worker events as a real worker signs them, for tests that feed the server's ingest directly."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from compute.jobs import JobEvent, now_ms
from compute.signing import signature


def ms_now() -> int:
    return time.time_ns() // 1_000_000


def signed(
    job: Any,
    kind: Any,
    seq: int,
    *,
    token: str | None = None,
    worker: str | None = None,
    ts: int | None = None,
    **fields: Any,
) -> JobEvent:
    """A worker event for `job`'s current claim, signed with its lease token (or `token`)."""
    unsigned = JobEvent(
        job_id=job.job_id,
        worker_id=worker or job.worker_id or "",
        event=kind,
        timestamp=now_ms() if ts is None else ts,
        attempt=job.attempt,
        seq=seq,
        **fields,
    )
    return replace(unsigned, sig=signature(token or job.lease_token or "", unsigned))
