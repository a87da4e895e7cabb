"""PATCH /jobs/{id} (priority), POST /jobs/{id}/retry, cancel of a finished job, download types
and the job creation rate limit, over a real server, broker and database (SQLite, PostgreSQL).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from compute.config import Settings
from compute.db.tables import queue_entries_table
from compute.topics import Topics
from compute_bench.noop import TASK_TYPE, BenchNoopTask
from tests.support.auth import SigningKey, bearer, secured
from tests.support.images import png_bytes
from tests.support.inprocess import Server, WorkerFactory, running_server
from tests.support.jobs import add_job, set_columns
from tests.support.mqtt import MqttProbe

one_broker = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)
FORM = {"format": "jpg"}
FILES = {"file": ("photo.png", png_bytes(), "image/png")}


def add(server: Server, *, task: str = TASK_TYPE, by: str | None = None, priority: int = 5) -> str:
    return add_job(server, task, by=by, priority=priority)


class FailsOnce(BenchNoopTask):
    """bench_noop whose first run reports the plugin's own error (final: not retried by policy)."""

    def __init__(self) -> None:
        self.runs = 0

    async def execute(self, job: Any, params: Any, progress_callback: Any = None) -> dict[str, Any]:
        self.runs += 1
        if self.runs == 1:
            return {"status": "error", "error": "the first run fails"}
        return await super().execute(job, params, progress_callback)


# -- PATCH /jobs/{id} -----------------------------------------------------------------------------


@one_broker
async def test_a_queued_jobs_priority_changes_and_a_raise_is_hinted(server: Server, probe: MqttProbe) -> None:
    job_id = add(server)
    topics: Topics = server.topics
    await probe.subscribe(topics.job_available(TASK_TYPE))
    response = await server.client.patch(f"/jobs/{job_id}", json={"priority": 9})
    assert response.status_code == 200, response.text
    assert response.json()["priority"] == 9 and response.json()["status"] == "queued"
    hint = await probe.expect(
        lambda m: m.json().get("job_id") == job_id and m.json()["priority"] == 9,
        what="a hint for the raised job",
    )
    assert hint.topic == topics.job_available(TASK_TYPE)
    with server.services.repo.engine.connect() as conn:
        entry = conn.execute(
            select(queue_entries_table.c.priority).where(queue_entries_table.c.job_id == job_id)
        ).scalar()
    assert entry == 9  # CL Server's queue record follows

    lower = add(server, priority=5)
    assert (await server.client.patch(f"/jobs/{lower}", json={"priority": 0})).json()["priority"] == 0
    order = (await server.client.get("/jobs", params={"sort": "-priority"})).json()["jobs"]
    assert [job["job_id"] for job in order] == [job_id, lower]


@one_broker
@pytest.mark.parametrize(
    "body",
    [
        {"priority": 11},
        {"priority": -1},
        {"priority": "high"},
        {},
        {"priority": 5, "status": "completed"},
        {"priority": 2.5},
    ],
)
async def test_priority_is_bounded_like_the_submit_routes(server: Server, body: dict[str, Any]) -> None:
    job_id = add(server)
    assert (await server.client.patch(f"/jobs/{job_id}", json=body)).status_code == 422
    assert (await server.job(job_id))["priority"] == 5


@one_broker
async def test_only_a_queued_job_is_reprioritised(server: Server) -> None:
    job_id = add(server)
    set_columns(server, job_id, status="processing", worker_id="w")
    response = await server.client.patch(f"/jobs/{job_id}", json={"priority": 1})
    assert response.status_code == 409 and "processing" in response.json()["detail"]
    assert (await server.job(job_id))["priority"] == 5
    assert (await server.client.patch("/jobs/nope", json={"priority": 1})).status_code == 404


# -- POST /jobs/{id}/retry ------------------------------------------------------------------------


@one_broker
async def test_a_failed_job_is_retried_as_the_same_job(server: Server, start_worker: WorkerFactory) -> None:
    plugin = FailsOnce()
    # Thread mode: the test reads the plugin's own counter, which a plugin process would not share.
    await start_worker(tasks=(TASK_TYPE,), plugins={TASK_TYPE: plugin}, plugin_isolation="thread")
    job_id = add(server)
    failed = await server.wait_status(job_id, "failed")
    assert failed["error_message"] == "the first run fails"

    response = await server.client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 200, response.text
    assert response.json()["job_id"] == job_id
    done = await server.wait_status(job_id, "completed")
    assert done["error_message"] is None and done["task_output"]["steps"] == 0
    record = server.services.repo.get(job_id)
    assert record is not None and record.attempt == 2 and plugin.runs == 2
    assert [e["attempt"] for e in record.attempt_errors] == [1]  # the history stays
    assert record.max_retries == 1 + server.settings.task_policies.for_task(TASK_TYPE).max_retries

    again = await server.client.post(f"/jobs/{job_id}/retry")
    assert again.status_code == 409 and "completed" in again.json()["detail"]


