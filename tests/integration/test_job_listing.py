"""GET /jobs and GET /workers over a real server and database (SQLite and PostgreSQL).

Pages walk every job once while jobs are added, filters and sorts match the rows, each filter
is an index range (SQLite's plan), bad cursors and limits are refused, users list only their
own jobs, and GET /workers shows what the database vouches for.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cl_ml_tools import Job
from sqlalchemy import text

from compute.config import Settings
from compute.db.queries import JobFilter, JobQueries, JobSort
from compute.db.repository import JobRepository
from compute.db.session import make_engine
from compute_bench.noop import TASK_TYPE
from tests.support.auth import SigningKey, bearer, secured
from tests.support.fakes import GatedNoop
from tests.support.inprocess import Server, WorkerFactory, running_server
from tests.support.jobs import add_job, set_columns
from tests.support.waits import wait_for

# The broker plays no part in these answers: one is enough (the database still varies).
one_broker = pytest.mark.parametrize("broker", ["amqtt"], indirect=True)


def add(server: Server, *, task: str = "image_conversion", by: str | None = None, priority: int = 5) -> str:
    return add_job(server, task, by=by, priority=priority)


async def walk(
    server: Server, limit: int, headers: dict[str, str] | None = None, during: Any = None, **params: Any
) -> list[str]:
    """Every page's job ids in order; `during()` runs after each page (to add jobs meanwhile)."""
    seen: list[str] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await server.client.get("/jobs", params=query, headers=headers or {})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["jobs"]) <= limit
        seen += [job["job_id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
        if during is not None:
            during()
        if cursor is None:
            return seen


@one_broker
async def test_pages_walk_every_job_once_while_jobs_are_added(server: Server) -> None:
    priorities = [3, 7, 5, 7, 0, 10, 5, 3, 9, 1, 5, 7, 2, 8, 5, 6, 4, 7, 5, 10, 0, 5, 6]
    ids = [add(server, priority=p) for p in priorities]
    added: list[str] = []

    def add_more() -> None:
        added.append(add(server, priority=10))

    newest = await walk(server, 5, during=add_more)
    assert newest == ids[::-1]  # what was added meanwhile came before the first page: not seen

    oldest = await walk(server, 4, sort="created_at", during=add_more)
    everything = ids + added
    assert oldest == everything[: len(oldest)] and set(ids) <= set(oldest)  # new ones at the end
    assert len(oldest) == len(set(oldest))

    urgent = await walk(server, 6, sort="-priority")
    by_priority = {job_id: p for job_id, p in zip(ids, priorities, strict=True)}
    by_priority.update(dict.fromkeys(added, 10))
    order = {job_id: i for i, job_id in enumerate(ids + added)}
    assert urgent == sorted(by_priority, key=lambda j: (-by_priority[j], order[j]))
    least = sorted(by_priority, key=lambda j: (by_priority[j], order[j]))
    assert await walk(server, 50, sort="priority") == least

    job = (await server.client.get("/jobs", params={"limit": 1, "include": "task_output"})).json()["jobs"][0]
    assert job == await server.job(job["job_id"])  # the items are GET /jobs/{id}'s
    light = (await server.client.get("/jobs", params={"limit": 1})).json()["jobs"][0]
    assert light == {k: v for k, v in job.items() if k != "task_output"}  # without the result


@one_broker
async def test_listings_leave_results_out_unless_asked(server: Server) -> None:
    """A 19.5 MB exif result made each GET /jobs?limit=50 (the dashboard's poll) 57 MB (issue 16,
    item 4): results are read and sent only with include=task_output."""
    job_id = add(server)
    set_columns(server, job_id, status="completed", task_output=json.dumps({"xmp": "x" * 200_000}))
    page = await server.client.get("/jobs")
    assert page.status_code == 200 and len(page.content) < 5_000
    assert "task_output" not in page.json()["jobs"][0]
    full = await server.client.get("/jobs", params={"include": "task_output"})
    assert full.json()["jobs"][0]["task_output"] == {"xmp": "x" * 200_000}
    assert (await server.client.get("/jobs", params={"include": "everything"})).status_code == 422
    assert (await server.job(job_id))["task_output"] == {"xmp": "x" * 200_000}  # CL Server's route keeps it
    statement = JobQueries.statement(
        JobFilter(), everything=True, owner=None, sort=JobSort.NEWEST, limit=5, with_output=False
    )
    assert "jobs.task_output" not in str(statement)  # not even read from the database


@one_broker
async def test_filters(server: Server) -> None:
    first = add(server, by="alice")
    resized = add(server, task="image_resize", by="bob")
    failed = add(server, by="alice")
    ran = add(server, task="image_resize")
    for job_id, created_at in ((first, 1_000), (resized, 2_000), (failed, 3_000), (ran, 4_000)):
        set_columns(server, job_id, created_at=created_at)
    set_columns(server, failed, status="failed")
    set_columns(server, ran, status="completed", worker_id="w-7")

    async def ids(**params: Any) -> list[str]:
        response = await server.client.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        return [job["job_id"] for job in response.json()["jobs"]]

    assert await ids() == [ran, failed, resized, first]
    assert await ids(status="queued") == [resized, first]
    assert await ids(status=["failed", "completed"]) == [ran, failed]
    assert await ids(task_type="image_resize") == [ran, resized]
    assert await ids(created_by="alice") == [failed, first]
    assert await ids(created_by="alice", status="queued") == [first]
    assert await ids(worker_id="w-7") == [ran]
    assert await ids(created_after=2_000) == [ran, failed, resized]
    assert await ids(created_before=2_000) == [first]
    assert await ids(created_after=2_000, created_before=4_000, sort="created_at") == [resized, failed]
    assert await ids(task_type="nothing") == []


def test_each_filter_is_an_index_range(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    queries = JobQueries(engine)
    cases = [
        JobFilter(statuses=("queued",)),
        JobFilter(task_types=("hash",)),
        JobFilter(created_by="alice"),
        JobFilter(worker_id="w"),
        JobFilter(created_after=5),
        JobFilter(),
    ]
    for filters in cases:
        for everything, owner in ((True, None), (False, None), (False, "alice")):
            stmt = queries.statement(
                filters, everything=everything, owner=owner, sort=JobSort.NEWEST, limit=50, after=[1, 2]
            )
            sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
            with engine.connect() as conn:
                plan = " | ".join(row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "INDEX" in plan and "SCAN jobs" not in plan.replace("SCAN jobs USING", ""), (filters, plan)


def _unsealed(*values: Any) -> str:
    """A cursor as the first version wrote them: base64url of plain JSON."""
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).rstrip(b"=").decode()


@one_broker
@pytest.mark.parametrize(
    "cursor",
    [
        lambda _seal: "garbage",
        lambda _seal: "W10",
        lambda _seal: "x" * 300,
        lambda seal: seal.encode(JobSort.OLDEST, [1, 2]),  # another sort's
        lambda seal: seal.encode(JobSort.NEWEST, [1]),
        lambda _seal: _unsealed(1, "-created_at", 1, 2),  # the first, readable form
        lambda _seal: _unsealed(2, "-created_at", 1, 2),
    ],
)
async def test_a_bad_cursor_is_400(server: Server, cursor: Callable[[Any], str]) -> None:
    response = await server.client.get("/jobs", params={"cursor": cursor(server.services.queries.seal)})
    assert response.status_code == 400 and "cursor" in response.json()["detail"]


@one_broker
async def test_cursors_are_sealed_against_reading_and_tampering(server: Server) -> None:
    """A cursor held the internal row id in plain base64: anyone could read how many jobs
    everyone had created (issue 16). Sealed, it shows nothing, and any change to it is a 400."""
    for _ in range(3):
        add(server)
    page = (await server.client.get("/jobs", params={"limit": 1})).json()
    cursor = page["next_cursor"]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert b"created_at" not in raw  # no readable JSON inside (any byte may occur in ciphertext)
    with pytest.raises(ValueError):
        json.loads(raw)
    again = (await server.client.get("/jobs", params={"limit": 1})).json()["next_cursor"]
    assert again != cursor  # a fresh nonce each time: equal positions do not compare equal either
    for n in (0, len(cursor) // 2, len(cursor) - 2):
        flipped = cursor[:n] + ("A" if cursor[n] != "A" else "B") + cursor[n + 1 :]
        response = await server.client.get("/jobs", params={"cursor": flipped})
        assert response.status_code == 400, (n, response.text)
    assert (await server.client.get("/jobs", params={"cursor": cursor})).status_code == 200


async def test_every_server_process_reads_the_others_cursors(engine: Any) -> None:
    """The key lives in the database: a page's cursor from one process works on another."""
    repo = JobRepository(engine)
    for n in range(3):
        repo.add_job(Job(job_id=f"job-{n}", task_type="hash", params={}))
    one, other = JobQueries(engine), JobQueries(engine)
    first = one.page(JobFilter(), everything=True, limit=1)
    assert first.next_cursor is not None
    second = other.page(JobFilter(), everything=True, limit=1, cursor=first.next_cursor)
    assert [j.job_id for j in first.jobs + second.jobs] == ["job-2", "job-1"]


@one_broker
@pytest.mark.parametrize(
    "params",
    [
        {"limit": "201"},
        {"limit": "0"},
        {"limit": "-1"},
        {"status": "running"},
        {"sort": "name"},
        {"created_after": "-1"},
        {"created_before": str(2**63)},
        {"task_type": "x" * 201},
    ],
)
async def test_out_of_bounds_parameters_are_422(server: Server, params: dict[str, str]) -> None:
    assert (await server.client.get("/jobs", params=params)).status_code == 422


@one_broker
async def test_users_list_their_own_jobs_only(settings: Settings, signing_key: SigningKey) -> None:
    alice, bob = bearer(signing_key, "alice"), bearer(signing_key, "bob")
    admin = bearer(signing_key, "root", "ai_inference_support", "admin")
    async with running_server(secured(settings, signing_key)) as server:
        alices = {add(server, by="alice") for _ in range(3)}
        bobs = {add(server, by="bob")}
        guests = {add(server)}
        assert set(await walk(server, 2, alice)) == alices
        assert set(await walk(server, 2, bob)) == bobs
        assert set(await walk(server, 2, bob, created_by="alice")) == set()  # not a way in
        assert set(await walk(server, 2, admin)) == alices | bobs | guests
        assert set(await walk(server, 2, admin, created_by="bob")) == bobs
        assert (await server.client.get("/jobs")).status_code == 401
        await server.client.put("/admin/pref/guest-mode", data={"guest_mode": "true"}, headers=admin)
        assert set(await walk(server, 2)) == guests
        assert (await server.client.get("/workers", headers=alice)).status_code == 200


@one_broker
async def test_workers_shows_what_the_database_vouches_for(
    server: Server, start_worker: WorkerFactory
) -> None:
    plugin = GatedNoop()
    # Thread mode: the test opens the plugin's gate, which a plugin process would not share.
    running = await start_worker(tasks=(TASK_TYPE,), plugins={TASK_TYPE: plugin}, plugin_isolation="thread")
    worker_id = running.settings.worker_id

    async def listed() -> list[dict[str, Any]]:
        response = await server.client.get("/workers")
        assert response.status_code == 200, response.text
        return response.json()["workers"]  # type: ignore[no-any-return]

    async def shown(state: str) -> dict[str, Any] | None:
        found = [w for w in await listed() if w["worker_id"] == worker_id and w["state"] == state]
        return found[0] if found else None

    idle = await wait_for(lambda: shown("idle"), what="the worker listed idle")
    assert idle["session"] == running.worker.session and idle["tasks"] == [TASK_TYPE]
    assert idle["running_jobs"] == [] and idle["version"] and idle["last_heartbeat"] > 0
    assert "secret" not in str(idle)

    job_id = add(server, task=TASK_TYPE)
    await wait_for(plugin.entered.is_set, what="the job to start")
    busy = await wait_for(lambda: shown("busy"), what="the worker listed busy")
    assert busy["running_jobs"] == [job_id]
    plugin.gate.set()
    await server.wait_status(job_id, "completed")

    await running.shutdown()  # its session stops in the database
    await wait_for(lambda: _absent(listed, worker_id), what="the stopped worker gone from the list")


async def _absent(listed: Any, worker_id: str) -> bool:
    return all(w["worker_id"] != worker_id for w in await listed())
