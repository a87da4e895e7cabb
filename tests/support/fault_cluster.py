"""A real deployment in subprocesses for fault tests: broker, compute-server, compute-workers.

Built on compute_bench.harness (shared with the benchmark): server and workers run the product's
command lines through compute_bench.launch, which first registers the `bench_noop` plugin in each
process. The broker runs in its own process (a private Mosquitto when installed, else amqtt) so a
test can kill and restart it; the database is a SQLite file (or PostgreSQL) that the test reads
directly to check what was persisted.
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
    mosquitto_command,
    port_answers,
    scrubbed_environ,
    server_ready,
    wait_until,
)

BIN = Path(sys.executable).parent
TASK = noop.TASK_TYPE

#: Deadline for a process to come up. Generous: on a loaded 2-core VM imports alone took 15 s.
STARTUP = 90.0


#: Short leases and keepalives so faults show within seconds, but not so short that a loaded
#: 2-core VM misses them: a keepalive of 2 s there made live workers look gone (their Last Will
#: fired), and their jobs were rescued and run twice, as the README says they may be.
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

    def start_server(self) -> None:
        self.server = self.processes.spawn(
            "server", [*LAUNCH, "server", "--port", str(self.http_port), "--host", "127.0.0.1"]
        )
        wait_until(self.healthy, STARTUP, "server to answer and reach the broker")

    def healthy(self) -> bool:
        return server_ready(self.url)

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.kill()
        self.server.wait()

    def start_worker(self, worker_id: str, tasks: str = TASK) -> subprocess.Popen[bytes]:
        proc = self.processes.spawn(
            worker_id,
            [*LAUNCH, "worker", "--port", str(self.http_port), "--worker-id", worker_id, "--tasks", tasks],
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
