"""The Procrastinate peer: PostgreSQL (LISTEN/NOTIFY for wake-ups) and a no-op task.

`procrastinate --app compute_bench.peers.procrastinate_app.app worker` runs it; the database is
COMPUTE_BENCH_PEER_PG, one of the run's own.
"""

from __future__ import annotations

import os
import time

import procrastinate

from compute_bench.peers import stamps

PG_ENV = "COMPUTE_BENCH_PEER_PG"

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get(PG_ENV, "postgresql://postgres@127.0.0.1:5432/compute_bench_peers")
    )
)


@app.task(name="bench_noop", queue="bench")
async def noop(job: str) -> None:
    started_ns = time.time_ns()
    await stamps.done_async(job, started_ns)
