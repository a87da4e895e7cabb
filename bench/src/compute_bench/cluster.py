"""One benchmark deployment: a real compute-server and N compute-workers, plus observers.

The processes, their environment and the database are a compute_bench.deployment.Deployment's
(the tests start theirs with it too); what is the benchmark's stays here: a ClusterSpec turned
into its settings, the MQTT Observer, the probes, and the workers' exit counters. Every cluster
gets its own CL_SERVER_DIR (and SQLite file), free ports, and its own MQTT topic root, so a
shared broker (Mosquitto) or a rerun never mixes messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.bus.mqtt import MqttBus
from compute.config import load_settings
from compute_bench import probes
from compute_bench.deployment import Deployment, DeploymentError
from compute_bench.harness import free_port

TASKS = "bench_noop,image_conversion"
#: compute.worker.results logs this when it wrote a result itself (no confirmation in time).
_DIRECT = "result written to the database by the worker ("
_STOPPED = re.compile(r"worker (\S+) stopped: (\d+) jobs run, (\d+) empty claims")


#: A process of the cluster exited or did not come up (the benchmark's name for it).
ClusterError = DeploymentError


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
        self.root = f"bench-{run_id}-{spec.name}"
        self.stats_dir = base_dir / spec.name / "probes"
        self.http_port = free_port()
        host, port = spec.broker or ("127.0.0.1", None)
        self.deployment = Deployment(
            base_dir / spec.name,
            broker="external" if spec.broker else "embedded",
            broker_host=host,
            broker_port=port,
            embedded_broker=spec.embedded_broker,
            database_url=spec.database_url,
            http_port=self.http_port,
            settings=self._settings(),
        )
        self.mqtt_host, self.mqtt_port = host, self.deployment.broker_port
        self.base_url = self.deployment.url
        self.observer: Observer | None = None

    def _settings(self) -> dict[str, str]:
        """The spec as the environment of every process (and of the observer)."""
        settings = {
            "AUTH_DISABLED": "true",
            "MQTT_TOPIC_ROOT": self.root,
            "MQTT_TOPIC": f"{self.root}/inference/events",
            "CAPABILITY_TOPIC_PREFIX": f"{self.root}/inference/workers",
            "COMPUTE_PORT": str(self.http_port),
            "WORKER_SUPPORTED_TASKS": self.spec.tasks,
            "WORKER_WAKE_EVENTS": "true" if self.spec.wake_events else "false",
        }
        if self.spec.sweep_interval is not None:
            settings["WORKER_SWEEP_INTERVAL"] = str(self.spec.sweep_interval)
        return settings | self.spec.extra_env

    def _probes(self, role: str) -> dict[str, str]:
        """The probes the spec asks of `role` ("server" or "worker"), for the launcher to install."""
        if role not in self.spec.probes:
            return {}
        return {probes.ENV: str(self.stats_dir), probes.KINDS_ENV: self.spec.probes[role]}

    # -- the deployment's, under the names the sections use -------------------------------

    @property
    def dir(self) -> Path:
        return self.deployment.dir

    @property
    def logs(self) -> Path:
        return self.deployment.logs

    @property
    def server(self) -> subprocess.Popen[bytes] | None:
        found = self.deployment.servers.get("server")
        return found[0] if found else None

    @property
    def workers(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.deployment.workers

    @property
    def retired(self) -> set[str]:
        """Workers stopped on purpose before the cluster stops: their exit is no failure."""
        return self.deployment.retired

    @property
    def database_url(self) -> str:
        return self.deployment.database_url

    @property
    def is_sqlite(self) -> bool:
        return self.deployment.is_sqlite

    def pids(self) -> dict[str, int]:
        return self.deployment.pids()

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.deployment.scalar(sql, **params)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        try:  # what compute-migrate does, without paying for another interpreter
            await asyncio.to_thread(self.deployment.migrate)
        except Exception as exc:
            raise ClusterError(f"migration of {self.database_url} failed: {exc}") from exc
        self._refuse_open_jobs()
        await asyncio.to_thread(
            self.deployment.start_server, env=self._probes("server"), args=["--no-auth"], timeout=60
        )
        self.observer = Observer(
            self.deployment.env, self.root, f"{self.root}/inference/events", self.spec.observe_jobs
        )
        await self.observer.bus.start()
        if not await self.observer.bus.wait_connected(15):
            raise ClusterError(f"benchmark cannot reach the broker at {self.mqtt_host}:{self.mqtt_port}")
        await self.add_workers(self.spec.workers)

    async def add_workers(self, count: int, tasks: str | None = None, args: Sequence[str] = ()) -> list[str]:
        """Start `count` workers (running `tasks`, default the spec's, with compute-worker's
        further `args`); their ids once all are online."""
        ids = [f"{self.root}-w{len(self.workers) + i + 1}" for i in range(count)]
        for worker_id in ids:
            self.deployment.start_worker(
                worker_id, tasks or self.spec.tasks, env=self._probes("worker"), args=args
            )
        assert self.observer is not None
        deadline = time.monotonic() + 60
        try:
            while not set(ids) <= self.observer.workers:
                self.deployment.check_alive()
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
        await asyncio.to_thread(self.deployment.stop_workers, ids)

    async def stop(self) -> dict[str, Any]:
        """Stop workers, then the server; return what their logs and counters tell."""
        # Confirmations of the last results may still be on their way: a worker stopped
        # now would write those results itself, and count them as unconfirmed.
        await asyncio.sleep(0.5)
        await asyncio.to_thread(self.deployment.stop_workers)
        if self.observer is not None:
            await self.observer.bus.close()
        await asyncio.to_thread(self.deployment.stop)
        return {"workers": self._worker_exit_stats(), "probes": self.read_probes()}

    def _worker_exit_stats(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for worker_id in self.workers:
            text = self.deployment.log(worker_id)
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

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the database, read-only --------------------------------------------------------

    def _refuse_open_jobs(self) -> None:
        open_jobs = self.scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')")
        if open_jobs:
            raise ClusterError(
                f"the database has {open_jobs} queued/processing jobs; the benchmark's workers would "
                "take them. Point --database-url at a database of its own."
            )

    def job_file(self, job_id: str, relative: str) -> Path:
        """A file of a job's folder, as `task_output` names it (the server's default storage)."""
        return self.deployment.jobs_dir / job_id / relative

    def rows(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The jobs' rows by id (the columns the sections read), task_output decoded."""
        found: dict[str, dict[str, Any]] = {}
        ids = list(job_ids)
        columns = "job_id, status, created_at, started_at, completed_at, task_output, worker_id"
        for i in range(0, len(ids), 500):
            chunk = {f"j{k}": v for k, v in enumerate(ids[i : i + 500])}
            where = f"job_id IN ({', '.join(f':{name}' for name in chunk)})"
            for data in self.deployment.rows(where, columns, **chunk):
                data["task_output"] = json.loads(data["task_output"]) if data["task_output"] else None
                found[data["job_id"]] = data
        return found
