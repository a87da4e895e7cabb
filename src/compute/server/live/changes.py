"""ChangeFeed: every job change this server learns, fanned out to live subscribers (SSE).

The server already knows each change when it happens (a job stored, an event applied, a rescue, a
cancel): its announcer (server/flow/announcer.py), which publishes CL Server's
`inference/events`, also `publish()`es each `JobChange` here. Nothing is read back from the bus,
where anyone could publish a forged event.

Each subscriber has a bounded buffer. A subscriber that falls behind (its buffer is full) is
ended, never waited for: publishing never blocks, and a slow browser costs at most its buffer.
A subscriber sees only the jobs its `JobScope` allows; the owner of a job comes from a small
cache filled when the job is stored, or from the database on a thread for older jobs.

Subscribers are kept by audience (those who see everything, each owner's, each job's), so a
change visits only the subscribers it is for, and its SSE frame is written once, whoever and
however many receive it. Each viewer (a user, or a client address without a token) may hold
`max_per_viewer` subscriptions, all viewers `max_subscribers`; and a guest's end when guest mode
goes off (`end_guests`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compute.db.repository import JobRepository
from compute.errors import ComputeError
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
OVERFLOW, SHUTDOWN, REVOKED = "overflow", "shutdown", "revoked"


def sse_frame(event: str, data: dict[str, Any]) -> str:
    """One Server-Sent Events frame: `event` with `data` as JSON."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def job_frame(change: JobChange) -> str:
    """`change` as an SSE `job` frame."""
    return sse_frame("job", change.as_dict())


@dataclass(frozen=True)
class Viewer:
    """Who holds a live view: what the per-viewer limit counts, and what guest mode ends."""

    #: A user id, or `address:<client address>` for callers without a token.
    key: str
    guest: bool = False


#: job id -> (created_by, task_type), or None when the job no longer exists. Blocking.
OwnerLookup = Callable[[str], tuple[str | None, str] | None]


def owner_of(repo: JobRepository, job_id: str) -> tuple[str | None, str] | None:
    """An OwnerLookup on the job table."""
    job = repo.get(job_id)
    return None if job is None else (job.created_by, job.task_type)


class Subscription:
    """One client's view: the changes it may see, buffered up to `limit`."""

    def __init__(self, scope: JobScope, job_id: str | None, limit: int, viewer: Viewer | None = None) -> None:
        self.scope = scope
        self.job_id = job_id
        self.limit = limit
        self.viewer = viewer
        #: Each change with its frame, made once by the feed for every subscriber it goes to.
        self._items: deque[tuple[JobChange, str]] = deque()
        self._ready = asyncio.Event()
        #: Why the feed ended this subscription (OVERFLOW, SHUTDOWN, REVOKED), or None while it runs.
        self.ended: str | None = None

    def wants(self, change: JobChange, owner: str | None) -> bool:
        return (self.job_id is None or self.job_id == change.job_id) and self.scope.allows(owner)

    def offer(self, change: JobChange, frame: str | None = None) -> bool:
        """Buffer `change` (and its SSE `frame`); a full buffer ends the subscription instead (False)."""
        if len(self._items) >= self.limit:
            self.end(OVERFLOW)
            return False
        self._items.append((change, job_frame(change) if frame is None else frame))
        self._ready.set()
        return True

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self._ready.set()

    async def take(self, timeout: float) -> list[tuple[JobChange, str]]:
        """Every change buffered now, once there is one; [] when the subscription ended or
        nothing came within `timeout`."""
        if self.ended is None and not self._items:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                    await self._ready.wait()
            except TimeoutError:
                return []
        if self.ended is not None:
            return []  # a slow or shut-down client gets nothing more, even what is buffered
        items = list(self._items)
        self._items.clear()
        return items

    async def next(self, timeout: float) -> JobChange | None:
        """The next change; None when the subscription ended or nothing came within `timeout`."""
        if not self._items:
            got = await self.take(timeout)
            self._items.extend(got)
        if self.ended is not None or not self._items:
            return None
        return self._items.popleft()[0]


class FeedClosed(ComputeError):
    """The server is shutting down: no new subscriptions."""


