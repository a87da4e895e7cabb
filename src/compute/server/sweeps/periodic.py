"""The server's background passes (lease sweep, orphan folders, retention, forgetting workers,
priority aging): one pass every so often, for as long as the server runs.

A pass that fails (a locked or unreachable database, a bug) is logged at a limited rate and the
next one tries again: a background task that ended on its first error would stop rescuing jobs
or pruning rows without anyone noticing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from compute.logs import LogLimiter


async def every(
    interval: float, one_pass: Callable[[], Awaitable[object]], what: str, limited: LogLimiter
) -> None:
    """`await one_pass()` every `interval` seconds until cancelled; failures are logged by
    `limited` (under the reason `what`) and do not end the loop."""
    while True:
        await asyncio.sleep(interval)
        try:
            await one_pass()
        except Exception:
            limited.exception(what, "%s failed; trying again in %.0f s", what, interval)