@one_broker
async def test_a_cancelled_job_is_retried_and_cl_server_clients_hear_it(
    server: Server, probe: MqttProbe
) -> None:
    job_id = add(server)
    queued_again = await server.client.post(f"/jobs/{job_id}/retry")
    assert queued_again.status_code == 409 and "queued" in queued_again.json()["detail"]
    assert (await server.client.post(f"/jobs/{job_id}/cancel")).status_code == 200

    await probe.subscribe(server.topics.legacy_events)
    response = await server.client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 200
    assert response.json()["status"] == "queued" and response.json()["cancelled"] is False
    await probe.expect(
        lambda m: m.json() == {**m.json(), "job_id": job_id, "event_type": "queued"},
        what="queued on inference/events",
    )
    assert (await server.client.post("/jobs/nope/retry")).status_code == 404


# -- cancel of a finished job --------------------------------------------------------------------


@one_broker
async def test_cancelling_a_finished_job_is_409_and_changes_nothing(server: Server) -> None:
    done, cancelled = add(server), add(server)
    set_columns(server, done, status="completed", progress=100, task_output=json.dumps({"ok": 1}))
    assert (await server.client.post(f"/jobs/{cancelled}/cancel")).status_code == 200
    for job_id, status in ((done, "completed"), (cancelled, "cancelled")):
        before = await server.job(job_id)
        response = await server.client.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 409, response.text
        assert f"already {status}" in response.json()["detail"]
        assert await server.job(job_id) == before


# -- download types ------------------------------------------------------------------------------


@one_broker
async def test_downloads_carry_the_files_type(server: Server) -> None:
    job_id = (await server.submit())["job_id"]
    folder = server.services.storage.jobs_root / job_id / "output"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("master.m3u8", "segment_000.ts", "embedding.npy", "exif.json", "bundle.tar.gz", "noext"):
        (folder / name).write_bytes(b"x")
    expected = {
        "input/upload.png": "image/png",
        "output/master.m3u8": "application/vnd.apple.mpegurl",
        "output/segment_000.ts": "video/mp2t",
        "output/embedding.npy": "application/octet-stream",
        "output/exif.json": "application/json",
        "output/bundle.tar.gz": "application/octet-stream",
        "output/noext": "application/octet-stream",
    }
    for path, media_type in expected.items():
        response = await server.client.get(f"/jobs/{job_id}/files/{path}")
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == media_type, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-disposition"].startswith("attachment")  # never shown inline


# -- per-user isolation --------------------------------------------------------------------------


@one_broker
async def test_users_change_and_retry_their_own_jobs_only(
    settings: Settings, signing_key: SigningKey
) -> None:
    alice, bob = bearer(signing_key, "alice"), bearer(signing_key, "bob")
    admin = bearer(signing_key, "root", "ai_inference_support", "admin")
    async with running_server(secured(settings, signing_key)) as server:
        queued, failed = add(server, by="alice"), add(server, by="alice")
        set_columns(server, failed, status="failed")
        for method, url, body in (
            ("PATCH", f"/jobs/{queued}", {"priority": 1}),
            ("POST", f"/jobs/{failed}/retry", None),
        ):
            refused = await server.client.request(method, url, json=body, headers=bob)
            assert refused.status_code == 404, (method, url)
            assert refused.json()["detail"] == f"job {url.split('/')[2]} not found"
        assert (await server.client.get(f"/jobs/{queued}", headers=alice)).json()["priority"] == 5
        assert (
            await server.client.patch(f"/jobs/{queued}", json={"priority": 1}, headers=alice)
        ).status_code == 200
        assert (await server.client.post(f"/jobs/{failed}/retry", headers=admin)).status_code == 200


# -- rate limit ----------------------------------------------------------------------------------


@one_broker
async def test_job_creation_is_rate_limited_per_user(settings: Settings, signing_key: SigningKey) -> None:
    alice, bob = bearer(signing_key, "alice"), bearer(signing_key, "bob")
    limited = replace(secured(settings, signing_key), job_rate_limit=1.0, job_rate_burst=2)
    async with running_server(limited) as server:

        def submit(headers: dict[str, str], key: str | None = None) -> Any:
            extra = {"Idempotency-Key": key} if key else {}
            return server.client.post(
                "/jobs/image_conversion", data=FORM, files=FILES, headers={**headers, **extra}
            )

        first = await submit(alice, "k1")
        assert first.status_code == 200 and (await submit(alice)).status_code == 200
        refused = await submit(alice)
        assert refused.status_code == 429 and "a minute" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60  # one job a minute
        assert (await submit(bob)).status_code == 200  # another user's bucket
        replay = await submit(alice, "k1")  # creates nothing, so costs nothing
        assert replay.status_code == 200 and replay.json()["job_id"] == first.json()["job_id"]
        jobs = (await server.client.get("/jobs", headers=alice)).json()["jobs"]
        assert len(jobs) == 2


@one_broker
async def test_without_auth_the_limit_is_per_client_address(settings: Settings) -> None:
    async with running_server(replace(settings, job_rate_limit=1.0, job_rate_burst=1)) as server:
        assert (await server.submit())["status"] == "queued"
        response = await server.client.post("/jobs/image_conversion", data=FORM, files=FILES)
        assert response.status_code == 429 and response.headers["Retry-After"]
        assert (await server.client.get("/jobs")).status_code == 200
