"""Guests' live views end when guest mode goes off.

A guest's right to watch is guest mode itself, which an admin can turn off at any time, in this
server process (`PUT /admin/pref/guest-mode` ends them at once) or in another one sharing the
database: while a guest watches, the preference is re-read every REFRESH seconds on a route
database thread, and once it reads off, every guest's stream ends (`event: end`, `revoked`).
Before this, a guest's `/events` opened earlier kept delivering job changes after guest mode
went off. A user's stream ends when its token expires (sse.frames); tokens are not revoked
before then in this project (the JWTs carry no id a revocation list could name).
"""

from __future__ import annotations

import logging

from compute.logs import LogLimiter
from compute.server.access import REFRESH, GuestMode
from compute.server.dbcalls import RouteDatabase
from compute.server.live.changes import ChangeFeed
from compute.server.sweeps.periodic import every

log = logging.getLogger(__name__)
limited = LogLimiter(log)


class GuestStreams:
    def __init__(self, feed: ChangeFeed, guest: GuestMode, db: RouteDatabase) -> None:
        self.feed = feed
        self.guest = guest
        self.db = db

    async def check(self) -> None:
        """One look: guest mode re-read when a guest watches and the value is stale."""
        if not self.feed.has_guests:
            return
        if self.guest.stale:
            await self.db.call(self.guest.refresh)
        if not self.guest.last_known:
            self.feed.end_guests()

    async def run(self) -> None:
        await every(REFRESH, self.check, "guest views", limited)
