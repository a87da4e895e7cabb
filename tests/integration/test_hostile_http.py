"""An ordinary HTTP client trying to hurt the server (issue 8, "Over HTTP", "a stalled database").

Odd paths and numbers get 4xx, never 5xx; bodies are bounded while they stream (size and idle
time, on a real uvicorn for the sockets); job folders without a job are removed; a retried
submit with an Idempotency-Key gets the same job; a locked database leaves the server
answering (503 with Retry-After for what needs it); users see only their own jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from compute.config import Settings
from compute.db.tables import jobs_table
from compute.server.app import UPLOAD_SLACK
from tests.support.auth import bearer
from tests.support.images import png_bytes
from tests.support.inprocess import Server, idle_connections, running_server, uvicorn_serving
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for

if TYPE_CHECKING:
    pass

# The broker plays no part in these answers: one is enough (the database still varies).
pytestmark = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)

FILES = {"file": ("photo.png", png_bytes(), "image/png")}
FORM = {"format": "jpg"}


def job_folders(server: Server) -> set[str]:
    root = server.services.storage.jobs_root
    return {p.name for p in root.iterdir()} if root.exists() else set()


def job_rows(server: Server) -> set[str]:
    with server.services.repo.engine.connect() as conn:
        return set(conn.execute(select(jobs_table.c.job_id)).scalars())


# -- odd paths and numbers: 4xx, never 5xx -------------------------------------------------------


async def test_odd_job_ids_and_file_paths_are_4xx(server: Server) -> None:
    job_id = (await server.submit())["job_id"]
    long_name = "a" * 5000
    cases = {
        f"/jobs/{job_id}/files/input/%00": 400,
        f"/jobs/{job_id}/files/%00": 400,
        # A name longer than any file system allows cannot name a file, as a NUL cannot.
        f"/jobs/{job_id}/files/input/{long_name}": 400,
        f"/jobs/{job_id}/files/input/{'d/' * 3000}x": 404,
        f"/jobs/{job_id}/files/input/%ff%fe": 404,
        "/jobs/%00": 404,
        "/jobs/%00/files/input/upload.png": 404,
        f"/jobs/{'x' * 10_000}": 404,
        f"/jobs/{'x' * 10_000}/files/input/upload.png": 404,
        "/jobs/..%2F..%2Fetc": 404,
        "/jobs/%20": 404,
    }
    for url, status in cases.items():
        response = await server.client.get(url)
        assert response.status_code == status, (url[:80], response.status_code, response.text[:200])
        assert "detail" in response.json()
    for method, url in (
        ("DELETE", f"/jobs/{'x' * 10_000}"),
        ("POST", f"/jobs/{'y' * 10_000}/cancel"),
        ("DELETE", "/jobs/%00"),
        ("POST", "/jobs/%00/cancel"),
    ):
        response = await server.client.request(method, url)
        assert response.status_code == 404, (method, url[:40], response.status_code)
    assert (await server.client.get(f"/jobs/{job_id}")).status_code == 200  # untouched


@pytest.mark.parametrize("days", ["6508445994500036", str(10**30), "36501", "-1", "1e3", "nan"])
async def test_cleanup_days_are_bounded(server: Server, days: str) -> None:
    response = await server.client.delete("/admin/jobs/cleanup", params={"days": days})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("timeout", ["1e308", "inf", "-inf", "nan", "0", "-5", "86401", "x"])
async def test_plugin_timeout_is_finite_and_bounded(server: Server, timeout: str) -> None:
    response = await server.client.post(
        "/jobs/image_conversion", params={"timeout": timeout}, data=FORM, files=FILES
    )
    assert response.status_code == 422, response.text
    assert job_rows(server) == set() and job_folders(server) == set()


async def test_a_day_is_the_longest_timeout(server: Server) -> None:
    response = await server.client.post(
        "/jobs/image_conversion", params={"timeout": "86400"}, data=FORM, files=FILES
    )
    assert response.status_code == 200
    assert server.services.repo.get(response.json()["job_id"]).timeout_seconds == 86400  # type: ignore[union-attr]


@pytest.mark.parametrize("priority", ["11", "-1", "99999999999999999999", "nan"])
async def test_priority_is_bounded(server: Server, priority: str) -> None:
    response = await server.client.post(
        "/jobs/image_conversion", data={**FORM, "priority": priority}, files=FILES
    )
    assert response.status_code == 422


# -- bodies bounded while they stream ----------------------------------------------------------


async def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(settings: Settings) -> None:
    """No Content-Length: the old check never fired, and Starlette spooled everything first."""
    async with running_server(replace(settings, max_upload_bytes=1000)) as server:
        limit = 1000 + UPLOAD_SLACK
        pulled = 0
        chunk = b"x" * 16_384

        async def body() -> AsyncIterator[bytes]:
            nonlocal pulled
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            for _ in range(200 * 1024 * 1024 // len(chunk)):  # 200 MB, if anyone read it all
                pulled += len(chunk)
                yield chunk

        response = await server.client.post(
            "/jobs/image_conversion",
            content=body(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert response.status_code == 413, response.text
        assert response.headers["connection"] == "close"
        assert pulled <= limit + len(chunk), pulled
        assert job_rows(server) == set() and job_folders(server) == set()


async def test_a_declared_length_over_the_limit_is_refused_before_reading(settings: Settings) -> None:
    async with running_server(replace(settings, max_upload_bytes=1000)) as server:
        for length in (str(10**6), "9" * 5000):
            response = await server.client.post(
                "/jobs/image_conversion",
                content=b"",
                headers={"Content-Type": "multipart/form-data; boundary=b", "Content-Length": length},
            )
            assert response.status_code == 413


async def test_stalled_uploads_get_408_and_their_connections_are_closed(settings: Settings) -> None:
    """A body that stops sending is answered and closed, so stalled uploads cannot pile up
    (1,100 of them used to exhaust the file descriptors and take GET / down)."""
    async with (
        running_server(replace(settings, upload_idle_timeout=1.0)) as srv,
        uvicorn_serving(srv.app) as web,
    ):
        port = web.config.port
        head = (
            b"POST /jobs/image_conversion HTTP/1.1\r\nHost: compute\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\npartial'
        )
        stalled = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            await writer.drain()
            stalled.append((reader, writer))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            started = time.monotonic()
            health = await client.get("/")
            assert health.status_code == 200 and time.monotonic() - started < 0.5
            answers = await asyncio.gather(*(asyncio.wait_for(r.read(), 10) for r, _ in stalled))
            for answer in answers:  # read() returned: the server answered, then closed
                assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
                assert b"stalled" in answer
            for _, writer in stalled:
                writer.close()
            await wait_for(
                lambda: not web.server_state.connections - idle_connections(web),
                what="the stalled connections released",
            )
            assert (await client.get("/")).status_code == 200
        assert job_rows(srv) == set() and job_folders(srv) == set()


async def test_a_chunked_upload_on_a_real_server_is_cut_off_early(settings: Settings) -> None:
    async with (
        running_server(replace(settings, max_upload_bytes=1000)) as srv,
        uvicorn_serving(srv.app) as web,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", web.config.port)
        writer.write(
            b"POST /jobs/image_conversion HTTP/1.1\r\nHost: compute\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"x" * 65_536
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        sent = 0
        answer = b""
        with contextlib.suppress(ConnectionError):
            while sent < 200 * 1024 * 1024:
                writer.write(framed)
                await writer.drain()
                sent += len(chunk)
                with contextlib.suppress(TimeoutError):
                    answer += await asyncio.wait_for(reader.read(4096), 0.001)
                if answer:
                    break
        if not answer:
            answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
        assert sent < 50 * 1024 * 1024  # cut off near the limit, not after 200 MB


# -- orphan job folders -----------------------------------------------------------------------


def _make_folder(server: Server, name: str, age: float) -> Path:
    folder = server.services.storage.create_job_directory(name)
    (folder / "input" / "upload.png").write_bytes(b"x" * 10)
    then = time.time() - age
    for path in (folder / "input" / "upload.png", folder / "input", folder / "output", folder):
        os.utime(path, (then, then))
    return Path(folder)


async def test_cleanup_removes_old_folders_without_a_job(server: Server) -> None:
    kept_job = (await server.submit())["job_id"]
    _make_folder(server, kept_job, age=3600)  # old, but its job exists
    _make_folder(server, "orphan-old", age=3600)
    _make_folder(server, "orphan-young", age=1)  # an upload in flight, perhaps
    response = await server.client.delete("/admin/jobs/cleanup")
    assert response.status_code == 200
    assert job_folders(server) == {kept_job, "orphan-young"}


async def test_orphan_folders_are_swept_in_the_background(settings: Settings) -> None:
    async with running_server(replace(settings, orphan_grace_seconds=0.5)) as server:
        kept_job = (await server.submit())["job_id"]
        _make_folder(server, "orphan", age=3600)
        await wait_for(lambda: job_folders(server) == {kept_job}, timeout=10, what="the orphan folder swept")


# -- Idempotency-Key ----------------------------------------------------------------------------


async def test_a_retry_with_the_same_idempotency_key_gets_the_same_job(server: Server) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    first = await server.client.post("/jobs/image_conversion", data=FORM, files=FILES, headers=headers)
    again = await server.client.post("/jobs/image_conversion", data=FORM, files=FILES, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["task_type"] == "image_conversion"
    other = await server.client.post(
        "/jobs/image_conversion", data=FORM, files=FILES, headers={"Idempotency-Key": "retry-2"}
    )
    assert other.json()["job_id"] != first.json()["job_id"]
    assert job_rows(server) == job_folders(server) == {first.json()["job_id"], other.json()["job_id"]}
    record = server.services.repo.get(first.json()["job_id"])
    assert record is not None
    with server.services.repo.engine.connect() as conn:
        stored = conn.execute(
            select(jobs_table.c.idempotency_key).where(jobs_table.c.job_id == record.job_id)
        ).scalar_one()
    assert stored == "g:retry-1"  # no user: auth is off


async def test_concurrent_retries_make_one_job_and_leave_one_folder(server: Server) -> None:
    headers = {"Idempotency-Key": "race"}
    replies = await asyncio.gather(
        *(
            server.client.post("/jobs/image_conversion", data=FORM, files=FILES, headers=headers)
            for _ in range(6)
        )
    )
    assert {r.status_code for r in replies} == {200}
    ids = {r.json()["job_id"] for r in replies}
    assert len(ids) == 1
    assert job_rows(server) == job_folders(server) == ids


@pytest.mark.parametrize("key", ["k" * 201, ""])
async def test_bad_idempotency_keys_are_400(server: Server, key: str) -> None:
    response = await server.client.post(
        "/jobs/image_conversion", data=FORM, files=FILES, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 400
    assert job_rows(server) == set() and job_folders(server) == set()


async def test_an_idempotency_key_of_another_task_is_409(server: Server) -> None:
    headers = {"Idempotency-Key": "one-key"}
    first = await server.client.post("/jobs/image_conversion", data=FORM, files=FILES, headers=headers)
    other = await server.client.post(
        "/jobs/image_resize", data={"width": "4", "height": "4"}, files=FILES, headers=headers
    )
    assert other.status_code == 409 and first.json()["job_id"] in other.json()["detail"]
    assert job_rows(server) == job_folders(server) == {first.json()["job_id"]}


# -- a stalled database -------------------------------------------------------------------------


@contextlib.contextmanager
def write_lock(url: str) -> Iterator[None]:
    """Hold what every write needs, from another connection: SQLite's write lock (BEGIN
    IMMEDIATE), PostgreSQL's EXCLUSIVE lock on `jobs` (reads still go through in both)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(parsed.database), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import psycopg

    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
    ) as pg:
        pg.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.rollback()


