"""JWT (ES256) verification with the auth service's public key, and whose jobs a caller may see."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compute.errors import ConfigError
from compute.server.dbcalls import DatabaseUnavailable

if TYPE_CHECKING:
    from compute.config import Settings
    from compute.server.services import Services

log = logging.getLogger(__name__)

JOB_PERMISSION = "ai_inference_support"
ADMIN_PERMISSION = "admin"
ALGORITHM = "ES256"


@dataclass(frozen=True)
class User:
    id: str
    permissions: frozenset[str] = field(default_factory=frozenset)
    is_admin: bool = False
    #: When the token stops being valid (`exp`, seconds since the epoch); live views end then.
    expires_at: float | None = None

    def has(self, permission: str) -> bool:
        return self.is_admin or permission in self.permissions


class TokenVerifier:
    """Decodes tokens; `None` key means auth is disabled (development only)."""

    def __init__(self, public_key: str | None) -> None:
        self.public_key = public_key

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The auth service's key: PUBLIC_KEY_PATH, by default `$CL_SERVER_DIR/keys/public_key.pem`
        (where CL Server's auth service writes it); the older `$CL_SERVER_DIR/public_key.pem` is
        still read, with a warning."""
        if settings.auth_disabled:
            return cls(None)
        path, legacy = settings.public_key_path, settings.legacy_public_key_path
        if path is not None and path.is_file():
            return cls(path.read_text())
        if legacy is not None and legacy.is_file():
            log.warning("public key read from %s, an older location: move it to %s", legacy, path)
            return cls(legacy.read_text())
        raise ConfigError(
            f"public key not found at {path}: set PUBLIC_KEY_PATH, or AUTH_DISABLED=true "
            "(--no-auth) for development"
        )

    @property
    def disabled(self) -> bool:
        return self.public_key is None

    def verify(self, token: str) -> User:
        assert self.public_key is not None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=[ALGORITHM],
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("token not yet valid") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        user_id = claims.get("id") if claims.get("id") is not None else claims.get("sub")
        if user_id is None:
            raise _unauthorized("token has no user id ('id' or 'sub')")
        perms = claims.get("permissions") or []
        if not isinstance(perms, list):
            raise _unauthorized("token 'permissions' is not a list")
        return User(
            str(user_id),
            frozenset(map(str, perms)),
            bool(claims.get("is_admin", False)),
            float(claims["exp"]),
        )


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False)


async def guest_mode_on(request: Request, *, wait: bool) -> bool:
    """Whether guest mode is on, without reading the database on the event loop.

    A stale value is re-read on a database thread: awaited when `wait`, else in the background
    (health answers at once). A database that does not answer leaves the last value read.
    """
    services: Services = request.app.state.services  # not deps.services_of: services.py imports this module
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
    verifier: TokenVerifier = request.app.state.services.verifier
    if verifier.disabled:
        return None
    if token is None:
        if guests and await guest_mode_on(request, wait=True):
            return None
        raise _unauthorized("missing bearer token")
    user = verifier.verify(token)
    if not user.has(permission):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"permission '{permission}' required")
    return user


require_jobs = require(JOB_PERMISSION, guests=True)
require_admin = require(ADMIN_PERMISSION)
JobUser = Annotated[User | None, Depends(require_jobs)]
AdminUser = Annotated[User | None, Depends(require_admin)]


@dataclass(frozen=True)
class JobScope:
    """The jobs a caller may see and act on.

    Everything with auth disabled and for admins; otherwise the jobs created by `owner`: a
    user's own, or for a guest (no token, guest mode on) the jobs created without a user.
    """

    everything: bool
    owner: str | None = None

    def allows(self, created_by: str | None) -> bool:
        return self.everything or created_by == self.owner


async def _job_scope(request: Request, user: JobUser) -> JobScope:
    return scope_of(request, user)


def scope_of(request: Request, user: User | None) -> JobScope:
    """The jobs `user` (None: auth disabled, or a guest) may see."""
    if request.app.state.services.verifier.disabled:
        return JobScope(everything=True)
    if user is None:  # a guest
        return JobScope(everything=False, owner=None)
    if user.has(ADMIN_PERMISSION):
        return JobScope(everything=True)
    return JobScope(everything=False, owner=user.id)


#: The caller's JobScope, after the same checks as JobUser (401/403).
CallerScope = Annotated[JobScope, Depends(_job_scope)]
