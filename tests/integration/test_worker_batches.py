"""Queued jobs of a batchable task handed to one plugin process together (WORKER_BATCH, issue 19
item 2): claimed in one statement, run as one call, each ending on its own; a cancel drops only
its job; what kills the process is found out job by job.

The plugin is tests/support/batching.py's `test_batch` in a real plugin process: each job's
output says the size of the call it came in and the pid that ran it, and `until_file` holds a
call until the test opens the gate. The subject is the worker, not the backends (the claim
statement runs over all of them in test_concurrency.py): one backend.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cl_ml_tools import Job

from compute.config import Settings
from compute.policies import Policies, TaskPolicy
from compute.worker.plugin_process import PluginProcess
from compute.worker.runner import JobRunner
from tests.support.backends import one_backend
from tests.support.batching import TASK_TYPE, BatchTask
from tests.support.inprocess import RunningWorker, Server, WorkerFactory, running_server
from tests.support.jobs import stored
from tests.support.waits import wait_for


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    one_backend(metafunc)


def no_retries(settings: Settings) -> Settings:
    return replace(settings, task_policies=Policies(TaskPolicy(max_retries=0)))


@pytest.fixture
async def once(settings: Settings) -> AsyncIterator[Server]:
    """A server whose jobs get one attempt: a failure shows at once, without a retry."""
    async with running_server(no_retries(settings)) as srv:
        yield srv


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """The file a held batch waits for: the test creates it to let the batch finish."""
    return tmp_path / "gate"


def add_job(server: Server, timeout: float | None = None, **params: Any) -> str:
    job_id = str(uuid.uuid4())
    server.services.submitter.add_job(Job(job_id=job_id, task_type=TASK_TYPE, params=params), timeout=timeout)
    return job_id


async def start(
    start_worker: WorkerFactory, settings: Settings, batch: int = 8, **changes: Any
) -> tuple[RunningWorker, JobRunner, PluginProcess]:
    """A worker whose `test_batch` jobs go to its plugin process up to `batch` at a time; the
    runner of that lane's slot and its plugin process."""
    running: RunningWorker = await start_worker(
        tasks=(TASK_TYPE,),
        plugins={TASK_TYPE: BatchTask()},
        plugin_isolation="process",
        worker_batch={TASK_TYPE: batch},
        task_policies=no_retries(settings).task_policies,
        wait_idle=False,
        **changes,
    )
    (lane,) = running.worker.lanes
    assert lane.batch == batch and len(lane.slots) == 1
    runner = lane.slots[0].runner
    assert isinstance(runner.host, PluginProcess)
    return running, runner, runner.host


async def running(server: Server, *job_ids: str) -> None:
    """Wait until the plugin runs each job (it reports progress 1 before anything else)."""

    async def all_running() -> bool:
        jobs = [await server.job(job_id) for job_id in job_ids]
        return all(job["status"] == "processing" and job["progress"] >= 1 for job in jobs)

    await wait_for(all_running, timeout=30, what="the batch to run")