async def test_a_locked_database_leaves_the_server_answering(settings: Settings) -> None:
    deadline = 1.0
    async with running_server(replace(settings, db_request_timeout=deadline)) as server:
        before = (await server.submit())["job_id"]
        assert (await server.client.get("/")).json()["database"] == "ok"
        db = server.services.db
        with write_lock(settings.database_url):
            post = asyncio.create_task(server.client.post("/jobs/image_conversion", data=FORM, files=FILES))
            await wait_for(lambda: db.in_flight > 0, what="the submit waiting for the database")
            started = time.monotonic()
            health = await server.client.get("/")
            assert health.status_code == 200 and time.monotonic() - started < deadline / 2
            assert not post.done()  # the submit still waits, and the server answers meanwhile
            started = time.monotonic()
            refused = await post
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "locked" in refused.json()["detail"]
            assert time.monotonic() - started < 3 * deadline
            assert (await server.client.get("/")).json()["database"] == "unavailable"
            assert (await server.client.get(f"/jobs/{before}")).status_code == 200  # reads go on
            cancel = await server.client.post(f"/jobs/{before}/cancel")
            assert cancel.status_code == 503 and "retry-after" in cancel.headers
        # Released: the database is seen again, and everything works.
        await wait_for(lambda: _database_state(server), timeout=10, what="database ok again")
        after = (await server.submit())["job_id"]
        assert job_rows(server) == job_folders(server) == {before, after}  # nothing lost, no leftovers
        assert (await server.job(before))["status"] == "queued"


