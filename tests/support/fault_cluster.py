"""A real deployment in subprocesses for fault tests: broker, compute-servers, compute-workers.

Built on compute_bench.harness (shared with the benchmark): server and workers run the product's
command lines through compute_bench.launch, which first registers the `bench_noop` plugin in each
process. The broker runs in its own process (a private Mosquitto when installed, else amqtt) so a
test can kill and restart it; the database is a SQLite file (or PostgreSQL) that the test reads
directly to check what was persisted.

Several servers: `start_server("srv-b")` starts one more on a port of its own, beside the first,
on the same database, broker and job storage (what a deployment behind a load balancer runs);
`submit_alternating` spreads a burst over them and tells the answered jobs from the rest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from compute_bench import noop
from compute_bench.harness import (
    LAUNCH,
    Processes,
    amqtt_command,
    free_port,
    mosquitto_command,
    port_answers,
    scrubbed_environ,
    server_ready,
    wait_until,
)
from compute_bench.launch import CLOCK_OFFSET_ENV

BIN = Path(sys.executable).parent
TASK = noop.TASK_TYPE

#: Deadline for a process to come up. Generous: on a loaded 2-core VM imports alone took 15 s.
STARTUP = 90.0


#: Short leases and keepalives so faults show within seconds, but not so short that a loaded
#: 2-core VM misses them: a keepalive of 2 s there made live workers look gone (their Last Will
#: fired), and their jobs were rescued and run twice, as docs/guarantees.md says they may be.
FAST = {
    "JOB_LEASE_SECONDS": "10",
    "MQTT_KEEPALIVE": "10",
    "WORKER_SWEEP_INTERVAL": "2",
    "MQTT_HEARTBEAT_INTERVAL": "5",
}


class Cluster:
    def __init__(
        self,
        tmp_path: Path,
        broker_kind: str,
        broker_port: int,
        http_port: int,
        database_url: str | None = None,
        **settings: str,
    ) -> None:
        self.tmp = tmp_path
        self.broker_kind = broker_kind
        self.broker_port = broker_port
        self.http_port = http_port
        self.url = f"http://127.0.0.1:{http_port}"
        cl_dir = tmp_path / "cl_server"
        self.database_url = database_url or f"sqlite:///{cl_dir / 'compute.db'}"
        self.env = {
            **scrubbed_environ(),
            "CL_SERVER_DIR": str(cl_dir),
            "DATABASE_URL": self.database_url,
            "MQTT_BROKER": "127.0.0.1",
            "MQTT_PORT": str(broker_port),
            "AUTH_DISABLED": "true",
            "LOG_LEVEL": "INFO",
            **settings,
        }
        self.processes = Processes(tmp_path, self.env)
        self.broker: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        #: Every server started, by name: its process and its base URL.
        self.servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.engine: Engine = create_engine(self.database_url)

    # -- processes -------------------------------------------------------------------------

    def start_broker(self) -> None:
        if self.broker_kind == "mosquitto":
            cmd = mosquitto_command(self.broker_port, self.tmp)
        else:
            cmd = amqtt_command(self.broker_port)
        self.broker = self.processes.spawn("broker", cmd)
        wait_until(lambda: port_answers("127.0.0.1", self.broker_port), STARTUP, "broker to listen")

    def kill_broker(self) -> None:
        assert self.broker is not None
        self.broker.kill()
        self.broker.wait()
        wait_until(lambda: not port_answers("127.0.0.1", self.broker_port), 5, "broker port to close")

    def migrate(self) -> None:
        done = subprocess.run(
            [str(BIN / "compute-migrate")],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    def start_server(self, name: str = "server", port: int | None = None, clock_offset: float = 0.0) -> str:
        """Start a compute-server (`name` is its COMPUTE_SERVER_ID and log name); the first one
        listens on `http_port`, others on `port` or a free one; `clock_offset`: seconds its wall
        clock is off, as on another host. Returns its base URL."""
        if name == "server" or not self.servers:
            port = self.http_port
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        proc = self.processes.spawn(
            name,
            [*LAUNCH, "server", "--port", str(port), "--host", "127.0.0.1"],
            env={**self.env, "COMPUTE_SERVER_ID": name, CLOCK_OFFSET_ENV: str(clock_offset)},
        )
        if port == self.http_port:
            self.server = proc
        self.servers[name] = (proc, url)
        wait_until(
            lambda: self._alive(name) and server_ready(url), STARTUP, f"{name} to answer and reach the broker"
        )
        return url

    def _alive(self, name: str) -> bool:
        proc = self.servers[name][0]
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")
        return True

    def healthy(self) -> bool:
        return server_ready(self.url)

    def health(self, name: str) -> dict[str, Any]:
        """GET / of the server started as `name`."""
        return dict(httpx.get(self.servers[name][1] + "/", timeout=10).json())

    def kill_server(self, name: str | None = None) -> None:
        """SIGKILL a server (the first one by default) and reap it."""
        proc = self.server if name is None else self.servers[name][0]
        assert proc is not None
        proc.kill()
        proc.wait()

    def start_worker(
        self, worker_id: str, tasks: str = TASK, clock_offset: float = 0.0
    ) -> subprocess.Popen[bytes]:
        """A compute-worker; `clock_offset`: seconds its wall clock is off, as on another host."""
        proc = self.processes.spawn(
            worker_id,
            [*LAUNCH, "worker", "--port", str(self.http_port), "--worker-id", worker_id, "--tasks", tasks],
            env={**self.env, CLOCK_OFFSET_ENV: str(clock_offset)},
        )
        self.workers[worker_id] = proc
        return proc

    def wait_workers(self, count: int, timeout: float = STARTUP) -> None:
        wait_until(lambda: self.capabilities()["num_workers"] >= count, timeout, f"{count} workers")

    def capabilities(self) -> dict[str, Any]:
        # Generous: right after a flood the server may still be checking thousands of unknown
        # worker sessions (a database look-up each, on its loop, rate-limited); late, not never.
        return dict(httpx.get(self.url + "/capabilities", timeout=60).json())

    def stop(self) -> None:
        self.processes.stop(10)
        self.engine.dispose()

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, count: int, steps: int = 0, step_ms: float = 0.0, concurrency: int = 8) -> list[str]:
        import asyncio

        async def go() -> list[str]:
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:

                async def one() -> str:
                    async with sem:
                        r = await client.post(
                            f"/jobs/{TASK}", data={"steps": str(steps), "step_ms": str(step_ms)}
                        )
                        r.raise_for_status()
                        return str(r.json()["job_id"])

                return list(await asyncio.gather(*(one() for _ in range(count))))

        return asyncio.run(go())

    def submit_alternating(
        self,
        urls: list[str],
        count: int,
        task: str = TASK,
        data: dict[str, str] | None = None,
        upload: bytes | None = None,
        concurrency: int = 8,
    ) -> tuple[list[str], int]:
        """`count` submissions of `task` (form `data`, and `upload` as its file), the i-th to
        `urls[i % len(urls)]`, `concurrency` at a time: (the job ids answered, how many got no
        answer: a refused or broken connection)."""
        import asyncio

        async def go() -> tuple[list[str], int]:
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(timeout=30) as client:

                async def one(i: int) -> str | None:
                    files = None if upload is None else {"file": ("upload.png", upload, "image/png")}
                    async with sem:
                        try:
                            r = await client.post(
                                f"{urls[i % len(urls)]}/jobs/{task}", data=data or {}, files=files
                            )
                        except httpx.TransportError:
                            return None  # no answer: the job may or may not exist
                        r.raise_for_status()
                        return str(r.json()["job_id"])

                found = await asyncio.gather(*(one(i) for i in range(count)))
                answered = [job_id for job_id in found if job_id is not None]
                return answered, count - len(answered)

        return asyncio.run(go())

    def job_folders(self) -> set[str]:
        """The job folders in the shared job storage (COMPUTE_STORAGE_DIR)."""
        root = self.tmp / "cl_server" / "compute" / "jobs"
        return {p.name for p in root.iterdir()} if root.exists() else set()

    def rows(self, where: str = "1=1") -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(text(f"SELECT * FROM jobs WHERE {where}"))
            return [dict(r) for r in result.mappings()]

    def count(self, where: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM jobs WHERE {where}")).scalar_one())

    def log(self, name: str) -> str:
        """What the processes started as `name` ("broker", "server" or a worker id) wrote."""
        return self.processes.log(name)
