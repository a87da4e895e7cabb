"""A remote worker's HTTP calls on the file plane: fetch a claim's inputs, send its outputs.

Every request is signed with the claim's lease token (signing.file_request_signature). Each call
retries what can be retried (a broken connection, a server restarting, busy or answering 5xx, a
stream that ended early, a digest that did not match) with backoff, resuming where the last try
stopped: inputs from the byte the worker holds of each file, outputs with the files the server
does not hold yet (it says which). It stops when the server says the claim is not this
worker's any more (ClaimGone: 403, 404, 409), when the server refuses the request itself
(TransferFailed, not retryable: 400, 413), and after PATIENCE seconds without progress
(TransferFailed, retryable: the job goes back to the queue).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from compute.errors import ComputeError, first_line
from compute.files.inputs import held, receive_inputs
from compute.files.outputs import batches, body_length, outputs_body
from compute.files.wire import (
    ATTEMPT_HEADER,
    INPUTS,
    MAX_MANIFEST_BYTES,
    MAX_REQUEST_HEADER,
    OUTPUTS,
    PLAN,
    SIGNATURE_HEADER,
    BadTransfer,
    ChunkReader,
    FileEntry,
    IntegrityMismatch,
    digest_of,
    have_request,
    outputs_manifest,
)
from compute.logs import LogLimiter
from compute.signing import file_request_signature
from compute.worker.attempt import Attempt
from compute.worker.dbretry import Backoff

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Seconds a transfer keeps trying without moving a byte forward before the attempt fails.
PATIENCE = 300.0
#: Seconds a request may wait to connect, and for the next bytes once connected.
CONNECT_TIMEOUT, IO_TIMEOUT = 10.0, 60.0
#: Most of an error reply read for its reason.
_REASON_BYTES = 2000


class ClaimGone(ComputeError):
    """The server says this claim is over (rescued, cancelled, deleted, claimed again)."""


class TransferFailed(ComputeError):
    """The job's files could not travel; `retryable` unless the request itself was refused."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


class _TryAgain(ComputeError):
    """This try failed in a way a later try may not."""


@dataclass(frozen=True)
class Transfer:
    """What one direction of a job's transfer moved: for the log line and the benchmark."""

    files: int
    #: Bytes that crossed the network (resumed parts count once).
    bytes: int
    seconds: float
    tries: int


