"""BackgroundTasks: a task that dies is seen when it dies, and started again or stops the process."""

from __future__ import annotations

import asyncio
import logging

import pytest

from compute.background import BackgroundTasks
from tests.support.waits import wait_for


class Flaky:
    """A long-running task that fails its first `failures` runs, then runs until cancelled."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.cancelled = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"run {self.runs} failed")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_a_failed_task_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks(restart_delay=0.01, restart_max=1.0)
    flaky = Flaky(failures=2)
    tasks.start("sweep", flaky.run)
    await wait_for(lambda: flaky.runs == 3, what="the third run")
    assert tasks.restarts("sweep") == 2
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and "sweep" in r.getMessage()]
    assert len(failed) == 2 and all(r.exc_info for r in failed)  # each with its traceback, at once
    await tasks.close()
    assert flaky.cancelled == 1


async def test_a_task_that_returns_is_done() -> None:
    runs = []

    async def nothing_to_do() -> None:
        runs.append(1)

    tasks = BackgroundTasks(restart_delay=0.01)
    tasks.start("retention", nothing_to_do)
    await asyncio.sleep(0.05)  # time enough for a restart that must not come
    assert runs == [1] and tasks.restarts("retention") == 0
    await tasks.close()


async def test_a_fatal_task_that_fails_stops_the_process(caplog: pytest.LogCaptureFixture) -> None:
    stopped: list[str] = []
    tasks = BackgroundTasks(lambda: stopped.append("stop"), restart_delay=0.01)
    flaky = Flaky(failures=1)
    tasks.start("ingest", flaky.run, fatal=True)
    tasks.start("sweep", Flaky(failures=0).run)
    await wait_for(lambda: stopped, what="on_fatal")
    await asyncio.sleep(0.05)
    assert stopped == ["stop"] and flaky.runs == 1 and tasks.failed == "ingest"  # not started again
    assert any(r.levelno == logging.CRITICAL and "ingest" in r.getMessage() for r in caplog.records)
    await tasks.close()


async def test_a_fatal_task_that_returns_stops_the_process() -> None:
    stopped: list[str] = []

    async def ended() -> None:
        pass

    tasks = BackgroundTasks(lambda: stopped.append("stop"))
    tasks.start("ingest", ended, fatal=True)
    await wait_for(lambda: stopped, what="on_fatal")
    await tasks.close()


async def test_close_cancels_the_tasks_and_the_restarts_that_wait() -> None:
    tasks = BackgroundTasks(restart_delay=0.05)
    flaky, steady = Flaky(failures=1), Flaky(failures=0)
    tasks.start("flaky", flaky.run)
    tasks.start("steady", steady.run)
    await wait_for(lambda: flaky.runs == 1 and steady.runs == 1, what="both running")
    await tasks.close()  # the flaky one's restart is pending
    await asyncio.sleep(0.1)
    assert flaky.runs == 1 and steady.cancelled == 1


def test_a_fatal_task_needs_a_way_to_stop() -> None:
    with pytest.raises(ValueError, match="on_fatal"):
        BackgroundTasks().start("ingest", Flaky(failures=0).run, fatal=True)
