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
from compute.worker.batch_run import run_many
from compute.worker.lanes import Slot, build_lanes, shares
from compute.worker.results import ResultOutbox
from compute.worker.runner import JobRunner
from compute_bench.noop import BenchNoopTask
from tests.support.fakes import FakeBus

T = Topics()


class RecordingHost:
    """A plugin host that records what it was asked to run (and runs nothing); `takes_batches`:
    whether it says its plugin takes batches."""

    def __init__(self, takes_batches: bool = False) -> None:
        self.executed: list[str] = []
        self.batches: list[list[str]] = []
        self.takes_batches = takes_batches

    def warm_up(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def batchable(self, task_type: str) -> bool:
        return self.takes_batches

    async def execute(self, plugin: Any, job: JobRecord, params: Any, report: Callable[[int], None]) -> Any:
        self.executed.append(job.job_id)
        return {"status": "ok", "task_output": {}}

    async def execute_batch(self, plugin: Any, jobs: Sequence[Any]) -> list[Any]:
        self.batches.append([job.job_id for job, _, _ in jobs])
        return [{"status": "ok", "task_output": {}} for _ in jobs]

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


def runner_on(bus: FakeBus, takes_batches: bool = False) -> tuple[JobRunner, RecordingHost]:
    host = RecordingHost(takes_batches)
    outbox = ResultOutbox(bus, T, None, "w1")  # type: ignore[arg-type]  # never writes directly here
    return JobRunner({"bench_noop": BenchNoopTask()}, outbox, host), host


def events(bus: FakeBus) -> list[str]:
    return [
        json.loads(payload)["event"]
        for topic, payload, _ in bus.sent
        if topic.startswith(f"{T.root}/events/")
    ]


def events_of(bus: FakeBus, job_id: str) -> list[str]:
    return [json.loads(payload)["event"] for topic, payload, _ in bus.sent if topic.endswith(f"/{job_id}")]


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


async def test_a_batch_member_cancelled_before_it_starts_is_left_out_of_the_batch() -> None:
    bus = FakeBus()
    runner, host = runner_on(bus, takes_batches=True)
    attempts = [Attempt(claimed(job_id), "w1", bus, T) for job_id in ("j1", "j2", "j3")]
    runner.cancel("j2")
    outcomes = await run_many(runner, attempts)
    assert host.batches == [["j1", "j3"]] and host.executed == []
    assert [o.event.value if o else None for o in outcomes] == ["completed", None, "completed"]
    assert events_of(bus, "j2") == [] and events_of(bus, "j1") == ["started", "completed"]
    assert runner.takes_batches is True


async def test_jobs_of_a_plugin_that_takes_no_batch_run_one_after_another() -> None:
    bus = FakeBus()
    runner, host = runner_on(bus, takes_batches=False)
    attempts = [Attempt(claimed(job_id), "w1", bus, T) for job_id in ("j1", "j2")]
    outcomes = await run_many(runner, attempts)
    assert host.batches == [] and host.executed == ["j1", "j2"]
    assert all(o is not None and o.event.value == "completed" for o in outcomes)
    assert runner.takes_batches is False


async def test_params_that_do_not_validate_fail_their_own_job_only() -> None:
    bus = FakeBus()
    runner, host = runner_on(bus, takes_batches=True)
    bad = replace(claimed("j2"), params={"steps": -1})
    attempts = [Attempt(record, "w1", bus, T) for record in (claimed("j1"), bad, claimed("j3"))]
    outcomes = await run_many(runner, attempts)
    assert host.batches == [["j1", "j3"]]
    failed = outcomes[1]
    assert failed is not None and failed.event.value == "failed" and "invalid params" in (failed.error or "")


def test_a_task_with_a_batch_gets_a_lane_whose_claims_ask_for_a_batch_per_free_slot(tmp_path: Path) -> None:
    settings = replace(
        load_settings({"CL_SERVER_DIR": str(tmp_path)}),
        plugin_isolation="thread",
        worker_batch={"b": 8, "c": 4, "d": 1},
        worker_concurrency={"c": 2},
    )
    tasks: dict[str, Any] = {name: BenchNoopTask() for name in "abcd"}
    lanes = build_lanes(settings, tasks, ResultOutbox(FakeBus(), T, None, "w1"))  # type: ignore[arg-type]
    shape = [(lane.task_types, len(lane.slots), lane.batch) for lane in lanes]
    assert shape == [(["a", "d"], 1, 1), (["b"], 1, 8), (["c"], 2, 4)]
    assert [lane.claim_limit for lane in lanes] == [1, 8, 8]


def test_claimed_jobs_are_spread_evenly_over_the_free_slots() -> None:
    slots = [Slot(runner_on(FakeBus())[0]) for _ in range(3)]
    jobs = [claimed(f"j{n}") for n in range(7)]
    spread = [(slots.index(slot), [job.job_id for job in share]) for slot, share in shares(jobs, slots)]
    assert spread == [(0, ["j0", "j1", "j2"]), (1, ["j3", "j4", "j5"]), (2, ["j6"])]
    assert [len(share) for _, share in shares(jobs[:2], slots)] == [1, 1]
    assert list(shares([], slots)) == []
