"""Two servers on one database and one broker (issue 18 item 3), in the test's loop, on every
broker and database: each keeps its own MQTT session, each worker event is persisted and
announced once, and the server status stays `online` while one of them runs."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text

from compute.config import Settings
from compute.db.notices import CHANNEL
from compute.db.rules import Verdict
from compute.db.session import make_engine
from compute.db.transitions import JobTransitions
from compute.jobs import EventType
from compute.server.access import JobScope
from compute.server.live.changes import OVERFLOW
from tests.support.events import signed
from tests.support.images import png_bytes
from tests.support.inprocess import Server, WorkerFactory, running_server
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for


async def test_each_server_keeps_its_session_and_each_event_is_applied_once(
    settings: Settings, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    legacy = settings.mqtt_topic
    await probe.subscribe(legacy)
    async with running_server(settings) as a, running_server(settings) as b:
        assert a.services.server_id != b.services.server_id
        assert a.services.bus.client_id != b.services.bus.client_id
        await start_worker()
        job_ids = [(await a.submit())["job_id"], (await b.submit())["job_id"]]
        for job_id in job_ids:
            await b.wait_status(job_id, "completed")
            await a.wait_status(job_id, "completed")
        # Each server received every event of both jobs (started, progress, completed): the one
        # that got there first applied it, the other found it applied. The jobs' last sequence
        # numbers count the events their workers sent.
        engine = make_engine(settings.database_url)
        with engine.connect() as conn:
            sent = conn.execute(
                text("SELECT sum(event_seq) FROM jobs WHERE job_id IN (:a, :b)"),
                {"a": job_ids[0], "b": job_ids[1]},
            ).scalar_one()
        engine.dispose()
        ingests = (a.services.ingest, b.services.ingest)
        await wait_for(
            lambda: all(i.applied + i.seen >= sent for i in ingests), what="both servers handled every event"
        )
        assert sum(i.applied for i in ingests) == sent  # re-sent results count as seen only
        assert not any(i.rejected for i in ingests)
        await probe.expect(lambda m: m.topic == legacy and m.json()["event_type"] == "completed")
        await probe.sync(legacy)
        for job_id in job_ids:
            told = [
                m.json()["event_type"]
                for m in probe.on_topic(legacy)
                if m.payload[:1] == b"{" and m.json()["job_id"] == job_id
            ]
            assert told == ["queued", "processing", "completed"], (job_id, told)
        # One connection each all along: under one client id they took it from each other.
        assert (a.services.bus.connects, b.services.bus.connects) == (1, 1)
        # Both tell the same workers, from the same verified presence on the broker.

        async def capabilities() -> list[dict[str, object]]:
            return [(await s.client.get("/capabilities")).json() for s in (a, b)]

        told_a, told_b = await wait_for(
            lambda: _same_and_listed(capabilities()), what="the same capabilities on both servers"
        )
        assert told_a == told_b and told_a["num_workers"] == 1


async def _same_and_listed(answers: Any) -> list[dict[str, Any]] | None:
    first, second = await answers
    return [first, second] if first == second and first["num_workers"] == 1 else None


async def test_server_status_stays_online_while_one_server_runs(settings: Settings, probe: MqttProbe) -> None:
    status = f"{settings.mqtt_topic_root}/server/status"
    async with running_server(settings) as a:
        async with running_server(settings):
            await probe.subscribe(status)
            await probe.expect(lambda m: m.topic == status and m.payload == b"online")
            seen = len(probe.messages)
        # The second server left: it said offline, and the first put online back.
        await probe.expect(lambda m: m.topic == status and m.payload == b"offline")
        await wait_for(
            lambda: [m.payload for m in probe.messages[seen:] if m.topic == status][-1:] == [b"online"],
            what="online again",
        )
        assert a.services.status.repairs >= 1
        # Anyone may publish offline there: each is answered, and the last one always, but
        # with one publish a second at most.
        seen = len(probe.messages)
        for _ in range(20):
            probe.publish(status, b"offline", retain=True)

        def after_flood() -> list[bytes]:
            return [m.payload for m in probe.messages[seen:] if m.topic == status]

        await wait_for(
            lambda: after_flood().count(b"offline") == 20 and after_flood()[-1] == b"online",
            what="online after a flood of offline",
        )
        assert a.services.status.repairs <= 4
    await wait_for(lambda: probe.on_topic(status)[-1].payload == b"offline", what="offline once both left")


async def test_one_server_runs_the_sweeps_and_another_takes_over_when_it_stops(settings: Settings) -> None:
    # Lease sweep every 1 s. The sweep lease long enough that a renewal delayed on a loaded
    # machine does not hand the sweeps over mid-test (a clean stop gives it up at once).
    settings = replace(settings, sweep_lease_seconds=6.0, lease_seconds=4.0)
    async with contextlib.AsyncExitStack() as everything:
        stacks = [contextlib.AsyncExitStack() for _ in range(2)]
        servers = []
        for stack in stacks:
            await everything.enter_async_context(stack)
            servers.append(await stack.enter_async_context(running_server(settings)))
        await wait_for(lambda: any(s.services.sweep_lease.held for s in servers), what="a holder")
        held = [s.services.sweep_lease.held for s in servers]
        assert sorted(held) == [False, True]
        holder, other = (0, 1) if held[0] else (1, 0)
        assert [(await s.client.get("/")).json()["sweeps"] for s in servers] == held
        await _expired_claim_rescued_by(servers[holder], servers[other], "image_conversion")
        # The holder stops (cleanly: it gives the lease up at once); the other takes over.
        await stacks[holder].aclose()
        await wait_for(lambda: servers[other].services.sweep_lease.held, what="the other runs the sweeps")
        await _expired_claim_rescued_by(servers[other], servers[holder], "image_resize")


async def _expired_claim_rescued_by(rescuer: Server, idle: Server, task: str) -> None:
    before = (rescuer.services.rescuer.rescued, idle.services.rescuer.rescued)
    job_id = (await rescuer.submit(task))["job_id"]
    claimed = rescuer.services.repo.claim_next([task], "gone", "s", lease_ms=1)
    assert claimed is not None and claimed.job_id == job_id
    await rescuer.wait_status(job_id, "queued")  # its lease expired: rescued
    after = (rescuer.services.rescuer.rescued, idle.services.rescuer.rescued)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


# -- live views: what another server (or a worker) committed shows on every server ---------------

on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


class Watch:
    """What one server's live views show (its ChangeFeed, what GET /events streams), by job."""

    def __init__(self, server: Server) -> None:
        self.sub = server.services.changes.subscribe(JobScope(everything=True))
        self.seen: dict[str, list[str]] = {}

    async def until(self, job_id: str, status: str, timeout: float = 15.0) -> list[str]:
        async def reached() -> bool:
            for change, _frame in await self.sub.take(0.05):
                self.seen.setdefault(change.job_id, []).append(change.status)
            return status in self.seen.get(job_id, [])

        await wait_for(reached, timeout, what=f"{job_id} {status} on a live view")
        return self.seen[job_id]