async def test_background_database_work_never_stalls_the_loop(settings: Settings, probe: MqttProbe) -> None:
    """The lease sweep (every second here) and the worker-event ingest write to the database
    too; while it is locked they wait off the event loop, and the server keeps answering."""
    async with running_server(replace(settings, db_request_timeout=1.0, lease_seconds=4.0)) as server:
        job_id = (await server.submit())["job_id"]
        ingest = server.services.ingest
        with write_lock(settings.database_url):
            forged = {
                "job_id": job_id,
                "worker_id": "w",
                "event": "progress",
                "progress": 5,
                "timestamp": 1,
                "attempt": 1,
                "seq": 1,
                "sig": "cd" * 32,
            }
            probe.publish(server.topics.job_event("image_conversion", job_id), json.dumps(forged))
            until = time.monotonic() + 2.5  # the event's arrival, and longer than the sweep interval
            slowest = 0.0
            while time.monotonic() < until:
                started = time.monotonic()  # a GET / and a short pause: a stalled loop shows in either
                assert (await server.client.get("/")).status_code == 200
                await asyncio.sleep(0.05)
                slowest = max(slowest, time.monotonic() - started)
            assert slowest < 0.5, f"the event loop stalled for {slowest:.2f} s while the database was locked"
            assert ingest.rejected.total() == 0  # still waiting for the database, off the loop
        await wait_for(lambda: ingest.rejected.total() >= 1, what="the forged event rejected")
        assert (await server.job(job_id))["status"] == "queued"


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # SQLite WAL never blocks a read
async def test_reads_behind_a_lock_wait_off_the_loop(settings: Settings) -> None:
    """PostgreSQL's ACCESS EXCLUSIVE lock (a migration, VACUUM FULL, an operator's LOCK TABLE)
    stops reads too. The look-up after a verified Last Will and the queue summary read on a
    thread: while they wait, the server answers, and they finish once the lock goes."""
    parsed = make_url(settings.database_url)
    async with running_server(replace(settings, lease_seconds=2.0)) as server:  # a short grace
        await server.submit()
        rescuer, queues = server.services.rescuer, server.services.queues
        import psycopg

        with psycopg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database
        ) as pg:
            # Ended by the database after 20 s: a look-up stuck on the loop cannot hold the test for ever.
            pg.execute("SET idle_in_transaction_session_timeout = '20s'")
            pg.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            rescuer.worker_lost("w-gone", "s-gone")  # what a verified Last Will does
            queues.mark_dirty()
            await wait_for(lambda: not queues.dirty, what="the queue summary started")
            assert (await server.client.get("/")).status_code == 200
            pg.execute("SELECT 1")  # the lock was held all along (a timed-out session raises here)
            assert rescuer.checks == 0  # the Will's look-up still waits, off the loop
            pg.rollback()
        await wait_for(lambda: rescuer.checks == 1, timeout=10, what="the Will's look-up done")
        assert (await server.client.get("/")).status_code == 200


