"""Compute in the test's own event loop: settings for a test, the server app with an httpx client
over ASGI (or behind a real uvicorn, for the sockets), and workers as `compute-worker` builds them.

Real processes (command lines, a broker to kill) are compute_bench.deployment's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx
import uvicorn
from fastapi import FastAPI

from compute.bus.mqtt import MqttBus
from compute.config import Settings
from compute.plugins.registry import load_tasks
from compute.server.app import create_app
from compute.server.services import Services
from compute.server.serving import http_protocol
from compute.topics import Topics
from compute.worker.loop import Worker
from compute.worker.service import WorkerService
from compute_bench.harness import free_port
from tests.support.brokers import BrokerInfo
from tests.support.images import png_bytes
from tests.support.waits import wait_for

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def make_settings(tmp_path: Path, db_url: str, broker: BrokerInfo, prefix: str, **changes: Any) -> Settings:
    """Settings of one test: its folder, database and broker, topics under its own `prefix`."""
    base = Settings(
        cl_server_dir=tmp_path,
        database_url=db_url,
        storage_dir=tmp_path / "storage",
        # Settings' own default is relative (load_settings puts it under CL_SERVER_DIR): a
        # worker started from these settings left its scratch lock in the checkout.
        worker_scratch_dir=tmp_path / "worker-scratch",
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


# -- the server ------------------------------------------------------------------------------


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
        return cast(Services, self.app.state.services)

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
        return cast(dict[str, Any], response.json())

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return cast(dict[str, Any], response.json())

    async def wait_status(self, job_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            job = await self.job(job_id)
            return job if job["status"] == status else None

        return cast(dict[str, Any], await wait_for(reached, timeout, what=f"job {job_id} to be {status}"))


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


@contextlib.asynccontextmanager
async def uvicorn_serving(
    app: FastAPI,
    http: Literal["httptools", "h11"] = "httptools",
) -> AsyncIterator[uvicorn.Server]:
    """The app (lifespan already running) behind a real uvicorn, as compute-server runs it."""
    timeout = app.state.services.settings.header_read_timeout
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        lifespan="off",
        log_level="warning",
        http=http_protocol(timeout, http),
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, what="uvicorn started")
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def idle_connections(web: uvicorn.Server) -> set[Any]:
    """Connections that are between requests (a test client's keep-alive one)."""
    # This server speaks plain HTTP only (no websockets): every connection is an HTTP protocol.
    connections = cast("set[H11Protocol | HttpToolsProtocol]", web.server_state.connections)
    return {c for c in connections if c.cycle is None or c.cycle.response_complete}


# -- workers ---------------------------------------------------------------------------------


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
        """What compute-worker does on SIGTERM: hand the running job back, say goodbye, disconnect."""
        if self.closed:
            return
        self.closed = True
        self.worker.stop()
        try:
            await asyncio.wait_for(self.task, 30)
        finally:
            await self.service.close()


#: start_worker(tasks=..., plugins=..., wait_idle=..., **settings_changes) -> a connected RunningWorker.
WorkerFactory = Callable[..., Any]


class Workers:
    """Workers started in the test's loop from one test's settings; shutdown() stops them all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[RunningWorker] = []

    async def start(
        self,
        tasks: tuple[str, ...] = ("image_conversion", "image_resize"),
        plugins: dict[str, Any] | None = None,
        wait_idle: bool = True,
        **changes: Any,
    ) -> RunningWorker:
        """wait_idle: return once its first pass found nothing, so that what runs next was
        woken by a hint or the sweep (pass False when jobs are already waiting)."""
        worker_id = f"{self.settings.worker_id}{len(self.started) + 1}"
        ws = replace(self.settings, worker_id=worker_id, worker_tasks=tasks, **changes)
        service = WorkerService.build(ws, plugins or load_tasks(tasks))
        # As compute-worker does: the first claim pass runs once connected.
        assert await service.connect(10), f"worker {worker_id} could not connect"
        task = asyncio.create_task(service.worker.run(), name=f"worker-{worker_id}")
        running = RunningWorker(service, task, ws)
        self.started.append(running)
        if wait_idle:
            await wait_for(lambda: service.worker.empty_claims >= 1, what=f"worker {worker_id} idle")
        return running

    async def shutdown(self) -> None:
        for running in reversed(self.started):
            await running.shutdown()
