"""Runs the peers on this machine's Redis and PostgreSQL, at the measurement points of Compute's
pickup and throughput sections (compute_bench.scenarios), and returns their figures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from compute_bench.client import Submitter
from compute_bench.cluster import ClusterError
from compute_bench.harness import free_port
from compute_bench.peers import stamps
from compute_bench.scenarios import GAP, NS_PER_MS, Sizes, drive
from compute_bench.stats import summary

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CELERY_CONCURRENCY = 2  # prefork children: one per core of the 2-core machine the issue measured
PROCRASTINATE_WORKERS, PROCRASTINATE_CONCURRENCY = 2, 10
START_TIMEOUT = 60.0

#: Peer name -> what it is, for the report.
PEERS = {
    "celery": f"Celery + Redis, no HTTP (1 worker, prefork x{CELERY_CONCURRENCY})",
    "fastapi_celery": "Celery behind FastAPI (uvicorn, uvloop, httptools; upload stored, then delay)",
    "procrastinate": f"Procrastinate + PostgreSQL, no HTTP ({PROCRASTINATE_WORKERS} workers "
    f"x{PROCRASTINATE_CONCURRENCY})",
}


class Peers:
    def __init__(self, base: Path, run_id: str, sizes: Sizes, redis_url: str | None = None) -> None:
        self.dir = base / "peers"
        self.logs = self.dir / "logs"
        self.ns = f"compute-bench-{run_id}"
        self.sizes = sizes
        self.redis_url = redis_url or stamps.redis_url()
        self.keys = stamps.keys(self.ns)
        self.pg_db = f"compute_bench_peers_{run_id}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis: Any = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                stamps.REDIS_ENV: self.redis_url,
                stamps.NS_ENV: self.ns,
                "COMPUTE_BENCH_PEER_DIR": str(self.dir / "uploads"),
                "COMPUTE_BENCH_PEER_PG": f"postgresql://postgres@127.0.0.1:5432/{self.pg_db}",
            }
        )
        return env

    async def run(self) -> dict[str, Any]:
        import redis.asyncio

        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            await self.redis.ping()
        except Exception as exc:
            raise ClusterError(f"peers: Redis does not answer at {self.redis_url}: {exc}") from exc
        out: dict[str, Any] = {"describe": PEERS}
        try:
            async with self._celery_worker() as celery_pid:
                out["celery"] = await self._celery(celery_pid)
                async with self._uvicorn() as (base_url, web_pid):
                    out["fastapi_celery"] = await self._fastapi(
                        base_url, {"web": web_pid, "celery worker": celery_pid}
                    )
            try:
                out["procrastinate"] = await self._procrastinate()
            except _Unavailable as exc:
                out["procrastinate"] = {"skipped": str(exc)}
        finally:
            await self.redis.delete(*self.keys.values())
            await self.redis.aclose()
        return out

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs.append(proc)
        return proc

    async def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                break
            await asyncio.sleep(0.05)
        proc.wait()

    def _check(self, proc: subprocess.Popen[bytes], name: str) -> None:
        if proc.poll() is not None:
            log = self.logs / f"{name}.log"
            raise ClusterError(
                f"peer {name} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-1500:]}"
            )

    @asynccontextmanager
    async def _celery_worker(self) -> Any:
        from compute_bench.peers import celery_app

        celery_app.app.conf.update(
            broker_url=self.redis_url, result_backend=self.redis_url, task_default_queue=self.ns
        )
        proc = self._spawn(
            "celery",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "compute_bench.peers.celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(CELERY_CONCURRENCY),
                "--loglevel",
                "WARNING",
                "-Q",
                self.ns,
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"{self.ns}@%h",
            ],
        )
        try:
            await self._ready(
                lambda job: _call(celery_app.noop.apply_async, (job,), task_id=job), proc, "celery"
            )
            yield proc.pid
        finally:
            await self._stop(proc)

    @asynccontextmanager
    async def _uvicorn(self) -> Any:
        port = free_port()
        proc = self._spawn(
            "uvicorn",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "compute_bench.peers.web:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT
            async with httpx.AsyncClient(timeout=2.0) as client:
                while True:
                    self._check(proc, "uvicorn")
                    with suppress(httpx.HTTPError):
                        if (await client.get(base_url + "/")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise ClusterError(f"peer uvicorn did not start; see {self.logs}")
                    await asyncio.sleep(0.1)
            yield base_url, proc.pid
        finally:
            await self._stop(proc)

    async def _ready(
        self, submit: Callable[[str], Awaitable[Any]], proc: subprocess.Popen[bytes], name: str
    ) -> None:
        """A first job goes through: the worker is consuming."""
        job = f"ready-{uuid.uuid4()}"
        await self.redis.delete(self.keys["finished"])
        await submit(job)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check(proc, name)
            if await self.redis.hexists(self.keys["started"], job):
                return
            await asyncio.sleep(0.1)
        raise ClusterError(f"peer {name} did not run a first job; see {self.logs}")

    # -- measurements ---------------------------------------------------------------------

    async def _pickup(self, submit: Callable[[], Awaitable[str]]) -> dict[str, Any]:
        """Sequential jobs: submit, wait for the task's report, the next after GAP."""
        sizes = self.sizes
        await self.redis.delete(self.keys["finished"])
        records = []
        for i in range(sizes.warmup + sizes.pickup):
            t0 = time.time_ns()
            job = await submit()
            t1 = time.time_ns()
            deadline = time.monotonic() + 60
            while True:
                got = await self.redis.blpop([self.keys["finished"]], timeout=5)
                if got is not None and got[1].decode() == job:
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(f"peer job {job} did not finish in 60 s; see {self.logs}")
            if i >= sizes.warmup:
                records.append((job, t0, t1))
            await asyncio.sleep(GAP)
        started = await self.redis.hmget(self.keys["started"], [job for job, _, _ in records])
        return {
            "jobs": len(records),
            "submit_to_task_start_ms": summary(
                (int(s) - t0) / NS_PER_MS
                for (_, t0, _), s in zip(records, started, strict=True)
                if s is not None
            ),
            "submit_call_ms": summary((t1 - t0) / NS_PER_MS for _, t0, t1 in records),
        }

    async def _burst(
        self, submit: Callable[[], Awaitable[Any]], n: int, pids: dict[str, int]
    ) -> dict[str, Any]:
        concurrency = self.sizes.concurrency
        base = int(await self.redis.get(self.keys["done"]) or 0)
        warm = 2 * concurrency
        await asyncio.gather(*(submit() for _ in range(warm)))
        await self._count_reaches(base + warm)
        base += warm

        async def finished() -> int:
            return int(await self.redis.get(self.keys["done"]) or 0) - base

        result = await drive(submit, finished, n, concurrency, pids)
        result["workers"] = 1
        return result

    async def _count_reaches(self, want: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while int(await self.redis.get(self.keys["done"]) or 0) < want:
            if time.monotonic() > deadline:
                raise ClusterError(f"peer warm-up jobs did not finish; see {self.logs}")
            await asyncio.sleep(0.05)

    async def _celery(self, worker_pid: int) -> dict[str, Any]:
        from compute_bench.peers import celery_app

        async def submit() -> str:
            job = str(uuid.uuid4())
            await _call(celery_app.noop.apply_async, (job,), task_id=job)
            return job

        return {
            "pickup": await self._pickup(submit),
            "throughput": await self._burst(submit, self.sizes.burst, {"celery worker": worker_pid}),
        }

    async def _fastapi(self, base_url: str, pids: dict[str, int]) -> dict[str, Any]:
        sub = Submitter(base_url, max(32, self.sizes.concurrency))
        try:
            return {
                "pickup": await self._pickup(sub.noop),
                "throughput": await self._burst(sub.noop, self.sizes.burst, pids),
                "throughput_image": await self._burst(sub.image, self.sizes.burst_image, pids),
            }
        finally:
            await sub.aclose()

    async def _procrastinate(self) -> dict[str, Any]:
        async with AsyncExitStack() as stack:
            await self._create_database()
            stack.push_async_callback(self._drop_database)
            import procrastinate
            from procrastinate.tasks import configure_task

            # The bench's own client app, on the run's database; the workers import the task.
            app = procrastinate.App(
                connector=procrastinate.PsycopgConnector(conninfo=self.env()["COMPUTE_BENCH_PEER_PG"])
            )
            await stack.enter_async_context(app.open_async())
            task = configure_task(name="bench_noop", job_manager=app.job_manager, queue="bench")
            await app.schema_manager.apply_schema_async()
            procs = []
            for i in range(PROCRASTINATE_WORKERS):
                proc = self._spawn(
                    f"procrastinate-{i + 1}",
                    [
                        sys.executable,
                        "-m",
                        "procrastinate",
                        "--app",
                        "compute_bench.peers.procrastinate_app.app",
                        "--log-level",
                        "warning",
                        "worker",
                        "--concurrency",
                        str(PROCRASTINATE_CONCURRENCY),
                        "--queues",
                        "bench",
                    ],
                )
                procs.append(proc)
                stack.push_async_callback(self._stop, proc)

            async def submit() -> str:
                job = str(uuid.uuid4())
                await task.defer_async(job=job)
                return job

            for i, proc in enumerate(procs):
                await self._ready(lambda job: task.defer_async(job=job), proc, f"procrastinate-{i + 1}")
            pids = {f"procrastinate worker {i + 1}": p.pid for i, p in enumerate(procs)}
            return {
                "pickup": await self._pickup(submit),
                "throughput": await self._burst(submit, self.sizes.burst, pids),
            }
        raise AssertionError("unreachable")

    async def _create_database(self) -> None:
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise _Unavailable(f"PostgreSQL does not answer at {PG_ADMIN}: {exc}") from exc
        async with conn:
            await conn.execute(f'CREATE DATABASE "{self.pg_db}"')

    async def _drop_database(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')


class _Unavailable(Exception):
    pass


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A synchronous client call (Celery's apply_async) made as its user would, in line, then a
    chance for the benchmark's other coroutines to run."""
    result = fn(*args, **kwargs)
    await asyncio.sleep(0)
    return result
