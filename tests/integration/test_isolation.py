"""Plugins run in a child process the worker can kill (PLUGIN_ISOLATION=process, issue 8 item 4).

A plugin that blocks in a C call ignores cancellation; on a thread it would keep the worker's
plugin thread (and a CPU) forever. Here the worker kills its process on cancel or timeout, and
survives a plugin that dies or runs past its memory cap: each test ends with the next job
running to completion on the same worker, which a stuck worker could never do.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from cl_ml_tools import Job

from compute.config import Settings
from compute.policies import Policies, TaskPolicy
from compute.worker.plugin_process import PluginProcess
from tests.support.inprocess import RunningWorker, Server, WorkerFactory, running_server
from tests.support.stall import TASK_TYPE, StallTask
from tests.support.waits import wait_for

#: Seconds a plugin holds its thread in the tests that stop it: far longer than any test.
FOREVER = 3600.0
#: The memory cap of the test that exceeds it: above what the child needs to start (about
#: 500 MB of address space with Pillow and numpy), far below what the job allocates.
CAP_MB = 1024


@pytest.fixture
async def once(settings: Settings) -> AsyncIterator[Server]:
    """A server whose jobs get one attempt: a failure shows at once, without a retry."""
    async with running_server(no_retries(settings)) as srv:
        yield srv


def no_retries(settings: Settings) -> Settings:
    return replace(settings, task_policies=Policies(TaskPolicy(max_retries=0)))


async def start(
    start_worker: WorkerFactory, settings: Settings, **changes: Any
) -> tuple[RunningWorker, PluginProcess]:
    running = await start_worker(
        tasks=(TASK_TYPE,),
        plugins={TASK_TYPE: StallTask()},
        plugin_isolation="process",
        task_policies=no_retries(settings).task_policies,
        **changes,
    )
    host = running.worker.runner.host
    assert isinstance(host, PluginProcess)
    return running, host


def add_job(server: Server, timeout: float | None = None, **params: Any) -> str:
    job_id = str(uuid.uuid4())
    server.services.submitter.add_job(Job(job_id=job_id, task_type=TASK_TYPE, params=params), timeout=timeout)
    return job_id


async def started(server: Server, job_id: str) -> None:
    """Wait until the plugin runs (it reports progress 1 before anything else)."""

    async def running() -> bool:
        job = await server.job(job_id)
        return bool(job["status"] == "processing" and job["progress"] >= 1)

    await wait_for(running, timeout=30, what=f"job {job_id} to run its plugin")


async def held_job(server: Server, host: PluginProcess) -> tuple[str, int]:
    """A job whose plugin is running, blocked for good; and the pid of the process running it."""
    job_id = add_job(server, hold_s=FOREVER)
    await started(server, job_id)
    assert host.pid is not None
    return job_id, host.pid


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def next_job_completes(server: Server) -> dict[str, Any]:
    """A job submitted after the trouble runs to completion on the same worker."""
    job = await server.wait_status(add_job(server), "completed", timeout=30)
    output: dict[str, Any] = job["task_output"]
    return output


async def test_a_cancel_kills_a_plugin_that_ignores_it_and_the_worker_runs_the_next_job(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    running, host = await start(start_worker, settings)
    stuck, pid = await held_job(once, host)

    response = await once.client.post(f"/jobs/{stuck}/cancel")
    assert response.status_code == 200, response.text

    output = await next_job_completes(once)
    assert output["pid"] != pid and gone(pid)
    assert host.started == 2
    record = once.services.repo.get(stuck)
    assert record is not None and record.status == "cancelled"
    assert running.worker.jobs_run == 2


async def test_a_timeout_kills_the_plugin_and_fails_the_attempt(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    _, host = await start(start_worker, settings)
    stuck = add_job(once, timeout=1.0, hold_s=FOREVER)

    job = await once.wait_status(stuck, "failed", timeout=30)
    assert job["error_message"] == "timed out after 1 s"
    assert job["progress"] >= 1  # the plugin ran: its clock started once its process was set up

    await next_job_completes(once)
    assert host.started == 2


async def test_a_plugin_past_the_memory_cap_fails_with_the_reason(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    _, host = await start(start_worker, settings, plugin_memory_limit_mb=CAP_MB)
    hog = add_job(once, allocate_mb=2 * CAP_MB)

    job = await once.wait_status(hog, "failed", timeout=30)
    assert job["error_message"] == f"plugin exceeded the memory limit of {CAP_MB} MB"

    await next_job_completes(once)
    assert host.started == 2  # the process that hit the cap was replaced


async def test_a_plugin_process_killed_mid_job_is_a_crash_and_the_worker_goes_on(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    _, host = await start(start_worker, settings)
    doomed, pid = await held_job(once, host)

    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer, or a segfault, would end it

    job = await once.wait_status(doomed, "failed", timeout=30)
    assert "the plugin's process died (killed by SIGKILL" in job["error_message"]
    output = await next_job_completes(once)
    assert output["pid"] != pid


async def test_the_plugin_process_and_its_models_outlive_a_job(
    once: Server, start_worker: WorkerFactory, settings: Settings
) -> None:
    _, host = await start(start_worker, settings)
    first = await next_job_completes(once)
    second = await next_job_completes(once)

    assert first["pid"] == second["pid"] == host.pid != os.getpid()
    assert first["model_loads"] == second["model_loads"] == 1
    assert host.started == 1
