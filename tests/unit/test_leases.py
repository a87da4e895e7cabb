"""db/leases.py and server/sweeps/lease.py: one server of a deployment holds the sweep lease, by
the database's clock, and another takes it over once the holder stops renewing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from compute.db.leases import Leases
from compute.server.sweeps import lease as sweep_lease
from compute.server.sweeps.lease import SweepLease
from compute.server.sweeps.periodic import every
from compute_bench.harness import wait_until
from tests.support.waits import wait_for


def test_one_holder_at_a_time_and_the_next_takes_an_expired_lease(engine: Any) -> None:
    leases = Leases(engine)
    assert leases.hold("sweeps", "a", 1.0)
    assert not leases.hold("sweeps", "b", 1.0)
    assert leases.hold("sweeps", "a", 1.0)  # renewed by its holder
    assert leases.holder("sweeps") == "a"
    wait_until(lambda: leases.hold("sweeps", "b", 60.0), 10, "b takes the expired lease")
    assert leases.holder("sweeps") == "b"
    assert not leases.hold("sweeps", "a", 60.0)


def test_a_released_lease_is_free_at_once(engine: Any) -> None:
    leases = Leases(engine)
    assert leases.hold("sweeps", "a", 600.0)
    leases.release("sweeps", "b")  # not b's to give up
    assert not leases.hold("sweeps", "b", 600.0)
    leases.release("sweeps", "a")
    assert leases.holder("sweeps") is None
    assert leases.hold("sweeps", "b", 600.0)


def test_expiry_is_the_databases_clock_not_the_hosts(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    leases = Leases(engine)
    assert leases.hold("sweeps", "a", 600.0)
    # A second host whose clock runs an hour ahead: a lease computed from its clock would look
    # expired to it, and it would take it while `a` still runs.
    ahead = time.time_ns() + 3600 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: ahead)
    monkeypatch.setattr(time, "time", lambda: ahead / 1e9)
    assert not leases.hold("sweeps", "b", 600.0)
    assert leases.holder("sweeps") == "a"


async def test_the_sweeps_run_on_the_holder_only_and_move_when_it_dies(engine: Any) -> None:
    dying = Leases(engine)
    first, second = SweepLease(dying, "a", 1.5), SweepLease(Leases(engine), "b", 1.5)
    passes = {"a": 0, "b": 0}

    def sweeping(name: str, lease: SweepLease) -> asyncio.Task[None]:
        async def one_pass() -> None:
            passes[name] += 1

        return asyncio.create_task(every(0.01, one_pass, "pass", sweep_lease.limited, lambda: lease.held))

    a_tasks = [asyncio.create_task(first.run()), sweeping("a", first)]
    await wait_for(lambda: first.held, what="a holds the lease")
    b_tasks = [asyncio.create_task(second.run()), sweeping("b", second)]
    await wait_for(lambda: passes["a"] >= 5, what="a's passes")
    assert passes["b"] == 0 and not second.held
    # a dies without a word (nothing released): b takes over once a's lease ran out.
    dying.release = lambda *_args: None  # type: ignore[method-assign]
    for task in a_tasks:
        task.cancel()
    await asyncio.gather(*a_tasks, return_exceptions=True)
    assert Leases(engine).holder("sweeps") == "a"
    await wait_for(lambda: second.held, timeout=15, what="b takes over")
    seen = passes["b"]
    await wait_for(lambda: passes["b"] >= seen + 5, what="b's passes")
    # b stops cleanly: it gives the lease up at once.
    for task in b_tasks:
        task.cancel()
    await asyncio.gather(*b_tasks, return_exceptions=True)
    assert Leases(engine).holder("sweeps") is None
