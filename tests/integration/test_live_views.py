"""Live views over real HTTP (uvicorn): GET /jobs/{id}/events and GET /events (SSE), GET /queues.

A real server (bus, database) and an in-process worker; the streams are read as a browser's
EventSource reads them, frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import uvicorn

from compute.config import Settings
from compute.db.preferences import GUEST_MODE, PreferenceStore
from compute.server.serving import StreamClosingServer, http_protocol
from compute_bench.harness import free_port
from tests.support.auth import SigningKey, bearer, secured
from tests.support.images import png_bytes
from tests.support.inprocess import Server, WorkerFactory, running_server
from tests.support.waits import wait_for

# The broker plays no part in what is tested here: one is enough (the database still varies).
pytestmark = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)

FORM = {"format": "jpg"}


@dataclass
class Frame:
    event: str = ""
    data: Any = None
    comment: str = ""


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """SSE frames as an EventSource parses them (comments too, which it would skip)."""
    frame = Frame()
    async for line in response.aiter_lines():
        if line == "":
            if frame.event or frame.comment:
                yield frame
            frame = Frame()
        elif line.startswith(":"):
            frame.comment = line[1:].strip()
        elif line.startswith("event: "):
            frame.event = line[len("event: ") :]
        elif line.startswith("data: "):
            frame.data = json.loads(line[len("data: ") :])


async def next_frame(stream: AsyncIterator[Frame], timeout: float = 15.0) -> Frame:
    return await asyncio.wait_for(anext(stream), timeout)


@contextlib.asynccontextmanager
async def http(server: Server) -> AsyncIterator[tuple[httpx.AsyncClient, StreamClosingServer]]:
    """The app (lifespan running) behind uvicorn as compute-server runs it, and a client."""
    config = uvicorn.Config(
        server.app,
        host="127.0.0.1",
        port=free_port(),
        lifespan="off",
        log_level="warning",
        http=http_protocol(
            server.settings.header_read_timeout, send_timeout=server.settings.http_send_timeout
        ),
        loop="asyncio",
    )
    web = StreamClosingServer(config, server.app.state.services.changes.close)
    task = asyncio.create_task(web.serve())
    await wait_for(lambda: web.started, what="uvicorn started")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=15) as client:
            yield client, web
    finally:
        web.should_exit = True
        await asyncio.wait_for(task, 15)


async def submit(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> str:
    response = await client.post(
        "/jobs/image_conversion",
        data=FORM,
        headers=headers or {},
        files={"file": ("a.png", png_bytes(), "image/png")},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["job_id"])


async def test_a_job_stream_follows_the_job_to_the_end(server: Server, start_worker: WorkerFactory) -> None:
    async with http(server) as (client, _web):
        job_id = await submit(client)
        async with client.stream("GET", f"/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            stream = frames(response)
            assert (await next_frame(stream)).comment == "connected"
            first = await next_frame(stream)  # the state when the client came
            assert first.event == "job"
            assert first.data == {
                "job_id": job_id,
                "status": "queued",
                "progress": 0,
                "task_type": "image_conversion",
                "timestamp": first.data["timestamp"],
            }
            await start_worker(wait_idle=False)
            seen: list[tuple[str, int]] = []
            while (frame := await next_frame(stream)).event == "job":
                seen.append((frame.data["status"], frame.data["progress"]))
            assert frame.event == "end" and frame.data == {"reason": "terminal"}
            assert seen[-1] == ("completed", 100)
            assert ("processing", 0) in seen  # started
            assert all(s in ("processing", "completed") for s, _ in seen)
            assert [p for _, p in seen] == sorted(p for _, p in seen)  # never backwards
            with pytest.raises(StopAsyncIteration):  # and the server closed the stream
                await next_frame(stream)
        # A finished job: its state, then the end, at once.
        async with client.stream("GET", f"/jobs/{job_id}/events") as response:
            got = [f async for f in frames(response) if f.event]
        assert [(f.event, f.data.get("status")) for f in got] == [("job", "completed"), ("end", None)]
        assert server.app.state.services.changes.subscribers == set()  # nothing left behind


async def test_all_events_carry_every_change_and_heartbeats(
    settings: Settings, start_worker: WorkerFactory
) -> None:
    async with (
        running_server(replace(settings, sse_heartbeat=0.2)) as server,
        http(server) as (client, _web),
        client.stream("GET", "/events") as response,
    ):
        stream = frames(response)
        assert (await next_frame(stream)).comment == "connected"
        assert (await next_frame(stream)).comment == "heartbeat"  # nothing happens: still alive
        job_id = await submit(client)
        worker = await start_worker(wait_idle=False)
        statuses: list[str] = []
        while not statuses or statuses[-1] != "completed":
            frame = await next_frame(stream)
            if frame.event == "job":
                assert frame.data["job_id"] == job_id
                assert frame.data["task_type"] == "image_conversion"
                statuses.append(frame.data["status"])
        assert statuses[0] == "queued" and "processing" in statuses
        await worker.shutdown()  # the next job waits, so it can be cancelled
        cancelled = await submit(client)
        assert (await client.post(f"/jobs/{cancelled}/cancel")).status_code == 200
        changes: list[tuple[str, str]] = []
        while len(changes) < 2:
            frame = await next_frame(stream)
            if frame.event == "job":
                changes.append((frame.data["job_id"], frame.data["status"]))
        # A cancelled job is `cancelled` here (CL Server's `inference/events` says `failed`).
        assert changes == [(cancelled, "queued"), (cancelled, "cancelled")]


async def test_the_server_ends_open_streams_when_it_shuts_down(server: Server) -> None:
    async with http(server) as (client, web), client.stream("GET", "/events") as response:
        stream = frames(response)
        assert (await next_frame(stream)).comment == "connected"
        web.should_exit = True  # what SIGTERM does
        end = await next_frame(stream)
        assert end.event == "end" and end.data == {"reason": "shutdown"}
        with pytest.raises(StopAsyncIteration):
            await next_frame(stream)
    # http() returned: uvicorn finished its shutdown with the stream open a moment ago.


async def test_stream_input_errors_are_4xx(server: Server) -> None:
    async with http(server) as (client, _web):
        for path in (
            "/jobs/nope/events",
            "/jobs/" + "x" * 300 + "/events",
            "/jobs/00000000-0000-0000-0000-000000000000/events",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
        response = await client.get("/events", params={"access_token": "x" * 20_000})
        assert response.status_code == 422
    assert server.app.state.services.changes.subscribers == set()


# -- auth and per-user isolation ----------------------------------------------------------------


def token(signing_key: SigningKey, user: str, *permissions: str) -> str:
    return bearer(signing_key, user, *permissions)["Authorization"].removeprefix("Bearer ")


async def test_each_user_sees_only_their_own_jobs_live(settings: Settings, signing_key: SigningKey) -> None:
    alice, bob = token(signing_key, "alice"), token(signing_key, "bob")
    admin = token(signing_key, "root", "ai_inference_support", "admin")
    async with running_server(secured(settings, signing_key)) as server, http(server) as (client, _web):

        def header(t: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {t}"}

        assert (await client.get("/events")).status_code == 401
        assert (await client.get("/events", params={"access_token": "forged"})).status_code == 401
        no_perm = token(signing_key, "eve", "something_else")
        assert (await client.get("/events", params={"access_token": no_perm})).status_code == 403
        bobs_job = await submit(client, header(bob))
        # Someone else's job answers like a job that does not exist.
        assert (await client.get(f"/jobs/{bobs_job}/events", headers=header(alice))).status_code == 404

        async with (
            client.stream("GET", "/events", params={"access_token": alice}) as as_alice,
            client.stream("GET", "/events", headers=header(admin)) as as_admin,
            client.stream(
                "GET",
                "/events",
                headers=header(bob),  # the header wins
                params={"access_token": "ignored"},
            ) as as_bob,
        ):
            streams = {
                name: frames(r) for name, r in (("alice", as_alice), ("admin", as_admin), ("bob", as_bob))
            }
            for stream in streams.values():
                assert (await next_frame(stream)).comment == "connected"
            bobs = await submit(client, header(bob))
            alices = await submit(client, header(alice))

            async def jobs_seen(stream: AsyncIterator[Frame], last: str) -> list[str]:
                seen: list[str] = []
                while not seen or seen[-1] != last:
                    frame = await next_frame(stream)
                    if frame.event == "job":
                        seen.append(frame.data["job_id"])
                return seen

            # Alice's stream skips Bob's job (submitted first) and shows hers; Bob's shows his.
            assert await jobs_seen(streams["alice"], alices) == [alices]
            assert await jobs_seen(streams["bob"], bobs) == [bobs]
            assert await jobs_seen(streams["admin"], alices) == [bobs, alices]

        async with client.stream("GET", f"/jobs/{alices}/events", params={"access_token": alice}) as response:
            assert response.status_code == 200
            first = await next_frame(frames(response))
            assert first.comment == "connected"


async def test_queues_count_open_jobs_per_task(server: Server) -> None:
    assert (await server.client.get("/queues")).json() == []
    for _ in range(2):
        await server.submit()
    await server.submit("image_resize")
    queues = (await server.client.get("/queues")).json()
    assert [(q["task_type"], q["queued"], q["running"]) for q in queues] == [
        ("image_conversion", 2, 0),
        ("image_resize", 1, 0),
    ]
    assert all(q["oldest_queued_age_ms"] >= 0 for q in queues)


async def test_a_stream_ends_when_its_token_expires(settings: Settings, signing_key: SigningKey) -> None:
    async with running_server(secured(settings, signing_key)) as server, http(server) as (client, _web):
        soon = bearer(signing_key, "alice", exp=int(time.time()) + 2)
        async with client.stream("GET", "/events", headers=soon) as response:
            assert response.status_code == 200
            got = [f async for f in frames(response) if f.event]
        assert [(f.event, f.data) for f in got] == [("end", {"reason": "expired"})]


async def test_a_user_holds_at_most_sse_max_per_user_streams(
    settings: Settings, signing_key: SigningKey
) -> None:
    """One user took every stream he asked for (1,000) and another user's got 503 (issue 16)."""
    alice, bob = bearer(signing_key, "alice"), bearer(signing_key, "bob")
    limited = replace(secured(settings, signing_key), sse_max_per_user=3)
    async with running_server(limited) as server, http(server) as (client, _web):
        async with contextlib.AsyncExitStack() as held:
            for _ in range(3):
                opened = await held.enter_async_context(client.stream("GET", "/events", headers=alice))
                assert opened.status_code == 200
            refused = await client.get("/events", headers=alice)
            assert refused.status_code == 429 and refused.headers["retry-after"]
            assert "SSE_MAX_PER_USER" in refused.json()["detail"]
            refused = await client.get(f"/jobs/{await submit(client, alice)}/events", headers=alice)
            assert refused.status_code == 429  # per-job streams count too
            async with client.stream("GET", "/events", headers=bob) as other:
                assert other.status_code == 200  # another user is not affected
        await wait_for(lambda: not server.services.changes.subscribers, what="the streams closed")
        async with client.stream("GET", "/events", headers=alice) as again:
            assert again.status_code == 200  # closed ones free their places


