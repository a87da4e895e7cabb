"""The server's background passes (lease sweep, orphan folders, retention, forgetting workers,
priority aging): one pass every so often, for as long as the server runs, on the one server of
the deployment that holds the sweep lease (`when`).

A pass that fails (a locked or unreachable database, a bug) is logged at a limited rate and the
next one tries again: a background task that ended on its first error would stop rescuing jobs
or pruning rows without anyone noticing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from compute.logs import LogLimiter

#: Whether this server runs the passes now (the sweep lease: sweeps/lease.py).
Gate = Callable[[], bool]


def always() -> bool:
    return True


async def every(
    interval: float,
    one_pass: Callable[[], Awaitable[object]],
    what: str,
    limited: LogLimiter,
    when: Gate = always,
    first: float | None = None,
) -> None:
    """`await one_pass()` every `interval` seconds (the first after `first`, default
    `interval`), while `when()` says so, until cancelled; failures are logged by `limited`
    (under the reason `what`) and do not end the loop."""
    wait = interval if first is None else first
    while True:
        await asyncio.sleep(wait)
        wait = interval
        if not when():
            continue  # another server of the deployment runs this pass
        try:
            await one_pass()
        except Exception:
            limited.exception(what, "%s failed; trying again in %.0f s", what, interval)