def open_gate(gate: Path) -> None:
    gate.touch()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_queued_jobs_are_claimed_together_and_run_as_one_call(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    jobs = {tag: add_job(once, tag=tag) for tag in "abcde"}
    _, _, host = await start(start_worker, settings)

    outputs = {}
    for tag, job_id in jobs.items():
        job = await once.wait_status(job_id, "completed", timeout=30)
        outputs[tag] = job["task_output"]
        assert job["progress"] == 100
    # One claim took all five (a batch is one claim's share), and one call of one plugin
    # process ran them, each job answered with its own result.
    assert {o["batch"] for o in outputs.values()} == {5}
    assert sorted(o["index"] for o in outputs.values()) == [0, 1, 2, 3, 4]
    assert {o["tag"] for o in outputs.values()} == set("abcde")
    assert {o["pid"] for o in outputs.values()} == {host.pid} and host.started == 1


async def test_a_lone_job_does_not_wait_for_a_batch_to_fill(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    await start(start_worker, settings)
    job = await once.wait_status(add_job(once, tag="alone"), "completed", timeout=30)
    assert job["task_output"]["batch"] == 1


async def test_a_job_that_fails_in_a_batch_fails_alone(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    good = [add_job(once, tag="a"), add_job(once, tag="d")]
    bad = add_job(once, tag="b", outcome="error")
    crash = add_job(once, tag="c", outcome="crash")
    await start(start_worker, settings)

    for job_id in good:
        job = await once.wait_status(job_id, "completed", timeout=30)
        assert job["task_output"]["batch"] == 4
    assert (await once.wait_status(bad, "failed", timeout=30))["error_message"] == "job b is bad"
    failed = await once.wait_status(crash, "failed", timeout=30)
    assert failed["error_message"] == "JobCrashed: job c crashed"


async def test_a_cancel_while_the_batch_runs_drops_only_that_job(
    once: Server, start_worker: WorkerFactory, settings: Settings, gate: Path
) -> None:
    a, b, c = (add_job(once, tag=tag, until_file=str(gate)) for tag in "abc")
    _, runner, host = await start(start_worker, settings)
    await running(once, a, b, c)
    pid = host.pid

    assert (await once.client.post(f"/jobs/{b}/cancel")).status_code == 200
    await wait_for(lambda: runner.dropped(b), what="the worker to hear the cancel")
    open_gate(gate)

    for job_id in (a, c):
        job = await once.wait_status(job_id, "completed", timeout=30)
        assert job["task_output"]["batch"] == 3 and job["task_output"]["pid"] == pid
    assert stored(once.services.repo, b).status == "cancelled"
    # The batch-mates' work was kept: the process was not killed.
    assert host.started == 1 and host.pid == pid


async def test_cancelling_every_job_of_a_batch_kills_its_process(
    once: Server, start_worker: WorkerFactory, settings: Settings, gate: Path
) -> None:
    a, b = (add_job(once, tag=tag, until_file=str(gate)) for tag in "ab")
    running_worker, _, host = await start(start_worker, settings)
    await running(once, a, b)
    pid = host.pid
    assert pid is not None

    for job_id in (a, b):
        assert (await once.client.post(f"/jobs/{job_id}/cancel")).status_code == 200
    await wait_for(lambda: gone(pid), timeout=30, what="the batch's process to be killed")
    after = await once.wait_status(add_job(once, tag="next"), "completed", timeout=30)
    assert after["task_output"]["pid"] != pid
    assert {stored(once.services.repo, j).status for j in (a, b)} == {"cancelled"}
    assert running_worker.worker.jobs_run >= 3


async def test_a_process_that_dies_mid_batch_runs_its_jobs_again_one_at_a_time(
    once: Server, start_worker: WorkerFactory, settings: Settings, gate: Path
) -> None:
    jobs = [add_job(once, tag=tag, until_file=str(gate)) for tag in "abc"]
    _, _, host = await start(start_worker, settings)
    await running(once, *jobs)
    pid = host.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # held at the gate: it dies mid-batch
    await wait_for(lambda: gone(pid), timeout=30, what="the batch's process to die")
    open_gate(gate)

    outputs = [(await once.wait_status(j, "completed", timeout=30))["task_output"] for j in jobs]
    # Each alone, in the fresh process: a job that killed it would have failed alone.
    assert [o["batch"] for o in outputs] == [1, 1, 1]
    assert {o["pid"] for o in outputs} == {host.pid} and host.pid != pid


async def test_a_batch_runs_within_its_shortest_timeout(
    once: Server, start_worker: WorkerFactory, settings: Settings, gate: Path
) -> None:
    short = add_job(once, timeout=1.0, tag="short", until_file=str(gate))
    long = add_job(once, timeout=3600.0, tag="long", until_file=str(gate))
    await start(start_worker, settings)
    for job_id in (short, long):
        job = await once.wait_status(job_id, "failed", timeout=30)
        assert job["error_message"] == "timed out after 1 s"


async def test_a_stop_hands_back_every_job_of_a_batch(
    once: Server, start_worker: WorkerFactory, settings: Settings, gate: Path
) -> None:
    jobs = [add_job(once, tag=tag, until_file=str(gate)) for tag in "abc"]
    running_worker, _, _ = await start(start_worker, settings)
    await running(once, *jobs)
    await running_worker.shutdown()
    assert {stored(once.services.repo, j).status for j in jobs} == {"queued"}
