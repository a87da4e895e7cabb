"""A real deployment in subprocesses for fault tests: broker, compute-server, compute-workers.

Server and workers run the product's command lines through tests.support.launch, which first
registers the test-only `test_noop` plugin (tests.support.noop) in each process. The broker runs
in its own process (a private Mosquitto when installed, else amqtt) so a test can kill and
restart it; the database is a SQLite file (or PostgreSQL) that the test reads directly to check
what was persisted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

BIN = Path(sys.executable).parent
#: The repository root, so the subprocesses can import tests.support.launch.
ROOT = Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, "-m", "tests.support.launch"]
TASK = "test_noop"
_SCRUB = ("MQTT_", "DATABASE_URL", "CL_SERVER_DIR", "WORKER_", "COMPUTE_", "AUTH_DISABLED", "JOB_",
          "PUBLIC_KEY_PATH", "CAPABILITY_TOPIC_PREFIX", "MAX_UPLOAD_BYTES", "TASK_POLICIES", "RETRY_")

#: Deadline for a process to come up. Generous: on a loaded 2-core VM imports alone took 15 s.
STARTUP = 90.0

AMQTT_SCRIPT = """
import asyncio, sys
from amqtt.broker import Broker
async def main():
    listeners = {"default": {"type": "tcp", "bind": "127.0.0.1:%s" % sys.argv[1]}}
    anonymous = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    broker = Broker({"listeners": listeners, "plugins": anonymous})
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Cluster:
    def __init__(self, tmp_path: Path, broker_kind: str, broker_port: int, http_port: int,
                 database_url: str | None = None, **settings: str) -> None:
        self.tmp = tmp_path
        self.broker_kind = broker_kind
        self.broker_port = broker_port
        self.http_port = http_port
        self.url = f"http://127.0.0.1:{http_port}"
        cl_dir = tmp_path / "cl_server"
        self.database_url = database_url or f"sqlite:///{cl_dir / 'compute.db'}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
        self.env = {**clean, "CL_SERVER_DIR": str(cl_dir), "DATABASE_URL": self.database_url,
                    "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker_port),
                    "AUTH_DISABLED": "true", "LOG_LEVEL": "INFO",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")])),
                    **settings}
        self.broker: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self._logs = 0
        self.engine: Engine = create_engine(self.database_url)

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        self._logs += 1
        out = open(self.tmp / f"{self._logs:02d}-{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return proc

    def start_broker(self) -> None:
        if self.broker_kind == "mosquitto":
            conf = self.tmp / "mosquitto.conf"
            conf.write_text(f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
                            "max_queued_messages 100000\n")
            cmd = [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        else:
            cmd = [sys.executable, "-c", AMQTT_SCRIPT, str(self.broker_port)]
        self.broker = self._spawn("broker", cmd)
        wait_until(lambda: answers(self.broker_port), STARTUP, "broker to listen")

    def kill_broker(self) -> None:
        assert self.broker is not None
        self.broker.kill()
        self.broker.wait()
        wait_until(lambda: not answers(self.broker_port), 5, "broker port to close")

    def migrate(self) -> None:
        done = subprocess.run([str(BIN / "compute-migrate")], env=self.env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr

    def start_server(self) -> None:
        self.server = self._spawn("server", [*LAUNCH, "server", "--port",
                                             str(self.http_port), "--host", "127.0.0.1"])
        wait_until(self.healthy, STARTUP, "server to answer and reach the broker")

    def healthy(self) -> bool:
        try:
            return bool(httpx.get(self.url + "/", timeout=1).json()["mqtt_connected"])
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.kill()
        self.server.wait()

    def start_worker(self, worker_id: str, tasks: str = TASK) -> subprocess.Popen[bytes]:
        proc = self._spawn(worker_id, [*LAUNCH, "worker", "--port", str(self.http_port),
                                       "--worker-id", worker_id, "--tasks", tasks])
        self.workers[worker_id] = proc
        return proc

    def wait_workers(self, count: int, timeout: float = STARTUP) -> None:
        wait_until(lambda: self.capabilities()["num_workers"] >= count, timeout, f"{count} workers")

    def capabilities(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/capabilities", timeout=5).json())

    def stop(self) -> None:
        procs = [*self.workers.values(), self.server, self.broker]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            if proc is None:
                continue
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.engine.dispose()

    # -- jobs ------------------------------------------------------------------------------

    def submit(self, count: int, steps: int = 0, step_ms: float = 0.0, concurrency: int = 8) -> list[str]:
        import asyncio

        async def go() -> list[str]:
            sem = asyncio.Semaphore(concurrency)
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
                async def one() -> str:
                    async with sem:
                        r = await client.post(f"/jobs/{TASK}",
                                              data={"steps": str(steps), "step_ms": str(step_ms)})
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

    def log(self, name_part: str) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob(f"*{name_part}*.log")))
