"""ServerMetrics on real transitions: run and pickup times, retries, rescues, scrape-time gauges."""

from __future__ import annotations

from collections import Counter
from typing import Any

from cl_ml_tools import Job
from prometheus_client.parser import text_string_to_metric_families

from compute.db.repository import JobRepository, QueueSummary
from compute.db.rules import Outcome
from compute.db.transitions import JobTransitions
from compute.jobs import Cause, EventType, JobChange
from compute.policies import Policies, TaskPolicy
from compute.server.metrics import ScrapeState, ServerMetrics
from tests.support.events import signed


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def changes(outcomes: list[Outcome]) -> list[JobChange]:
    """What the events changed, as the ingest hands it to the announcer."""
    return [o.change for o in outcomes if o.change is not None]


def test_terminal_events_give_run_and_pickup_times_and_retries(engine: Any) -> None:
    repo = JobRepository(engine, policies=Policies(TaskPolicy(max_retries=1, backoff_base=0)))
    transitions = JobTransitions(repo.engine, repo.policies)
    metrics = ServerMetrics(["hash", "image_resize"])
    repo.add_job(Job(job_id="j1", task_type="image_resize", params={}))
    first = repo.claim_next(["image_resize"], "w1", "s1")
    assert first is not None
    # A crash: retried (attempt 1 of 2), then it fails for good.
    metrics.jobs_changed(
        changes(
            transitions.apply_events(
                [
                    signed(first, EventType.STARTED, 1),
                    signed(first, EventType.FAILED, 2, error="boom", retryable=True),
                ]
            )
        )
    )
    second = repo.claim_next(["image_resize"], "w1", "s1")
    assert second is not None and second.attempt == 2
    metrics.jobs_changed(
        changes(transitions.apply_events([signed(second, EventType.FAILED, 1, error="boom", retryable=True)]))
    )
    repo.add_job(Job(job_id="j2", task_type="image_resize", params={}))
    third = repo.claim_next(["image_resize"], "w1", "s1")
    assert third is not None
    done = signed(third, EventType.COMPLETED, 1, task_output={})
    metrics.jobs_changed(changes(transitions.apply_events([done])))
    metrics.jobs_changed(changes(transitions.apply_events([done])))  # a re-sent result counts once

    text = metrics.render(ScrapeState())
    assert value(text, "compute_job_retries_total", task_type="image_resize") == 1
    assert value(text, "compute_job_run_seconds_count", task_type="image_resize", status="failed") == 2
    assert value(text, "compute_job_run_seconds_count", task_type="image_resize", status="completed") == 1
    # Pickup: once per job, for its first attempt.
    assert value(text, "compute_job_pickup_seconds_count", task_type="image_resize") == 2
    assert value(text, "compute_job_retries_total", task_type="hash") is None


def test_scrape_time_gauges_and_counters() -> None:
    rejected: Counter[str] = Counter({"bad signature": 3, "malformed": 1})
    metrics = ServerMetrics(["hash", "image_resize"])
    metrics.jobs_changed(
        [
            JobChange(job_id, status, task_type="hash", cause=Cause.RESCUED)
            for job_id, status in (("a", "queued"), ("b", "failed"), ("c", "queued"))
        ]
    )
    text = metrics.render(
        ScrapeState(
            [QueueSummary("image_resize", 4, 1, oldest_queued_at=1)],
            [True, True, False],
            [("job_event", rejected), ("worker_info", {})],
            lost_worker_checks=2,
        )
    )
    assert value(text, "compute_queue_depth", task_type="image_resize") == 4
    assert value(text, "compute_jobs_running", task_type="image_resize") == 1
    age = value(text, "compute_queue_oldest_age_seconds", task_type="image_resize")
    assert age is not None and age > 1e9  # waiting since 1970
    # Installed task types without jobs are reported with zeros, not left out.
    assert value(text, "compute_queue_depth", task_type="hash") == 0
    assert value(text, "compute_queue_oldest_age_seconds", task_type="hash") == 0
    assert value(text, "compute_workers", state="idle") == 2
    assert value(text, "compute_workers", state="busy") == 1
    assert value(text, "compute_mqtt_rejected_total", kind="job_event", reason="bad signature") == 3
    assert value(text, "compute_job_rescues_total", task_type="hash", outcome="queued") == 2
    assert value(text, "compute_job_rescues_total", task_type="hash", outcome="failed") == 1
    assert value(text, "compute_lost_worker_checks_total") == 2
    rejected["bad signature"] += 1  # read at scrape time
    text = metrics.render(ScrapeState(rejected=[("job_event", rejected)]))
    assert value(text, "compute_mqtt_rejected_total", kind="job_event", reason="bad signature") == 4
    assert value(text, "compute_queue_depth", task_type="image_resize") == 0  # this scrape's summary
