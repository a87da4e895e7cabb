"""Token buckets: one for a single budget (worker-session look-ups), one per key for job creation.

In memory, in this process: several server processes would each keep their own, so a client
that reaches N of them would get N times the rate; on PostgreSQL the job creation limit is kept
in the database instead (db/rate_buckets.py), shared by every server of the deployment.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """`take()` is True at most `rate` times per second on average, `burst` times at once."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = burst, clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> bool:
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds until `take()` would succeed (0 when it would now)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class KeyedLimiter:
    """A TokenBucket per key (a user id, a client address): `per_minute` on average, `burst` at once.

    At most `max_keys` buckets are kept, the least recently used one leaving first. A key unseen
    for `burst / rate` seconds has a full bucket anyway, so forgetting it changes nothing; only
    with more than `max_keys` keys active within that time does one get a full bucket early.
    `per_minute` 0 turns the limit off.
    """

    #: Counted in this process only (db/rate_buckets.SharedBuckets is the deployment's).
    shared = False

    def __init__(
        self, per_minute: float, burst: int, max_keys: int = 10_000, clock: Clock = time.monotonic
    ) -> None:
        self.per_minute, self.burst, self.max_keys, self.clock = per_minute, burst, max_keys, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def acquire(self, key: str) -> float:
        """Spend one of `key`'s tokens: 0.0 when allowed, else the seconds until one is there."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.per_minute / 60, self.burst, self.clock)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return 0.0 if bucket.take() else bucket.wait()
