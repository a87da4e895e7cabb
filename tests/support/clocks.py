"""A host whose wall clock is off: this process's `time.time` and `time.time_ns` shifted.

Only Python's wall clock moves: the monotonic clock, SQLite's `julianday('now')` (C library)
and PostgreSQL (another process) keep the true time, so code that still compared this host's
clock with another's (the database's, or a server's stored in a row) shows it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def shifted_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> Iterator[None]:
    """This process's wall clock `seconds` ahead (negative: behind) inside the block."""
    true_ns, offset = time.time_ns, int(seconds * 1e9)
    with monkeypatch.context() as patch:
        patch.setattr(time, "time_ns", lambda: true_ns() + offset)
        patch.setattr(time, "time", lambda: (true_ns() + offset) / 1e9)
        yield