class TooManySubscribers(ComputeError):
    """The most subscribers the feed takes already listen."""


class TooManyForViewer(ComputeError):
    """This viewer already holds its most subscriptions."""


class ChangeFeed:
    def __init__(
        self,
        lookup: OwnerLookup,
        *,
        buffer: int = 256,
        max_subscribers: int = 1000,
        max_per_viewer: int | None = None,
    ) -> None:
        self.lookup = lookup
        self.buffer = buffer
        self.max_subscribers = max_subscribers
        self.max_per_viewer = max_per_viewer
        self.subscribers: set[Subscription] = set()
        #: The same subscribers by audience: all jobs, all of one owner's jobs, one job.
        self._everything: set[Subscription] = set()
        self._by_owner: dict[str | None, set[Subscription]] = {}
        self._by_job: dict[str, set[Subscription]] = {}
        self._per_viewer: Counter[str] = Counter()
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

    def subscribe(
        self, scope: JobScope, job_id: str | None = None, viewer: Viewer | None = None
    ) -> Subscription:
        if self.closed:
            raise FeedClosed()
        if len(self.subscribers) >= self.max_subscribers:
            raise TooManySubscribers()
        if viewer is not None and self.max_per_viewer is not None:
            if self._per_viewer[viewer.key] >= self.max_per_viewer:
                raise TooManyForViewer()
            self._per_viewer[viewer.key] += 1
        sub = Subscription(scope, job_id, self.buffer, viewer)
        self.subscribers.add(sub)
        self._audience(sub).add(sub)
        return sub

    def _audience(self, sub: Subscription) -> set[Subscription]:
        if sub.job_id is not None:
            return self._by_job.setdefault(sub.job_id, set())
        if sub.scope.everything:
            return self._everything
        return self._by_owner.setdefault(sub.scope.owner, set())

    def unsubscribe(self, sub: Subscription) -> None:
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        audience = self._audience(sub)
        audience.discard(sub)
        if not audience:  # no empty sets left behind, one per job or owner ever seen
            if sub.job_id is not None:
                del self._by_job[sub.job_id]
            elif not sub.scope.everything:
                del self._by_owner[sub.scope.owner]
        if sub.viewer is not None and self.max_per_viewer is not None:
            self._per_viewer[sub.viewer.key] -= 1
            if self._per_viewer[sub.viewer.key] <= 0:
                del self._per_viewer[sub.viewer.key]

    @property
    def has_guests(self) -> bool:
        return any(s.viewer is not None and s.viewer.guest for s in self.subscribers)

    def end_guests(self) -> None:
        """End every guest's subscription (guest mode went off). Safe from any thread."""
        self._on_loop(self._end_where, lambda s: s.viewer is not None and s.viewer.guest, REVOKED)

    def _end_where(self, doomed: Callable[[Subscription], bool], reason: str) -> None:
        for sub in [s for s in self.subscribers if doomed(s)]:
            sub.end(reason)
            self.unsubscribe(sub)

    def missed(self) -> None:
        """Changes may have been missed (the database's notices were cut off for a while): end
        every subscription as if it fell behind (`overflow`), so its client reads the state
        again. Safe from any thread."""
        self._on_loop(self._end_where, lambda _sub: True, OVERFLOW)

    def close(self) -> None:
        """End every subscription (server shutdown): their streams finish at once."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.end(SHUTDOWN)
            self.unsubscribe(sub)

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
        if known is None and (self._by_owner or not change.task_type):
            known = await self._look_up(change.job_id)
        owner, task_type = known if known is not None else (None, change.task_type)
        if not change.task_type and task_type:
            change = dataclasses.replace(change, task_type=task_type)
        # A job nobody owns as far as we know goes to subscribers that see everything only. A
        # per-job subscription was checked against the job's owner when its stream opened.
        targets = [*self._everything, *self._by_job.get(change.job_id, ())]
        if known is not None:
            targets += self._by_owner.get(owner, ())
        frame = job_frame(change) if targets else ""
        for sub in targets:
            if not sub.offer(change, frame):
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
