"""Typed FastAPI dependencies: the services the routes use, from app.state.

`async` although they never await: FastAPI runs a plain `def` dependency on its thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from compute.db.repository import JobRepository
from compute.server.cancel import Canceller
from compute.server.dbcalls import RouteDatabase
from compute.server.orphans import OrphanSweeper
from compute.server.workers import WorkerRegistry
from compute.storage import JobStorage


async def _repo(request: Request) -> JobRepository:
    return request.app.state.repo  # type: ignore[no-any-return]


async def _storage(request: Request) -> JobStorage:
    return request.app.state.storage  # type: ignore[no-any-return]


async def _registry(request: Request) -> WorkerRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def _canceller(request: Request) -> Canceller:
    return request.app.state.canceller  # type: ignore[no-any-return]


async def _db(request: Request) -> RouteDatabase:
    return request.app.state.db  # type: ignore[no-any-return]


async def _orphans(request: Request) -> OrphanSweeper:
    return request.app.state.orphans  # type: ignore[no-any-return]


RepoDep = Annotated[JobRepository, Depends(_repo)]
StorageDep = Annotated[JobStorage, Depends(_storage)]
RegistryDep = Annotated[WorkerRegistry, Depends(_registry)]
CancellerDep = Annotated[Canceller, Depends(_canceller)]
#: Runs a route's database calls off the event loop, with a deadline (503 past it).
DbDep = Annotated[RouteDatabase, Depends(_db)]
OrphansDep = Annotated[OrphanSweeper, Depends(_orphans)]