async def _listening(server: Server) -> None:
    notices = server.services.notices
    assert notices is not None
    await wait_for(lambda: notices.listening, what="listening to the database's notices")


@on_postgres
async def test_every_servers_live_views_show_every_change_once(
    settings: Settings, start_worker: WorkerFactory
) -> None:
    async with running_server(settings) as a, running_server(settings) as b:
        for server in (a, b):
            await _listening(server)
        watches = (Watch(a), Watch(b))
        await start_worker()
        first = (await a.submit())["job_id"]
        second = (await b.submit())["job_id"]  # after the first: its changes come later
        for watch in watches:
            await watch.until(first, "completed")
            assert await watch.until(second, "completed")
        for watch in watches:
            assert watch.seen[first] == ["queued", "processing", "completed"], watch.seen
            assert watch.seen[second][0] == "queued"
            assert watch.seen[second].count("completed") == 1


@on_postgres
async def test_a_result_a_worker_wrote_itself_shows_on_every_server(settings: Settings) -> None:
    async with running_server(settings) as a, running_server(settings) as b:
        await _listening(a)
        await _listening(b)
        watches = (Watch(a), Watch(b))
        job_id = (await a.submit())["job_id"]
        claimed = a.services.repo.claim_next(["image_conversion"], "w-direct", "s")
        assert claimed is not None
        # What a worker's outbox does when no confirmation came: the verified write, itself.
        engine = make_engine(settings.database_url)
        try:
            worker_side = JobTransitions(engine, settings.task_policies, origin="worker:w-direct")
            [outcome] = worker_side.apply_events([signed(claimed, EventType.COMPLETED, 1, progress=100)])
            assert outcome.verdict is Verdict.APPLIED
        finally:
            engine.dispose()
        for watch in watches:
            assert await watch.until(job_id, "completed") == ["queued", "completed"]


