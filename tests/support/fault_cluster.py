"""The fault tests' deployment: compute_bench.deployment.Deployment, plus what only they ask of it.

Server and workers run through compute_bench.launch (the `bench_noop` plugin registered in each
process); the broker runs in a process of its own (a private Mosquitto, or amqtt) so a test can
kill and restart it; the database is a SQLite file (or PostgreSQL) that the test reads directly to
check what was persisted. Each server is named (its COMPUTE_SERVER_ID and log name): a second one
beside the first shares the database, broker and job storage, as behind a load balancer, and
`submit_alternating` spreads a burst over them and tells the answered jobs from the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from compute_bench import noop
from compute_bench.deployment import STARTUP, Deployment
from compute_bench.harness import server_ready, wait_until

TASK = noop.TASK_TYPE

#: Short leases and keepalives so faults show within seconds, but not so short that a loaded
#: 2-core VM misses them: a keepalive of 2 s there made live workers look gone (their Last Will
#: fired), and their jobs were rescued and run twice, as docs/guarantees.md says they may be.
FAST = {
    "JOB_LEASE_SECONDS": "10",
    "MQTT_KEEPALIVE": "10",
    "WORKER_SWEEP_INTERVAL": "2",
    "MQTT_HEARTBEAT_INTERVAL": "5",
}


class Cluster(Deployment):
    def __init__(
        self, tmp_path: Path, broker_kind: str, database_url: str | None = None, **settings: str
    ) -> None:
        """`broker_kind`: "mosquitto" or "amqtt", a process of its own; `settings`: of every process."""
        super().__init__(
            tmp_path,
            broker=broker_kind,
            database_url=database_url,
            settings={"AUTH_DISABLED": "true", **settings},
            server_ids=True,
        )

    def healthy(self) -> bool:
        return server_ready(self.url)

    def health(self, name: str) -> dict[str, Any]:
        """GET / of the server started as `name`."""
        return dict(httpx.get(self.base_url(name) + "/", timeout=10).json())

    def wait_workers(self, count: int, timeout: float = STARTUP) -> None:
        wait_until(lambda: self.capabilities()["num_workers"] >= count, timeout, f"{count} workers")

    def capabilities(self) -> dict[str, Any]:
        # Generous: right after a flood the server may still be checking thousands of unknown
        # worker sessions (a database look-up each, on its loop, rate-limited); late, not never.
        return dict(httpx.get(self.url + "/capabilities", timeout=60).json())

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, count: int, steps: int = 0, step_ms: float = 0.0, concurrency: int = 8) -> list[str]:
        """`count` bench_noop jobs to the first server; their ids (every one must be answered)."""
        data = {"steps": str(steps), "step_ms": str(step_ms)}
        answered, unanswered = self.submit_alternating([self.url], count, data=data, concurrency=concurrency)
        assert not unanswered, f"{unanswered} of {count} submissions got no answer"
        return answered

    def submit_alternating(
        self,
        urls: list[str],
        count: int,
        task: str = TASK,
        data: Mapping[str, str] | None = None,
        upload: bytes | None = None,
        concurrency: int = 8,
    ) -> tuple[list[str], int]:
        """`count` submissions of `task` (form `data`, and `upload` as its file), the i-th to
        `urls[i % len(urls)]`, `concurrency` at a time: (the job ids answered, how many got no
        answer: a refused or broken connection)."""

        async def go() -> tuple[list[str], int]:
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(timeout=30) as client:

                async def one(i: int) -> str | None:
                    files = None if upload is None else {"file": ("upload.png", upload, "image/png")}
                    async with sem:
                        try:
                            r = await client.post(
                                f"{urls[i % len(urls)]}/jobs/{task}", data=dict(data or {}), files=files
                            )
                        except httpx.TransportError:
                            return None  # no answer: the job may or may not exist
                        r.raise_for_status()
                        return str(r.json()["job_id"])

                found = await asyncio.gather(*(one(i) for i in range(count)))
                answered = [job_id for job_id in found if job_id is not None]
                return answered, count - len(answered)

        return asyncio.run(go())
