"""HMAC signatures: what a message on the bus must carry before anyone acts on it.

Two kinds of key, neither of which ever travels over MQTT:

* the claim's **lease token**, drawn by the database when a worker claims a job and shared only
  by the database, the server and that worker. It signs the worker's job events, and the
  server's confirmations and cancel requests for that claim; over HTTP, a remote worker's
  requests for the job's inputs and outputs, and the server's seal on the inputs it sends;
* a worker session's **secret**, drawn by the worker at start and registered in
  `worker_sessions`. It signs the worker's `info` messages and its Last Will.

Anyone can publish on the broker; only the holder of the key produces a message that verifies.
Each kind of message signs its own fields behind its own prefix, so a signature seen on one
kind can never pass for another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any

from compute.jobs import JobEvent


def _mac(key: str, fields: Iterable[str]) -> str:
    return hmac.new(key.encode(), "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def _matches(key: str | None, sig: str, fields: Iterable[str]) -> bool:
    if not key or not sig:
        return False
    return hmac.compare_digest(_mac(key, fields), sig)


# -- job events (worker -> server), keyed by the lease token ----------------------------------


def _canonical_output(output: dict[str, Any] | None) -> str:
    if output is None:
        return "-"
    text = json.dumps(output, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _event_fields(ev: JobEvent) -> tuple[str, ...]:
    return (
        ev.job_id,
        ev.worker_id,
        ev.event.value,
        str(ev.attempt),
        str(ev.seq),
        str(ev.progress),
        str(ev.timestamp),
        "1" if ev.retryable else "0",
        ev.error if ev.error is not None else "-",
        _canonical_output(ev.task_output),
    )


def signature(lease_token: str, ev: JobEvent) -> str:
    return _mac(lease_token, _event_fields(ev))


def verify(lease_token: str | None, ev: JobEvent) -> bool:
    return _matches(lease_token, ev.sig, _event_fields(ev))


# -- confirmations and cancel requests (server -> worker), keyed by the lease token ------------


def _confirm_fields(job_id: str, attempt: int, status: str, timestamp: int) -> tuple[str, ...]:
    return ("confirm", job_id, str(attempt), status, str(timestamp))


def confirmation_signature(lease_token: str, job_id: str, attempt: int, status: str, timestamp: int) -> str:
    return _mac(lease_token, _confirm_fields(job_id, attempt, status, timestamp))


def verify_confirmation(
    lease_token: str | None, job_id: str, attempt: int, status: str, timestamp: int, sig: str
) -> bool:
    return _matches(lease_token, sig, _confirm_fields(job_id, attempt, status, timestamp))


def _cancel_fields(job_id: str, attempt: int, timestamp: int) -> tuple[str, ...]:
    return ("cancel", job_id, str(attempt), str(timestamp))


def cancel_signature(lease_token: str, job_id: str, attempt: int, timestamp: int) -> str:
    return _mac(lease_token, _cancel_fields(job_id, attempt, timestamp))


def verify_cancel(lease_token: str | None, job_id: str, attempt: int, timestamp: int, sig: str) -> bool:
    return _matches(lease_token, sig, _cancel_fields(job_id, attempt, timestamp))


# -- the file plane (remote worker <-> server over HTTP), keyed by the lease token -------------


def _file_request_fields(kind: str, job_id: str, attempt: int, body_digest: str) -> tuple[str, ...]:
    return ("files", kind, job_id, str(attempt), body_digest)


def file_request_signature(lease_token: str, kind: str, job_id: str, attempt: int, body_digest: str) -> str:
    """A remote worker's request about its claim's files (`kind`: inputs, plan, outputs), over the
    SHA-256 of what it sends (its JSON body, or the outputs' manifest, which names every digest)."""
    return _mac(lease_token, _file_request_fields(kind, job_id, attempt, body_digest))


def verify_file_request(
    lease_token: str | None, kind: str, job_id: str, attempt: int, body_digest: str, sig: str
) -> bool:
    return _matches(lease_token, sig, _file_request_fields(kind, job_id, attempt, body_digest))


def _seal_fields(job_id: str, attempt: int, files: Iterable[tuple[str, int, str]]) -> tuple[str, ...]:
    return ("inputs-sent", job_id, str(attempt), *(f"{path}:{size}:{digest}" for path, size, digest in files))


def inputs_seal(lease_token: str, job_id: str, attempt: int, files: Iterable[tuple[str, int, str]]) -> str:
    """The server's seal after the inputs it sent: every (path, size, hex SHA-256), in order."""
    return _mac(lease_token, _seal_fields(job_id, attempt, files))


def verify_inputs_seal(
    lease_token: str, job_id: str, attempt: int, files: Iterable[tuple[str, int, str]], seal: str
) -> bool:
    return _matches(lease_token, seal, _seal_fields(job_id, attempt, files))


# -- worker info and Last Will, keyed by the session secret ------------------------------------


def _info_fields(info: Any) -> tuple[str, ...]:
    """`info` is a topics.WorkerInfo (a dict); the Will signs the defaults parse_worker_info fills in."""
    return (
        "info",
        info["worker_id"],
        info["session"],
        info["state"],
        ",".join(info["tasks"]),
        "1" if info["idle"] else "0",
        info["hostname"],
        str(info["pid"]),
        str(info["started_at"]),
        str(info["timestamp"]),
    )


def info_signature(secret: str, info: Any) -> str:
    return _mac(secret, _info_fields(info))


def verify_info(secret: str | None, info: Any) -> bool:
    return _matches(secret, str(info.get("sig", "")), _info_fields(info))
