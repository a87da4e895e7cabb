"""Light jobs in batches (WORKER_CONCURRENCY, issue 20 item 3): several queued jobs claimed in one
statement, run at once, their leases all renewed, and a long job holding only its own slot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event

from compute_bench.noop import TASK_TYPE, BenchNoopTask
from compute_bench.probes import is_claim
from tests.support.inprocess import RunningWorker, Server, WorkerFactory
from tests.support.jobs import add_job, stored
from tests.support.waits import wait_for


class HeldNoop(BenchNoopTask):
    """bench_noop whose jobs named in `hold` wait for `gate`; counts jobs running at once.

    Shares threading objects with the test, so it runs on plugin threads (one per slot)."""

    def __init__(self) -> None:
        self.hold: set[str] = set()
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.most_at_once = 0

    async def execute(self, job: Any, params: Any, progress_callback: Any = None) -> dict[str, Any]:
        with self.lock:
            self.running.add(job.job_id)
            self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            if job.job_id in self.hold:
                await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
            result: dict[str, Any] = await super().execute(job, params, progress_callback)
            return result
        finally:
            with self.lock:
                self.running.discard(job.job_id)


async def start(start_worker: WorkerFactory, plugin: HeldNoop, n: int, **changes: Any) -> RunningWorker:
    running: RunningWorker = await start_worker(
        tasks=(TASK_TYPE,),
        plugins={TASK_TYPE: plugin},
        plugin_isolation="thread",
        worker_concurrency={TASK_TYPE: n},
        **changes,
    )
    return running


@pytest.fixture
def claims() -> Iterator[list[str]]:
    """Every claim statement any engine of this process runs (only workers claim)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if is_claim(statement):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    yield seen
    event.remove(Engine, "before_cursor_execute", before)


async def test_queued_jobs_are_claimed_in_one_statement_and_run_at_once(
    server: Server, start_worker: WorkerFactory, claims: list[str]
) -> None:
    plugin = HeldNoop()
    jobs = [add_job(server, TASK_TYPE) for _ in range(4)]
    plugin.hold.update(jobs)
    running = await start(
        start_worker, plugin, 4, lease_seconds=1.2, lease_renew_seconds=0.3, wait_idle=False
    )
    await wait_for(lambda: len(plugin.running) == 4, what="the four jobs running at once")
    assert len(claims) == 1 and running.worker.jobs_run == 0  # all four in one statement
    first = {job_id: stored(server.services.repo, job_id).lease_expires_at or 0 for job_id in jobs}
    # Every held claim is renewed, not only one: past a whole lease, none was rescued.
    await wait_for(
        lambda: all((stored(server.services.repo, j).lease_expires_at or 0) > first[j] + 1200 for j in jobs),
        what="every lease renewed past its first expiry",
    )
    assert {stored(server.services.repo, j).status for j in jobs} == {"processing"}
    assert server.services.rescuer.rescued == 0
    plugin.gate.set()
    for job_id in jobs:
        await server.wait_status(job_id, "completed")
    assert plugin.most_at_once == 4


async def test_a_long_job_holds_only_its_own_slot(server: Server, start_worker: WorkerFactory) -> None:
    plugin = HeldNoop()
    running = await start(start_worker, plugin, 2)
    long = add_job(server, TASK_TYPE)
    plugin.hold.add(long)
    await wait_for(lambda: long in plugin.running, what="the long job to start")
    short = [add_job(server, TASK_TYPE) for _ in range(5)]
    for job_id in short:
        await server.wait_status(job_id, "completed")
    assert (await server.job(long))["status"] == "processing"
    plugin.gate.set()
    await server.wait_status(long, "completed")
    assert running.worker.jobs_run == 6 and plugin.most_at_once == 2


async def test_without_concurrency_jobs_run_one_at_a_time(
    server: Server, start_worker: WorkerFactory
) -> None:
    plugin = HeldNoop()
    running: RunningWorker = await start_worker(
        tasks=(TASK_TYPE,), plugins={TASK_TYPE: plugin}, plugin_isolation="thread"
    )
    long = add_job(server, TASK_TYPE)
    plugin.hold.add(long)
    await wait_for(lambda: long in plugin.running, what="the long job to start")
    behind = add_job(server, TASK_TYPE)
    await asyncio.sleep(0)  # nothing to wait for: the only slot is taken
    assert (await server.job(behind))["status"] == "queued"
    plugin.gate.set()
    await server.wait_status(behind, "completed")
    assert plugin.most_at_once == 1 and len(running.worker.lanes) == 1


async def test_stop_hands_back_every_running_job(server: Server, start_worker: WorkerFactory) -> None:
    plugin = HeldNoop()
    jobs = [add_job(server, TASK_TYPE) for _ in range(3)]
    plugin.hold.update(jobs)
    running = await start(start_worker, plugin, 3, wait_idle=False)
    await wait_for(lambda: len(plugin.running) == 3, what="three jobs running")
    running.worker.stop()
    await asyncio.wait_for(running.task, 10)
    assert {stored(server.services.repo, j).status for j in jobs} == {"queued"}
    assert running.worker.outbox.written_directly == 0
