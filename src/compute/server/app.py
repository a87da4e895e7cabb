"""create_app(settings): the FastAPI application and its background parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from compute import __version__
from compute.broker import start_embedded_if_needed
from compute.bus.mqtt import MqttBus
from compute.config import Settings
from compute.db.repository import JobRepository
from compute.db.session import check_migrated, make_engine
from compute.server.auth import TokenVerifier
from compute.server.dispatch import Dispatcher
from compute.server.ingest import EventIngest
from compute.server.plugin_routes import plugin_router
from compute.server.queues import QueueReporter
from compute.server.routes import admin, health, jobs
from compute.server.workers import WorkerRegistry
from compute.storage import JobStorage, PathOutsideJob, UploadTooLarge
from compute.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, start_broker: bool = True) -> FastAPI:
    """Build the app; nothing connects until the lifespan starts."""
    engine = make_engine(settings.database_url)
    topics = Topics.for_settings(settings)
    bus = MqttBus(settings, client_id=f"compute-server-{socket.gethostname()}-{os.getpid()}",
                  will=(topics.server_status, OFFLINE, True), name="server-bus")
    queues = QueueReporter(JobRepository(engine), bus, topics)
    dispatcher = Dispatcher(bus, topics, queues.mark_dirty)
    repo = JobRepository(engine, on_job_added=dispatcher.job_added)
    queues.repo = repo
    storage = JobStorage(settings.storage_dir, settings.max_upload_bytes)
    ingest = EventIngest(repo, bus, topics, queues.mark_dirty)
    registry = WorkerRegistry(bus, topics)

    def announce_online() -> None:
        bus.publish(topics.server_status, ONLINE, qos=1, retain=True)

    bus.on_connect(announce_online)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_migrated(engine)
        settings.storage_dir.mkdir(parents=True, exist_ok=True)
        broker = None
        if start_broker:
            broker = await start_embedded_if_needed(settings.mqtt_broker, settings.mqtt_port,
                                                    settings.mqtt_embedded_bind)
        await bus.start()
        tasks = [asyncio.create_task(ingest.run(), name="ingest"),
                 asyncio.create_task(queues.run(), name="queue-summary")]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bus.publish(topics.server_status, OFFLINE, qos=1, retain=True)
            await bus.close()
            if broker is not None:
                await broker.stop()
            engine.dispose()

    app = FastAPI(title="Compute", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.verifier = TokenVerifier.from_path(settings.public_key_path, settings.auth_disabled)
    app.state.repo = repo
    app.state.storage = storage
    app.state.bus = bus
    app.state.registry = registry
    app.state.ingest = ingest
    app.state.dispatcher = dispatcher

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_request: Request, exc: UploadTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(PathOutsideJob)
    async def _outside(_request: Request, exc: PathOutsideJob) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    app.include_router(health.router)
    app.include_router(plugin_router(repo, storage, enabled=None))
    app.include_router(jobs.router)
    app.include_router(admin.router)
    return app
