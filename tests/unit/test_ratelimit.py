"""Token buckets on a hand-moved clock: the rate, the burst, the wait, the key bound, off."""

from __future__ import annotations

import pytest

from compute.ratelimit import KeyedLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() and not bucket.take()
    clock.now += 60
    assert sum(bucket.take() for _ in range(10)) == 3  # refills up to the burst, no further


def test_each_key_has_its_own_bucket_and_is_told_how_long_to_wait() -> None:
    clock = Clock()
    limiter = KeyedLimiter(per_minute=6, burst=2, clock=clock)
    assert limiter.acquire("alice") == 0 and limiter.acquire("alice") == 0
    assert limiter.acquire("alice") == pytest.approx(10.0)  # 6 a minute: one every 10 s
    assert limiter.acquire("bob") == 0
    clock.now += 4
    assert limiter.acquire("alice") == pytest.approx(6.0)  # a refused request costs nothing
    clock.now += 6
    assert limiter.acquire("alice") == 0


def test_the_least_recently_used_keys_are_forgotten_past_the_bound() -> None:
    limiter = KeyedLimiter(per_minute=1, burst=1, max_keys=2, clock=Clock())
    assert limiter.acquire("a") == 0 and limiter.acquire("b") == 0
    assert limiter.acquire("a") > 0  # "a" is now the most recently used
    assert limiter.acquire("c") == 0  # "b" leaves
    assert limiter.acquire("a") > 0 and limiter.acquire("b") == 0


def test_zero_per_minute_is_off() -> None:
    limiter = KeyedLimiter(per_minute=0, burst=1)
    assert not limiter.enabled
    assert all(limiter.acquire("a") == 0 for _ in range(1000))
