"""A plugin's result is bounded (MAX_RESULT_BYTES), on both sides of the bus (issue 16, item 4).

A 1x1 PNG carrying 20 MB of XMP made an exif job store a 19.5 MB `task_output`; the oversize
result was re-sent over the bus every 2 s until the worker's 10 s fallback wrote it directly.
Now the worker checks the size before sending and fails the job with a clear error, the server
refuses one over its own limit (a worker configured with a larger one) by failing the job and
confirming it, so nothing is sent again, and an error message is bounded too. On SQLite and
PostgreSQL, the embedded broker and Mosquitto.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from compute.config import Settings
from compute.jobs import MAX_ERROR_CHARS
from compute.topics import Topics
from compute_bench.noop import TASK_TYPE, BenchNoopTask
from tests.support.inprocess import Server, WorkerFactory, running_server
from tests.support.jobs import add_job
from tests.support.mqtt import MqttProbe
from tests.support.waits import wait_for

#: What the plugin hands back: about 50 kB of one text value.
BIG = 50_000


class Inflated(BenchNoopTask):
    """bench_noop whose result (or error) is as large as the test asks."""

    def __init__(self, output_bytes: int = 0, error_chars: int = 0) -> None:
        self.output_bytes = output_bytes
        self.error_chars = error_chars

    async def execute(self, job: Any, params: Any, progress_callback: Any = None) -> dict[str, Any]:
        if self.error_chars:
            return {"status": "error", "error": "x" * self.error_chars}
        return {"status": "ok", "task_output": {"xmp": "x" * self.output_bytes}}


async def _events_sent(probe: MqttProbe, topics: Topics, job_id: str) -> list[str]:
    await probe.sync(f"{topics.root}/events/_sync")
    return [
        m.json()["event"] for m in probe.messages if m.topic.endswith(f"/{job_id}") and "/events/" in m.topic
    ]


async def test_the_worker_fails_an_oversize_result_instead_of_sending_it(
    server: Server, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    topics = server.topics
    await probe.subscribe(f"{topics.root}/events/#")
    running = await start_worker(
        tasks=(TASK_TYPE,),
        plugins={TASK_TYPE: Inflated(BIG)},
        plugin_isolation="thread",
        max_result_bytes=10_000,
    )
    job_id = add_job(server, TASK_TYPE)
    job = await server.wait_status(job_id, "failed")
    assert "MAX_RESULT_BYTES" in job["error_message"] and "10000" in job["error_message"]
    assert job["task_output"] is None
    assert await _events_sent(probe, topics, job_id) == ["started", "failed"]  # no result went out
    await wait_for(lambda: not running.worker.outbox.pending, what="the failure confirmed")
    assert running.worker.outbox.written_directly == 0


async def test_the_server_refuses_an_oversize_result_and_it_is_not_sent_again(
    settings: Settings, start_worker: WorkerFactory, probe: MqttProbe
) -> None:
    """A worker whose limit is larger than the server's: the server fails the job and confirms
    it, so the worker neither sends it again nor writes it itself."""
    async with running_server(replace(settings, max_result_bytes=10_000)) as server:
        topics = server.topics
        await probe.subscribe(f"{topics.root}/events/#")
        running = await start_worker(
            tasks=(TASK_TYPE,),
            plugins={TASK_TYPE: Inflated(BIG)},
            plugin_isolation="thread",
            max_result_bytes=10**6,
        )
        job_id = add_job(server, TASK_TYPE)
        job = await server.wait_status(job_id, "failed")
        assert (
            "MAX_RESULT_BYTES" in job["error_message"] and "over the limit of 10000" in job["error_message"]
        )
        assert job["task_output"] is None
        await wait_for(lambda: not running.worker.outbox.pending, what="the refusal confirmed")
        assert running.worker.outbox.written_directly == 0
        assert await _events_sent(probe, topics, job_id) == ["started", "completed"]  # sent once


async def test_a_plugins_error_message_is_bounded(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(
        tasks=(TASK_TYPE,), plugins={TASK_TYPE: Inflated(error_chars=200_000)}, plugin_isolation="thread"
    )
    job_id = add_job(server, TASK_TYPE)
    job = await server.wait_status(job_id, "failed")
    assert len(job["error_message"]) == MAX_ERROR_CHARS
    assert job["error_message"].endswith("[truncated: 200000 characters]")


async def test_results_under_the_limit_are_kept_whole(server: Server, start_worker: WorkerFactory) -> None:
    await start_worker(tasks=(TASK_TYPE,), plugins={TASK_TYPE: Inflated(BIG)}, plugin_isolation="thread")
    job_id = add_job(server, TASK_TYPE)
    job = await server.wait_status(job_id, "completed")
    assert len(job["task_output"]["xmp"]) == BIG
