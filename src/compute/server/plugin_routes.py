"""The cl_ml_tools plugin routes (POST /jobs/<task_type>), as CL Server clients call them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.routing import APIRoute

from compute.db.repository import JobRepository, job_timeout
from compute.plugins.registry import route_factories
from compute.server.auth import JobUser, require_jobs
from compute.server.schemas import JobCreated
from compute.storage import JobStorage


def _adding_task_type(endpoint: Callable[..., Any], task_type: str) -> Callable[..., Any]:
    """Wrap a plugin endpoint so its reply also names the task type, as CL Server's SDK needs.

    functools.wraps keeps the signature, so FastAPI still sees the plugin's form fields.
    """

    @functools.wraps(endpoint)
    async def endpoint_with_task_type(*args: Any, **kwargs: Any) -> dict[str, Any]:
        reply = await endpoint(*args, **kwargs)
        return {**reply, "task_type": task_type}

    return endpoint_with_task_type


async def _timeout_param(
    timeout: float | None = Query(None, gt=0, description="execution limit for this job, seconds"),
) -> None:
    """`?timeout=` on a plugin route: handed to JobRepository.add_job through a context variable.

    Async, so it runs in the request's own context (a sync dependency would run in a thread).
    """
    job_timeout.set(timeout)


def _api_routes(routes: Iterable[Any]) -> Iterable[APIRoute]:
    """APIRoutes of a router, looking inside included routers (prefixes: none are used)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (inner := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(inner.routes)


def plugin_router(repo: JobRepository, storage: JobStorage) -> APIRouter:
    """Every installed plugin's routes (registry.route_factories), as CL Server clients call them."""
    router = APIRouter()
    known: list[str] = []
    for name, create_router in route_factories().items():
        for route in _api_routes(create_router(repo, storage, require_jobs).routes):
            if not route.path.startswith("/jobs/"):
                continue
            task_type = route.path.removeprefix("/jobs/")
            known.append(task_type)
            router.add_api_route(
                route.path, _adding_task_type(route.endpoint, task_type),
                methods=sorted(route.methods or ()), response_model=JobCreated, tags=[name],
                name=route.name, dependencies=[Depends(_timeout_param)],
                summary=route.summary, description=route.description,
            )

    @router.post("/jobs/{task_type}", tags=["plugins"], include_in_schema=False)
    def unknown_task(task_type: str, _user: JobUser) -> None:
        raise HTTPException(404, f"unknown task type '{task_type}'; available: {', '.join(sorted(known))}")

    return router
