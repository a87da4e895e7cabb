"""Transient database errors on the worker: which they are, and how long to wait before retrying.

A worker must outlive a stalled database ("database is locked" while another process holds the
SQLite write lock, a PostgreSQL restart): the claim loop, lease renewals, heartbeats and result
writes catch these errors, log them at a limited rate, wait (exponential backoff, capped) and try
again. Nothing accepted is lost meanwhile: a claim that failed did not happen, a result that could
not be written stays in the outbox.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

#: Errors worth retrying: everything the driver raised (OperationalError "database is locked",
#: lost connections ...) and a connection pool that had no connection free in time.
DB_ERRORS: tuple[type[Exception], ...] = (DBAPIError, PoolTimeout)

FIRST, MAXIMUM = 0.1, 5.0  # seconds


class Backoff:
    """Delays of FIRST, doubling per failure, capped at MAXIMUM; `reset()` after a success."""

    def __init__(self, first: float = FIRST, maximum: float = MAXIMUM) -> None:
        self.first, self.maximum = first, maximum
        self.current = first
        #: Failures since the last success (the caller counts them).
        self.failures = 0

    def next(self) -> float:
        """The delay before the next try; each call doubles the one after."""
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.first
        self.failures = 0