async def _database_state(server: Server) -> bool:
    return bool((await server.client.get("/")).json()["database"] == "ok")


# -- per-user isolation -------------------------------------------------------------------------


async def test_users_see_and_act_on_their_own_jobs_only(
    settings: Settings, signing_key: tuple[bytes, Path]
) -> None:
    secured = replace(settings, auth_disabled=False, public_key_path=signing_key[1])
    alice, bob = bearer(signing_key, "alice"), bearer(signing_key, "bob")
    admin = bearer(signing_key, "root", "ai_inference_support", "admin")
    boss = bearer(signing_key, "boss", is_admin=True)
    async with running_server(secured) as server:
        client = server.client

        async def submit(headers: dict[str, str], key: str | None = None) -> str:
            extra = {"Idempotency-Key": key} if key else {}
            response = await client.post(
                "/jobs/image_conversion", data=FORM, files=FILES, headers={**headers, **extra}
            )
            assert response.status_code == 200, response.text
            return str(response.json()["job_id"])

        mine = await submit(alice)
        bobs = await submit(bob)
        for url in (f"/jobs/{mine}", f"/jobs/{mine}/files/input/upload.png"):
            assert (await client.get(url, headers=alice)).status_code == 200
            assert (await client.get(url, headers=admin)).status_code == 200
            assert (await client.get(url, headers=boss)).status_code == 200
            refused = await client.get(url, headers=bob)
            assert refused.status_code == 404 and refused.json()["detail"] == f"job {mine} not found"
        assert (await client.post(f"/jobs/{mine}/cancel", headers=bob)).status_code == 404
        assert (await client.delete(f"/jobs/{mine}", headers=bob)).status_code == 404
        assert (await client.get(f"/jobs/{mine}", headers=alice)).json()["status"] == "queued"
        assert (await client.post(f"/jobs/{bobs}/cancel", headers=alice)).status_code == 404
        assert (await client.post(f"/jobs/{bobs}/cancel", headers=bob)).status_code == 200
        assert (await client.delete(f"/jobs/{bobs}", headers=admin)).status_code == 204

        # The same Idempotency-Key from two users: two jobs.
        assert await submit(alice, "same") != await submit(bob, "same")
        assert await submit(alice, "same") == await submit(alice, "same")

        # Guests (guest mode on, no token) see only jobs created without a user.
        await client.put("/admin/pref/guest-mode", data={"guest_mode": "true"}, headers=admin)
        guests = await submit({})
        assert (await client.get(f"/jobs/{guests}")).status_code == 200
        assert (await client.get(f"/jobs/{mine}")).status_code == 404
        assert (await client.get(f"/jobs/{guests}", headers=alice)).status_code == 404
        assert (await client.get(f"/jobs/{guests}", headers=admin)).status_code == 200


