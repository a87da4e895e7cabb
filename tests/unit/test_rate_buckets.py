"""db/rate_buckets.py: the job creation limit counted in the database, so that every server of a
deployment draws on one bucket per user (on SQLite and PostgreSQL, by the database's clock)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from compute.db import rate_buckets
from compute.db.rate_buckets import SharedBuckets
from compute.db.tables import rate_buckets_table as buckets
from compute_bench.harness import wait_until


def test_two_servers_draw_on_one_bucket_per_key(engine: Any) -> None:
    a, b = SharedBuckets(engine, per_minute=6, burst=2), SharedBuckets(engine, per_minute=6, burst=2)
    assert (a.acquire("user:alice"), b.acquire("user:alice")) == (0.0, 0.0)
    # In memory each would have had 2 more; the deployment has none left: one every 10 s.
    assert a.acquire("user:alice") == pytest.approx(10.0, abs=0.5)
    assert b.acquire("user:alice") == pytest.approx(10.0, abs=0.5)
    assert b.acquire("user:bob") == 0.0  # another key's bucket


def test_the_bucket_refills_at_the_rate(engine: Any) -> None:
    limiter = SharedBuckets(engine, per_minute=600, burst=1)  # one every 0.1 s
    assert limiter.acquire("k") == 0.0
    assert 0 < limiter.acquire("k") <= 0.1
    wait_until(lambda: limiter.acquire("k") == 0.0, 10, "a token again")


def test_refills_follow_the_databases_clock(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = SharedBuckets(engine, per_minute=1, burst=1)
    assert limiter.acquire("k") == 0.0
    # A host whose clock is an hour ahead would see a full bucket again if its clock counted.
    ahead = time.time_ns() + 3600 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: ahead)
    monkeypatch.setattr(time, "time", lambda: ahead / 1e9)
    assert limiter.acquire("k") > 50


def test_off_takes_nothing(engine: Any) -> None:
    assert SharedBuckets(engine, per_minute=0, burst=1).acquire("k") == 0.0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(buckets)).scalar() == 0


def test_idle_buckets_are_deleted_now_and_then(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = SharedBuckets(engine, per_minute=60, burst=1)
    assert limiter.acquire("old") == 0.0
    with engine.begin() as conn:  # refilled long ago
        conn.execute(update(buckets).where(buckets.c.key == "old").values(at=buckets.c.at - 10_000))
    monkeypatch.setattr(rate_buckets, "PRUNE_INTERVAL", 0.0)
    assert limiter.acquire("new") == 0.0
    with engine.connect() as conn:
        assert conn.execute(select(buckets.c.key)).scalars().all() == ["new"]
