"""One Compute deployment in subprocesses: its broker, database, servers and workers.

The benchmark (compute_bench.cluster), the fault tests (tests/support/fault_cluster.py) and the
end-to-end tests (tests/support/commands.py) all start Compute through this one class, so the
environment each process gets, the wait for a server to be ready and the way processes end are
written once. It is synchronous: the tests call it from plain code, the benchmark through
`asyncio.to_thread`.

* Folder: `directory` holds CL_SERVER_DIR (`cl_server/`: the SQLite file, the job storage) and
  `logs/<name>.log`, one per process (compute_bench.harness.Processes).
* Launch: "bench" runs `python -m compute_bench.launch` (the `bench_noop` plugin, probes, a wall
  clock put off); "installed" runs the `compute-server` / `compute-worker` command lines as a
  person does.
* Broker: "embedded" (the server runs it on `broker_port`), "external" (`broker_host:broker_port`,
  someone else's), "mosquitto" or "amqtt" (a process of its own that `kill_broker` can crash), or
  "none" (the command-line flags say; the end-to-end tests pass them).
* Database: `database_url`, else the SQLite file in CL_SERVER_DIR; `migrate()` does what
  compute-migrate does; `rows`, `count`, `scalar` read it through a read-only engine.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from compute.db.migrate import upgrade_head
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

__all__ = ["BIN", "BROKERS", "LAUNCHES", "STARTUP", "Deployment", "DeploymentError"]

#: Deadline for a process to come up. Generous: on a loaded 2-core VM imports alone took 15 s.
STARTUP = 90.0
BROKERS = ("embedded", "external", "mosquitto", "amqtt", "none")
LAUNCHES = ("bench", "installed")
#: Where `uv sync` installed the command lines (beside the interpreter).
BIN = Path(sys.executable).parent


class DeploymentError(RuntimeError):
    """A process of the deployment exited, or did not become ready in time."""


class Deployment:
    def __init__(
        self,
        directory: Path,
        *,
        launch: str = "bench",
        broker: str = "embedded",
        broker_host: str = "127.0.0.1",
        broker_port: int | None = None,
        embedded_broker: str = "auto",
        database_url: str | None = None,
        http_port: int | None = None,
        settings: Mapping[str, str] | None = None,
        server_ids: bool = False,
    ) -> None:
        """`settings`: environment variables of every process, on top of this process's environment
        without any Compute setting (scrubbed_environ); `server_ids`: each server's
        COMPUTE_SERVER_ID is its name (else the product's default)."""
        if launch not in LAUNCHES or broker not in BROKERS:
            raise ValueError(f"launch must be one of {LAUNCHES}, broker one of {BROKERS}")
        self.dir = directory
        self.cl_server = directory / "cl_server"
        self.logs = directory / "logs"
        self.launch = launch
        self.broker_kind = broker
        self.broker_host = broker_host
        self.broker_port = broker_port or free_port()
        self.http_port = http_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._database_url = database_url
        self.server_ids = server_ids
        self.env = scrubbed_environ()
        self.env.update({"CL_SERVER_DIR": str(self.cl_server), "LOG_LEVEL": "INFO"})
        if broker == "embedded":
            self.env.update({"EMBEDDED_BROKER": embedded_broker, "MQTT_PORT": str(self.broker_port)})
        elif broker != "none":
            self.env.update({"MQTT_BROKER": broker_host, "MQTT_PORT": str(self.broker_port)})
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.env.update(settings or {})
        self.processes = Processes(self.logs, self.env)
        self.broker: subprocess.Popen[bytes] | None = None
        #: Every server started, by name: its process and its base URL.
        self.servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        #: Servers and workers ended on purpose (stopped or killed): their exit is no failure.
        self.retired: set[str] = set()
        self._db: Engine | None = None

    # -- processes ---------------------------------------------------------------------------

    def spawn(
        self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Any command as `name`, in this deployment's environment unless `env` is given, in its
        folder unless `cwd` is (what a process writes to a relative path stays with the rest)."""
        env = self.env if env is None else env
        return self.processes.spawn(name, cmd, env=env, cwd=self.dir if cwd is None else cwd)

    def command(self, role: str) -> list[str]:
        """compute-server or compute-worker (`role`: "server" or "worker"), launched as chosen."""
        return [*LAUNCH, role] if self.launch == "bench" else [str(BIN / f"compute-{role}")]

    def _role_env(self, env: Mapping[str, str] | None, clock_offset: float) -> dict[str, str]:
        merged = {**self.env, **(env or {})}
        if clock_offset:
            if self.launch != "bench":
                raise ValueError("only compute_bench.launch can put a process's clock off")
            merged[CLOCK_OFFSET_ENV] = str(clock_offset)
        return merged

    def log(self, name: str) -> str:
        """What the processes started as `name` ("broker", a server's name, a worker id) wrote."""
        return self.processes.log(name)

    def tail(self, name: str, chars: int = 3000) -> str:
        return self.log(name)[-chars:]

    def start_broker(self) -> None:
        """Start (or start again) the broker process of a "mosquitto" or "amqtt" deployment."""
        if self.broker_kind == "mosquitto":
            cmd = mosquitto_command(self.broker_port, self.dir)
        elif self.broker_kind == "amqtt":
            cmd = amqtt_command(self.broker_port)
        else:
            raise ValueError(f"a {self.broker_kind!r} broker is not this deployment's to start")
        self.broker = self.spawn("broker", cmd)
        wait_until(lambda: port_answers("127.0.0.1", self.broker_port), STARTUP, "broker to listen")

    def kill_broker(self) -> None:
        """SIGKILL the broker process, as a crash: every client loses its connection."""
        assert self.broker is not None
        self.broker.kill()
        self.broker.wait()
        wait_until(lambda: not port_answers("127.0.0.1", self.broker_port), 5, "broker port to close")

    def start_server(
        self,
        name: str = "server",
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        clock_offset: float = 0.0,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        wrap: Sequence[str] = (),
        timeout: float = STARTUP,
    ) -> str:
        """A compute-server, once it answers and has reached its broker; its base URL.

        Port: `port`, else the one `name` had before (a restart), else `http_port` for the first
        server and a free one for the others. `env`: settings of this process only; `args`: more
        options; `clock_offset`: seconds its wall clock is off, as on another host; `wrap`: a
        command it runs under (one that sets a resource limit, say)."""
        if port is None:
            known = self.servers.get(name)
            port = int(known[1].rsplit(":", 1)[1]) if known else None
        port = port or (self.http_port if not self.servers else free_port())
        url = f"http://127.0.0.1:{port}"
        server_id = {"COMPUTE_SERVER_ID": name} if self.server_ids else {}
        proc = self.spawn(
            name,
            [*wrap, *self.command("server"), *args, "--host", "127.0.0.1", "--port", str(port)],
            env=self._role_env({**server_id, **(env or {})}, clock_offset),
            cwd=cwd,
        )
        self.retired.discard(name)
        self.servers[name] = (proc, url)
        deadline = time.monotonic() + timeout
        while not server_ready(url):
            self.check_alive([name])
            if time.monotonic() > deadline:
                raise DeploymentError(f"{name} did not become ready in {timeout:g} s:\n{self.tail(name)}")
            time.sleep(0.1)
        return url

    def server(self, name: str = "server") -> subprocess.Popen[bytes]:
        return self.servers[name][0]

    def base_url(self, name: str = "server") -> str:
        return self.servers[name][1]

    def start_worker(
        self,
        worker_id: str,
        tasks: str = noop.TASK_TYPE,
        env: Mapping[str, str] | None = None,
        clock_offset: float = 0.0,
        args: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """A compute-worker of the server on `http_port`, its log named after `worker_id`."""
        cmd = [*self.command("worker"), "--port", str(self.http_port), "--worker-id", worker_id]
        proc = self.spawn(worker_id, [*cmd, "--tasks", tasks, *args], env=self._role_env(env, clock_offset))
        self.retired.discard(worker_id)
        self.workers[worker_id] = proc
        return proc

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        """DeploymentError, with its log's tail, when a server or worker (of `names`, default all
        not retired) has exited."""
        procs = self._processes()
        for name in procs if names is None else names:
            proc = procs[name]
            if name not in self.retired and proc.poll() is not None:
                raise DeploymentError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def pids(self) -> dict[str, int]:
        """The servers' and workers' process ids, by name, but for those retired."""
        return {name: proc.pid for name, proc in self._processes().items() if name not in self.retired}

    def _processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """Every server and worker started, by name."""
        return {name: proc for name, (proc, _) in self.servers.items()} | self.workers

    def stop_workers(self, ids: Sequence[str] | None = None, timeout: float = 20.0) -> None:
        """SIGTERM these workers (default all), as an operator would, and wait for them to exit."""
        ids = list(self.workers if ids is None else ids)
        self.retired.update(ids)
        Processes.end([self.workers[i] for i in ids], timeout)

    def stop_server(self, name: str = "server", timeout: float = 20.0) -> None:
        """SIGTERM a server and wait for it to exit (SIGKILL past `timeout`)."""
        self.retired.add(name)
        Processes.end([self.servers[name][0]], timeout)

    def kill_server(self, name: str = "server") -> None:
        """SIGKILL a server, as a crash, and reap it."""
        self.kill(name)

    def kill(self, name: str, how: signal.Signals = signal.SIGKILL) -> None:
        """Signal the server or worker `name` (SIGKILL by default: reaped); it is retired."""
        proc = self.servers[name][0] if name in self.servers else self.workers[name]
        self.retired.add(name)
        proc.send_signal(how)
        if how == signal.SIGKILL:
            proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """End everything: workers first, then servers, then the rest; the engine disposed."""
        self.stop_workers(timeout=timeout)
        for name in self.servers:
            self.stop_server(name, timeout)
        self.processes.stop(timeout)
        if self._db is not None:
            self._db.dispose()

    # -- the database ------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return self._database_url or f"sqlite:///{self.cl_server / 'compute.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def migrate(self) -> None:
        """What compute-migrate does (CL_SERVER_DIR made, the schema at head), in this process."""
        self.cl_server.mkdir(parents=True, exist_ok=True)
        upgrade_head(self.database_url)

    @property
    def db(self) -> Engine:
        """A read-only engine on the database (SQLite opened mode=ro), made at first use."""
        if self._db is None:
            if self.is_sqlite:
                uri = f"file:{self.database_url.removeprefix('sqlite:///')}?mode=ro"
                self._db = create_engine(
                    "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
                )
            else:
                self._db = create_engine(self.database_url, pool_size=2)
        return self._db

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.db.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, where: str = "1=1", columns: str = "*", **params: Any) -> list[dict[str, Any]]:
        """The jobs rows `where` holds (SQL, with `:name` params), as dicts."""
        with self.db.connect() as conn:
            result = conn.execute(text(f"SELECT {columns} FROM jobs WHERE {where}"), params)
            return [dict(r) for r in result.mappings()]

    def count(self, where: str, **params: Any) -> int:
        return int(self.scalar(f"SELECT count(*) FROM jobs WHERE {where}", **params))

    # -- job storage -------------------------------------------------------------------------

    @property
    def jobs_dir(self) -> Path:
        """The server's default job storage (COMPUTE_STORAGE_DIR), one folder per job."""
        return self.cl_server / "compute" / "jobs"

    def job_folders(self) -> set[str]:
        return {p.name for p in self.jobs_dir.iterdir()} if self.jobs_dir.exists() else set()
