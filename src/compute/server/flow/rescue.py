"""Orphan rescue: jobs of a worker that is gone go back to the queue (or fail, out of attempts).

Two ways a claim is found orphaned, both decided by its lease, never by a bus message alone:

* the lease sweep (every quarter lease, 1-15 s) rescues claims whose lease expired;
* a worker's verified Last Will only speeds that up: the server notes the session's claims and
  their lease expiry, and `stall_grace` later (two renewal intervals, 2 s by default) rescues
  those whose lease has not moved since. A worker that still renews its lease keeps its job,
  whatever the bus said.

Every rescued job is announced on `inference/events` (`queued`, or `failed` when no attempts
remain) and, when queued, hinted to the workers.
"""

from __future__ import annotations

import asyncio
import logging

from compute.db.rules import stall_grace
from compute.db.transitions import JobTransitions
from compute.jobs import JobChange
from compute.logs import LogLimiter
from compute.server.flow.announcer import ChangeAnnouncer
from compute.server.sweeps.periodic import Gate, always, every

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Most Will-triggered checks waiting at once; more Wills than this wait for the lease sweep.
MAX_PENDING_CHECKS = 1024


class Rescuer:
    def __init__(
        self,
        transitions: JobTransitions,
        announcer: ChangeAnnouncer,
        lease_seconds: float,
        renew_seconds: float = 1.0,
        when: Gate = always,
    ) -> None:
        """`when`: whether this server runs the lease sweep now (one server of a deployment
        does); Will checks run on every server that receives the Will, their rescue guarded."""
        self.when = when
        self.transitions = transitions
        self.announcer = announcer
        #: Check for expired leases this often: a quarter of the lease, between 1 and 15 s.
        self.interval = min(15.0, max(1.0, lease_seconds / 4))
        #: After a verified Will, wait this long for the session's leases to move.
        self.grace = stall_grace(lease_seconds, renew_seconds)
        self.rescued = 0
        #: Verified Last Wills looked into, whatever they found (GET /metrics).
        self.checks = 0
        self._pending = 0
        self._checking: set[asyncio.Task[None]] = set()

    def worker_lost(self, worker_id: str, session: str) -> None:
        """A verified Last Will for this session arrived: rescue its claims once they stall."""
        if self._pending >= MAX_PENDING_CHECKS:
            limited.warning("too many wills", "too many Last Wills at once; the lease sweep handles the rest")
            return
        self._pending += 1
        task = asyncio.create_task(self._check(worker_id, session), name="will-check")
        self._checking.add(task)
        task.add_done_callback(self._checking.discard)

    async def _check(self, worker_id: str, session: str) -> None:
        # Both database calls run on a thread, like the sweep's: a stalled database must not
        # stall the event loop (HTTP, MQTT keepalives).
        try:
            try:
                # The session's claims and their leases as the Will arrives.
                snapshot = await asyncio.to_thread(self.transitions.session_leases, worker_id, session)
            except Exception:
                limited.exception(
                    "will lookup",
                    "could not read the claims of a lost worker; the lease sweep will rescue them",
                )
                return
            await asyncio.sleep(self.grace)
            reason = f"worker {worker_id} went offline"
            self._announce(await asyncio.to_thread(self.transitions.rescue_stalled, snapshot, reason))
        except Exception:
            limited.exception("will rescue", "rescue after a Last Will failed; the lease sweep will retry")
        finally:
            self._pending -= 1
            self.checks += 1

    def _announce(self, jobs: list[JobChange]) -> None:
        self.rescued += len(jobs)
        self.announcer.announce(jobs)

    async def sweep(self) -> list[JobChange]:
        """Rescue every claim whose lease expired, and announce them (one pass of `run`)."""
        # On a thread: a locked database must not stall the event loop for its busy timeout.
        jobs = await asyncio.to_thread(self.transitions.rescue_expired)
        self._announce(jobs)
        return jobs

    async def run(self) -> None:
        """The lease sweep, until cancelled (which also drops the Will checks still waiting)."""
        try:
            await every(self.interval, self.sweep, "lease sweep", limited, self.when)
        finally:
            for task in list(self._checking):
                task.cancel()
