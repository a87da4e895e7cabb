"""create_app(settings): the FastAPI application and its background parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from compute import __version__
from compute.broker import embedded_credentials, start_embedded_if_needed
from compute.bus.mqtt import MqttBus
from compute.config import Settings
from compute.db.preferences import PreferenceStore
from compute.db.repository import JobRepository
from compute.db.session import check_migrated, make_engine, ping
from compute.db.transitions import JobTransitions
from compute.db.workers import WorkerSessions, server_client_ids
from compute.plugins import environment as plugin_environment
from compute.server.auth import TokenVerifier
from compute.server.cancel import Canceller
from compute.server.dbcalls import LoopHop, LoopSafeBus, RouteDatabase
from compute.server.dispatch import Dispatcher
from compute.server.errors import install_error_handlers
from compute.server.guest import GuestMode
from compute.server.ingest import EventIngest
from compute.server.limits import RequestBodyGuard
from compute.server.orphans import OrphanSweeper
from compute.server.plugin_routes import plugin_router
from compute.server.queues import QueueReporter
from compute.server.rescue import Rescuer
from compute.server.routes import admin, health, jobs
from compute.server.workers import WorkerRegistry
from compute.storage import JobStorage
from compute.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

UPLOAD_SLACK = 64 * 1024  # multipart framing and form fields around the file


def create_app(settings: Settings, *, start_broker: bool = True) -> FastAPI:
    """Build the app; nothing connects until the lifespan starts."""
    if start_broker:  # embedded mode: the broker and this server's bus share generated credentials
        settings = embedded_credentials(settings)
    plugin_environment.configure(settings)
    engine = make_engine(settings.database_url)
    # HTTP requests use their own engine: it waits for a locked or unreachable database at most
    # DB_REQUEST_TIMEOUT, on threads of their own (RouteDatabase), so the loop never waits.
    route_engine = make_engine(settings.database_url, wait=settings.db_request_timeout)
    db = RouteDatabase(settings.db_request_timeout, ping=lambda: ping(route_engine))
    topics = Topics.for_settings(settings)
    # A fixed client id (unguessable: its suffix is kept in the database, set in the lifespan)
    # and a persistent session: the broker keeps worker events for the server while it restarts.
    bus = MqttBus(settings, client_id=settings.server_client_id, clean_session=False,
                  will=(topics.server_status, OFFLINE, True), name="server-bus")
    # Worker info on a connection of its own: a flood there cannot delay job events.
    presence_bus = MqttBus(settings, client_id=f"{settings.server_client_id}-presence",
                           name="server-presence")
    queues = QueueReporter(bus, topics)
    # Route code runs on database threads; what it publishes (add_job's hint, a cancel's
    # messages) and marks goes through the event loop, where the bus lives.
    hop = LoopHop()
    safe_bus = LoopSafeBus(bus, hop)
    mark_dirty = hop.wrap(queues.mark_dirty)
    dispatcher = Dispatcher(safe_bus, topics, mark_dirty)
    repo = JobRepository(route_engine, on_job_added=dispatcher.job_added, policies=settings.task_policies)
    queues.repo = repo
    transitions = JobTransitions(engine, settings.task_policies)
    rescuer = Rescuer(transitions, dispatcher, settings.lease_seconds, queues.mark_dirty)
    storage = JobStorage(settings.storage_dir, settings.max_upload_bytes)
    ingest = EventIngest(transitions, bus, topics, queues.mark_dirty, dispatcher.hint_at)
    registry = WorkerRegistry(bus, topics, WorkerSessions(engine), rescuer.worker_lost, listen=presence_bus,
                              heartbeat_interval=settings.heartbeat_interval)
    canceller = Canceller(JobTransitions(route_engine, settings.task_policies), safe_bus, topics,
                          dispatcher, mark_dirty)
    orphans = OrphanSweeper(repo, storage, db, settings.orphan_grace_seconds)

    def announce_online() -> None:
        bus.publish(topics.server_status, ONLINE, qos=1, retain=True)

    bus.on_connect(announce_online)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_migrated(engine)
        hop.bind(asyncio.get_running_loop())
        app.state.guest.refresh()  # later refreshes run off the loop (auth.guest_mode_on)
        settings.storage_dir.mkdir(parents=True, exist_ok=True)
        broker = None
        if start_broker:
            broker = await start_embedded_if_needed(settings)
        bus.client_id, presence_bus.client_id = server_client_ids(
            settings.mqtt_client_id, settings.server_client_id, engine)
        await bus.start()
        await presence_bus.start()
        tasks = [asyncio.create_task(registry.run(), name="worker-sessions"),
                 asyncio.create_task(ingest.run(), name="ingest"),
                 asyncio.create_task(queues.run(), name="queue-summary"),
                 asyncio.create_task(rescuer.run(), name="lease-sweep"),
                 asyncio.create_task(orphans.run(), name="orphan-sweep")]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bus.publish(topics.server_status, OFFLINE, qos=1, retain=True)
            await presence_bus.close()
            await bus.close()
            if broker is not None:
                await broker.stop()
            engine.dispose()
            route_engine.dispose()

    app = FastAPI(title="Compute", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.verifier = TokenVerifier.from_settings(settings)
    app.state.guest = GuestMode(PreferenceStore(route_engine), settings.guest_mode)
    app.state.repo = repo
    app.state.storage = storage
    app.state.bus = bus
    app.state.registry = registry
    app.state.ingest = ingest
    app.state.dispatcher = dispatcher
    app.state.transitions = transitions
    app.state.rescuer = rescuer
    app.state.canceller = canceller
    app.state.topics = topics
    app.state.db = db
    app.state.orphans = orphans

    # Bodies are counted and timed while they stream (413, 408), chunked ones too.
    app.add_middleware(RequestBodyGuard, max_body_bytes=settings.max_upload_bytes + UPLOAD_SLACK,
                       idle_timeout=settings.upload_idle_timeout)
    install_error_handlers(app)

    app.include_router(health.router)
    app.include_router(plugin_router(repo, storage, db))
    app.include_router(jobs.router)
    app.include_router(admin.router)
    app.include_router(admin.prefs)
    return app
