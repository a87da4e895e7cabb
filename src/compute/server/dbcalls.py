"""The HTTP routes' database calls, off the event loop and with a deadline.

A call runs on one of a few threads of its own (`RouteDatabase.call`). The engine behind it
waits at most DB_REQUEST_TIMEOUT for a lock or a connection (session.make_engine), and a
call waits at most as long for a free thread, so a locked or unreachable database turns into
`DatabaseUnavailable` (503 with Retry-After) within the deadline while the event loop keeps
answering everything else. The last outcome is the database state `GET /` reports; while it
is "unavailable", `GET /` re-checks it in the background (`session.ping`).

What code on those threads publishes goes through `loopsafe.py` to the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from compute.errors import ComputeError, first_line

log = logging.getLogger(__name__)

T = TypeVar("T")
DatabaseState = Literal["ok", "unavailable"]
#: Seconds between background re-checks of a database that failed.
RECHECK_INTERVAL = 1.0


class DatabaseUnavailable(ComputeError):
    """The database did not answer in time (locked or unreachable); retry later."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def is_unavailable(exc: BaseException) -> bool:
    """Whether a driver error means "the database cannot answer now" rather than a bug."""
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, (OperationalError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _reason(exc: BaseException) -> str:
    text = first_line(getattr(exc, "orig", None) or exc)
    if "locked" in text or "lock timeout" in text or "lock_timeout" in text:
        return "the database is locked by another writer"
    return f"the database does not answer ({text})"


class RouteDatabase:
    """Runs blocking database calls on `threads` threads, each bounded by `deadline` seconds."""

    def __init__(self, deadline: float, threads: int = 8, ping: Callable[[], None] | None = None) -> None:
        self.deadline = deadline
        self.retry_after = max(1, math.ceil(deadline))
        # The semaphore bounds the wait for a thread; the limiter (same size) never waits then.
        self._slots = anyio.Semaphore(threads)
        self._limiter = anyio.CapacityLimiter(threads)
        self._ping = ping
        self._checked_at = 0.0
        self.state: DatabaseState = "ok"
        self.reason: str | None = None
        #: Calls running or waiting for a thread now.
        self.in_flight = 0
        self._background: dict[Callable[[], Any], asyncio.Task[None]] = {}

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a database thread, in this request's context (contextvars).

        Raises DatabaseUnavailable when no thread frees up within the deadline or the database
        does not answer within it; other errors pass through unchanged.
        """
        self.in_flight += 1
        try:
            return await self._call(fn, *args, **kwargs)
        finally:
            self.in_flight -= 1

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            with anyio.fail_after(self.deadline):
                await self._slots.acquire()
        except TimeoutError:
            self._failed("every database thread is waiting for the database")
            raise DatabaseUnavailable(
                f"{self.reason}; retry in {self.retry_after} s", self.retry_after
            ) from None
        try:
            context = contextvars.copy_context()
            bound = functools.partial(context.run, fn, *args, **kwargs)
            # Not cancellable once started: a write that commits must not be reported as failed.
            result = await anyio.to_thread.run_sync(bound, limiter=self._limiter)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self._failed(_reason(exc))
            raise DatabaseUnavailable(
                f"{self.reason}; retry in {self.retry_after} s", self.retry_after
            ) from exc
        finally:
            self._slots.release()
        self._succeeded()
        return result

    def in_background(self, fn: Callable[[], Any]) -> None:
        """`fn()` through `call`, not awaited (one at a time per function): for refreshes."""
        if fn in self._background:
            return
        task = asyncio.get_running_loop().create_task(self._quietly(fn))
        self._background[fn] = task
        task.add_done_callback(lambda _t: self._background.pop(fn, None))

    async def _quietly(self, fn: Callable[[], Any]) -> None:
        try:
            await self.call(fn)
        except DatabaseUnavailable:
            pass
        except Exception:
            log.exception("background database call failed")

    def current_state(self) -> DatabaseState:
        """The state as last seen; a failed database is re-checked in the background."""
        if (
            self.state == "unavailable"
            and self._ping is not None
            and (time.monotonic() - self._checked_at >= RECHECK_INTERVAL)
        ):
            self.in_background(self._ping)
        return self.state

    def _failed(self, reason: str) -> None:
        self._checked_at = time.monotonic()
        if self.state == "ok":
            log.warning("database unavailable to HTTP requests: %s", reason)
        self.state, self.reason = "unavailable", reason

    def _succeeded(self) -> None:
        self._checked_at = time.monotonic()
        if self.state == "unavailable":
            log.warning("database available again")
        self.state, self.reason = "ok", None