@pytest.mark.parametrize("where", ["this process", "another process"])
async def test_a_guests_stream_ends_when_guest_mode_goes_off(
    settings: Settings, signing_key: SigningKey, where: str
) -> None:
    """A guest's /events opened before guest mode went off delivered a job change 4 s later and
    stayed open (issue 16, item 3). Off here ends it at once; off in another server process
    sharing the database, within guest mode's refresh."""
    admin = bearer(signing_key, "root", "ai_inference_support", "admin")
    async with running_server(secured(settings, signing_key)) as server, http(server) as (client, _web):
        on = await client.put("/admin/pref/guest-mode", data={"guest_mode": "true"}, headers=admin)
        assert on.status_code == 200
        async with (
            client.stream("GET", "/events") as as_guest,
            client.stream("GET", "/events", headers=admin) as as_admin,
        ):
            guest, watcher = frames(as_guest), frames(as_admin)
            assert (await next_frame(guest)).comment == "connected"
            assert (await next_frame(watcher)).comment == "connected"
            if where == "this process":
                await client.put("/admin/pref/guest-mode", data={"guest_mode": "false"}, headers=admin)
            else:
                PreferenceStore(server.services.route_engine).set(GUEST_MODE, False, "elsewhere")
            end = await next_frame(guest, timeout=10)
            assert end.event == "end" and end.data == {"reason": "revoked"}
            with pytest.raises(StopAsyncIteration):
                await next_frame(guest)
            await submit(client, admin)  # the admin's view goes on
            assert (await next_frame(watcher)).event == "job"
        assert (await client.get("/events")).status_code == 401  # and no new guest stream opens
