"""The file plane's HTTP surface, as a hostile client and a late worker see it (issue 18 item 1).

The credential is the claim: requests not signed with the job's current lease token are 403,
those of a claim that is over are 409, manifests that name paths outside the job folder or too
many bytes are refused, a file whose digest differs is refused, a stalled body is cut off, and
nothing a worker sends shows before the job's completion is persisted (then all of it does).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import update

from compute.config import Settings
from compute.db.repository import JobRecord
from compute.db.tables import jobs_table
from compute.files.inputs import receive_inputs
from compute.files.wire import (
    ATTEMPT_HEADER,
    INPUTS,
    MAX_REQUEST_HEADER,
    OUTPUTS,
    PLAN,
    SIGNATURE_HEADER,
    ChunkReader,
    FileEntry,
    digest_of,
    encode_header,
    have_request,
    outputs_manifest,
)
from compute.jobs import EventType
from compute.signing import file_request_signature
from tests.support.events import signed
from tests.support.inprocess import Server, running_server, uvicorn_serving
from tests.support.waits import wait_for

# The broker plays no part here: one is enough (the database varies).
pytestmark = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)


def noise_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress: as many bytes as pixels times three."""
    out = io.BytesIO()
    Image.frombytes("RGB", size, secrets.token_bytes(size[0] * size[1] * 3)).save(out, format="PNG")
    return out.getvalue()


PICTURE = noise_png((40, 30))


def sign(
    job: JobRecord, kind: str, body: bytes, *, token: str | None = None, attempt: int | None = None
) -> dict[str, str]:
    number = job.attempt if attempt is None else attempt
    sig = file_request_signature(token or job.lease_token or "", kind, job.job_id, number, digest_of(body))
    return {ATTEMPT_HEADER: str(number), SIGNATURE_HEADER: sig}


def outputs_body(files: dict[str, bytes], *, lie: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """(manifest, whole body) for these files; `lie` gives some a wrong digest."""
    entries = [
        FileEntry(path, len(data), (lie or {}).get(path) or hashlib.sha256(data).hexdigest())
        for path, data in files.items()
    ]
    manifest = outputs_manifest(entries)
    return manifest, encode_header(manifest) + b"".join(files.values())


async def claimed(server: Server, task: str = "image_conversion") -> JobRecord:
    """A job with an upload, claimed as a worker would (the test holds the lease token)."""
    await server.submit(task, content=PICTURE)
    job = await asyncio.to_thread(server.services.repo.claim_next, [task], "w-test", "s-test")
    assert job is not None
    return job


async def put_outputs(
    server: Server, job: JobRecord, files: dict[str, bytes], **sign_args: Any
) -> httpx.Response:
    manifest, body = outputs_body(files)
    return await server.client.put(
        f"/jobs/{job.job_id}/claim/outputs", content=body, headers=sign(job, OUTPUTS, manifest, **sign_args)
    )


async def complete(server: Server, job: JobRecord) -> None:
    """The worker's completed event, through the server's ingest (commit, then promotion)."""
    event = signed(job, EventType.COMPLETED, 1, progress=100, task_output={"output_path": "output/a.jpg"})
    await server.services.ingest.persist([event])


async def listed(server: Server, job_id: str) -> set[str]:
    reply = await server.client.get(f"/jobs/{job_id}/files")
    assert reply.status_code == 200, reply.text
    return {f["path"] for f in reply.json()["files"]}


# -- inputs --------------------------------------------------------------------------------------


async def test_the_claim_holder_gets_the_inputs_whole_and_sealed(server: Server, tmp_path: Path) -> None:
    job = await claimed(server)
    body = have_request({})
    async with server.client.stream(
        "POST", f"/jobs/{job.job_id}/claim/inputs", content=body, headers=sign(job, INPUTS, body)
    ) as reply:
        assert reply.status_code == 200
        assert int(reply.headers[MAX_REQUEST_HEADER]) == server.settings.max_upload_bytes
        got = await receive_inputs(
            ChunkReader(reply.aiter_raw()), tmp_path, {}, job.lease_token or "", job.job_id, job.attempt
        )
    assert [(e.path, e.size) for e in got.files] == [("input/upload.png", len(PICTURE))]
    assert (tmp_path / "input" / "upload.png").read_bytes() == PICTURE


async def test_a_resumed_fetch_sends_only_the_rest(server: Server, tmp_path: Path) -> None:
    job = await claimed(server)
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "upload.png").write_bytes(PICTURE[:100])
    body = have_request({"input/upload.png": 100})
    async with server.client.stream(
        "POST", f"/jobs/{job.job_id}/claim/inputs", content=body, headers=sign(job, INPUTS, body)
    ) as reply:
        got = await receive_inputs(
            ChunkReader(reply.aiter_raw()),
            tmp_path,
            {"input/upload.png": 100},
            job.lease_token or "",
            job.job_id,
            job.attempt,
        )
    assert got.transferred == len(PICTURE) - 100
    assert (tmp_path / "input" / "upload.png").read_bytes() == PICTURE


