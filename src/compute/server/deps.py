"""Typed FastAPI dependencies: the services the routes use, from app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from compute.db.repository import JobRepository
from compute.server.cancel import Canceller
from compute.server.workers import WorkerRegistry
from compute.storage import JobStorage


def _repo(request: Request) -> JobRepository:
    return request.app.state.repo  # type: ignore[no-any-return]


def _storage(request: Request) -> JobStorage:
    return request.app.state.storage  # type: ignore[no-any-return]


def _registry(request: Request) -> WorkerRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _canceller(request: Request) -> Canceller:
    return request.app.state.canceller  # type: ignore[no-any-return]


RepoDep = Annotated[JobRepository, Depends(_repo)]
StorageDep = Annotated[JobStorage, Depends(_storage)]
RegistryDep = Annotated[WorkerRegistry, Depends(_registry)]
CancellerDep = Annotated[Canceller, Depends(_canceller)]
