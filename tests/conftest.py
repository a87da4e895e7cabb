"""Shared fixtures. Each yields an opened resource and closes it afterwards.

Backends: `broker` runs over an in-process amqtt and the Mosquitto on 127.0.0.1:1883;
`db_url` over a temp SQLite file and a per-session PostgreSQL database on 127.0.0.1:5432.
Unreachable Mosquitto/PostgreSQL are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from compute.bus.mqtt import MqttBus
from compute.config import Settings
from compute.db.migrate import upgrade_head
from compute.db.repository import JobRepository
from compute.db.session import make_engine
from compute.plugins.registry import load_tasks
from compute.ports import port_answers
from compute.server.app import create_app
from compute.server.services import Services
from compute.topics import Topics
from compute.worker.loop import Worker
from compute.worker.service import WorkerService
from compute_bench.harness import amqtt_command, amqtt_config
from tests.support import MqttProbe, free_port, png_bytes, wait_for

MOSQUITTO = ("127.0.0.1", 1883)
PG_HOST, PG_PORT = "127.0.0.1", 5432

for _noisy in ("amqtt", "transitions", "gmqtt"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


# -- brokers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerInfo:
    kind: str
    host: str
    port: int


class AmqttBroker:
    """amqtt in the test's event loop."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._broker: Any = None

    async def start(self) -> AmqttBroker:
        from amqtt.broker import Broker

        self._broker = Broker(amqtt_config(self.port))
        await self._broker.start()
        return self

    async def stop(self) -> None:
        """Stop like a broker process would: no new connections, then drop the clients.

        amqtt's shutdown() drops the clients before it closes its listener, so a client that
        reconnects fast lands on the dying instance and stays there; close the listener first.
        """
        if self._broker is not None:
            for server in getattr(self._broker, "_servers", {}).values():
                instance = getattr(server, "instance", None)
                if instance is not None:
                    instance.close()
            await asyncio.wait_for(self._broker.shutdown(), 5)
            self._broker = None


class AmqttProcess:
    """amqtt in a child process: stopping it closes every connection, like a broker crash."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> AmqttProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *amqtt_command(self.port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await wait_for(
            lambda: port_answers("127.0.0.1", self.port),
            timeout=20,
            what=f"amqtt process on port {self.port}",
        )
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)
        self.proc = None


@pytest.fixture
async def amqtt_broker() -> AsyncIterator[BrokerInfo]:
    broker = await AmqttBroker().start()
    yield BrokerInfo("amqtt", "127.0.0.1", broker.port)
    await broker.stop()


@pytest.fixture(params=["amqtt", "mosquitto"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[BrokerInfo]:
    if request.param == "mosquitto":
        if not port_answers(*MOSQUITTO):
            pytest.skip("Mosquitto does not answer on 127.0.0.1:1883")
        yield BrokerInfo("mosquitto", *MOSQUITTO)
        return
    broker = await AmqttBroker().start()
    yield BrokerInfo("amqtt", "127.0.0.1", broker.port)
    await broker.stop()


# -- databases ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "compute.db"
    upgrade_head(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated; dropped at the end."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed")
    admin_dsn = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
    try:
        admin = psycopg.connect(admin_dsn, connect_timeout=2, autocommit=True)
    except psycopg.Error as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        pytest.skip(f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT} as user postgres: {reason}")
    name = f"compute_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
            upgrade_head(url)
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE jobs, queue_entries RESTART IDENTITY")
            conn.execute(text("DELETE FROM server_preferences WHERE key LIKE 'paused:%'"))
            # A test that turned guest mode on must not leave it on for the next one.
            conn.exec_driver_sql("DELETE FROM server_preferences WHERE key = 'guest_mode'")
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "compute.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    url = request.getfixturevalue("pg_database")
    _truncate(url)
    yield url
    _truncate(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def repo(engine: Any) -> JobRepository:
    return JobRepository(engine)


# -- settings, server, workers -------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test only: tests on the shared Mosquitto never meet."""
    return f"t{uuid.uuid4().hex[:10]}"


def make_settings(tmp_path: Path, db_url: str, broker: BrokerInfo, prefix: str, **changes: Any) -> Settings:
    base = Settings(
        cl_server_dir=tmp_path,
        database_url=db_url,
        storage_dir=tmp_path / "storage",
        mqtt_broker=broker.host,
        mqtt_port=broker.port,
        mqtt_topic_root=f"{prefix}/compute",
        mqtt_topic=f"{prefix}/inference/events",
        capability_topic_prefix=f"{prefix}/inference/workers",
        sweep_interval=30.0,  # long: jobs that finish fast were woken by a hint
        heartbeat_interval=30.0,
        auth_disabled=True,
        worker_id=f"{prefix}-w",
    )
    return replace(base, **changes)


