"""The auth dependencies of the routes: the caller (`JobUser`, `AdminUser`), whose jobs it may
see (`CallerScope`), and guest mode read without stalling the event loop.

Tokens, users and scopes themselves are `server/access.py`; here a refused token becomes 401,
a missing permission 403.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compute.server.access import ADMIN_PERMISSION, JOB_PERMISSION, InvalidToken, JobScope, User
from compute.server.dbcalls import DatabaseUnavailable
from compute.server.http.deps import services_of


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False)


async def guest_mode_on(request: Request, *, wait: bool) -> bool:
    """Whether guest mode is on, without reading the database on the event loop.

    A stale value is re-read on a database thread: awaited when `wait`, else in the background
    (health answers at once). A database that does not answer leaves the last value read.
    """
    services = services_of(request)
    guest, db = services.guest, services.db
    if guest.stale:
        if wait:
            with contextlib.suppress(DatabaseUnavailable):
                await db.call(guest.refresh)
        else:
            db.in_background(guest.refresh)
    return guest.last_known


def require(permission: str, guests: bool = False) -> Callable[..., Any]:
    """A dependency that returns the caller (None when auth is disabled, or for a guest) or
    raises 401/403. `guests`: a request without a token passes while guest mode is on.

    `async` although it never awaits: FastAPI runs a plain `def` dependency on its thread
    pool, a hop per request that cost more than the check itself.
    """

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> User | None:
        return await authenticate(
            request, credentials.credentials if credentials else None, permission, guests
        )

    return dependency


async def authenticate(request: Request, token: str | None, permission: str, guests: bool) -> User | None:
    """The caller with `token` (None when auth is disabled, or for a guest), or 401/403."""
    verifier = services_of(request).verifier
    if verifier.disabled:
        return None
    if token is None:
        if guests and await guest_mode_on(request, wait=True):
            return None
        raise _unauthorized("missing bearer token")
    try:
        user = verifier.verify(token)
    except InvalidToken as exc:
        raise _unauthorized(str(exc)) from None
    if not user.has(permission):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"permission '{permission}' required")
    return user


require_jobs = require(JOB_PERMISSION, guests=True)
require_admin = require(ADMIN_PERMISSION)
JobUser = Annotated[User | None, Depends(require_jobs)]
AdminUser = Annotated[User | None, Depends(require_admin)]


async def _job_scope(request: Request, user: JobUser) -> JobScope:
    return scope_of(request, user)


def scope_of(request: Request, user: User | None) -> JobScope:
    """The jobs `user` (None: auth disabled, or a guest) may see."""
    return JobScope.of(user, auth_disabled=services_of(request).verifier.disabled)


#: The caller's JobScope, after the same checks as JobUser (401/403).
CallerScope = Annotated[JobScope, Depends(_job_scope)]
