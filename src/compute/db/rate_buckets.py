"""The job creation limit's token buckets in the database, shared by every server of a deployment.

In memory (ratelimit.KeyedLimiter) each server process counted alone, so behind a balancer N
servers gave a user N times JOB_RATE_LIMIT. Here a bucket is a row (`rate_buckets`: tokens as
of `at`), and taking a token is one statement: an upsert that refills the bucket for the time
since `at` (by the database's clock, since hosts' clocks may differ), takes one token if there
is one, and returns what is left; no row comes back when the bucket is empty, and a second read
then says how long until the next token. The row lock orders concurrent requests for one key.

The writes are not worth an fsync each: on PostgreSQL the limiter's own connections
(`buckets_engine`) commit each statement as it runs, with `synchronous_commit = off` (a crash
of the database may forget the last few tokens taken, never a job). Rows idle long enough to
have refilled are the same as no row; each process deletes those at most once a minute.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, delete, event, func, select
from sqlalchemy.dialects import postgresql, sqlite

from compute.db.leases import database_now_ms
from compute.db.session import is_sqlite, make_engine, write_transaction
from compute.db.tables import rate_buckets_table as buckets

#: Seconds between two deletions of idle rows by one process.
PRUNE_INTERVAL = 60.0


def buckets_engine(database_url: str, wait: float) -> Engine:
    """A small engine for the buckets: on PostgreSQL each statement commits by itself, without
    waiting for the disk (`synchronous_commit = off`)."""
    if is_sqlite(database_url):
        return make_engine(database_url, wait=wait)
    engine = make_engine(database_url, wait=wait, pool_size=2, isolation_level="AUTOCOMMIT")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")

    return engine


class SharedBuckets:
    """`per_minute` jobs per key on average, `burst` at once, counted in the database."""

    shared = True

    def __init__(self, engine: Engine, per_minute: float, burst: int) -> None:
        self.engine = engine
        self.per_minute = per_minute
        self.burst = burst
        self.dialect = engine.dialect.name
        self._pruned_at = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def acquire(self, key: str) -> float:
        """Spend one of `key`'s tokens: 0.0 when allowed, else the seconds until one is there.
        Blocking (a database write)."""
        if not self.enabled:
            return 0.0
        per_ms = self.per_minute / 60_000
        now = database_now_ms(self.dialect)
        smaller = func.least if self.dialect == "postgresql" else func.min
        available = smaller(float(self.burst), buckets.c.tokens + (now - buckets.c.at) * per_ms)
        insert: Any = (postgresql if self.dialect == "postgresql" else sqlite).insert(buckets)
        take = (
            insert.values(key=key, tokens=float(self.burst - 1), at=now)
            .on_conflict_do_update(
                index_elements=[buckets.c.key],
                set_={"tokens": available - 1, "at": now},
                where=available >= 1,
            )
            .returning(buckets.c.tokens)
        )
        with self._writing() as conn:
            if conn.execute(take).first() is not None:
                wait = 0.0
            else:
                left = conn.execute(select(available).where(buckets.c.key == key)).scalar_one()
                wait = max(0.001, (1 - float(left)) / per_ms / 1000)
        self._prune_now_and_then(per_ms)
        return wait

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """On PostgreSQL the statements commit as they go on an engine made with `buckets_engine`
        (autocommit: no BEGIN and COMMIT round trips, the upsert is atomic by itself); SQLite
        takes its write lock as every write does."""
        if self.dialect != "postgresql":
            with write_transaction(self.engine) as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            yield conn
            conn.commit()  # nothing to do on an autocommit engine; other engines need it

    def _prune_now_and_then(self, per_ms: float) -> None:
        if time.monotonic() - self._pruned_at < PRUNE_INTERVAL:
            return
        self._pruned_at = time.monotonic()
        refill_ms = int(self.burst / per_ms) + 1
        with write_transaction(self.engine) as conn:
            conn.execute(delete(buckets).where(buckets.c.at < database_now_ms(self.dialect) - refill_ms))
