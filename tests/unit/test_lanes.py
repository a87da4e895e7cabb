"""Slots and lanes (worker/lanes.py) and what a runner does with a job before it starts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from compute.config import load_settings
from compute.db.repository import JobRecord
from compute.topics import Topics
from compute.worker.attempt import Attempt
from compute.worker.lanes import build_lanes
from compute.worker.results import ResultOutbox
from compute.worker.runner import JobRunner
from compute_bench.noop import BenchNoopTask
from tests.support.fakes import FakeBus

T = Topics()


class RecordingHost:
    """A plugin host that records what it was asked to run (and runs nothing)."""

    def __init__(self) -> None:
        self.executed: list[str] = []

    def warm_up(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def batchable(self, task_type: str) -> bool:
        return False

    async def execute(self, plugin: Any, job: JobRecord, params: Any, report: Callable[[int], None]) -> Any:
        self.executed.append(job.job_id)
        return {"status": "ok", "task_output": {}}

    async def execute_batch(self, plugin: Any, jobs: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def claimed(job_id: str) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        task_type="bench_noop",
        params={},
        status="processing",
        progress=0,
        priority=5,
        created_at=1,
        started_at=2,
        completed_at=None,
        updated_at=2,
        task_output=None,
        error_message=None,
        retry_count=0,
        max_retries=3,
        created_by=None,
        worker_id="w1",
        attempt=1,
        lease_token="0" * 32 + ".1",
    )


def runner_on(bus: FakeBus) -> tuple[JobRunner, RecordingHost]:
    host = RecordingHost()
    outbox = ResultOutbox(bus, T, None, "w1")  # type: ignore[arg-type]  # never writes directly here
    return JobRunner({"bench_noop": BenchNoopTask()}, outbox, host), host


def events(bus: FakeBus) -> list[str]:
    return [
        json.loads(payload)["event"]
        for topic, payload, _ in bus.sent
        if topic.startswith(f"{T.root}/events/")
    ]


async def test_a_job_cancelled_before_it_starts_never_runs_and_says_nothing() -> None:
    bus = FakeBus()
    runner, host = runner_on(bus)
    attempt = Attempt(claimed("j1"), "w1", bus, T)
    assert runner.cancel("j1") is False  # not running yet
    assert await runner.run(attempt) is None
    assert host.executed == [] and events(bus) == []
    # The cancel was for that claim only: the runner's next job runs.
    assert await runner.run(Attempt(claimed("j2"), "w1", bus, T)) is not None
    assert host.executed == ["j2"] and events(bus) == ["started", "completed"]


async def test_a_job_not_started_when_the_worker_stops_is_handed_back_untouched() -> None:
    bus = FakeBus()
    runner, host = runner_on(bus)
    runner.release_all()
    outcome = await runner.run(Attempt(claimed("j1"), "w1", bus, T))
    assert outcome is not None and outcome.event.value == "released"
    assert host.executed == [] and events(bus) == ["released"]
    assert "j1" in runner.outbox.pending  # re-sent until the server confirms it


def test_lanes_give_each_task_with_a_concurrency_its_own_slots(tmp_path: Path) -> None:
    settings = replace(
        load_settings({"CL_SERVER_DIR": str(tmp_path)}),
        plugin_isolation="thread",
        worker_concurrency={"b": 3, "not-run-here": 2},
    )
    tasks: dict[str, Any] = {"a": BenchNoopTask(), "b": BenchNoopTask(), "c": BenchNoopTask()}
    lanes = build_lanes(settings, tasks, ResultOutbox(FakeBus(), T, None, "w1"))  # type: ignore[arg-type]
    assert [(lane.task_types, len(lane.slots)) for lane in lanes] == [(["a", "c"], 1), (["b"], 3)]
    hosts = {id(slot.runner.host) for lane in lanes for slot in lane.slots}
    assert len(hosts) == 4  # a plugin host per slot: a kill stops one job only
    assert lanes[1].claim_limit == 3 and list(lanes[1].slots[0].runner.tasks) == ["b"]