async def test_idempotency_keys_of_users_never_collide(
    settings: Settings, signing_key: tuple[bytes, Path]
) -> None:
    """Stored as `<user>:<key>`, user `alice:x` with key `y` got `alice`'s job for key `x:y`, and
    a user named `-` the guests' jobs (issue 16)."""
    secured = replace(settings, auth_disabled=False, public_key_path=signing_key[1])
    admin = bearer(signing_key, "root", "ai_inference_support", "admin")
    async with running_server(secured) as server:
        await server.client.put("/admin/pref/guest-mode", data={"guest_mode": "true"}, headers=admin)

        async def submit(user: str | None, key: str) -> str:
            headers = {"Idempotency-Key": key, **(bearer(signing_key, user) if user is not None else {})}
            response = await server.client.post(
                "/jobs/image_conversion", data=FORM, files=FILES, headers=headers
            )
            assert response.status_code == 200, response.text
            return str(response.json()["job_id"])

        pairs = [("alice", "x:y"), ("alice:x", "y"), (None, "k"), ("-", "k"), ("g", "k"), ("u1", "u:k")]
        first = [await submit(user, key) for user, key in pairs]
        assert len(set(first)) == len(pairs)  # six pairs, six jobs
        assert [await submit(user, key) for user, key in pairs] == first  # each retry its own job


async def test_no_auth_mode_sees_every_job(server: Server) -> None:
    job_id = (await server.submit())["job_id"]
    with server.services.repo.engine.begin() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.job_id == job_id).values(created_by="alice"))
    assert (await server.client.get(f"/jobs/{job_id}")).json()["created_by"] == "alice"
    assert (await server.client.get(f"/jobs/{job_id}/files/input/upload.png")).status_code == 200
