"""JWT (ES256) verification with the auth service's public key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from compute.errors import ConfigError

JOB_PERMISSION = "ai_inference_support"
ADMIN_PERMISSION = "admin"
ALGORITHM = "ES256"


@dataclass(frozen=True)
class User:
    id: str
    permissions: frozenset[str] = field(default_factory=frozenset)
    is_admin: bool = False

    def has(self, permission: str) -> bool:
        return self.is_admin or permission in self.permissions


class TokenVerifier:
    """Decodes tokens; `None` key means auth is disabled (development only)."""

    def __init__(self, public_key: str | None) -> None:
        self.public_key = public_key

    @classmethod
    def from_path(cls, path: Path | None, disabled: bool) -> TokenVerifier:
        if disabled:
            return cls(None)
        if path is None or not path.is_file():
            raise ConfigError(
                f"public key not found at {path}: set PUBLIC_KEY_PATH, or AUTH_DISABLED=true "
                "(--no-auth) for development"
            )
        return cls(path.read_text())

    @property
    def disabled(self) -> bool:
        return self.public_key is None

    def verify(self, token: str) -> User:
        assert self.public_key is not None
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.public_key, algorithms=[ALGORITHM],
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
        return User(str(user_id), frozenset(map(str, perms)), bool(claims.get("is_admin", False)))


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False)


def require(permission: str) -> Callable[..., Any]:
    """A dependency that returns the caller (None when auth is disabled) or raises 401/403.

    `async` although it never awaits: FastAPI runs a plain `def` dependency on its thread
    pool, a hop per request that cost more than the check itself.
    """

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> User | None:
        verifier: TokenVerifier = request.app.state.verifier
        if verifier.disabled:
            return None
        if credentials is None:
            raise _unauthorized("missing bearer token")
        user = verifier.verify(credentials.credentials)
        if not user.has(permission):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"permission '{permission}' required")
        return user

    return dependency


require_jobs = require(JOB_PERMISSION)
require_admin = require(ADMIN_PERMISSION)
JobUser = Annotated[User | None, Depends(require_jobs)]
AdminUser = Annotated[User | None, Depends(require_admin)]
