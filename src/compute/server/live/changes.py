"""ChangeFeed: every job change this server learns, fanned out to live subscribers (SSE).

The server already knows each change when it happens (a job stored, an event applied, a rescue, a
cancel): its announcer (server/flow/announcer.py), which publishes CL Server's
`inference/events`, also `publish()`es each `JobChange` here. Nothing is read back from the bus,
where anyone could publish a forged event.

Each subscriber has a bounded buffer. A subscriber that falls behind (its buffer is full) is
ended, never waited for: publishing never blocks, and a slow browser costs at most its buffer.
A subscriber sees only the jobs its `JobScope` allows; the owner of a job comes from a small
cache filled when the job is stored, or from the database on a thread for older jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from compute.db.repository import JobRepository
from compute.jobs import JobChange
from compute.logs import LogLimiter
from compute.server.access import JobScope

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Changes waiting for the fan-out task; beyond it they are dropped (and counted).
INTAKE_MAX = 10_000
#: Jobs whose owner and task type are remembered.
OWNERS_MAX = 10_000

#: Why a subscription ended.
OVERFLOW, SHUTDOWN = "overflow", "shutdown"


#: job id -> (created_by, task_type), or None when the job no longer exists. Blocking.
OwnerLookup = Callable[[str], tuple[str | None, str] | None]


def owner_of(repo: JobRepository, job_id: str) -> tuple[str | None, str] | None:
    """An OwnerLookup on the job table."""
    job = repo.get(job_id)
    return None if job is None else (job.created_by, job.task_type)


class Subscription:
    """One client's view: the changes it may see, buffered up to `limit`."""

    def __init__(self, scope: JobScope, job_id: str | None, limit: int) -> None:
        self.scope = scope
        self.job_id = job_id
        self.limit = limit
        self._items: deque[JobChange] = deque()
        self._ready = asyncio.Event()
        #: Why the feed ended this subscription (OVERFLOW, SHUTDOWN), or None while it runs.
        self.ended: str | None = None

    def wants(self, change: JobChange, owner: str | None) -> bool:
        return (self.job_id is None or self.job_id == change.job_id) and self.scope.allows(owner)

    def offer(self, change: JobChange) -> bool:
        """Buffer `change`; a full buffer ends the subscription instead (False)."""
        if len(self._items) >= self.limit:
            self.end(OVERFLOW)
            return False
        self._items.append(change)
        self._ready.set()
        return True

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self._ready.set()

    async def next(self, timeout: float) -> JobChange | None:
        """The next change; None when the subscription ended or nothing came within `timeout`."""
        if self.ended is None and not self._items:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        if self.ended is not None or not self._items:
            return None  # a slow or shut-down client gets nothing more, even what is buffered
        return self._items.popleft()


class FeedClosed(Exception):
    """The server is shutting down: no new subscriptions."""


class TooManySubscribers(Exception):
    """MAX subscribers already listen."""


class ChangeFeed:
    def __init__(self, lookup: OwnerLookup, *, buffer: int = 256, max_subscribers: int = 1000) -> None:
        self.lookup = lookup
        self.buffer = buffer
        self.max_subscribers = max_subscribers
        self.subscribers: set[Subscription] = set()
        self._owners: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._intake: deque[JobChange] = deque()
        self._pending = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        #: Counters: changes dropped because the intake was full; subscribers ended for being slow.
        self.dropped_changes = 0
        self.slow_subscribers = 0

    # -- producers (any thread) -------------------------------------------------------------

    def job_stored(self, job_id: str, created_by: str | None, task_type: str) -> None:
        """Remember a new job's owner, so its changes need no database lookup."""
        self._on_loop(self._remember, job_id, (created_by, task_type))

    def publish(self, change: JobChange) -> None:
        """Queue `change` for the subscribers. Never blocks; safe from database threads."""
        if self.subscribers and not self.closed:  # else nobody listens: nothing to do
            self._on_loop(self._accept, change)

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """`fn(*args)` on the feed's event loop (now, when called there or before it runs)."""
        loop = self._loop
        try:
            here = loop is None or asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            fn(*args)
        elif loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _accept(self, change: JobChange) -> None:
        if len(self._intake) >= INTAKE_MAX:
            self.dropped_changes += 1
            limited.warning("sse intake", "dropped a live job change: %d wait for delivery", INTAKE_MAX)
            return
        self._intake.append(change)
        self._pending.set()

    # -- subscribers (event loop) -----------------------------------------------------------

    def subscribe(self, scope: JobScope, job_id: str | None = None) -> Subscription:
        if self.closed:
            raise FeedClosed()
        if len(self.subscribers) >= self.max_subscribers:
            raise TooManySubscribers()
        sub = Subscription(scope, job_id, self.buffer)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (server shutdown): their streams finish at once."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.end(SHUTDOWN)
        self.subscribers.clear()

    # -- fan-out task -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while run() serves: from then on, changes from other threads reach its loop."""
        return self._loop is not None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                await self._pending.wait()
                self._pending.clear()
                while self._intake:
                    change = self._intake.popleft()
                    try:
                        await self._deliver(change)
                    except Exception:
                        limited.exception("sse deliver", "could not deliver a live job change")
        finally:
            self._loop = None

    async def _deliver(self, change: JobChange) -> None:
        known = self._owners.get(change.job_id)
        needs_owner = any(not s.scope.everything for s in self.subscribers)
        if known is None and (needs_owner or not change.task_type):
            known = await self._look_up(change.job_id)
        owner, task_type = known if known is not None else (None, change.task_type)
        if not change.task_type and task_type:
            change = dataclasses.replace(change, task_type=task_type)
        for sub in list(self.subscribers):
            # A job nobody owns as far as we know goes to subscribers that see everything only.
            if (
                (known is not None or sub.scope.everything)
                and sub.wants(change, owner)
                and not sub.offer(change)
            ):
                self.unsubscribe(sub)
                self.slow_subscribers += 1
                limited.warning("sse slow", "ended a live view that fell %d changes behind", sub.limit)

    async def _look_up(self, job_id: str) -> tuple[str | None, str] | None:
        try:
            found = await asyncio.to_thread(self.lookup, job_id)
        except Exception:
            limited.exception("sse owner", "could not look up a job's owner for live views")
            return None
        if found is not None:
            self._remember(job_id, found)
        return found

    def _remember(self, job_id: str, entry: tuple[str | None, str]) -> None:
        self._owners[job_id] = entry
        self._owners.move_to_end(job_id)
        while len(self._owners) > OWNERS_MAX:
            self._owners.popitem(last=False)
