"""create_app(settings): the FastAPI application over the server's services (services.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from compute import __version__
from compute.broker import embedded_credentials
from compute.config import Settings
from compute.errors import ComputeError
from compute.plugins import environment as plugin_environment
from compute.server.http.error_handlers import install_error_handlers
from compute.server.http.limits import RequestBodyGuard
from compute.server.http.plugin_routes import plugin_router
from compute.server.http.rendering import SafeJSONResponse
from compute.server.http.timing import HttpMetrics
from compute.server.routes import (
    admin,
    claim_files,
    dashboard,
    docs,
    events,
    health,
    job,
    listing,
    prometheus,
    queues,
    tasks,
)
from compute.server.services import build_services, running

log = logging.getLogger(__name__)

UPLOAD_SLACK = 64 * 1024  # multipart framing and form fields around the file


def create_app(
    settings: Settings, *, start_broker: bool = True, on_fatal: Callable[[], None] | None = None
) -> FastAPI:
    """Build the app; nothing connects until the lifespan starts. `on_fatal` stops the process
    when a background task it cannot work without fails (services.running)."""
    if start_broker:  # embedded mode: the broker and this server's bus share generated credentials
        settings = embedded_credentials(settings)
    plugin_environment.configure(settings)
    services = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(
                    running(services, start_broker=start_broker, on_fatal=on_fatal)
                )
            except (ComputeError, OSError) as exc:
                # A setting or the machine (a broker that cannot listen there, a folder that cannot
                # be made): compute-server states it in one line (serving.stated_startup_errors).
                app.state.startup_error = exc
                raise
            yield

    app = FastAPI(
        title="Compute", version=__version__, lifespan=lifespan, default_response_class=SafeJSONResponse
    )
    app.state.services = services  # read by server/http/deps.py
    app.state.startup_error = None

    # Bodies are counted and timed while they stream (413, 408), chunked ones too.
    app.add_middleware(
        RequestBodyGuard,
        max_body_bytes=settings.max_upload_bytes + UPLOAD_SLACK,
        idle_timeout=settings.upload_idle_timeout,
        max_uploads=services.budget.uploads,
    )
    # Outermost: times every request, those the body guard refuses included.
    app.add_middleware(HttpMetrics, metrics=services.metrics)
    install_error_handlers(app)

    app.include_router(health.router)
    app.include_router(plugin_router(services.submitter, services.storage, services.db))
    app.include_router(listing.router)
    app.include_router(listing.workers_router)
    app.include_router(job.router)
    app.include_router(claim_files.router)
    app.include_router(admin.router)
    app.include_router(admin.prefs)
    app.include_router(tasks.router)
    app.include_router(events.router)
    app.include_router(queues.router)
    app.include_router(docs.router)
    app.include_router(prometheus.router)
    dashboard.install(app)
    return app