# -- who may ask ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forgery",
    ["another token", "no signature", "signed for another kind", "signed for another body", "unknown job"],
)
async def test_requests_not_signed_for_the_claim_are_403(server: Server, forgery: str) -> None:
    job = await claimed(server)
    body = have_request({})
    headers = {
        "another token": sign(job, INPUTS, body, token=secrets.token_hex(16)),
        "no signature": {ATTEMPT_HEADER: str(job.attempt)},
        "signed for another kind": sign(job, PLAN, body),
        "signed for another body": sign(job, INPUTS, have_request({"x": 1})),
        "unknown job": sign(job, INPUTS, body),
    }[forgery]
    job_id = "0b6c0000-0000-4000-8000-000000000000" if forgery == "unknown job" else job.job_id
    reply = await server.client.post(f"/jobs/{job_id}/claim/inputs", content=body, headers=headers)
    assert reply.status_code == 403, reply.text
    # The same for outputs: nothing is staged.
    manifest, upload = outputs_body({"output/a.jpg": b"x"})
    forged = sign(job, OUTPUTS, manifest, token=secrets.token_hex(16))
    reply = await server.client.put(f"/jobs/{job.job_id}/claim/outputs", content=upload, headers=forged)
    assert reply.status_code == 403
    assert not server.services.staging.staged()


async def test_a_request_signed_for_one_job_does_not_open_another(server: Server) -> None:
    """A captured request replayed against another job: its signature names the first job."""
    first, second = await claimed(server), await claimed(server)
    body = have_request({})
    stolen = sign(first, INPUTS, body)
    reply = await server.client.post(f"/jobs/{second.job_id}/claim/inputs", content=body, headers=stolen)
    assert reply.status_code == 403


@pytest.mark.parametrize("attempt", ["", "x", "-1", "1" * 20])
async def test_a_bad_attempt_header_is_400(server: Server, attempt: str) -> None:
    job = await claimed(server)
    headers = {**sign(job, INPUTS, b""), ATTEMPT_HEADER: attempt}
    reply = await server.client.post(f"/jobs/{job.job_id}/claim/inputs", content=b"", headers=headers)
    assert reply.status_code == 400


async def test_a_rescued_workers_upload_is_refused(server: Server) -> None:
    """Its lease expired and the job went back to the queue: its token still signs, the claim is over."""
    job = await claimed(server)
    with server.services.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job.job_id).values(lease_expires_at=0))
    assert [r.job_id for r in await asyncio.to_thread(server.services.transitions.rescue_expired)] == [
        job.job_id
    ]

    reply = await put_outputs(server, job, {"output/a.jpg": b"late"})

    assert reply.status_code == 409, reply.text
    assert "no longer" in reply.json()["detail"]
    assert not server.services.staging.staged()


