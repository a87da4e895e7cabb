"""A remote worker's requests for its claim's files: the inputs out, the outputs in (files/).

The credential is the claim itself. Every request carries the attempt number and an HMAC keyed
by the claim's lease token (signing.file_request_signature) over what it sends; only the
database, the server and the claiming worker know that token, and nothing on MQTT carries it.
A request that does not verify for the job's claim is 403, an unknown job too (ids do not
leak); a verified request of a claim that is over (rescued, cancelled, finished, or claimed
again) is 409. A replayed request can only repeat what the claim holder sent, while its claim
lasts: the same inputs again, or the same outputs (bound by the digests in the signed manifest).

Outputs go to staging (files/staging.py) and become the job's files when its completion is
persisted. Bodies are bounded like uploads (MAX_UPLOAD_BYTES, UPLOAD_IDLE_TIMEOUT: the
RequestBodyGuard), and a file whose SHA-256 differs from its manifest is refused (422).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from compute.db.repository import JobRecord, JobRepository
from compute.files.inputs import list_inputs, send_inputs, with_offsets
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
    parse_files,
    parse_have,
)
from compute.jobs import JobStatus
from compute.logs import LogLimiter
from compute.server.dbcalls import RouteDatabase
from compute.server.http.deps import DbDep, RepoDep, StagingDep, StorageDep
from compute.server.http.schemas import MissingOutputs, StagedOutputs
from compute.signing import verify_file_request
from compute.storage import valid_job_id

log = logging.getLogger(__name__)
limited = LogLimiter(log)

router = APIRouter(prefix="/jobs", tags=["remote workers"])

_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request or manifest"},
    403: {"description": "not signed for this job's claim"},
    409: {"description": "the claim is no longer current"},
}
#: A refusal in the middle of a body: the rest is not read, so the connection cannot be reused.
_CLOSE = {"Connection": "close"}


def _job(repo: JobRepository, job_id: str) -> JobRecord | None:
    return repo.get(job_id) if valid_job_id(job_id) else None


async def _verified(
    request: Request, job_id: str, kind: str, digest: str, repo: JobRepository, db: RouteDatabase
) -> JobRecord:
    """The job, when the request is signed for its claim and that claim is current."""
    raw = request.headers.get(ATTEMPT_HEADER, "")
    if not raw.isdigit() or len(raw) > 9:
        raise HTTPException(400, f"{ATTEMPT_HEADER} must be the claim's attempt number", headers=_CLOSE)
    attempt = int(raw)
    job = await db.call(_job, repo, job_id)
    signature = request.headers.get(SIGNATURE_HEADER, "")
    if job is None or not verify_file_request(job.lease_token, kind, job_id, attempt, digest, signature):
        limited.warning("forged", "refused a %s request for job %s: not signed for it", kind, job_id[:100])
        raise HTTPException(403, "the request is not signed for this job's claim", headers=_CLOSE)
    _still_current(job, attempt)
    return job


def _still_current(job: JobRecord | None, attempt: int) -> None:
    if job is None or job.status != JobStatus.PROCESSING.value or job.attempt != attempt:
        now = "deleted" if job is None else f"{job.status}, attempt {job.attempt}"
        raise HTTPException(409, f"attempt {attempt} is no longer the job's claim (now {now})", _CLOSE)


async def _small_body(request: Request) -> bytes:
    """A JSON request body, read whole: at most MAX_MANIFEST_BYTES."""
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_MANIFEST_BYTES:
            raise HTTPException(413, f"the request is larger than {MAX_MANIFEST_BYTES} bytes", headers=_CLOSE)
        parts.append(chunk)
    return b"".join(parts)


@router.post("/{job_id}/claim/inputs", responses=_REFUSED, response_class=StreamingResponse)
async def send_claim_inputs(
    job_id: str, request: Request, repo: RepoDep, db: DbDep, storage: StorageDep
) -> StreamingResponse:
    """For the worker holding the job's claim: every file of the job folder, streamed (body:
    `{"have": {path: bytes held}}` to resume), each followed by its SHA-256, then a seal."""
    body = await _small_body(request)
    job = await _verified(request, job_id, INPUTS, digest_of(body), repo, db)
    try:
        have = parse_have(body)
    except BadTransfer as exc:
        raise HTTPException(400, str(exc)) from None
    job_dir = storage.job_dir(job_id)
    entries = with_offsets(await asyncio.to_thread(list_inputs, job_dir), have)
    stream = send_inputs(job_dir, entries, job.lease_token or "", job_id, job.attempt)
    return StreamingResponse(
        _ending_short_on_error(stream, job_id),
        media_type="application/octet-stream",
        headers={MAX_REQUEST_HEADER: str(storage.max_upload_bytes)},
    )


async def _ending_short_on_error(stream: AsyncIterator[bytes], job_id: str) -> AsyncIterator[bytes]:
    """The stream, ended early (the worker sees a short answer and tries again) when a file
    cannot be read or changes while it is sent: the reply has begun, no status can say so."""
    try:
        async for chunk in stream:
            yield chunk
    except (BadTransfer, OSError) as exc:
        limited.warning("inputs", "job %s: sending its inputs stopped: %s", job_id, exc)


@router.post("/{job_id}/claim/outputs/plan", responses=_REFUSED, response_model=MissingOutputs)
async def plan_claim_outputs(
    job_id: str, request: Request, repo: RepoDep, db: DbDep, storage: StorageDep, staging: StagingDep
) -> MissingOutputs:
    """For the worker holding the job's claim, before it resumes an upload: which of its outputs
    (body: the manifest, `{"files": [{path, size, sha256}]}`) the server does not hold yet."""
    body = await _small_body(request)
    job = await _verified(request, job_id, PLAN, digest_of(body), repo, db)
    try:
        entries = parse_files(body, with_sha=True, with_offset=False)
    except BadTransfer as exc:
        raise HTTPException(400, str(exc)) from None

    def missing() -> list[str]:
        return [e.path for e in entries if not staging.has(job_id, job.attempt, e)]

    limit = storage.max_upload_bytes
    return MissingOutputs(missing=await asyncio.to_thread(missing), max_request_bytes=limit)


@router.put(
    "/{job_id}/claim/outputs",
    responses={
        **_REFUSED,
        413: {"description": "over MAX_UPLOAD_BYTES"},
        422: {"description": "a file's SHA-256 is not its manifest's"},
    },
    response_model=StagedOutputs,
)
async def receive_claim_outputs(
    job_id: str, request: Request, repo: RepoDep, db: DbDep, storage: StorageDep, staging: StagingDep
) -> StagedOutputs:
    """For the worker holding the job's claim: its outputs, streamed (files/wire.py); staged
    until the job's completion is persisted, and only then the job's files."""
    reader = ChunkReader(request.stream())
    try:
        manifest = await reader.header()
    except BadTransfer as exc:
        raise HTTPException(400, str(exc), headers=_CLOSE) from None
    except ClientDisconnect:
        raise HTTPException(400, "the client went away", headers=_CLOSE) from None
    job = await _verified(request, job_id, OUTPUTS, digest_of(manifest), repo, db)
    entries = _checked(manifest, storage.max_upload_bytes)
    await asyncio.to_thread(staging.prepare, job_id, job.attempt)
    try:
        stored = await staging.receive(job_id, job.attempt, reader, entries)
        if not await reader.at_end():
            raise BadTransfer("bytes after the last file of the manifest")
    except IntegrityMismatch as exc:
        limited.warning("integrity", "job %s: refused an output: %s", job_id, exc)
        raise HTTPException(422, str(exc), headers=_CLOSE) from None
    except BadTransfer as exc:
        raise HTTPException(400, str(exc), headers=_CLOSE) from None
    except ClientDisconnect:  # gone, or stalled past UPLOAD_IDLE_TIMEOUT: nobody reads this
        raise HTTPException(400, "the client went away", headers=_CLOSE) from None
    # The claim may have ended while the files streamed: say so rather than "staged".
    _still_current(await db.call(_job, repo, job_id), job.attempt)
    return StagedOutputs(staged=len(entries), bytes=stored)


def _checked(manifest: bytes, limit: int) -> list[FileEntry]:
    try:
        entries = parse_files(manifest, with_sha=True, with_offset=False)
    except BadTransfer as exc:
        raise HTTPException(400, str(exc), headers=_CLOSE) from None
    total = sum(e.size for e in entries)
    if total > limit:
        raise HTTPException(413, f"{total} bytes of files exceed the {limit} bytes of a request", _CLOSE)
    return entries