@on_postgres
async def test_forged_messages_change_no_live_view(settings: Settings, probe: MqttProbe) -> None:
    async with running_server(settings) as a, running_server(settings) as b:
        notices = b.services.notices
        assert notices is not None
        await wait_for(lambda: notices.listening, what="b listens")
        watch = Watch(b)
        job_id = (await a.submit())["job_id"]
        await watch.until(job_id, "queued")
        # On the bus: CL Server's event topic and an unsigned worker event, both saying done.
        fake = {"job_id": job_id, "event_type": "completed", "progress": 100, "timestamp": 1}
        probe.publish(settings.mqtt_topic, json.dumps(fake))
        probe.publish(
            f"{settings.mqtt_topic_root}/events/image_conversion/{job_id}",
            json.dumps(
                {
                    "job_id": job_id,
                    "worker_id": "x",
                    "event": "completed",
                    "attempt": 1,
                    "seq": 1,
                    "sig": "0" * 64,
                }
            ),
        )
        # In the database's channel: junk, ignored and counted.
        engine = make_engine(settings.database_url)
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_notify(:channel, 'junk')"), {"channel": CHANNEL})
        finally:
            engine.dispose()
        await wait_for(lambda: notices.bad == 1, what="the junk notice counted")
        await wait_for(
            lambda: sum(b.services.ingest.rejected.values()) + sum(a.services.ingest.rejected.values()) >= 2,
            what="the forged event dropped",
        )
        # A real change after them: the view saw it, and nothing of the forgeries.
        await a.services.db.call(lambda: a.services.canceller.cancel(job_id))
        assert await watch.until(job_id, "cancelled") == ["queued", "cancelled"]
        assert (await b.job(job_id))["cancelled"] is True


@on_postgres
async def test_a_lost_notice_connection_ends_the_live_views_and_listens_again(settings: Settings) -> None:
    async with running_server(settings) as a, running_server(settings) as b:
        notices = b.services.notices
        assert notices is not None
        await wait_for(lambda: notices.listening, what="b listens")
        watch = Watch(b)
        engine = make_engine(settings.database_url)
        try:
            with engine.begin() as conn:
                ended = (
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                        )
                    )
                    .scalars()
                    .all()
                )
            assert len(ended) == 2  # a's and b's
        finally:
            engine.dispose()
        await wait_for(lambda: watch.sub.ended == OVERFLOW, what="b's live view told it missed changes")
        await wait_for(lambda: notices.connects == 2 and notices.listening, what="b listens again")
        watch = Watch(b)
        job_id = (await a.submit())["job_id"]
        assert await watch.until(job_id, "queued") == ["queued"]


@on_postgres
async def test_the_job_rate_limit_is_the_deployments(settings: Settings) -> None:
    limited = replace(settings, job_rate_limit=1.0, job_rate_burst=2)
    async with running_server(limited) as a, running_server(limited) as b:
        answers = []
        for server in (a, b, a, b):
            response = await server.client.post(
                "/jobs/image_conversion", data={"format": "jpg"}, files={"file": ("p.png", png_bytes())}
            )
            answers.append(response.status_code)
        # Two jobs at once for this client, whichever server takes them (each server alone would
        # have allowed two more).
        assert answers == [200, 200, 429, 429]
