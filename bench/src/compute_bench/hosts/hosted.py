"""Compute deployed across hosts (compute_bench.hosts.netns): PostgreSQL, Mosquitto, servers, workers.

The shape of issue 18's deployment, on one machine:

* a **server** host with three addresses: the compute-server's (`SERVER`), Mosquitto's
  (`BROKER`) and PostgreSQL's (`DATABASE`), so a worker can be cut off from one service of the
  host and not the others (`Host.block`); a second server process listens on `SERVER_2`, and
  `SERVICE` is then one address in front of both (compute_bench.hosts.balancer);
* **worker** hosts, each with its own CL_SERVER_DIR and models folder;
* a **client** host, from which the test submits jobs and reads the database (as a user's
  machine on the same LAN would), never cut off.

The services are the real ones, configured as a deployment would be: PostgreSQL from Debian's
binaries (initdb, then `postgres` as the postgres user, listening on its address only, password
authentication for the LAN), Mosquitto with deploy/mosquitto's configuration, ACL and
`add-user.sh` (one user per role, no anonymous clients; only the listener and the paths changed),
and the product's own command lines (`compute-migrate`, `compute-server`, `compute-worker`).
`HostedCompute.server_env` / `worker_env` are the settings each host needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import getpass
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

from compute.config import variable_names
from compute.ports import port_answers
from compute_bench.harness import Processes, wait_until
from compute_bench.hosts.netns import Host, Lan

__all__ = [
    "BROKER",
    "DATABASE",
    "SERVER",
    "SERVER_2",
    "SERVICE",
    "HostedCompute",
    "Mosquitto",
    "Postgres",
    "Site",
    "missing_services",
]

#: The server host's addresses (RFC 2544's range: it exists only inside the run's namespaces).
SERVER, BROKER, DATABASE, SERVER_2 = "198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"
#: With two servers: the one address clients and workers use (a balancer in front of both).
SERVICE = "198.18.0.14"
WORKER_ADDRESSES = ("198.18.0.21", "198.18.0.22", "198.18.0.23")
CLIENT = "198.18.0.30"
HTTP_PORT, MQTT_PORT, PG_PORT = 8002, 1883, 5432

BIN = Path(sys.executable).parent
#: The repository (the benchmark runs from its checkout, where deploy/ is).
ROOT = Path(__file__).resolve().parents[4]
DEPLOY = ROOT / "deploy" / "mosquitto"
#: A process that does not come up in this long is broken (imports took 15 s on a loaded 2-core VM).
STARTUP = 120.0


def _postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin folder (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found else None


def missing_services() -> str | None:
    """Which service binary this machine lacks (and its Debian package), or None."""
    if _postgres_bin() is None:
        return "PostgreSQL's initdb is not installed (Debian package postgresql)"
    for tool, package in (("mosquitto", "mosquitto"), ("mosquitto_passwd", "mosquitto")):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"`{tool}` is not installed (Debian package {package})"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` user (Debian package postgresql makes it; initdb refuses root)"
    return None


# -- PostgreSQL --------------------------------------------------------------------------------


class Postgres:
    """A private PostgreSQL cluster on `host`, listening on `address` only.

    The data folder lives in the run's folder (reachable by the postgres user); the server runs
    as that user (`setpriv`) in an IPC namespace of its own, so even a cluster killed with -9
    leaves no System V segment behind. fsync is off: the tests kill hosts, not the machine.
    """

    def __init__(self, host: Host, address: str, folder: Path, log: Path) -> None:
        self.host = host
        self.address = address
        self.folder = folder
        self.log = log
        self.data = folder / "data"
        self.password = secrets.token_hex(12)
        bin_dir = _postgres_bin()
        assert bin_dir is not None
        self.bin = bin_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: Engine | None = None

    def _as_postgres(self, *cmd: str) -> list[str]:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *cmd]

    def start(self, durable: bool = False) -> None:
        """`durable`: PostgreSQL's own defaults (fsync, synchronous commits), for figures."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.folder, "postgres", "postgres")
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        initdb = [str(self.bin / "initdb"), "-D", str(self.data), f"--pwfile={pwfile}", "-U", "postgres"]
        initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"]
        done = self.host.run(self._as_postgres(*initdb), timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        pwfile.unlink()
        # What a LAN deployment adds to pg_hba.conf: the hosts' subnet, with passwords.
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 198.18.0.0/24 scram-sha-256\n")
        options = {
            "listen_addresses": self.address,
            "port": PG_PORT,
            "unix_socket_directories": self.folder,
            "max_connections": 200,
            "dynamic_shared_memory_type": "mmap",
        }
        if not durable:
            options.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        server = [str(self.bin / "postgres"), "-D", str(self.data)]
        server += [arg for name, value in options.items() for arg in ("-c", f"{name}={value}")]
        self.proc = self.host.spawn(["unshare", "--ipc", *self._as_postgres(*server)], log=self.log)
        # The port answers before the cluster accepts connections ("the database system is
        # starting up" while it replays or checkpoints): wait for pg_isready's "accepting".
        ready = [str(self.bin / "pg_isready"), "-q", "-h", self.address, "-p", str(PG_PORT)]
        wait_until(lambda: self.host.run(ready, timeout=10).returncode == 0, STARTUP, "PostgreSQL")

    def url(self, user: str, password: str, database: str) -> str:
        return f"postgresql+psycopg://{user}:{password}@{self.address}:{PG_PORT}/{database}"

    @property
    def admin_engine(self) -> Engine:
        """The superuser's engine: use it only on a host's thread (Host.call), where it connects."""
        if self._admin is None:
            self._admin = create_engine(
                self.url("postgres", self.password, "postgres"), isolation_level="AUTOCOMMIT"
            )
        return self._admin

    def create_role(self, client: Host, role: str) -> str:
        """A login role with a new password (returned)."""
        password = secrets.token_hex(12)
        client.call(self._run, f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        return password

    def create_database(self, client: Host, name: str, owner: str, template: str | None = None) -> None:
        """A database `name` owned by `owner`, a copy of `template` when given (which must have
        no connection open: PostgreSQL copies it file by file)."""
        copy = f' TEMPLATE "{template}"' if template else ""
        client.call(self._run, f'CREATE DATABASE "{name}" OWNER "{owner}"{copy}')

    def drop_database(self, client: Host, name: str) -> None:
        client.call(self._run, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _run(self, statement: str) -> None:
        with self.admin_engine.connect() as conn:
            conn.execute(text(statement))

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: clients dropped, files clean
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- Mosquitto ---------------------------------------------------------------------------------


def shipped_mosquitto_config(folder: Path, address: str, port: int) -> str:
    """deploy/mosquitto/mosquitto.conf with this broker's listener, files and log; nothing else."""
    rewrites = {
        r"^listener 1883 127\.0\.0\.1$": f"listener {port} {address}",
        r"^password_file .*$": f"password_file {folder / 'compute.passwd'}",
        r"^acl_file .*$": f"acl_file {folder / 'compute.acl'}",
        r"^persistence_location .*$": f"persistence_location {folder}/",
        r"^log_dest syslog$": f"log_dest file {folder / 'mosquitto.log'}",
    }
    config = (DEPLOY / "mosquitto.conf").read_text()
    for pattern, value in rewrites.items():
        config, count = re.subn(pattern, value, config, flags=re.MULTILINE)
        assert count == 1, f"deploy/mosquitto/mosquitto.conf has no line matching {pattern}"
    # Started as root, Mosquitto would switch to the `mosquitto` user, who cannot read the files.
    return config + f"\nuser {getpass.getuser()}\n"


def add_mosquitto_user(folder: Path, *args: str, password: str) -> None:
    """deploy/mosquitto/add-user.sh `args` (`server`, `dashboard` or `worker <id>`) with `password`,
    into the password and ACL files in `folder`, as the deployment page has an operator run it."""
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "PASSWORD": password,
        "PASSWD_FILE": str(folder / "compute.passwd"),
        "ACL_FILE": str(folder / "compute.acl"),
    }
    done = subprocess.run(
        ["sh", str(DEPLOY / "add-user.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr


class Mosquitto:
    """Mosquitto on `host`, listening on `address`, with deploy/mosquitto's users and ACL."""

    def __init__(self, host: Host, address: str, folder: Path, log: Path) -> None:
        self.host = host
        self.address = address
        self.folder = folder
        self.log = log
        self.passwords: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEPLOY / "compute.acl", folder / "compute.acl")

    def add_user(self, *args: str) -> str:
        """`add-user.sh server | dashboard | worker <id>`; returns the password it was given."""
        user = {"server": "compute-server", "dashboard": "dashboard"}.get(args[0]) or args[1]
        password = secrets.token_hex(12)
        add_mosquitto_user(self.folder, *args, password=password)
        self.passwords[user] = password
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)  # re-reads the password and ACL files
        return password

    def start(self) -> None:
        conf = self.folder / "mosquitto.conf"
        conf.write_text(shipped_mosquitto_config(self.folder, self.address, MQTT_PORT))
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = self.host.spawn([exe, "-c", str(conf)], log=self.log)
        wait_until(lambda: self.host.call(port_answers, self.address, MQTT_PORT), STARTUP, "Mosquitto")

    def takeovers(self) -> list[str]:
        """Lines of the broker's log where a client connected under an id already connected,
        which closes the first connection (two processes sharing a client id fight like that)."""
        log = self.folder / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [line for line in text.splitlines() if "already connected, closing old connection" in line]

    def stop(self) -> None:
        if self.proc is not None:
            Processes.end([self.proc], timeout=10)


# -- Compute on the hosts ----------------------------------------------------------------------


def migrate(host: Host, database_url: str, folder: Path) -> None:
    """compute-migrate on `host`, as a deployment runs it once before its first server starts."""
    env = {**clean_environ(os.environ), "DATABASE_URL": database_url, "CL_SERVER_DIR": str(folder)}
    done = host.run([str(BIN / "compute-migrate")], env=env, timeout=STARTUP)
    assert done.returncode == 0, done.stdout + done.stderr


def clean_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without any variable Compute reads: a process gets only what its host sets."""
    drop = variable_names()
    return {k: v for k, v in environ.items() if k not in drop}


@dataclass(frozen=True)
class Site:
    """What lives for the whole session: the LAN, its hosts, PostgreSQL, models and inputs."""

    lan: Lan
    server: Host
    workers: tuple[Host, Host]
    client: Host
    postgres: Postgres
    #: The role every deployment's database belongs to, and its password.
    role: str
    password: str
    #: A database compute-migrate brought to the latest schema, copied for each deployment.
    template: str
    models: Path
    logs: Path

    def deployment(
        self,
        tag: str,
        database_url: str,
        logs: Path,
        broker: Mosquitto | None = None,
        settings: dict[str, str] | None = None,
    ) -> HostedCompute:
        """A deployment on this site: its folders named by `tag`, its own database and logs."""
        return HostedCompute(
            lan=self.lan,
            server_host=self.server,
            client=self.client,
            postgres=self.postgres,
            broker=broker,
            database_url=database_url,
            logs=logs,
            settings=settings or {},
            tag=tag,
            models=self.models,
        )


@dataclass
class Worker:
    host: Host
    worker_id: str
    proc: subprocess.Popen[bytes]


@dataclass
class HostedCompute:
    """One deployment over the hosts: a database of its own, servers, workers, the client's view."""

    lan: Lan
    server_host: Host
    client: Host
    postgres: Postgres
    #: The deployment's own Mosquitto (None: the server's embedded broker, or none started).
    broker: Mosquitto | None
    database_url: str
    logs: Path
    #: Settings every process gets on top of its host's (short leases for faults, ...).
    settings: dict[str, str]
    #: Names this deployment's folders on each host (one deployment per test, hosts per session).
    tag: str = "compute"
    #: Model files each worker host gets a copy of in its CL_SERVER_DIR/models (stand-ins), if any.
    models: Path | None = None
    #: True: workers read the server's job folders (COMPUTE_STORAGE_DIR on a shared disk); by
    #: default they see none of the server host's files and fetch them (WORKER_FILES=auto).
    shared_storage: bool = False
    #: Where clients and workers reach the server(s): SERVER, or SERVICE behind a balancer.
    service: str = SERVER
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    _engine: Engine | None = None

    # -- settings per host ---------------------------------------------------------------------

    @property
    def server_dir(self) -> Path:
        return self.lan.folder_of(self.server_host) / self.tag / "cl_server"

    @property
    def url(self) -> str:
        return f"http://{self.service}:{HTTP_PORT}"

    def base_env(self) -> dict[str, str]:
        return {**clean_environ(os.environ), **self.settings}

    def server_env(self) -> dict[str, str]:
        """What the server host sets: its folder, the database, the broker and its broker user."""
        assert self.broker is not None
        return {
            **self.base_env(),
            "CL_SERVER_DIR": str(self.server_dir),
            "DATABASE_URL": self.database_url,
            "MQTT_BROKER": BROKER,
            "MQTT_PORT": str(MQTT_PORT),
            "MQTT_USERNAME": "compute-server",
            "MQTT_PASSWORD": self.broker.passwords["compute-server"],
            "AUTH_DISABLED": "true",
        }

    def worker_dir(self, host: Host) -> Path:
        return self.lan.folder_of(host) / self.tag / "cl_server"

    def worker_env(self, host: Host, worker_id: str) -> dict[str, str]:
        """What a worker host sets: its own folder, the database, the broker, the server's URL."""
        assert self.broker is not None
        env = {
            **self.base_env(),
            "CL_SERVER_DIR": str(self.worker_dir(host)),
            "DATABASE_URL": self.database_url,
            "MQTT_BROKER": BROKER,
            "MQTT_PORT": str(MQTT_PORT),
            "MQTT_USERNAME": worker_id,
            "MQTT_PASSWORD": self.broker.passwords[worker_id],
            "COMPUTE_SERVER_URL": self.url,
            "WORKER_ID": worker_id,
        }
        if self.shared_storage:
            env["COMPUTE_STORAGE_DIR"] = str(self.server_dir / "compute")
        return env

    # -- processes -----------------------------------------------------------------------------

    def start_server(self, name: str = "server-1", address: str = SERVER) -> subprocess.Popen[bytes]:
        proc = self.server_host.spawn(
            [str(BIN / "compute-server"), "--host", address, "--port", str(HTTP_PORT)],
            env=self.server_env(),
            log=self.logs / f"{name}.log",
        )
        self.servers[name] = proc
        self.wait_ready(proc, name, f"http://{address}:{HTTP_PORT}")
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], name: str, base: str | None = None) -> None:
        """Until the server `proc` answers at `base` (the deployment's URL) and reached its broker."""
        wait_until(
            lambda: self.alive(proc, name) and self.client.call(_ready, base or self.url),
            STARTUP,
            f"{name} ready",
        )

    def start_balancer(self) -> subprocess.Popen[bytes]:
        """One address (SERVICE) in front of every server started so far; from now on clients
        and workers use it."""
        backends = [f"{SERVER}:{HTTP_PORT}", f"{SERVER_2}:{HTTP_PORT}"][: len(self.servers)]
        proc = self.server_host.spawn(
            [sys.executable, "-m", "compute_bench.hosts.balancer", f"{SERVICE}:{HTTP_PORT}", *backends],
            env=self.base_env(),
            log=self.logs / "balancer.log",
        )
        self.servers["balancer"] = proc  # ended with the servers
        self.service = SERVICE
        wait_until(
            lambda: self.alive(proc, "balancer") and self.client.call(_ready, self.url), STARTUP, "balancer"
        )
        return proc

    def start_worker(self, host: Host, worker_id: str, tasks: str | None = None) -> Worker:
        assert self.broker is not None
        if worker_id not in self.broker.passwords:
            self.broker.add_user("worker", worker_id)
        self.prepare_worker_host(host, self.worker_dir(host))
        cmd = [str(BIN / "compute-worker")] + (["--tasks", tasks] if tasks else [])
        proc = host.spawn(cmd, env=self.worker_env(host, worker_id), log=self.logs / f"{worker_id}.log")
        worker = Worker(host, worker_id, proc)
        self.workers[worker_id] = worker
        return worker

    def prepare_worker_host(self, host: Host, cl_server_dir: Path) -> None:
        """The worker host's CL_SERVER_DIR, with the stand-in models in its default models folder;
        and, unless the storage is shared, none of the server host's files."""
        cl_server_dir.mkdir(parents=True, exist_ok=True)
        if self.models is not None and not (cl_server_dir / "models").exists():
            shutil.copytree(self.models, cl_server_dir / "models")
        host.hidden = () if self.shared_storage else (self.lan.folder_of(self.server_host),)

    def scratch(self, host: Host, worker_id: str) -> Path:
        """Where a remote worker on `host` keeps its jobs' scratch folders: the default
        WORKER_SCRATCH_DIR (CL_SERVER_DIR/worker-scratch), then <worker id>/jobs/<job id>."""
        return self.worker_dir(host) / "worker-scratch" / worker_id / "jobs"

    def alive(self, proc: subprocess.Popen[bytes], name: str) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")
        return True

    def wait_workers(self, *worker_ids: str, timeout: float = STARTUP) -> None:
        """Until the server lists each of `worker_ids` (their presence came over the broker)."""

        def listed() -> bool:
            for worker_id in worker_ids:
                self.alive(self.workers[worker_id].proc, worker_id)
            return set(worker_ids) <= self.online()

        wait_until(listed, timeout, f"workers {', '.join(worker_ids)} online")

    def online(self) -> set[str]:
        """Worker ids the server lists as live (GET /workers: verified presence, known session)."""
        return {w["worker_id"] for w in self.get("/workers")["workers"]}

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        Processes.end([worker.proc for worker in self.workers.values()])
        Processes.end(list(self.servers.values()))
        if self._engine is not None:
            self._engine.dispose()

    # -- the client's view: HTTP and the database ----------------------------------------------

    def get(self, path: str, base: str | None = None) -> Any:
        return self.client.call(_get_json, (base or self.url) + path)

    def download(self, job_id: str, path: str) -> bytes:
        return self.client.call(_get_bytes, f"{self.url}/jobs/{job_id}/files/{path}")

    def files(self, job_id: str) -> dict[str, int]:
        """The job's files as the server lists them: path -> size."""
        return {f["path"]: f["size"] for f in self.get(f"/jobs/{job_id}/files")["files"]}

    def outputs(self, job_id: str) -> dict[str, bytes]:
        """Every file under the job's `output/`, downloaded from the server; each must arrive
        whole (the size the listing gives) and parse as what its name says (check_output)."""
        listed = {path: size for path, size in self.files(job_id).items() if path.startswith("output/")}
        assert listed, f"job {job_id} has no output files"
        got = {path: self.download(job_id, path) for path in listed}
        for path, content in got.items():
            assert len(content) == listed[path], f"{path}: {len(content)} bytes, listed as {listed[path]}"
            check_output(path, content, listed)
        return got

    def submit(
        self, uploads: Sequence[tuple[str, dict[str, str], str, bytes, str]], concurrency: int = 4
    ) -> list[str]:
        """POST /jobs/<task> for each (task, form, file name, content, type); their job ids."""
        return self.client.call(lambda: asyncio.run(_submit_all(self.url, uploads, concurrency)))

    def submit_retrying(
        self, uploads: Sequence[tuple[str, dict[str, str], str, bytes, str]], concurrency: int = 4
    ) -> concurrent.futures.Future[list[str]]:
        """Like submit, in the background, each request with an Idempotency-Key of its own and
        tried again (same key) on a broken connection or a 5xx, as a careful client does while
        a server dies: the future's job ids, one per upload."""
        return self.client.start(lambda: asyncio.run(_submit_all(self.url, uploads, concurrency, retry=True)))

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url)
        return self._engine

    def rows(self, where: str = "1=1") -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(text(f"SELECT * FROM jobs WHERE {where}")).mappings()]

        return self.client.call(read)

    def count(self, where: str) -> int:
        def read() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(text(f"SELECT count(*) FROM jobs WHERE {where}")).scalar_one())

        return self.client.call(read)


