"""Which server of a deployment runs the periodic sweeps: the one that holds the `sweeps` lease.

Several servers share one database; each sweep (lease rescue, retention, orphan folders,
forgetting workers, priority aging, the retained queue summaries) must run on one of them at a
time. Every server tries to take or renew the lease (db/leases.py) every third of
`SWEEP_LEASE_SECONDS`; the holder runs the passes, the others skip them. When the holder dies,
its lease expires by the database's clock and another server takes it at its next try: within
`SWEEP_LEASE_SECONDS` plus a third of it. A server that stops cleanly gives it up at once.

A holder that cannot reach the database cannot renew: it stops counting itself the holder
once a lease's time has passed since it last asked (its own monotonic clock, started before the
request, so never later than the database's expiry), before another server can take over. An
overlap is still possible in theory (a pass started just before that moment) and harmless: every
sweep's writes are guarded (a rescue by the lease token, a delete by status), so a second pass
finds nothing to do. What a lease buys is the work done once, not correctness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from compute.db.leases import Leases
from compute.logs import LogLimiter

log = logging.getLogger(__name__)
limited = LogLimiter(log)

NAME = "sweeps"


class SweepLease:
    def __init__(
        self,
        leases: Leases,
        holder: str,
        seconds: float,
        on_gained: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_gained` runs (on the loop) when this server becomes the holder."""
        self.leases = leases
        self.holder = holder
        self.seconds = seconds
        self.on_gained = on_gained
        self.clock = clock
        #: Times this server became the holder since start.
        self.gained = 0
        self._valid_until = 0.0

    @property
    def held(self) -> bool:
        """Whether this server runs the sweeps now."""
        return self.clock() < self._valid_until

    async def try_once(self) -> bool:
        """Take or renew the lease; whether this server holds it now."""
        asked = self.clock()
        was = self.held
        try:
            got = await asyncio.to_thread(self.leases.hold, NAME, self.holder, self.seconds)
        except Exception:
            # Unknown: a lease taken earlier holds until its time is up (`held` says when).
            limited.exception("lease", "could not renew the sweep lease; trying again")
        else:
            # Refused: another server holds it (ours had expired meanwhile).
            self._valid_until = asked + self.seconds if got else 0.0
        if self.held and not was:
            self.gained += 1
            log.info("this server (%s) runs the periodic sweeps", self.holder)
            self.on_gained()
        elif was and not self.held:
            log.info("this server (%s) no longer runs the periodic sweeps", self.holder)
        return self.held

    async def run(self) -> None:
        """Take or renew every third of the lease until cancelled; then give it up."""
        try:
            while True:
                await self.try_once()
                await asyncio.sleep(self.seconds / 3)
        finally:
            if self.held:
                self._valid_until = 0.0
                try:
                    await asyncio.to_thread(self.leases.release, NAME, self.holder)
                except Exception:
                    limited.exception("release", "could not give the sweep lease up; it expires by itself")