async def test_a_late_worker_after_another_claim_is_refused(server: Server) -> None:
    """Claimed again by another worker: a new attempt and token; the old claim's requests fail."""
    old = await claimed(server)
    with server.services.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == old.job_id).values(lease_expires_at=0))
    await asyncio.to_thread(server.services.transitions.rescue_expired)
    new = await asyncio.to_thread(server.services.repo.claim_next, ["image_conversion"], "w-2", "s-2")
    assert new is not None and new.attempt == old.attempt + 1

    assert (await put_outputs(server, old, {"output/a.jpg": b"late"})).status_code == 403
    # Even signed with the old token for the new attempt number.
    assert (await put_outputs(server, old, {"output/a.jpg": b"late"}, attempt=new.attempt)).status_code == 403
    assert (await put_outputs(server, new, {"output/a.jpg": b"fresh"})).status_code == 200


async def test_a_replayed_upload_changes_nothing_and_is_refused_once_the_job_completed(
    server: Server,
) -> None:
    job = await claimed(server)
    files = {"output/a.jpg": b"first"}
    manifest, body = outputs_body(files)
    headers = sign(job, OUTPUTS, manifest)
    url = f"/jobs/{job.job_id}/claim/outputs"
    assert (await server.client.put(url, content=body, headers=headers)).status_code == 200
    # The same request again, while the claim lasts: the same bytes (bound by the signed manifest).
    assert (await server.client.put(url, content=body, headers=headers)).status_code == 200
    await complete(server, job)
    assert await listed(server, job.job_id) == {"input/upload.png", "output/a.jpg"}

    replay = await server.client.put(url, content=body, headers=headers)

    assert replay.status_code == 409
    assert not server.services.staging.staged()


# -- what a manifest may say ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../escape",
        "output/../../escape",
        "/etc/passwd",
        "output/./a",
        "output//a",
        "output/a/",
        "",
        "a\\..\\b",
        "output/\x00a",
        "output/\na",
        "x" * 1025,
        "output/" + "y" * 256,
    ],
)
async def test_a_manifest_naming_a_path_outside_the_job_is_400(server: Server, path: str) -> None:
    job = await claimed(server)
    manifest = (
        b'{"files":[{"path":'
        + __import__("json").dumps(path).encode()
        + b',"size":1,"sha256":"'
        + b"0" * 64
        + b'"}]}'
    )
    body = encode_header(manifest) + b"x"
    reply = await server.client.put(
        f"/jobs/{job.job_id}/claim/outputs", content=body, headers=sign(job, OUTPUTS, manifest)
    )
    assert reply.status_code == 400, reply.text
    assert not any(server.settings.storage_dir.parent.rglob("escape"))
    assert await listed(server, job.job_id) == {"input/upload.png"}


@pytest.mark.parametrize(
    "manifest",
    [
        b"not json",
        b"[]",
        b'{"files": {}}',
        b'{"files": [{"path": "a", "size": -1, "sha256": "' + b"0" * 64 + b'"}]}',
        b'{"files": [{"path": "a", "size": 1, "sha256": "zz"}]}',
        b'{"files": [{"path": "a", "size": 1, "sha256": "'
        + b"0" * 64
        + b'"}, {"path": "a", "size": 1, "sha256": "'
        + b"0" * 64
        + b'"}]}',
        b'{"files": [{"path": "a", "size": 1, "sha256": "'
        + b"0" * 64
        + b'"}, {"path": "a/b", "size": 1, "sha256": "'
        + b"0" * 64
        + b'"}]}',
    ],
)
async def test_a_malformed_manifest_is_400(server: Server, manifest: bytes) -> None:
    job = await claimed(server)
    reply = await server.client.put(
        f"/jobs/{job.job_id}/claim/outputs",
        content=encode_header(manifest) + b"xx",
        headers=sign(job, OUTPUTS, manifest),
    )
    assert reply.status_code == 400, reply.text


async def test_not_a_transfer_stream_is_400(server: Server) -> None:
    job = await claimed(server)
    reply = await server.client.put(
        f"/jobs/{job.job_id}/claim/outputs", content=b"GIF89a", headers=sign(job, OUTPUTS, b"")
    )
    assert reply.status_code == 400


