"""Jobs handed to the plugin process together (`PluginProcess.execute_batch`): the child says
which plugins take batches, each job comes back with its own outcome, and what ends the process
ends the batch."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from compute.config import Settings
from compute.db.repository import JobRecord
from compute.worker.plugin_process import PluginCrashed, PluginProcess
from tests.support.batching import TASK_TYPE, BatchTask
from tests.support.stall import TASK_TYPE as STALL_TYPE
from tests.support.stall import StallTask
from tests.support.waits import wait_for

#: The memory cap of the process: above what it needs to start, below what a hog allocates.
CAP_MB = 1024


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[PluginProcess]:
    settings = Settings(
        cl_server_dir=tmp_path,
        database_url="sqlite://",  # not opened: the plugin process has no database
        storage_dir=tmp_path / "storage",
        worker_id="batches",
        plugin_memory_limit_mb=CAP_MB,
    )
    process = PluginProcess(settings, {TASK_TYPE: BatchTask(), STALL_TYPE: StallTask()})
    yield process
    process.close()


def record(**params: Any) -> JobRecord:
    return JobRecord(
        job_id=str(uuid.uuid4()),
        task_type=TASK_TYPE,
        params=params,
        status="processing",
        progress=0,
        priority=5,
        created_at=0,
        started_at=None,
        completed_at=None,
        updated_at=None,
        task_output=None,
        error_message=None,
        retry_count=0,
        max_retries=0,
        created_by=None,
        worker_id=None,
    )


def batch_of(*params: dict[str, Any]) -> tuple[list[Any], dict[str, list[int]]]:
    """Jobs with these params, as execute_batch takes them; and each job's reported progress."""
    reported: dict[str, list[int]] = {}
    jobs = []
    for p in params:
        job = record(**p)
        reported[p["tag"]] = []
        jobs.append((job, BatchTask().get_schema()(**p), reported[p["tag"]].append))
    return jobs, reported


async def test_the_child_says_which_plugins_take_batches(host: PluginProcess) -> None:
    assert await host.batchable(TASK_TYPE)
    assert not await host.batchable(STALL_TYPE)  # a plugin without batchable()
    assert not await host.batchable("no_such_task")


async def test_each_job_of_a_batch_gets_its_own_outcome(host: PluginProcess) -> None:
    jobs, reported = batch_of(
        {"tag": "a"}, {"tag": "b", "outcome": "error"}, {"tag": "c", "outcome": "crash"}, {"tag": "d"}
    )
    a, b, c, d = await host.execute_batch(BatchTask(), jobs)

    assert a["status"] == "ok"
    assert a["task_output"] | {"pid": 0} == {"pid": 0, "batch": 4, "index": 0, "tag": "a"}
    assert b == {"status": "error", "error": "job b is bad"}
    assert isinstance(c, PluginCrashed) and str(c) == "JobCrashed: job c crashed"
    assert d["status"] == "ok" and d["task_output"]["index"] == 3
    assert a["task_output"]["pid"] == d["task_output"]["pid"] == host.pid
    assert reported == {"a": [1], "b": [1], "c": [1], "d": [1]}

    # One job's crash cost the process nothing: the next batch runs in the same one.
    jobs, _ = batch_of({"tag": "e"})
    (e,) = await host.execute_batch(BatchTask(), jobs)
    assert e["task_output"]["pid"] == a["task_output"]["pid"] and host.started == 1


async def test_a_job_past_the_memory_cap_fails_alone_and_the_process_is_replaced(
    host: PluginProcess,
) -> None:
    jobs, _ = batch_of({"tag": "a"}, {"tag": "hog", "allocate_mb": 2 * CAP_MB}, {"tag": "c"})
    a, hog, c = await host.execute_batch(BatchTask(), jobs)

    assert isinstance(hog, PluginCrashed) and str(hog) == f"plugin exceeded the memory limit of {CAP_MB} MB"
    assert a["status"] == c["status"] == "ok"
    # A process that hit its cap may be in a poor state: it is replaced.
    await wait_for(lambda: host.started == 2, what="a fresh plugin process")
    jobs, _ = batch_of({"tag": "next"})
    (after,) = await host.execute_batch(BatchTask(), jobs)
    assert after["task_output"]["pid"] != a["task_output"]["pid"]


async def test_a_process_that_dies_mid_batch_ends_the_whole_batch(host: PluginProcess) -> None:
    jobs, reported = batch_of({"tag": "a"}, {"tag": "b", "hold_s": 3600})
    running = asyncio.create_task(host.execute_batch(BatchTask(), jobs))
    await wait_for(lambda: reported["b"] == [1], what="the batch to start")
    assert host.pid is not None
    os.kill(host.pid, signal.SIGKILL)
    with pytest.raises(PluginCrashed, match="killed by SIGKILL"):
        await running


async def test_cancelling_a_batch_kills_its_process(host: PluginProcess) -> None:
    jobs, reported = batch_of({"tag": "a", "hold_s": 3600}, {"tag": "b"})
    running = asyncio.create_task(host.execute_batch(BatchTask(), jobs))
    await wait_for(lambda: reported["a"] == [1], what="the batch to start")
    pid = host.pid
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert pid is not None and pid != host.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
