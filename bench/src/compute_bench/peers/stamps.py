"""Where peer tasks report: the task body's first-line stamp and its completion, in Redis.

One namespace per benchmark run (COMPUTE_BENCH_PEER_NS), so runs sharing a Redis never mix.
"""

from __future__ import annotations

import os
from typing import Any

REDIS_ENV = "COMPUTE_BENCH_REDIS"
NS_ENV = "COMPUTE_BENCH_PEER_NS"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    return os.environ.get(REDIS_ENV, DEFAULT_REDIS)


def namespace() -> str:
    return os.environ.get(NS_ENV, "compute-bench")


def keys(ns: str) -> dict[str, str]:
    """started: hash job -> first-line ns; done: counter; finished: list of finished jobs."""
    return {"started": f"{ns}:started", "done": f"{ns}:done", "finished": f"{ns}:finished"}


_sync: Any = None
_async: Any = None


def done(job: str, started_ns: int) -> None:
    """From a synchronous task (Celery): one round trip."""
    global _sync
    if _sync is None:
        import redis

        _sync = redis.Redis.from_url(redis_url())
    k = keys(namespace())
    pipe = _sync.pipeline(transaction=False)
    pipe.hset(k["started"], job, started_ns)
    pipe.incr(k["done"])
    pipe.rpush(k["finished"], job)
    pipe.execute()


async def done_async(job: str, started_ns: int) -> None:
    """From an async task (Procrastinate): one round trip."""
    global _async
    if _async is None:
        import redis.asyncio

        _async = redis.asyncio.Redis.from_url(redis_url())
    k = keys(namespace())
    pipe = _async.pipeline(transaction=False)
    pipe.hset(k["started"], job, started_ns)
    pipe.incr(k["done"])
    pipe.rpush(k["finished"], job)
    await pipe.execute()