async def test_files_over_the_upload_limit_are_413_before_a_byte_is_stored(settings: Settings) -> None:
    async with running_server(replace(settings, max_upload_bytes=len(PICTURE) + 100)) as srv:
        job = await claimed(srv)
        manifest = outputs_manifest([FileEntry("output/big.bin", 100_000, "0" * 64)])
        # The manifest claims more than a request may carry; the body itself is small.
        reply = await srv.client.put(
            f"/jobs/{job.job_id}/claim/outputs",
            content=encode_header(manifest) + b"x" * 10,
            headers=sign(job, OUTPUTS, manifest),
        )
        assert reply.status_code == 413, reply.text
        assert not list((srv.settings.storage_dir / "staging").rglob("*.part"))


async def test_a_file_whose_digest_differs_is_refused_and_not_staged(server: Server) -> None:
    job = await claimed(server)
    files = {"output/good.txt": b"good", "output/bad.txt": b"bad"}
    manifest, body = outputs_body(files, lie={"output/bad.txt": hashlib.sha256(b"other").hexdigest()})

    reply = await server.client.put(
        f"/jobs/{job.job_id}/claim/outputs", content=body, headers=sign(job, OUTPUTS, manifest)
    )

    assert reply.status_code == 422, reply.text
    assert "output/bad.txt" in reply.json()["detail"]
    staged = server.services.staging.attempt_dir(job.job_id, job.attempt)
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == [
        "files/output/good.txt"
    ]
    # The plan asks for the bad one again, not the good one.
    plan = outputs_manifest([FileEntry(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items()])
    reply = await server.client.post(
        f"/jobs/{job.job_id}/claim/outputs/plan", content=plan, headers=sign(job, PLAN, plan)
    )
    assert reply.status_code == 200 and reply.json()["missing"] == ["output/bad.txt"]


async def test_a_stalled_upload_is_cut_off_and_leaves_nothing(settings: Settings) -> None:
    """A slow client: the server's body deadline (UPLOAD_IDLE_TIMEOUT) ends it; its partial file goes."""
    async with (
        running_server(replace(settings, upload_idle_timeout=0.5)) as srv,
        uvicorn_serving(srv.app) as web,
    ):
        job = await claimed(srv)
        data = b"z" * 200_000
        manifest, body = outputs_body({"output/slow.bin": data})
        stalled = asyncio.Event()

        async def trickle() -> AsyncIterator[bytes]:
            yield body[:100_000]
            stalled.set()
            await asyncio.sleep(30)  # the server gives up long before
            yield body[100_000:]

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web.config.port}", timeout=20) as client:
            reply = await client.put(
                f"/jobs/{job.job_id}/claim/outputs",
                content=trickle(),
                headers={**sign(job, OUTPUTS, manifest), "Content-Length": str(len(body))},
            )
        assert reply.status_code == 408
        staged = srv.services.staging.attempt_dir(job.job_id, job.attempt)
        await wait_for(
            lambda: not any(p.is_file() for p in staged.rglob("*")), what="the partial file removed"
        )


# -- nothing shows until the completion is persisted, then everything does ------------------------


async def test_outputs_show_only_once_the_completion_is_persisted(server: Server) -> None:
    job = await claimed(server)
    files = {f"output/seg-{i:03d}.ts": secrets.token_bytes(1000 + i) for i in range(50)}
    files["faces/face_0.png"] = PICTURE
    assert (await put_outputs(server, job, files)).status_code == 200
    assert await listed(server, job.job_id) == {"input/upload.png"}
    reply = await server.client.get(f"/jobs/{job.job_id}/files/output/seg-000.ts")
    assert reply.status_code == 404

    await complete(server, job)

    assert await listed(server, job.job_id) == {"input/upload.png", *files}
    for path, data in files.items():
        assert (await server.client.get(f"/jobs/{job.job_id}/files/{path}")).content == data
    assert not server.services.staging.staged()


