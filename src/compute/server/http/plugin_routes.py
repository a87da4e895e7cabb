"""The cl_ml_tools plugin routes (POST /jobs/<task_type>), as CL Server clients call them.

Around every plugin endpoint the server adds what the plugins need not know about:

- `?timeout=` (seconds, at most a day) and the `Idempotency-Key` header, read by their
  dependencies and handed to `JobSubmitter.submit` with the job;
- a retry with the same user and Idempotency-Key gets the job the first request created
  (same job_id, 200) and no second job; the retry's upload is removed again;
- the database write happens off the event loop: the plugin's `repository.add_job` only
  records the job for the request (plugins call it synchronously inside `async` endpoints),
  and the wrapper commits it after the endpoint returned (`JobSubmitter.submit`: the row, with
  whatever other requests submitted meanwhile, then its announcement and hint) on a database
  thread with a deadline before the reply goes out. A stalled
  database then answers 503 with Retry-After instead of stalling the server, and the job's
  folder is removed. The reply still comes only after the commit, so nothing answered 200 is
  lost;
- `task_type` in the reply, as CL Server's SDK needs;
- the job creation rate limit (JOB_RATE_LIMIT, off by default): 429 with Retry-After past it.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from cl_ml_tools import Job
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.routing import APIRoute

from compute.db.repository import JobRecord, idempotency_scope
from compute.jobs import sdk_status
from compute.plugins.registry import route_factories
from compute.server.dbcalls import RouteDatabase
from compute.server.flow.submit import JobSubmitter
from compute.server.http.auth import JobUser, require_jobs
from compute.server.http.deps import DbDep, RepoDep, services_of
from compute.server.http.schemas import JobCreated
from compute.storage import JobStorage, valid_job_id

#: Longest per-job execution limit a client may ask for, seconds.
MAX_TIMEOUT = 86_400.0
#: Longest Idempotency-Key, characters.
MAX_IDEMPOTENCY_KEY = 200


@dataclass(frozen=True)
class _PendingAdd:
    job: Job
    created_by: str | None
    priority: int | None


#: Inside a plugin request: the jobs its endpoint asked to add, committed by the wrapper.
_pending: contextvars.ContextVar[list[_PendingAdd] | None] = contextvars.ContextVar(
    "pending_adds", default=None
)
#: Inside a plugin request: the job an earlier request with the same Idempotency-Key created.
_replay: contextvars.ContextVar[JobRecord | None] = contextvars.ContextVar("replay", default=None)
#: Inside a plugin request: its `?timeout=` and its `Idempotency-Key`, for the jobs it adds.
_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("job_timeout", default=None)
_idempotency_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("idempotency_key", default=None)


class _RecordingRepository:
    """The `repository` plugins get: its `add_job` records the job for the request it runs in,
    and the route wrapper commits it once the endpoint returned (then the workers hear of it).

    add_job outside a request is committed at once; everything else goes to the real repository.
    """

    def __init__(self, submitter: JobSubmitter) -> None:
        self._submitter = submitter
        self._repo = submitter.repo

    def add_job(self, job: Job, created_by: str | None = None, priority: int | None = None) -> str:
        """Record `job` for this request (cl_ml_tools' JobRepository protocol); its id."""
        pending = _pending.get()
        if pending is None:
            return self._submitter.add_job(job, created_by=created_by, priority=priority)
        pending.append(_PendingAdd(job, created_by, priority))
        return str(job.job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repo, name)


def _reply(job: JobRecord, task_type: str) -> dict[str, Any]:
    return {"job_id": job.job_id, "status": sdk_status(job.status), "task_type": task_type}


def _wrapped(
    endpoint: Callable[..., Any],
    task_type: str,
    submitter: JobSubmitter,
    storage: JobStorage,
    db: RouteDatabase,
) -> Callable[..., Any]:
    """The plugin endpoint with replays, the off-loop commit and `task_type` in the reply.

    functools.wraps keeps the signature, so FastAPI still sees the plugin's form fields.
    """

    def discard(adds: Iterable[_PendingAdd]) -> None:
        for add in adds:
            if valid_job_id(str(add.job.job_id)):
                storage.cleanup_job(str(add.job.job_id))

    @functools.wraps(endpoint)
    async def endpoint_with_task_type(*args: Any, **kwargs: Any) -> dict[str, Any]:
        earlier = _replay.get()
        if earlier is not None:
            return _reply(earlier, task_type)
        adds: list[_PendingAdd] = []
        token = _pending.set(adds)
        try:
            reply: dict[str, Any] = await endpoint(*args, **kwargs)
        except BaseException:
            discard(adds)  # recorded but never committed: nothing may keep their folders
            raise
        finally:
            _pending.reset(token)
        reply = {**reply, "task_type": task_type}
        for i, add in enumerate(adds):
            try:
                job_id = await submitter.submit(
                    add.job,
                    add.created_by,
                    add.priority,
                    timeout=_timeout.get(),
                    idempotency_key=_idempotency_key.get(),
                )
            except BaseException:
                discard(adds[i:])
                raise
            if job_id != str(add.job.job_id):  # a concurrent retry with the same key was first
                discard([add])
                earlier = await db.call(submitter.repo.get, job_id)
                if earlier is not None:
                    reply = _reply(earlier, task_type)
        return reply

    return endpoint_with_task_type


async def _timeout_param(
    timeout: float | None = Query(
        None,
        gt=0,
        le=MAX_TIMEOUT,
        allow_inf_nan=False,
        description="execution limit for this job, seconds (at most a day)",
    ),
) -> None:
    """`?timeout=` on a plugin route: kept for the jobs the request adds.

    Async, so it runs in the request's own context (a sync dependency would run in a thread).
    """
    _timeout.set(timeout)


def _idempotency_param(task_type: str) -> Callable[..., Any]:
    async def idempotency(
        user: JobUser,
        repo: RepoDep,
        db: DbDep,
        key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description=f"a retry with the same key (at most {MAX_IDEMPOTENCY_KEY} characters) gets "
                "the job the first request created instead of a second one",
            ),
        ] = None,
    ) -> None:
        """`Idempotency-Key`: checked, kept for the job the request adds, and an earlier job with
        it looked up."""
        _idempotency_key.set(None)
        _replay.set(None)
        if key is None:
            return
        if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise HTTPException(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
        _idempotency_key.set(key)
        earlier = await db.call(
            repo.find_by_idempotency_key, idempotency_scope(getattr(user, "id", None), key)
        )
        if earlier is not None:
            if earlier.task_type != task_type:
                raise HTTPException(
                    409, f"this Idempotency-Key was used for a {earlier.task_type} job ({earlier.job_id})"
                )
            _replay.set(earlier)

    return idempotency


async def _rate_limit(request: Request, user: JobUser) -> None:
    """Job creation per user, or per client address without a token (JOB_RATE_LIMIT): 429 with
    `Retry-After` past it. A retry an Idempotency-Key answers with its earlier job creates
    nothing and costs nothing. Runs after the upload arrived (bounded by MAX_UPLOAD_BYTES)."""
    services = services_of(request)
    limiter = services.job_rate
    if not limiter.enabled or _replay.get() is not None:
        return
    if user is not None:
        key = f"user:{user.id}"
    else:
        key = f"address:{request.client.host if request.client else '-'}"
    # The deployment's buckets are rows of the database (one write, off the loop); a process's
    # own are in memory.
    wait = await services.db.call(limiter.acquire, key) if limiter.shared else limiter.acquire(key)
    if wait > 0:
        seconds = math.ceil(wait)
        raise HTTPException(
            429,
            f"too many jobs: at most {limiter.per_minute:g} a minute "
            f"({limiter.burst} at once); retry in {seconds} s",
            headers={"Retry-After": str(seconds)},
        )


def _api_routes(routes: Iterable[Any]) -> Iterable[APIRoute]:
    """APIRoutes of a router, looking inside included routers (prefixes: none are used)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (inner := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(inner.routes)


def plugin_router(submitter: JobSubmitter, storage: JobStorage, db: RouteDatabase) -> APIRouter:
    """Every installed plugin's routes (registry.route_factories), as CL Server clients call them."""
    router = APIRouter()
    known: list[str] = []
    recording = _RecordingRepository(submitter)
    for name, create_router in route_factories().items():
        for route in _api_routes(create_router(recording, storage, require_jobs).routes):
            if not route.path.startswith("/jobs/"):
                continue
            task_type = route.path.removeprefix("/jobs/")
            known.append(task_type)
            router.add_api_route(
                route.path,
                _wrapped(route.endpoint, task_type, submitter, storage, db),
                methods=sorted(route.methods or ()),
                response_model=JobCreated,
                tags=[name],
                name=route.name,
                dependencies=[
                    Depends(_timeout_param),
                    Depends(_idempotency_param(task_type)),
                    Depends(_rate_limit),
                ],
                summary=route.summary,
                description=route.description,
            )

    @router.post("/jobs/{task_type}", tags=["plugins"], include_in_schema=False)
    def unknown_task(task_type: str, _user: JobUser) -> None:
        raise HTTPException(
            404, f"unknown task type '{task_type[:100]}'; available: {', '.join(sorted(known))}"
        )

    return router
