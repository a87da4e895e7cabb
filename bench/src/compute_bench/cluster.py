"""One benchmark deployment: a real compute-server and N compute-workers, plus observers.

Every cluster gets its own CL_SERVER_DIR (and SQLite file), free ports, and its own MQTT
topic root, so a shared broker (Mosquitto) or a rerun never mixes messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from compute.bus.mqtt import MqttBus
from compute.config import load_settings
from compute.db.migrate import upgrade_head
from compute_bench.harness import LAUNCH, Processes, free_port, scrubbed_environ

TASKS = "bench_noop,image_conversion"
#: compute.worker.results logs this when it wrote a result itself (no confirmation in time).
_DIRECT = "result written to the database by the worker ("
_STOPPED = re.compile(r"worker (\S+) stopped: (\d+) jobs run, (\d+) empty claims")


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterSpec:
    name: str
    workers: int
    broker: tuple[str, int] | None  # None: the server's embedded broker on a free port
    database_url: str | None  # None: SQLite in the cluster's CL_SERVER_DIR
    #: EMBEDDED_BROKER when `broker` is None: auto (Mosquitto when installed), mosquitto or amqtt.
    embedded_broker: str = "auto"
    wake_events: bool = True
    sweep_interval: float | None = None
    #: compute_bench.probes for the launcher to install, by role: e.g. {"worker": "open"}.
    probes: dict[str, str] = field(default_factory=dict)
    #: Subscribe the observer to job events and CL Server events (pickup phases).
    observe_jobs: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    #: The task types the workers run (--tasks), unless add_workers names others.
    tasks: str = TASKS


def _launch(role: str) -> list[str]:
    """compute-server or compute-worker, through the benchmark's launcher (compute_bench.launch),
    which registers the bench_noop plugin and the probes in that process first."""
    return [*LAUNCH, role]


class Observer:
    """The benchmark's own MQTT client (the product's MqttBus): readiness and job events."""

    def __init__(self, env: dict[str, str], root: str, legacy_topic: str, observe_jobs: bool) -> None:
        self.bus = MqttBus(
            load_settings(env), client_id=f"compute-bench-{os.getpid()}-{root}", name="bench-observer"
        )
        self.workers: set[str] = set()
        self.started: dict[str, int] = {}  # job_id -> ns the "started" event arrived
        #: Every "started" event: (ns it arrived, job_id, worker_id, attempt), in order.
        self.starts: list[tuple[int, str, str, int]] = []
        self.worker_done: dict[str, int] = {}  # job_id -> ns the worker's completed/failed went by
        self.done: dict[str, int] = {}  # job_id -> ns the server's completed/failed event arrived
        self._waiters: dict[str, asyncio.Future[int]] = {}
        self.bus.subscribe(f"{root}/workers/+/info", self._on_info)
        if observe_jobs:
            self.bus.subscribe(f"{root}/events/+/+", self._on_job_event)
            self.bus.subscribe(legacy_topic, self._on_legacy)

    def _on_info(self, topic: str, payload: bytes, _retained: bool) -> None:
        if payload:
            self.workers.add(topic.split("/")[-2])

    def _on_job_event(self, _topic: str, payload: bytes, _retained: bool) -> None:
        now = time.time_ns()
        data = json.loads(payload)
        if data.get("event") == "started":
            self.started.setdefault(data["job_id"], now)
            self.starts.append((now, data["job_id"], data.get("worker_id", ""), data.get("attempt", 0)))
        elif data.get("event") in ("completed", "failed"):
            self.worker_done.setdefault(data["job_id"], now)

    def _on_legacy(self, _topic: str, payload: bytes, _retained: bool) -> None:
        now = time.time_ns()
        data = json.loads(payload)
        if data.get("event_type") in ("completed", "failed"):
            job_id = data["job_id"]
            self.done.setdefault(job_id, now)
            fut = self._waiters.pop(job_id, None)
            if fut is not None and not fut.done():
                fut.set_result(now)

    async def wait_done(self, job_id: str, timeout: float) -> int | None:
        """ns at which the server announced the job finished (None on timeout)."""
        if job_id in self.done:
            return self.done[job_id]
        fut = self._waiters.setdefault(job_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._waiters.pop(job_id, None)
            return None


class Cluster:
    def __init__(self, spec: ClusterSpec, base_dir: Path, run_id: str) -> None:
        self.spec = spec
        self.dir = base_dir / spec.name
        self.logs = self.dir / "logs"
        self.stats_dir = self.dir / "probes"
        self.root = f"bench-{run_id}-{spec.name}"
        self.http_port = free_port()
        self.mqtt_host, self.mqtt_port = spec.broker or ("127.0.0.1", free_port())
        #: Each role's environment is given at spawn (env(role)).
        self.processes = Processes(self.logs, {})
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        #: Workers stopped on purpose (stop_workers) before the cluster stops.
        self.retired: set[str] = set()
        self.observer: Observer | None = None
        self.db: Engine | None = None
        self.base_url = f"http://127.0.0.1:{self.http_port}"

    # -- environment --------------------------------------------------------------------

    def env(self, role: str) -> dict[str, str]:
        env = scrubbed_environ()  # nothing of the caller's shell points them elsewhere
        env.update(
            {
                "CL_SERVER_DIR": str(self.dir / "cl_server"),
                "AUTH_DISABLED": "true",
                "LOG_LEVEL": "INFO",
                "MQTT_PORT": str(self.mqtt_port),
                "MQTT_TOPIC_ROOT": self.root,
                "MQTT_TOPIC": f"{self.root}/inference/events",
                "CAPABILITY_TOPIC_PREFIX": f"{self.root}/inference/workers",
                "COMPUTE_PORT": str(self.http_port),
                "WORKER_SUPPORTED_TASKS": self.spec.tasks,
                "WORKER_WAKE_EVENTS": "true" if self.spec.wake_events else "false",
            }
        )
        if self.spec.broker is not None:
            env["MQTT_BROKER"] = self.mqtt_host
        else:
            env["EMBEDDED_BROKER"] = self.spec.embedded_broker
        if self.spec.database_url:
            env["DATABASE_URL"] = self.spec.database_url
        if self.spec.sweep_interval is not None:
            env["WORKER_SWEEP_INTERVAL"] = str(self.spec.sweep_interval)
        if role in self.spec.probes:
            env["COMPUTE_BENCH_PROBES"] = str(self.stats_dir)
            env["COMPUTE_BENCH_PROBE_KINDS"] = self.spec.probes[role]
        env.update(self.spec.extra_env)
        return env

    @property
    def database_url(self) -> str:
        return self.spec.database_url or f"sqlite:///{self.dir / 'cl_server' / 'compute.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.dir / "cl_server").mkdir(parents=True, exist_ok=True)
        try:  # what compute-migrate does, without paying for another interpreter
            await asyncio.to_thread(upgrade_head, self.database_url)
        except Exception as exc:
            raise ClusterError(f"migration of {self.database_url} failed: {exc}") from exc
        self.db = self._reader()
        self._refuse_open_jobs()
        self.server = self._spawn(
            "server", [*_launch("server"), "--host", "127.0.0.1", "--port", str(self.http_port), "--no-auth"]
        )
        await self._wait_server()
        self.observer = Observer(
            self.env("observer"), self.root, f"{self.root}/inference/events", self.spec.observe_jobs
        )
        await self.observer.bus.start()
        if not await self.observer.bus.wait_connected(15):
            raise ClusterError(f"benchmark cannot reach the broker at {self.mqtt_host}:{self.mqtt_port}")
        await self.add_workers(self.spec.workers)

    async def add_workers(self, count: int, tasks: str | None = None, args: Sequence[str] = ()) -> list[str]:
        """Start `count` workers (running `tasks`, default the spec's, with compute-worker's
        further `args`); their ids once all are online."""
        names = [f"w{len(self.workers) + i + 1}" for i in range(count)]
        ids = []
        for name in names:
            worker_id = f"{self.root}-{name}"
            ids.append(worker_id)
            self.workers[worker_id] = self._spawn(
                name,
                [
                    *_launch("worker"),
                    "--port",
                    str(self.http_port),
                    "--worker-id",
                    worker_id,
                    "--tasks",
                    tasks or self.spec.tasks,
                    *args,
                ],
            )
        assert self.observer is not None
        deadline = time.monotonic() + 60
        try:
            while not set(ids) <= self.observer.workers:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ClusterError(f"workers did not come online; see {self.logs}")
                await asyncio.sleep(0.05)
        except ClusterError:
            await self.stop_workers(ids)
            raise
        if count:
            await asyncio.sleep(0.5)  # let each worker finish its first (empty) drain
        return ids

    async def stop_workers(self, ids: Sequence[str]) -> None:
        """Stop these workers (SIGTERM, as an operator would) and wait for them to exit."""
        for worker_id in ids:
            self.retired.add(worker_id)
            proc = self.workers[worker_id]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for worker_id in ids:
            await _wait(self.workers[worker_id], 20)

    def _spawn(self, name: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        role = "server" if name == "server" else "worker"
        return self.processes.spawn(name, cmd, env=self.env(role), cwd=self.dir)

    def _check_alive(self) -> None:
        procs = {
            "server": self.server,
            **{wid.rsplit("-", 1)[1]: p for wid, p in self.workers.items() if wid not in self.retired},
        }
        for name, proc in procs.items():
            if proc is not None and proc.poll() is not None:
                log = self.logs / f"{name}.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise ClusterError(f"{name} exited with {proc.returncode}:\n{tail}")

    async def _wait_server(self) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                self._check_alive()
                try:
                    r = await client.get(self.base_url + "/")
                    if r.status_code == 200 and r.json().get("mqtt_connected"):
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ClusterError(f"compute-server did not become ready; see {self.logs}")
                await asyncio.sleep(0.1)

    async def stop(self) -> dict[str, Any]:
        """Stop workers, then the server; return what their logs and counters tell."""
        # Confirmations of the last results may still be on their way: a worker stopped
        # now would write those results itself, and count them as unconfirmed.
        await asyncio.sleep(0.5)
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            await _wait(proc, 20)
        if self.observer is not None:
            await self.observer.bus.close()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            await _wait(self.server, 20)
        if self.db is not None:
            self.db.dispose()
        return {"workers": self._worker_exit_stats(), "probes": self.read_probes()}

    def _worker_exit_stats(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for log in self.logs.glob("w*.log"):
            text = log.read_text(errors="replace")
            for m in _STOPPED.finditer(text):
                found[m.group(1)] = {
                    "jobs_run": int(m.group(2)),
                    "empty_claims": int(m.group(3)),
                    "results_written_by_worker": text.count(_DIRECT),
                }
        return found

    def read_probes(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.stats_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(path.read_text()))
        return out

    def pids(self) -> dict[str, int]:
        pids = {"server": self.server.pid} if self.server else {}
        pids.update({wid: p.pid for wid, p in self.workers.items() if wid not in self.retired})
        return pids

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the database, read-only --------------------------------------------------------

    def _reader(self) -> Engine:
        if self.is_sqlite:
            path = self.dir / "cl_server" / "compute.db"
            return create_engine(
                "sqlite://",
                creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False),
            )
        return create_engine(self.database_url, pool_size=2)

    def _refuse_open_jobs(self) -> None:
        open_jobs = self.scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')")
        if open_jobs:
            raise ClusterError(
                f"the database has {open_jobs} queued/processing jobs; the benchmark's workers would "
                "take them. Point --database-url at a database of its own."
            )

    def job_file(self, job_id: str, relative: str) -> Path:
        """A file of a job's folder, as `task_output` names it (the server's default storage)."""
        return self.dir / "cl_server" / "compute" / "jobs" / job_id / relative

    def scalar(self, sql: str, **params: Any) -> Any:
        assert self.db is not None
        with self.db.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        assert self.db is not None
        found: dict[str, dict[str, Any]] = {}
        ids = list(job_ids)
        with self.db.connect() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ", ".join(f":j{k}" for k in range(len(chunk)))
                result = conn.execute(
                    text(
                        "SELECT job_id, status, created_at, started_at, completed_at, task_output, "
                        f"worker_id FROM jobs WHERE job_id IN ({marks})"
                    ),
                    {f"j{k}": v for k, v in enumerate(chunk)},
                )
                for row in result.mappings():
                    data = dict(row)
                    data["task_output"] = json.loads(data["task_output"]) if data["task_output"] else None
                    found[data["job_id"]] = data
        return found


async def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return
        await asyncio.sleep(0.05)