async def test_a_half_sent_output_never_shows(settings: Settings) -> None:
    """The connection drops in the middle of a file (the link broke): what came whole waits in
    staging; the cut file is nowhere, in the job folder or in staging."""
    async with running_server(settings) as srv, uvicorn_serving(srv.app) as web:
        job = await claimed(srv)
        files = {"output/whole.bin": b"w" * 5000, "output/cut.bin": b"c" * 5000}
        manifest, body = outputs_body(files)
        head = "".join(f"{k}: {v}\r\n" for k, v in sign(job, OUTPUTS, manifest).items())
        _reader, writer = await asyncio.open_connection("127.0.0.1", web.config.port)
        writer.write(
            f"PUT /jobs/{job.job_id}/claim/outputs HTTP/1.1\r\nHost: compute\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) - 2000]
        )
        await writer.drain()
        staged = srv.services.staging.attempt_dir(job.job_id, job.attempt)
        await wait_for(
            lambda: (staged / "files" / "output" / "whole.bin").is_file(), what="first file staged"
        )
        writer.transport.abort()  # the link is gone

        def left() -> list[str]:
            return sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())

        await wait_for(lambda: left() == ["files/output/whole.bin"], what="the cut file removed")
        assert await listed(srv, job.job_id) == {"input/upload.png"}


async def test_a_completion_committed_without_promotion_is_promoted_when_files_are_asked_for(
    server: Server,
) -> None:
    """The worker wrote its result to the database itself (the server never saw the event):
    whoever saw `completed` and asks for the files gets them all."""
    job = await claimed(server)
    assert (await put_outputs(server, job, {"output/a.jpg": b"jpeg"})).status_code == 200
    event = signed(job, EventType.COMPLETED, 1, progress=100, task_output={})
    await asyncio.to_thread(server.services.transitions.apply_events, [event])

    reply = await server.client.get(f"/jobs/{job.job_id}/files/output/a.jpg")

    assert reply.status_code == 200 and reply.content == b"jpeg"


async def test_a_restart_between_commit_and_promotion_still_promotes(settings: Settings) -> None:
    async with running_server(settings) as srv:
        job = await claimed(srv)
        assert (await put_outputs(srv, job, {"output/a.jpg": b"jpeg"})).status_code == 200
        event = signed(job, EventType.COMPLETED, 1, progress=100, task_output={})
        await asyncio.to_thread(srv.services.transitions.apply_events, [event])  # committed, then "crash"
    job_dir = settings.storage_dir / "jobs" / job.job_id

    async with running_server(settings) as srv:
        # The staging sweep at start, before anyone asks.
        await wait_for(
            lambda: (job_dir / "output" / "a.jpg").is_file() and not srv.services.staging.staged(),
            what="outputs promoted at start",
        )


async def test_a_resent_completion_finishes_a_promotion(server: Server) -> None:
    job = await claimed(server)
    assert (await put_outputs(server, job, {"output/a.jpg": b"jpeg"})).status_code == 200
    event = signed(job, EventType.COMPLETED, 1, progress=100, task_output={})
    await asyncio.to_thread(server.services.transitions.apply_events, [event])
    job_dir = server.settings.storage_dir / "jobs" / job.job_id
    assert not (job_dir / "output" / "a.jpg").exists()

    [outcome] = await server.services.ingest.persist([event])

    assert outcome.verdict.value == "duplicate"
    assert (job_dir / "output" / "a.jpg").read_bytes() == b"jpeg"


async def test_staging_of_a_claim_that_is_over_is_discarded(server: Server) -> None:
    job = await claimed(server)
    assert (await put_outputs(server, job, {"output/a.jpg": b"x"})).status_code == 200
    with server.services.engine.begin() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.job_id == job.job_id).values(lease_expires_at=0))
    await asyncio.to_thread(server.services.transitions.rescue_expired)

    await server.services.db.call(server.services.staging_sweeper.sweep)

    assert not server.services.staging.staged()
    assert await listed(server, job.job_id) == {"input/upload.png"}
