"""ChangeFeed and the SSE stream without a server: slow clients, owners, threads, stuck writes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

import pytest

from compute.jobs import JobChange
from compute.server.access import JobScope
from compute.server.http.sse import frames
from compute.server.live.changes import (
    OVERFLOW,
    REVOKED,
    SHUTDOWN,
    ChangeFeed,
    FeedClosed,
    Subscription,
    TooManyForViewer,
    TooManySubscribers,
    Viewer,
)
from tests.support.waits import wait_for

EVERYTHING = JobScope(everything=True)
OWNERS = {"a1": ("alice", "t"), "b1": ("bob", "t")}


def change(job_id: str, progress: int = 0, status: str = "processing") -> JobChange:
    return JobChange(job_id, status, progress, 1000 + progress, "t")


async def received(sub: Subscription, count: int) -> list[JobChange]:
    got: list[JobChange] = []
    while len(got) < count:
        c = await sub.next(5)
        assert c is not None, f"got {got}, wanted {count} changes"
        got.append(c)
    return got


@contextlib.asynccontextmanager
async def running(feed: ChangeFeed) -> AsyncIterator[ChangeFeed]:
    task = asyncio.create_task(feed.run())
    await wait_for(lambda: feed.running, what="the feed running")
    try:
        yield feed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_slow_subscriber_is_ended_and_the_others_get_everything() -> None:
    async with running(ChangeFeed(OWNERS.get, buffer=3)) as feed:
        slow, fast = feed.subscribe(EVERYTHING), feed.subscribe(EVERYTHING)
        for progress in range(10):
            feed.publish(change("a1", progress))  # returns at once: nothing waits for a reader
            assert [c.progress for c in await received(fast, 1)] == [progress]
        await wait_for(lambda: slow.ended is not None, what="the slow subscriber ended")
        assert slow.ended == OVERFLOW
        assert slow not in feed.subscribers and fast in feed.subscribers
        assert feed.slow_subscribers == 1
        assert await slow.next(0.01) is None  # what was buffered is not served either


async def test_subscribers_see_only_the_jobs_their_scope_allows() -> None:
    lookups: list[str] = []

    def lookup(job_id: str) -> tuple[str | None, str] | None:
        lookups.append(job_id)
        return OWNERS.get(job_id)

    async with running(ChangeFeed(lookup)) as feed:
        feed.job_stored("a2", "alice", "t")  # a new job: its owner needs no lookup
        alice = feed.subscribe(JobScope(everything=False, owner="alice"))
        guest = feed.subscribe(JobScope(everything=False, owner=None))
        admin = feed.subscribe(EVERYTHING)
        one_job = feed.subscribe(EVERYTHING, job_id="b1")
        for job_id in ("b1", "a1", "a2", "gone"):
            feed.publish(change(job_id))
        assert [c.job_id for c in await received(admin, 4)] == ["b1", "a1", "a2", "gone"]
        assert [c.job_id for c in await received(alice, 2)] == ["a1", "a2"]
        assert [c.job_id for c in await received(one_job, 1)] == ["b1"]
        # A job whose owner cannot be found (deleted) goes to those who see everything only.
        assert await guest.next(0.05) is None
        assert await alice.next(0.05) is None
        assert sorted(lookups) == ["a1", "b1", "gone"]


async def test_changes_published_from_other_threads_arrive_in_order() -> None:
    async with running(ChangeFeed(OWNERS.get)) as feed:
        sub = feed.subscribe(EVERYTHING)

        def publish() -> None:
            for progress in range(50):
                feed.publish(change("a1", progress))

        thread = threading.Thread(target=publish)
        thread.start()
        got = await received(sub, 50)
        thread.join()
        assert [c.progress for c in got] == list(range(50))


async def test_close_ends_every_subscription_and_refuses_new_ones() -> None:
    feed = ChangeFeed(OWNERS.get)
    sub = feed.subscribe(EVERYTHING)
    feed.close()
    assert sub.ended == SHUTDOWN and feed.subscribers == set()
    stream = frames(sub, heartbeat=5)
    assert (await anext(stream)).startswith("retry: ")
    assert await anext(stream) == 'event: end\ndata: {"reason":"shutdown"}\n\n'
    with pytest.raises(FeedClosed):
        feed.subscribe(EVERYTHING)


async def test_changes_waiting_together_go_out_in_one_write_each_frame_made_once() -> None:
    async with running(ChangeFeed(OWNERS.get)) as feed:
        subs = [feed.subscribe(EVERYTHING) for _ in range(3)]
        for progress in range(4):
            feed.publish(change("a1", progress))
        await wait_for(lambda: all(len(s._items) == 4 for s in subs), what="every change buffered")
        # Every stream holds the same frame objects: each change serialised once.
        assert all(a[1] is b[1] is c[1] for a, b, c in zip(*(s._items for s in subs), strict=True))
        writes = [frames(s, heartbeat=5) for s in subs]
        for stream in writes:
            await anext(stream)  # connected
        batches = [await anext(stream) for stream in writes]
        assert batches[0].count("event: job") == 4 and len(set(batches)) == 1  # one write each


async def test_a_viewer_holds_at_most_its_share_of_subscriptions() -> None:
    feed = ChangeFeed(OWNERS.get, max_subscribers=5, max_per_viewer=2)
    alice, bob = Viewer("alice"), Viewer("bob")
    first = feed.subscribe(EVERYTHING, viewer=alice)
    feed.subscribe(EVERYTHING, "a1", viewer=alice)
    with pytest.raises(TooManyForViewer):
        feed.subscribe(EVERYTHING, viewer=alice)
    feed.subscribe(EVERYTHING, viewer=bob)
    feed.unsubscribe(first)
    feed.unsubscribe(first)  # twice: counted once
    feed.subscribe(EVERYTHING, viewer=alice)  # a place freed
    feed.subscribe(EVERYTHING, viewer=bob)
    feed.subscribe(EVERYTHING)
    with pytest.raises(TooManySubscribers):
        feed.subscribe(EVERYTHING, viewer=Viewer("carol"))


async def test_guests_streams_end_when_guest_mode_goes_off() -> None:
    async with running(ChangeFeed(OWNERS.get)) as feed:
        guest = feed.subscribe(JobScope(everything=False, owner=None), viewer=Viewer("address:h", guest=True))
        user = feed.subscribe(JobScope(everything=False, owner="alice"), viewer=Viewer("alice"))
        assert feed.has_guests
        threading.Thread(target=feed.end_guests).start()  # from a route's thread
        await wait_for(lambda: guest.ended is not None, what="the guest's view ended")
        assert guest.ended == REVOKED and user.ended is None
        assert feed.subscribers == {user} and not feed.has_guests
        stream = frames(guest, heartbeat=5)
        await anext(stream)
        assert await anext(stream) == 'event: end\ndata: {"reason":"revoked"}\n\n'


async def test_a_stream_ends_when_its_token_expires() -> None:
    feed = ChangeFeed(OWNERS.get)
    stream = frames(feed.subscribe(EVERYTHING), heartbeat=0.05, until=time.time() + 0.3)
    got = [f async for f in stream]
    assert got[0].startswith("retry: ") and got[-1] == 'event: end\ndata: {"reason":"expired"}\n\n'
    assert set(got[1:-1]) == {": heartbeat\n\n"}  # alive until then
    past = frames(feed.subscribe(EVERYTHING), heartbeat=5, until=time.time() - 1)
    assert [f async for f in past][1:] == ['event: end\ndata: {"reason":"expired"}\n\n']
