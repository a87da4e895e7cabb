"""Typed FastAPI dependencies: the server's parts the routes use, from `app.state.services`.

`async` although they never await: FastAPI runs a plain `def` dependency on its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from compute.db.queries import JobQueries
from compute.db.repository import JobRepository
from compute.db.worker_sessions import WorkerSessions
from compute.files.staging import OutputStaging
from compute.server.dbcalls import RouteDatabase
from compute.server.flow.actions import JobActions
from compute.server.flow.cancel import Canceller
from compute.server.flow.workers import WorkerRegistry
from compute.server.services import Services
from compute.server.sweeps.orphans import OrphanSweeper
from compute.storage import JobStorage


def services_of(request: Request) -> Services:
    """The parts create_app built (services.build_services)."""
    return request.app.state.services  # type: ignore[no-any-return]


async def _services(request: Request) -> Services:
    return services_of(request)


async def _repo(request: Request) -> JobRepository:
    return services_of(request).repo


async def _storage(request: Request) -> JobStorage:
    return services_of(request).storage


async def _staging(request: Request) -> OutputStaging:
    return services_of(request).staging


async def _registry(request: Request) -> WorkerRegistry:
    return services_of(request).registry


async def _canceller(request: Request) -> Canceller:
    return services_of(request).canceller


async def _db(request: Request) -> RouteDatabase:
    return services_of(request).db


async def _orphans(request: Request) -> OrphanSweeper:
    return services_of(request).orphans


async def _actions(request: Request) -> JobActions:
    return services_of(request).actions


async def _queries(request: Request) -> JobQueries:
    return services_of(request).queries


async def _sessions(request: Request) -> WorkerSessions:
    return services_of(request).route_sessions


ServicesDep = Annotated[Services, Depends(_services)]
RepoDep = Annotated[JobRepository, Depends(_repo)]
StorageDep = Annotated[JobStorage, Depends(_storage)]
#: Outputs remote workers sent, waiting for their job's completion.
StagingDep = Annotated[OutputStaging, Depends(_staging)]
RegistryDep = Annotated[WorkerRegistry, Depends(_registry)]
CancellerDep = Annotated[Canceller, Depends(_canceller)]
#: Runs a route's database calls off the event loop, with a deadline (503 past it).
DbDep = Annotated[RouteDatabase, Depends(_db)]
OrphansDep = Annotated[OrphanSweeper, Depends(_orphans)]
QueriesDep = Annotated[JobQueries, Depends(_queries)]
#: Worker sessions read by routes (on the routes' engine, with its deadline).
SessionsDep = Annotated[WorkerSessions, Depends(_sessions)]
ActionsDep = Annotated[JobActions, Depends(_actions)]
