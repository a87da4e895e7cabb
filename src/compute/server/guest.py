"""Guest mode: when on, requests without a token may use the job routes (never the admin ones).

Off unless GUEST_MODE says otherwise; an admin switches it with PUT /admin/pref/guest-mode and
the choice is kept in the database, so it survives restarts and reaches every server process
within REFRESH seconds.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from compute.db.preferences import GUEST_MODE, PreferenceStore

log = logging.getLogger(__name__)

REFRESH = 2.0  # seconds a process trusts its cached value


class GuestMode:
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
