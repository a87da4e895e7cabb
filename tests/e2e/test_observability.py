"""The real compute-server with a worker and LOG_FORMAT=json: JSON lines, /metrics, /asyncapi.json."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from compute_bench.harness import free_port
from tests.support.commands import Commands, run
from tests.support.images import png_bytes
from tests.support.waits import wait_for

pytestmark = pytest.mark.e2e


async def test_json_logs_metrics_and_asyncapi_over_real_processes(
    procs: Commands, env: dict[str, str]
) -> None:
    for variables in (env, procs.env):  # procs keeps a copy of the environment it was made with
        variables.update(LOG_FORMAT="json", WORKER_SUPPORTED_TASKS="image_conversion")
    assert run(env, "compute-migrate").returncode == 0
    http_port, mqtt_port = free_port(), free_port()
    server = procs.start(
        "server",
        "compute-server",
        "--no-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--mqtt-port",
        str(mqtt_port),
        "--workers",
        "1",
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client:

        async def worker_listed() -> bool:
            assert server.poll() is None, procs.log("server")
            try:
                return bool((await client.get("/capabilities")).json()["num_workers"] == 1)
            except httpx.HTTPError:
                return False

        await wait_for(worker_listed, timeout=90, interval=0.2, what="the server and its worker")
        files = {"file": ("photo.png", png_bytes((40, 30)), "image/png")}
        submitted = await client.post("/jobs/image_conversion", data={"format": "jpg"}, files=files)
        job_id = submitted.json()["job_id"]

        async def completed() -> dict[str, Any] | None:
            job: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
            return job if job["status"] == "completed" else None

        worker_id = (await wait_for(completed, timeout=30, what=f"job {job_id} to complete"))["worker_id"]
        metrics = (await client.get("/metrics")).text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        assert (
            samples[
                (
                    "compute_job_run_seconds_count",
                    (("status", "completed"), ("task_type", "image_conversion")),
                )
            ]
            == 1
        )
        assert samples[("compute_workers", (("state", "idle"),))] == 1
        document = (await client.get("/asyncapi.json")).json()
        assert document["asyncapi"] == "3.0.0" and "jobEvent" in document["channels"]

    procs.stop()
    # Python's own warnings go to stderr as text before any logging exists (one comes from runpy
    # when a worker starts as `python -m compute.cli`, see the plugin fork server); the rest are logs.
    log_lines = [
        line
        for line in procs.log("server").splitlines()
        if line.strip() and not re.match(r"^.+?:\d+: \w*Warning: ", line)
    ]
    parsed: list[dict[str, Any]] = []
    for line in log_lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line[:300]}")
    about_job = [p for p in parsed if p.get("job_id") == job_id]
    assert worker_id and any(
        p.get("worker_id") == worker_id and p.get("task_type") == "image_conversion" for p in about_job
    ), about_job
    loggers = {p["logger"] for p in parsed}
    assert any(name.startswith("uvicorn") for name in loggers), loggers  # the server's own lines too
    assert any(name.startswith("compute.worker") for name in loggers), loggers
