"""GET /events and GET /jobs/{id}/events: live job changes as Server-Sent Events.

Auth is the job routes' (JWT with `ai_inference_support`, guests when guest mode is on; each
caller sees only its own jobs, admins all). A browser's EventSource cannot set headers, so these
two routes, and only they, also take the token as the `access_token` query parameter (RFC 6750
2.3); see docs/http-api.md, "Live views", for the risk. A stream ends when the token it was opened with
expires, and a guest's when guest mode goes off. Each user (without a token: each client address)
holds at most SSE_MAX_PER_USER streams (429), everyone together the smaller of SSE_MAX_CLIENTS
and the descriptor budget's share (503).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compute.jobs import JobChange
from compute.server.access import JOB_PERMISSION, JobScope
from compute.server.http import sse
from compute.server.http.auth import authenticate, scope_of
from compute.server.http.deps import DbDep, RepoDep, services_of
from compute.server.live.changes import (
    FeedClosed,
    Subscription,
    TooManyForViewer,
    TooManySubscribers,
    Viewer,
)
from compute.server.routes.job import _not_found, _visible

router = APIRouter(tags=["events"])

_bearer = HTTPBearer(auto_error=False)
_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "text/event-stream: `job` events (a JobChange as JSON), heartbeat comments, "
        "a last `end` event with the reason",
        "content": {"text/event-stream": {}},
    }
}


async def _stream_scope(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    access_token: Annotated[
        str | None,
        Query(
            max_length=16_384,
            description="the JWT, for clients that cannot set the Authorization "
            "header (a browser's EventSource); the header wins when both are given",
        ),
    ] = None,
) -> StreamCaller:
    token = credentials.credentials if credentials is not None else access_token
    user = await authenticate(request, token, JOB_PERMISSION, guests=True)
    if user is not None:
        viewer = Viewer(user.id)
    else:  # a guest, or anyone with auth off: known only by address
        address = request.client.host if request.client is not None else "unknown"
        viewer = Viewer(f"address:{address}", guest=not services_of(request).verifier.disabled)
    return StreamCaller(scope_of(request, user), None if user is None else user.expires_at, viewer)


@dataclass(frozen=True)
class StreamCaller:
    scope: JobScope
    #: When the caller's token expires (epoch seconds): the stream ends then.
    until: float | None
    viewer: Viewer


Caller = Annotated[StreamCaller, Depends(_stream_scope)]


#: A refused stream's connection is closed too: its descriptor is what was short.
_REFUSED = {"Retry-After": "10", "Connection": "close"}


def _subscribe(request: Request, caller: StreamCaller, job_id: str | None = None) -> Subscription:
    services = services_of(request)
    try:
        return services.changes.subscribe(caller.scope, job_id, caller.viewer)
    except FeedClosed:
        raise HTTPException(503, "the server is shutting down") from None
    except TooManySubscribers:
        raise HTTPException(
            503,
            f"too many live views are open ({services.changes.max_subscribers}: SSE_MAX_CLIENTS or "
            "the open-file budget); retry later",
            headers=_REFUSED,
        ) from None
    except TooManyForViewer:
        raise HTTPException(
            429,
            f"you have {services.settings.sse_max_per_user} live views open already (SSE_MAX_PER_USER); "
            "close one first",
            headers=_REFUSED,
        ) from None


@router.get("/events", response_class=sse.EventStream, status_code=200, responses=_STREAM)
async def all_events(request: Request, caller: Caller) -> sse.EventStream:
    """Every change of every job the caller may see, as it happens, until the client leaves."""
    sub = _subscribe(request, caller)
    services = services_of(request)
    return sse.stream(services.changes, sub, services.settings.sse_heartbeat, until=caller.until)


@router.get("/jobs/{job_id}/events", response_class=sse.EventStream, status_code=200, responses=_STREAM)
async def job_events(
    job_id: str, request: Request, repo: RepoDep, db: DbDep, caller: Caller
) -> sse.EventStream:
    """One job: its state now, then each change, until it completes, fails or is cancelled."""
    # Subscribed before the read, so no change falls between the snapshot and the stream.
    scope = caller.scope
    sub = _subscribe(request, caller, job_id)
    feed = services_of(request).changes
    try:
        job = await db.call(_visible, repo, job_id, scope)
    except BaseException:
        feed.unsubscribe(sub)
        raise
    if job is None:
        feed.unsubscribe(sub)
        raise _not_found(job_id)
    now = JobChange(job.job_id, job.status, job.progress, job.updated_at or job.created_at, job.task_type)
    return sse.stream(feed, sub, services_of(request).settings.sse_heartbeat, [now], caller.until)
