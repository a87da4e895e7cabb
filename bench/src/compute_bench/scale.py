"""How cost grows: the claim against a large `jobs` table and a deep backlog, jobs/s as workers
are added, and memory while a backlog drains. Benchmark sections, not tests: they print figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from compute.db.migrate import upgrade_head
from compute.db.repository import JobRepository
from compute.db.session import is_sqlite, make_engine
from compute_bench import probes
from compute_bench.client import Submitter
from compute_bench.cluster import Cluster
from compute_bench.scenarios import NS_PER_MS, burst, drive, finished_since
from compute_bench.stats import status_kb, summary

TASK = "bench_noop"
#: Completed rows are filled in one statement per chunk (the rows a long-lived deployment keeps).
_FILL_CHUNK = 200_000


# -- claim cost against the table's size -----------------------------------------------------


def claim_plan(engine: Engine, repo: JobRepository) -> list[str]:
    """The query plan of the real claim statement: the statement claim_next sends, captured on its
    way to the driver, explained by the database (SQLite EXPLAIN QUERY PLAN, PostgreSQL EXPLAIN).
    The claim it makes is rolled back."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if probes.is_claim(statement):
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with _rolled_back_claims(repo):
            repo.claim_next([TASK], "plan-probe")
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    if not seen:
        raise RuntimeError("claim_next sent no claim statement")
    statement, params = seen[0]
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            cur.execute(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, params)
            rows = cur.fetchall()
        finally:
            cur.close()
        conn.rollback()
    return [str(r[-1] if sqlite else r[0]) for r in rows]


@contextlib.contextmanager
def _rolled_back_claims(repo: JobRepository) -> Iterator[None]:
    """Claims made inside are undone (EXPLAIN needs one sent, not one kept)."""
    with repo.engine.connect() as conn:
        before = conn.execute(text("SELECT id FROM jobs WHERE status = 'processing'")).scalars().all()
    yield
    with repo.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'queued', attempt = 0, lease_token = NULL, "
                "worker_id = NULL, started_at = NULL WHERE status = 'processing'"
                + (" AND id NOT IN (" + ",".join(map(str, before)) + ")" if before else "")
            )
        )


def fill(engine: Engine, status: str, count: int, start: int) -> None:
    """`count` rows of `status` with ids from `start`, in chunks of one INSERT ... SELECT each."""
    sqlite = engine.dialect.name == "sqlite"
    done = 0
    while done < count:
        n = min(_FILL_CHUNK, count - done)
        lo = start + done
        series = (
            (
                "WITH RECURSIVE s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i < :hi) "
                "SELECT i FROM s"
            )
            if sqlite
            else "SELECT i FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS s(i)"
        )
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO jobs (job_id, task_type, params, status, progress, priority, created_at, "
                    "updated_at, completed_at, retry_count, max_retries, attempt, event_seq) "
                    f"SELECT 'scale-' || i, :task, '{{}}', :status, :progress, 5, i, i, :done, 0, 3, "
                    f":attempt, 0 FROM ({series}) AS t"
                ),
                {
                    "lo": lo,
                    "hi": lo + n - 1,
                    "task": TASK,
                    "status": status,
                    "progress": 100 if status == "completed" else 0,
                    "done": lo if status == "completed" else None,
                    "attempt": 1 if status == "completed" else 0,
                },
            )
        done += n


def time_claims(repo: JobRepository, n: int) -> dict[str, Any]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        record = repo.claim_next([TASK], "scale-probe")
        times.append((time.perf_counter_ns() - t0) / NS_PER_MS)
        if record is None:
            break
    return summary(times)