class FileClient:
    def __init__(self, server_url: str, *, patience: float = PATIENCE, default_max_request: int) -> None:
        self.http = httpx.AsyncClient(
            base_url=server_url, timeout=httpx.Timeout(IO_TIMEOUT, connect=CONNECT_TIMEOUT)
        )
        self.patience = patience
        #: Largest request body the server takes; it says so with every inputs answer and plan.
        self.max_request = default_max_request

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- inputs -------------------------------------------------------------------------------

    async def fetch_inputs(self, attempt: Attempt, job_root: Path) -> Transfer:
        """Every file of the server's job folder into `job_root`, each checked (files/inputs.py)."""
        started, moved = time.monotonic(), 0
        files = 0

        async def one_try() -> None:
            nonlocal moved, files
            have = await asyncio.to_thread(held, job_root)
            body = have_request(have)
            async with self.http.stream(
                "POST", _url(attempt, "inputs"), content=body, headers=_signed(attempt, INPUTS, body)
            ) as reply:
                await _accepted(reply)
                self.max_request = _positive(reply.headers.get(MAX_REQUEST_HEADER), self.max_request)
                received = await receive_inputs(
                    ChunkReader(reply.aiter_raw()),
                    job_root,
                    have,
                    attempt.lease_token,
                    attempt.job_id,
                    attempt.number,
                )
            moved += received.transferred
            files = len(received.files)

        def progress() -> int:
            return sum(held(job_root).values())

        tries = await self._retrying(f"job {attempt.job_id}: fetching its inputs", one_try, progress)
        return Transfer(files, moved, time.monotonic() - started, tries)

    # -- outputs ------------------------------------------------------------------------------

    async def send_outputs(self, attempt: Attempt, job_root: Path, entries: list[FileEntry]) -> Transfer:
        """The outputs to the server's staging, in requests of at most its request size; a retry
        first asks which files the server does not hold yet, and sends only those."""
        started, moved, staged = time.monotonic(), 0, 0
        first = True

        async def one_try() -> None:
            nonlocal moved, staged, first
            pending = entries if first else await self._missing(attempt, entries)
            first = False
            for batch in batches(pending, self.max_request):
                manifest = outputs_manifest(batch)
                headers = {
                    **_signed(attempt, OUTPUTS, manifest),
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(body_length(manifest, batch)),
                }
                body = outputs_body(job_root, manifest, batch)
                async with self.http.stream(
                    "PUT", _url(attempt, "outputs"), content=body, headers=headers
                ) as reply:
                    await _accepted(reply)
                sent = sum(e.size for e in batch)
                moved += sent
                staged += sent

        def progress() -> int:
            return staged

        tries = await self._retrying(f"job {attempt.job_id}: sending its outputs", one_try, progress)
        return Transfer(len(entries), moved, time.monotonic() - started, tries)

    async def _missing(self, attempt: Attempt, entries: list[FileEntry]) -> list[FileEntry]:
        body = outputs_manifest(entries)
        headers = _signed(attempt, PLAN, body)
        async with self.http.stream(
            "POST", _url(attempt, "outputs/plan"), content=body, headers=headers
        ) as reply:
            await _accepted(reply)
            raw = await _bounded(reply, 2 * MAX_MANIFEST_BYTES)
        try:
            answer = json.loads(raw)
            missing = {str(p) for p in answer["missing"]}
            self.max_request = _positive(str(answer.get("max_request_bytes", "")), self.max_request)
        except (ValueError, KeyError, TypeError):
            raise _TryAgain("the server's answer to the upload plan is not what it should be") from None
        return [e for e in entries if e.path in missing]

    # -- retries ------------------------------------------------------------------------------

    async def _retrying(
        self, what: str, one_try: Callable[[], Awaitable[None]], progress: Callable[[], int]
    ) -> int:
        """Run `one_try` until it succeeds; returns the number of tries."""
        backoff = Backoff()
        tries = 0
        last_progress, deadline = -1, time.monotonic() + self.patience
        while True:
            tries += 1
            try:
                await one_try()
                return tries
            except (httpx.TransportError, BadTransfer, IntegrityMismatch, _TryAgain) as exc:
                reason = f"{type(exc).__name__}: {first_line(exc)}"
            done = await asyncio.to_thread(progress)
            if done > last_progress:  # it moved forward: patience starts again
                last_progress, deadline = done, time.monotonic() + self.patience
            elif time.monotonic() > deadline:
                raise TransferFailed(f"{what} failed for {self.patience:g} s ({reason})", retryable=True)
            delay = backoff.next()
            limited.warning(
                "retry", "%s: try %d failed (%s); trying again in %.1f s", what, tries, reason, delay
            )
            await asyncio.sleep(delay)


def _url(attempt: Attempt, what: str) -> str:
    return f"/jobs/{attempt.job_id}/claim/{what}"


def _signed(attempt: Attempt, kind: str, body: bytes) -> dict[str, str]:
    signature = file_request_signature(
        attempt.lease_token, kind, attempt.job_id, attempt.number, digest_of(body)
    )
    return {ATTEMPT_HEADER: str(attempt.number), SIGNATURE_HEADER: signature}


def _positive(raw: str | None, default: int) -> int:
    return int(raw) if raw is not None and raw.isdigit() and int(raw) > 0 else default


async def _accepted(reply: httpx.Response) -> None:
    """Return on 200; otherwise raise what the status means for the transfer."""
    if reply.status_code == 200:
        return
    reason = await _reason(reply)
    status = reply.status_code
    if status in (403, 404, 409):
        raise ClaimGone(f"the server refused the claim ({status}: {reason})")
    if status in (400, 413):
        raise TransferFailed(f"the server refused the transfer ({status}: {reason})", retryable=False)
    raise _TryAgain(f"{status}: {reason}")


async def _bounded(reply: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of a streamed reply: a reply is input like any other."""
    body = b""
    async for chunk in reply.aiter_raw():
        body += chunk
        if len(body) >= limit:
            break
    return body[:limit]


async def _reason(reply: httpx.Response) -> str:
    """The `detail` of an error reply (at most _REASON_BYTES of it are read)."""
    body = await _bounded(reply, _REASON_BYTES)
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else body.decode("utf-8", "replace")
    return text[:300] or "no reason given"
