"""Operating a running system: retention, forgetting gone workers, pausing task types, aging."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from cl_ml_tools import Job
from sqlalchemy import Engine, insert, select, update

from compute.config import Settings
from compute.db.paused import PausedTasks
from compute.db.repository import JobRepository
from compute.db.tables import jobs_table as jobs
from compute.db.tables import worker_sessions_table as sessions
from compute.jobs import now_ms
from compute.server.sweeps.priority_aging import PriorityAging
from compute.server.sweeps.retention import DAY_MS, RetentionPolicy, RetentionSweeper
from tests.support.brokers import BrokerInfo
from tests.support.inprocess import Server, WorkerFactory, running_server
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for

HOUR_MS = 3600 * 1000


def set_job(engine: Engine, job_id: str, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**values))


def job_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(jobs.c.job_id)).scalars())


# -- retention -------------------------------------------------------------------------------


async def test_retention_prunes_old_finished_jobs_and_their_folders_only(settings: Settings) -> None:
    async with running_server(replace(settings, retention_days=1)) as server:
        engine = server.services.repo.engine
        storage = server.services.storage
        ids = {
            name: (await server.submit())["job_id"]
            for name in (
                "old_done",
                "old_failed",
                "old_cancelled",
                "recent_done",
                "old_queued",
                "old_running",
            )
        }
        old = now_ms() - 2 * DAY_MS
        for name in ("old_done", "old_failed", "old_cancelled"):
            set_job(
                engine,
                ids[name],
                status=name.removeprefix("old_").replace("done", "completed"),
                created_at=old,
                completed_at=old + 1,
            )
        set_job(engine, ids["recent_done"], status="completed", created_at=old, completed_at=now_ms())
        set_job(engine, ids["old_queued"], created_at=old)
        set_job(engine, ids["old_running"], status="processing", created_at=old, started_at=old)
        assert all(storage.job_dir(job_id).is_dir() for job_id in ids.values())

        retention: RetentionSweeper = server.services.retention
        retention.batch = 2  # several batches, each its own transaction
        assert await asyncio.to_thread(retention.prune) == 3

        kept = {ids[n] for n in ("recent_done", "old_queued", "old_running")}
        assert job_ids(engine) == kept
        assert {job_id for job_id in ids.values() if storage.job_dir(job_id).is_dir()} == kept
        assert (await server.client.get(f"/jobs/{ids['old_done']}")).status_code == 404
        assert await asyncio.to_thread(retention.prune) == 0


async def test_retention_count_limit_keeps_the_newest_finished_jobs(settings: Settings) -> None:
    async with running_server(replace(settings, retention_max_jobs=2)) as server:
        engine = server.services.repo.engine
        finished = [(await server.submit())["job_id"] for _ in range(5)]
        queued = (await server.submit())["job_id"]
        base = now_ms() - HOUR_MS
        for n, job_id in enumerate(finished):  # finished in list order: the last two are the newest
            set_job(engine, job_id, status="completed", completed_at=base + n)

        assert await asyncio.to_thread(server.services.retention.prune) == 3
        assert job_ids(engine) == {finished[3], finished[4], queued}


async def test_retention_runs_in_the_background(server: Server) -> None:
    engine = server.services.repo.engine
    job_id = (await server.submit())["job_id"]
    set_job(engine, job_id, status="failed", completed_at=now_ms() - 3 * DAY_MS)
    sweeper = RetentionSweeper(
        engine, server.services.storage, RetentionPolicy(days=1, max_jobs=0), interval=0.05
    )
    task = asyncio.create_task(sweeper.run())
    try:
        folder = server.services.storage.job_dir(job_id)
        await wait_for(lambda: not folder.exists(), what="the old job's folder removed")
        assert job_id not in job_ids(engine)  # the row went first
    finally:
        task.cancel()


# -- forgetting workers gone for good -----------------------------------------------------------


def register_old_session(engine: Engine, worker_id: str, last_seen: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(sessions).values(
                session=f"s-{worker_id}",
                worker_id=worker_id,
                secret="x",
                tasks="[]",
                started_at=last_seen,
                last_seen=last_seen,
                stopped_at=last_seen,
            )
        )


async def test_server_clears_the_retained_topics_of_workers_gone_too_long(
    settings: Settings, start_worker: WorkerFactory, broker: BrokerInfo
) -> None:
    async with running_server(replace(settings, worker_forget_after=10 * DAY_MS / 1000)) as server:
        topics = server.topics
        live = (await start_worker()).settings.worker_id
        engine = server.services.repo.engine
        gone, recent = f"{settings.worker_id}-gone", f"{settings.worker_id}-recent"
        register_old_session(engine, gone, now_ms() - 20 * DAY_MS)
        register_old_session(engine, recent, now_ms() - 5 * DAY_MS)
        retained = {
            w: [topics.worker_status(w), topics.worker_info(w), topics.legacy_worker(w)]
            for w in (gone, recent)
        }
        async with MqttProbe(broker.host, broker.port) as leftover:
            for topic in retained[gone] + retained[recent]:
                leftover.publish(topic, b"offline", retain=True)
            await leftover.subscribe(topics.legacy_worker("+"))
            await leftover.expect(lambda m: m.topic == topics.legacy_worker(recent), what="left behind")

        assert await server.services.forgetter.forget_once() == [gone]

        async with MqttProbe(broker.host, broker.port) as late:
            await late.subscribe(f"{topics.root}/workers/#")
            await late.subscribe(topics.legacy_worker("+"))
            await late.expect(
                lambda m: m.topic == topics.worker_info(live) and bool(m.payload),
                what="the live worker's info",
            )
            await late.sync(f"{topics.root}/workers/_sync/x")
            still = {m.topic for m in late.messages if m.retained and m.payload}
        assert not set(retained[gone]) & still
        assert set(retained[recent]) <= still
        with engine.connect() as conn:
            left = set(conn.execute(select(sessions.c.worker_id)).scalars())
        assert gone not in left and {recent, live} <= left
        assert await server.services.forgetter.forget_once() == []  # once is enough


# -- pausing a task type -----------------------------------------------------------------------


async def test_a_paused_task_queues_but_is_not_claimed_until_resumed(
    server: Server, start_worker: WorkerFactory, broker: BrokerInfo
) -> None:
    running = await start_worker()
    topics = server.topics
    flag = topics.task_paused("image_conversion")
    async with MqttProbe(broker.host, broker.port) as watcher:
        await watcher.subscribe(flag)
        reply = await server.client.post("/admin/tasks/image_conversion/pause")
        assert reply.status_code == 200 and reply.json()["paused"] and reply.json()["changed"]
        message = await watcher.expect(lambda m: m.topic == flag, what="the paused flag")
        assert json.loads(message.payload)["paused"] is True
        listed = (await server.client.get("/admin/tasks")).json()["paused"]
        assert [t["task_type"] for t in listed] == ["image_conversion"]

        # A forged "resumed" flag on the bus changes nothing: the database decides.
        watcher.publish(
            flag,
            json.dumps({"task_type": "image_conversion", "paused": False, "timestamp": now_ms()}),
            retain=True,
        )
        passes = running.worker.empty_claims
        paused_job = (await server.submit("image_conversion"))["job_id"]
        other_job = (await server.submit("image_resize"))["job_id"]
        await server.wait_status(other_job, "completed")
        await wait_for(lambda: running.worker.empty_claims > passes, what="a claim pass that found nothing")
        assert (await server.job(paused_job))["status"] == "queued"
        assert (await server.client.get("/admin/tasks/image_conversion")).json()["paused"] is True

        reply = await server.client.post("/admin/tasks/image_conversion/resume")
        assert reply.status_code == 200 and reply.json() == {
            "task_type": "image_conversion",
            "paused": False,
            "paused_at": None,
            "changed": True,
        }
        await server.wait_status(paused_job, "completed")  # woken by the resume's hint
        await watcher.expect(
            lambda m: m.topic == flag and json.loads(m.payload)["paused"] is False, what="the resumed flag"
        )
    assert (await server.client.get("/admin/tasks")).json() == {"paused": []}


async def test_a_forged_paused_flag_pauses_nothing(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    await start_worker()
    flag = server.topics.task_paused("image_conversion")
    probe.publish(
        flag,
        json.dumps({"task_type": "image_conversion", "paused": True, "timestamp": now_ms()}),
        retain=True,
    )
    job = (await server.submit("image_conversion"))["job_id"]
    await server.wait_status(job, "completed")
    assert (await server.client.get("/admin/tasks/image_conversion")).json()["paused"] is False


async def test_pause_routes_answer_bad_task_names_with_400(server: Server) -> None:
    for path in ("/admin/tasks/bad%20name/pause", "/admin/tasks/a+b/resume"):
        reply = await server.client.post(path)
        assert reply.status_code == 400, reply.text
    assert (await server.client.post("/admin/tasks/image_resize/resume")).json()["changed"] is False
    assert (await server.client.post("/admin/tasks/image_resize/pause")).json()["changed"] is True
    assert (await server.client.post("/admin/tasks/image_resize/pause")).json()["changed"] is False


def test_the_claim_skips_paused_task_types(repo: JobRepository) -> None:
    paused = PausedTasks(repo.engine)
    for job_id, task, priority in (("a", "image_resize", 9), ("b", "image_conversion", 1)):
        repo.add_job(Job(job_id=job_id, task_type=task, params={}), priority=priority)
    assert paused.pause("image_resize", by="admin")
    claimed = repo.claim_next(["image_resize", "image_conversion"], "w")
    assert claimed is not None and claimed.job_id == "b"  # the more urgent one is paused
    assert repo.claim_next(["image_resize"], "w") is None
    assert paused.resume("image_resize") and paused.paused() == {}
    claimed = repo.claim_next(["image_resize"], "w")
    assert claimed is not None and claimed.job_id == "a"


# -- aging ------------------------------------------------------------------------------------


def test_a_low_priority_job_does_not_starve_under_a_stream_of_urgent_ones(repo: JobRepository) -> None:
    """Each round two urgent jobs arrive and one job runs; a clock we move makes a step pass
    every round. Without aging the low job would wait for the stream to end; with it, it runs
    once it reached the top (10 steps from 0) and is then the oldest job there."""
    clock = [now_ms()]
    aging = PriorityAging(repo.engine, step_seconds=60, on_change=lambda: None, clock=lambda: clock[0])
    repo.add_job(Job(job_id="low", task_type="image_resize", params={}), priority=0)
    order: list[str] = []
    rounds = 30
    for n in range(rounds):
        for k in range(2):
            repo.add_job(Job(job_id=f"urgent-{n}-{k}", task_type="image_resize", params={}), priority=10)
        claimed = repo.claim_next(["image_resize"], "w")
        assert claimed is not None
        order.append(claimed.job_id)
        clock[0] += 60_000
        aging.age()
    assert "low" in order, "the low-priority job starved"
    ran_at = order.index("low")
    assert ran_at <= 11  # ten steps to the top, then first among the urgent ones
    # The stream had not ended: urgent jobs were still waiting when it ran.
    assert repo.claim_next(["image_resize"], "w") is not None


def test_without_aging_the_low_priority_job_waits_for_the_stream(repo: JobRepository) -> None:
    """The control: the same stream, no aging steps."""
    repo.add_job(Job(job_id="low", task_type="image_resize", params={}), priority=0)
    order = []
    for n in range(30):
        for k in range(2):
            repo.add_job(Job(job_id=f"urgent-{n}-{k}", task_type="image_resize", params={}), priority=10)
        claimed = repo.claim_next(["image_resize"], "w")
        assert claimed is not None
        order.append(claimed.job_id)
    assert "low" not in order


def test_aging_is_bounded_and_leaves_running_jobs_alone(repo: JobRepository) -> None:
    for job_id, priority in (("top", 10), ("mid", 5), ("running", 1)):
        repo.add_job(Job(job_id=job_id, task_type="image_resize", params={}), priority=priority)
    set_job(repo.engine, "running", status="processing")
    now = now_ms()
    aging = PriorityAging(repo.engine, step_seconds=60, on_change=lambda: None, clock=lambda: now)
    assert aging.age() == 0  # nobody waited a step yet
    aging.clock = lambda: now + 60_000
    assert aging.age() == 1  # "mid" only: "top" is at the bound, "running" is not queued
    assert aging.age() == 0  # its wait starts again from the step
    priorities = {j: repo.get(j).priority for j in ("top", "mid", "running")}  # type: ignore[union-attr]
    assert priorities == {"top": 10, "mid": 6, "running": 1}