async def clear_retained(broker: BrokerInfo, prefix: str) -> None:
    """Remove the retained messages a test left under its prefix on a shared broker."""
    async with MqttProbe(broker.host, broker.port) as probe:
        await probe.subscribe(f"{prefix}/#")
        await probe.sync(f"{prefix}/_sync")
        for topic in {m.topic for m in probe.messages if m.retained and m.payload}:
            probe.publish(topic, b"", retain=True)
        await probe.sync(f"{prefix}/_sync")


@pytest.fixture
async def settings(tmp_path: Path, db_url: str, broker: BrokerInfo, prefix: str) -> AsyncIterator[Settings]:
    yield make_settings(tmp_path, db_url, broker, prefix)
    if broker.kind == "mosquitto":
        await clear_retained(broker, prefix)


@pytest.fixture
async def probe(broker: BrokerInfo) -> AsyncIterator[MqttProbe]:
    async with MqttProbe(broker.host, broker.port) as p:
        yield p


@dataclass
class Server:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    @property
    def topics(self) -> Topics:
        return Topics.for_settings(self.settings)

    @property
    def services(self) -> Services:
        """The server's parts (repository, registry, ingest ...), as create_app built them."""
        return self.app.state.services  # type: ignore[no-any-return]

    async def submit(
        self,
        task: str = "image_conversion",
        data: dict[str, str] | None = None,
        content: bytes | None = None,
        filename: str = "photo.png",
    ) -> dict[str, Any]:
        if data is None:
            data = (
                {"format": "jpg", "quality": "80"}
                if task == "image_conversion"
                else {"width": "8", "height": "6"}
            )
        files = {"file": (filename, content or png_bytes(), "image/png")}
        response = await self.client.post(f"/jobs/{task}", data=data, files=files)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_status(self, job_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            job = await self.job(job_id)
            return job if job["status"] == status else None

        return await wait_for(reached, timeout, what=f"job {job_id} to be {status}")  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def running_server(settings: Settings, wait_connected: bool = True) -> AsyncIterator[Server]:
    """create_app with its lifespan run by hand, and an httpx client over ASGI."""
    app = create_app(settings, start_broker=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://compute") as client:
            if wait_connected:
                await wait_for(lambda: app.state.services.bus.connected, what="server bus connected")
            yield Server(app, client, settings)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    async with running_server(settings) as srv:
        yield srv


@dataclass
class RunningWorker:
    service: WorkerService
    task: asyncio.Task[None]
    settings: Settings
    closed: bool = field(default=False)

    @property
    def worker(self) -> Worker:
        return self.service.worker

    @property
    def bus(self) -> MqttBus:
        return self.service.bus

    async def shutdown(self) -> None:
        """What compute-worker does on SIGTERM: finish, say goodbye, disconnect."""
        if self.closed:
            return
        self.closed = True
        self.worker.stop()
        try:
            await asyncio.wait_for(self.task, 30)
        finally:
            await self.service.close()


WorkerFactory = Callable[..., Any]


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[WorkerFactory]:
    """start_worker(tasks=..., plugins=..., **settings_changes) -> a connected RunningWorker."""
    started: list[RunningWorker] = []

    async def start(
        tasks: tuple[str, ...] = ("image_conversion", "image_resize"),
        plugins: dict[str, Any] | None = None,
        wait_idle: bool = True,
        **changes: Any,
    ) -> RunningWorker:
        """wait_idle: return once its first pass found nothing, so that what runs next was
        woken by a hint or the sweep (pass False when jobs are already waiting)."""
        worker_id = f"{settings.worker_id}{len(started) + 1}"
        ws = replace(settings, worker_id=worker_id, worker_tasks=tasks, **changes)
        service = WorkerService.build(ws, plugins or load_tasks(tasks))
        # As compute-worker does: the first claim pass runs once connected.
        assert await service.connect(10), f"worker {worker_id} could not connect"
        task = asyncio.create_task(service.worker.run(), name=f"worker-{worker_id}")
        running = RunningWorker(service, task, ws)
        started.append(running)
        if wait_idle:
            await wait_for(lambda: service.worker.empty_claims >= 1, what=f"worker {worker_id} idle")
        return running

    yield start
    for running in reversed(started):
        await running.shutdown()
