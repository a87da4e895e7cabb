"""Who calls, and whose jobs they may see: ES256 tokens from CL Server's auth service, users,
permissions, the job scope, and guest mode. No HTTP here: `http/auth.py` turns these into
FastAPI dependencies and a refused token into 401.

Guest mode: when on, requests without a token may use the job routes (never the admin ones).
Off unless GUEST_MODE says otherwise; an admin switches it with PUT /admin/pref/guest-mode and
the choice is kept in the database, so it survives restarts and reaches every server process
within REFRESH seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from sqlalchemy.exc import SQLAlchemyError

from compute.db.preferences import GUEST_MODE, PreferenceStore
from compute.errors import ComputeError, ConfigError

if TYPE_CHECKING:
    from compute.config import Settings

log = logging.getLogger(__name__)

JOB_PERMISSION = "ai_inference_support"
ADMIN_PERMISSION = "admin"
ALGORITHM = "ES256"
#: Seconds a process trusts its cached guest-mode value.
REFRESH = 2.0
#: Seconds a token's times (`exp`, `nbf`, `iat`) may be off this server's clock: they are the
#: auth service's clock, often another host's. A token is taken up to this long after `exp`, and
#: one issued by a host this much ahead is not "not yet valid".
CLOCK_LEEWAY = 30.0


class InvalidToken(ComputeError):
    """The bearer token was refused (expired, not yet valid, forged or malformed)."""


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
        """The token's user; InvalidToken with the reason when it does not verify."""
        assert self.public_key is not None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.public_key,
                algorithms=[ALGORITHM],
                options={"require": ["exp"]},
                leeway=CLOCK_LEEWAY,
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        user_id = claims.get("id") if claims.get("id") is not None else claims.get("sub")
        if user_id is None:
            raise InvalidToken("token has no user id ('id' or 'sub')")
        perms = claims.get("permissions") or []
        if not isinstance(perms, list):
            raise InvalidToken("token 'permissions' is not a list")
        return User(
            str(user_id),
            frozenset(map(str, perms)),
            bool(claims.get("is_admin", False)),
            float(claims["exp"]),
        )


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

    @classmethod
    def of(cls, user: User | None, *, auth_disabled: bool) -> JobScope:
        """The jobs `user` (None: auth disabled, or a guest) may see."""
        if auth_disabled:
            return cls(everything=True)
        if user is None:  # a guest
            return cls(everything=False, owner=None)
        if user.has(ADMIN_PERMISSION):
            return cls(everything=True)
        return cls(everything=False, owner=user.id)


class GuestMode:
    """Whether guest mode is on: the database's preference, cached for REFRESH seconds."""

    def __init__(self, store: PreferenceStore, default: bool) -> None:
        self.store = store
        self.default = default
        self._value = default
        self._read_at = float("-inf")

    @property
    def stale(self) -> bool:
        """Whether the cached value is older than REFRESH (a `refresh()` is due)."""
        return time.monotonic() - self._read_at > REFRESH

    @property
    def last_known(self) -> bool:
        """The cached value, without touching the database."""
        return self._value

    def refresh(self) -> bool:
        """Re-read the value (blocking); a database that does not answer keeps the cached one."""
        try:
            self._value = bool(self.store.get(GUEST_MODE, self.default))
        except SQLAlchemyError as exc:
            log.warning("guest mode not re-read (%s); keeping %s", type(exc).__name__, self._value)
        self._read_at = time.monotonic()
        return self._value

    @property
    def enabled(self) -> bool:
        if self.stale:
            self.refresh()
        return self._value

    def set(self, enabled: bool, by: str | None) -> None:
        self.store.set(GUEST_MODE, enabled, by)
        self._value, self._read_at = enabled, time.monotonic()
        log.warning("guest mode turned %s by %s", "on" if enabled else "off", by or "an admin")
