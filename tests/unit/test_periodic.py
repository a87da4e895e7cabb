"""server/sweeps/periodic.py: the background passes outlive their failures."""

from __future__ import annotations

import asyncio
import logging

import pytest

from compute.logs import LogLimiter
from compute.server.sweeps.periodic import every


async def test_a_failed_pass_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    passes = 0
    third = asyncio.Event()

    async def one_pass() -> None:
        nonlocal passes
        passes += 1
        if passes == 3:
            third.set()
        if passes <= 2:
            raise RuntimeError("database is locked")

    limited = LogLimiter(logging.getLogger("test.periodic"))
    with caplog.at_level(logging.ERROR, logger="test.periodic"):
        task = asyncio.create_task(every(0.0, one_pass, "test pass", limited))
        await asyncio.wait_for(third.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    failures = [r for r in caplog.records if "test pass failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)