@contextlib.contextmanager
def scratch_database(database_url: str | None, base: Path) -> Iterator[str]:
    """A database of the section's own: a SQLite file under `base`, or a new PostgreSQL database
    on the server `database_url` names (dropped afterwards)."""
    if database_url is None or is_sqlite(database_url):
        yield f"sqlite:///{base / 'claim_scale.db'}"
        return
    url = make_url(database_url)
    name = f"compute_bench_scale_{uuid.uuid4().hex[:8]}"
    admin = make_engine(
        url.set(database="postgres").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def claim_scale(database_url: str | None, base: Path, rows: int, backlog: int, claims: int) -> dict[str, Any]:
    """Claim cost (claim_next, in this process) at three sizes of `jobs`: small, `rows` finished
    rows, and `backlog` queued ones; with the claim's query plan at each."""
    with scratch_database(database_url, base) as url:
        upgrade_head(url)
        engine = make_engine(url)
        repo = JobRepository(engine)
        try:
            small = min(1_000, rows)
            steps: list[dict[str, Any]] = []
            next_id = 1
            plan: list[tuple[str, int, int]] = [
                (f"{small:,} finished + {claims:,} queued", small, claims),
                (f"{rows:,} finished + {claims:,} queued", rows - small, claims),
                (f"{rows:,} finished + {backlog:,} queued", 0, backlog),
            ]
            for label, add_done, add_queued in plan:
                t0 = time.monotonic()
                fill(engine, "completed", add_done, next_id)
                next_id += add_done
                fill(engine, "queued", add_queued, next_id)
                next_id += add_queued
                if engine.dialect.name == "postgresql":
                    with engine.begin() as conn:  # what autovacuum does after such a load
                        conn.execute(text("ANALYZE jobs"))
                filled = time.monotonic() - t0
                query_plan = claim_plan(engine, repo)
                steps.append(
                    {
                        "table": label,
                        "fill_s": round(filled, 1),
                        "claim_ms": time_claims(repo, claims),
                        "plan": query_plan,
                        "plan_kind": plan_kind(query_plan),
                    }
                )
                with engine.begin() as conn:  # back to a queue holding only what the next step adds
                    conn.execute(text("UPDATE jobs SET status = 'completed' WHERE status <> 'completed'"))
            return {"database": engine.dialect.name, "claims_per_step": claims, "steps": steps}
        finally:
            engine.dispose()


CLAIM_INDEX = "ix_jobs_claim_order"


def plan_kind(plan: Sequence[str]) -> str:
    """What a claim's plan costs as the table grows: "claim index" (the partial index of queued rows,
    read in claim order: flat), "sort of queued rows" (every queued row read and sorted: grows with
    the backlog) or "full scan" (grows with the table)."""
    text_ = "\n".join(plan)
    if "Seq Scan on jobs" in text_ or any(line.strip() == "SCAN jobs" for line in plan):
        return "full scan"
    if CLAIM_INDEX in text_ and "TEMP B-TREE" not in text_ and "Sort" not in text_:
        return "claim index"
    return "sort of queued rows"


# -- jobs/s with 1, 2, 4, 8 workers ----------------------------------------------------------


async def workers_scale(
    cluster: Cluster, sub: Submitter, counts: Sequence[int], n: int, concurrency: int
) -> list[dict[str, Any]]:
    """The same no-op burst with more workers each time (workers added to one cluster)."""
    out = []
    for count in counts:
        missing = count - len(cluster.pids()) + 1
        if missing > 0:
            await cluster.add_workers(missing)
        result = await burst(cluster, sub, TASK, n, concurrency)
        out.append(
            {
                "workers": count,
                "jobs": result["finished"],
                "jobs_per_s": result["jobs_per_s"],
                "submit_per_s": result["submit_per_s"],
                "server_cpu_ms_per_job": result["server_cpu_ms_per_job"],
            }
        )
    return out


# -- a backlog drained, memory sampled -------------------------------------------------------


class _Sampler:
    """RSS of the cluster's processes every `period` seconds, in MiB."""

    def __init__(self, cluster: Cluster, period: float = 0.5) -> None:
        self.cluster = cluster
        self.period = period
        self.samples: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None

    def rss(self) -> dict[str, float | None]:
        return {name: _mb(status_kb(pid)) for name, pid in self.cluster.pids().items()}

    async def _run(self) -> None:
        while True:
            for name, mb in self.rss().items():
                if mb is not None:
                    self.samples.setdefault(name, []).append(mb)
            await asyncio.sleep(self.period)

    def __enter__(self) -> _Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


async def backlog(cluster: Cluster, sub: Submitter, n: int, workers: int, concurrency: int) -> dict[str, Any]:
    """Idle RSS; n jobs submitted with no worker running (the backlog); then `workers` fresh
    workers drain it while RSS is sampled; RSS once drained. The cluster starts without workers."""
    await asyncio.sleep(1.0)
    server_idle = _mb(status_kb(cluster.pids()["server"]))
    start_ms = time.time_ns() // NS_PER_MS

    async def none_finished() -> int:
        return n  # submission only: nothing runs yet

    submitted = await drive(sub.noop, none_finished, n, concurrency, cluster.pids())
    server_after_submit = _mb(status_kb(cluster.pids()["server"]))
    ids = await cluster.add_workers(workers)
    pids = cluster.pids()
    worker_idle = {wid: _mb(status_kb(pids[wid])) for wid in ids}  # online, first claims under way
    t0 = time.monotonic()
    with _Sampler(cluster) as sampler:
        deadline = t0 + max(300.0, n / 10)
        done = 0
        while time.monotonic() < deadline:
            done = finished_since(cluster, TASK, start_ms)
            if done >= submitted["submitted"]:
                break
            await asyncio.sleep(0.25)
        drain_s = time.monotonic() - t0
        await asyncio.sleep(1.0)
        end = sampler.rss()
    procs = {}
    for name, series in sampler.samples.items():
        role = "server" if name == "server" else "worker"
        idle_mb = server_idle if role == "server" else worker_idle.get(name)
        procs[name] = {
            "role": role,
            "idle_mb": idle_mb,
            "peak_mb": max(series),
            "end_mb": end.get(name),
            "samples": len(series),
            "growth_mb": None if idle_mb is None or end.get(name) is None else round(end[name] - idle_mb, 1),  # type: ignore[operator]
        }
    return {
        "jobs": n,
        "submitted": submitted["submitted"],
        "submit_per_s": submitted["submit_per_s"],
        "drained": done,
        "drain_s": round(drain_s, 1),
        "drain_jobs_per_s": round(done / drain_s, 1) if drain_s else None,
        "workers": workers,
        "server_idle_mb": server_idle,
        "server_after_submit_mb": server_after_submit,
        "processes": procs,
    }
