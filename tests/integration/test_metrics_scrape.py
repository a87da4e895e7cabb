"""GET /metrics after real jobs through a real worker, parsed with prometheus_client's parser."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from compute.config import Settings
from tests.support.events import ms_now
from tests.support.inprocess import Server, WorkerFactory, running_server
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_match_the_jobs_that_ran(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    worker = await start_worker(tasks=("image_conversion",))
    await wait_for(lambda: server.services.registry.workers, what="the server to list the worker")
    ids = [(await server.submit("image_conversion"))["job_id"] for _ in range(3)]
    for job_id in ids:
        await server.wait_status(job_id, "completed")
    before_wait = ms_now()
    waiting = (await server.submit("image_resize"))["job_id"]  # no worker runs image_resize
    assert (await server.client.get("/jobs/not-a-job")).status_code == 404
    # Junk and a forgery on the event topics: dropped and counted by reason.
    probe.publish(server.topics.job_event("image_conversion", ids[0]), b"not json")
    probe.publish(
        server.topics.job_event("image_conversion", ids[0]),
        json.dumps(
            {
                "job_id": ids[0],
                "task_type": "image_conversion",
                "worker_id": worker.settings.worker_id,
                "event": "progress",
                "progress": 50,
                "timestamp": ms_now(),
                "attempt": 1,
                "seq": 99,
                "sig": "0" * 64,
            }
        ).encode(),
    )

    async def counted() -> Samples | None:
        samples = await scrape(server.client)
        rejected = [
            value(samples, "compute_mqtt_rejected_total", kind="job_event", reason=r)
            for r in ("malformed", "bad signature")
        ]
        return samples if rejected == [1, 1] else None

    samples = await wait_for(counted, what="both dropped events counted")
    # Results arrive through the ingest: one run time and one pickup per job.
    task = "image_conversion"
    assert value(samples, "compute_job_run_seconds_count", task_type=task, status="completed") == 3
    assert value(samples, "compute_job_pickup_seconds_count", task_type=task) == 3
    assert value(samples, "compute_job_run_seconds_count", task_type=task, status="failed") is None
    assert value(samples, "compute_job_retries_total", task_type=task) is None
    # Queues as the database has them now.
    assert value(samples, "compute_queue_depth", task_type="image_resize") == 1
    assert value(samples, "compute_queue_depth", task_type="image_conversion") == 0
    assert value(samples, "compute_jobs_running", task_type="image_conversion") == 0
    age = value(samples, "compute_queue_oldest_age_seconds", task_type="image_resize")
    assert age is not None and 0 <= age <= (ms_now() - before_wait) / 1000 + 1
    assert value(samples, "compute_queue_depth", task_type="hash") == 0  # installed, never used
    assert value(samples, "compute_workers", state="idle") == 1
    assert value(samples, "compute_workers", state="busy") == 0
    # HTTP, by route template: the three submissions, one 404 on the job route.
    assert (
        value(
            samples,
            "compute_http_request_duration_seconds_count",
            method="POST",
            route="/jobs/image_conversion",
            status="200",
        )
        == 3
    )
    assert (
        value(
            samples,
            "compute_http_request_duration_seconds_count",
            method="GET",
            route="/jobs/{job_id}",
            status="404",
        )
        == 1
    )
    assert not any(
        name.startswith("compute_http") and ("route", f"/jobs/{waiting}") in labels
        for name, labels in samples
    )


@pytest.mark.parametrize("header, status", [(None, 401), ("Bearer wrong", 401), ("Bearer s3cret", 200)])
async def test_metrics_token(settings: Settings, header: str | None, status: int) -> None:
    async with running_server(replace(settings, metrics_token="s3cret"), wait_connected=False) as srv:
        response = await srv.client.get("/metrics", headers={"Authorization": header} if header else {})
        assert response.status_code == status, response.text
        if status == 401:
            assert "METRICS_TOKEN" in response.json()["detail"]
