"""HMAC signatures that bind a worker event to the claim it belongs to.

The key is the claim's lease token, which the worker receives from the database when it
claims and which never travels over MQTT. Anyone can publish on the broker; only the worker
holding the current claim can produce an event the server accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from compute.jobs import JobEvent


def _canonical_output(output: dict[str, Any] | None) -> str:
    if output is None:
        return "-"
    text = json.dumps(output, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _message(ev: JobEvent) -> bytes:
    fields = (
        ev.job_id, ev.worker_id, ev.event.value, str(ev.attempt), str(ev.seq), str(ev.progress),
        str(ev.timestamp), "1" if ev.retryable else "0", ev.error if ev.error is not None else "-",
        _canonical_output(ev.task_output),
    )
    return "\n".join(fields).encode()


def signature(lease_token: str, ev: JobEvent) -> str:
    return hmac.new(lease_token.encode(), _message(ev), hashlib.sha256).hexdigest()


def verify(lease_token: str | None, ev: JobEvent) -> bool:
    if not lease_token or not ev.sig:
        return False
    return hmac.compare_digest(signature(lease_token, ev), ev.sig)