def check_output(path: str, content: bytes, listed: Mapping[str, int]) -> None:
    """`content` is a whole file of the type its name says; a playlist names only listed files."""
    import io
    import json

    import numpy as np
    from PIL import Image

    suffix = Path(path).suffix.lower()
    if suffix in {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tiff"}:
        with Image.open(io.BytesIO(content)) as image:
            image.load()  # decodes every pixel: a truncated file fails here
    elif suffix == ".json":
        json.loads(content)
    elif suffix == ".npy":
        assert np.load(io.BytesIO(content)).size > 0, path
    elif suffix == ".m3u8":
        folder = Path(path).parent
        for line in content.decode().splitlines():
            if line and not line.startswith("#"):
                assert str(folder / line) in listed, f"{path} names {line}, which is not in the job's files"
    else:
        assert content, f"{path} is empty"


def _ready(base: str) -> bool:
    try:
        return bool(httpx.get(base + "/", timeout=2.0).json()["mqtt_connected"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False


def _get_json(url: str) -> Any:
    r = httpx.get(url, timeout=30.0)
    r.raise_for_status()
    return r.json()


def _get_bytes(url: str) -> bytes:
    r = httpx.get(url, timeout=120.0)
    r.raise_for_status()
    return r.content


async def _submit_all(
    base: str,
    uploads: Sequence[tuple[str, dict[str, str], str, bytes, str]],
    concurrency: int,
    retry: bool = False,
) -> list[str]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120.0) as client:

        async def one(task: str, form: dict[str, str], name: str, content: bytes, mime: str) -> str:
            headers = {"Idempotency-Key": secrets.token_hex(16)} if retry else {}
            deadline = time.monotonic() + STARTUP
            async with sem:
                while True:
                    try:
                        r = await client.post(
                            f"/jobs/{task}", data=form, files={"file": (name, content, mime)}, headers=headers
                        )
                        if not (retry and r.status_code >= 500):
                            break
                    except httpx.TransportError:
                        if not retry or time.monotonic() > deadline:
                            raise
                    await asyncio.sleep(0.2)  # a retry's pace, not a synchronisation
                assert r.status_code == 200, f"{task}: {r.status_code} {r.text[:300]}"
                return str(r.json()["job_id"])

        return list(await asyncio.gather(*(one(*u) for u in uploads)))
