"""What several servers on one PostgreSQL cost per request and per event (issue 18 item 3).

    uv run python -m compute_bench.several_servers [--database-url URL] [--rounds 8]

URL names a PostgreSQL server (any database on it: a scratch database is created beside it,
migrated, and dropped at the end). Three figures, each A against B in interleaved rounds, the
median of each round's median printed with every round:

* storing one job (`JobRepository.insert_rows`) with the change notice (`NOTIFY`, what every
  server's live views read) and without it; and a batch of 100 jobs the same way;
* a batch of 100 signed worker events applied (the first server), then the same 100 again (what
  every other server does with its copy: all found applied);
* taking a token of the job rate limit: in memory (one process's) against the deployment's
  bucket in the database (autocommit, no synchronous commit) and the same upsert in a transaction
  with a synchronous commit.

The database's own commit (an fsync) is taken out of the first figure with
`synchronous_commit = off` on the scratch database, so that the difference is the notice itself;
the other figures keep the default.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cl_ml_tools import Job
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from compute.db import repository
from compute.db.migrate import upgrade_head
from compute.db.rate_buckets import SharedBuckets, buckets_engine
from compute.db.repository import JobRepository
from compute.db.session import make_engine, write_transaction
from compute.db.transitions import JobTransitions
from compute.jobs import EventType, JobEvent, now_ms
from compute.policies import Policies, TaskPolicy
from compute.ratelimit import KeyedLimiter
from compute.signing import signature

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A new database beside the one `url` names, migrated; dropped afterwards."""
    admin = make_engine(url, isolation_level="AUTOCOMMIT")
    name = f"compute_bench_multi_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        scratch = make_url(url).set(database=name).render_as_string(hide_password=False)
        upgrade_head(scratch)
        yield scratch
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def interleaved(
    rounds: int, per_round: int, contenders: dict[str, Callable[[], float]]
) -> dict[str, list[float]]:
    """Each contender's median time (ms) per round; the order of the contenders alternates."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(statistics.median(contenders[name]() for _ in range(per_round)) * 1000)
    return results


def show(title: str, results: dict[str, list[float]]) -> None:
    print(title)
    for name, medians in results.items():
        rounds = ", ".join(f"{m:.3f}" for m in medians)
        print(f"  {name}: {statistics.median(medians):.3f} ms (rounds: {rounds})")


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def notices(url: str, rounds: int) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:  # the notice alone, not the disk: see the module's docstring
        conn.exec_driver_sql(f'ALTER DATABASE "{engine.url.database}" SET synchronous_commit = off')
    engine.dispose()
    engine = make_engine(url)
    repo = JobRepository(engine, origin="server:bench")
    real = getattr(repository, "notify")  # noqa: B009 - swapped out below, for "without"

    def rows(n: int) -> list[dict[str, Any]]:
        return [repo.new_row(Job(job_id=str(uuid.uuid4()), task_type="noop", params={})) for _ in range(n)]

    def storing(count: int, notify: bool) -> Callable[[], float]:
        def one() -> float:
            batch = rows(count)
            setattr(repository, "notify", real if notify else (lambda *_args: None))  # noqa: B010
            try:
                return _timed(lambda: repo.insert_rows(batch))
            finally:
                setattr(repository, "notify", real)  # noqa: B010

        return one

    show(
        "storing one job, with and without its change notice (synchronous_commit off):",
        interleaved(rounds, 300, {"with NOTIFY": storing(1, True), "without": storing(1, False)}),
    )
    show(
        "storing 100 jobs in one transaction, with and without their notices:",
        interleaved(rounds, 20, {"with NOTIFY": storing(100, True), "without": storing(100, False)}),
    )
    engine.dispose()


def _signed(job: Any, seq: int) -> JobEvent:
    unsigned = JobEvent(
        job_id=job.job_id,
        worker_id=job.worker_id,
        event=EventType.STARTED,
        timestamp=now_ms(),
        attempt=job.attempt,
        seq=seq,
    )
    return dataclasses.replace(unsigned, sig=signature(job.lease_token, unsigned))


def second_copies(url: str, rounds: int) -> None:
    engine = make_engine(url)
    repo = JobRepository(engine)
    transitions = JobTransitions(engine, Policies(TaskPolicy()), origin="server:bench")
    first: list[float] = []
    again: list[float] = []
    for _ in range(rounds):
        repo.insert_rows(
            [repo.new_row(Job(job_id=str(uuid.uuid4()), task_type="noop", params={})) for _ in range(100)]
        )
        claims = [repo.claim_next(["noop"], "w", "s") for _ in range(100)]
        events = [_signed(c, 1) for c in claims if c is not None]
        first.append(_timed(functools.partial(transitions.apply_events, events)) * 1000)
        again.append(_timed(functools.partial(transitions.apply_events, events)) * 1000)
    show(
        "100 worker events: applied by the first server, then the same 100 at a second one:",
        {"applied": first, "found applied (the second server)": again},
    )
    engine.dispose()


class _InTransaction(SharedBuckets):
    """The same upsert, in a transaction with a synchronous commit (what was not kept)."""

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Any]:
        with write_transaction(self.engine) as conn:
            yield conn


def rate_limit(url: str, rounds: int) -> None:
    memory = KeyedLimiter(1e9, 1_000_000)
    shared = SharedBuckets(buckets_engine(url, 5.0), 1e9, 1_000_000)
    strict_engine: Engine = make_engine(url, wait=5.0, pool_size=2)
    strict = _InTransaction(strict_engine, 1e9, 1_000_000)
    keys = iter(range(10**9))

    def taking(limiter: Any) -> Callable[[], float]:
        return lambda: _timed(lambda: limiter.acquire(f"user:{next(keys) % 50}"))

    show(
        "taking a token of JOB_RATE_LIMIT:",
        interleaved(
            rounds,
            300,
            {
                "in memory (one process)": taking(memory),
                "the deployment's, autocommit": taking(shared),
                "the same in a transaction, synchronous commit": taking(strict),
            },
        ),
    )
    shared.engine.dispose()
    strict_engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compute_bench.several_servers", description=__doc__)
    parser.add_argument(
        "--database-url", default=DEFAULT_URL, help=f"a PostgreSQL server (default {DEFAULT_URL})"
    )
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    with scratch_database(args.database_url) as url:
        rate_limit(url, args.rounds)
        second_copies(url, args.rounds)
        notices(url, args.rounds)  # last: it turns synchronous commits off for the database
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
