"""Server-Sent Events: a Subscription written as `text/event-stream`.

Frames: `event: job` with a `JobChange` as JSON; a comment line every heartbeat (keeps proxies
and idle timeouts from closing a quiet stream, and finds clients that went away); a last
`event: end` saying why the stream ended (`overflow`: the client fell behind, reconnect and
re-read; `shutdown`: the server stops; `terminal`: the job finished; `expired`: the token the
stream was opened with expired, reconnect with a fresh one). A write that the client does not take
within WRITE_TIMEOUT closes the connection: a stuck client holds nothing for long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from compute.jobs import JobChange
from compute.logs import LogLimiter
from compute.server.live.changes import ChangeFeed, Subscription

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Seconds a client may take to accept one frame before its connection is closed.
WRITE_TIMEOUT = 30.0
#: Milliseconds an EventSource waits before reconnecting after the stream ends.
RETRY_MS = 3000
TERMINAL, EXPIRED = "terminal", "expired"


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class EventStream(StreamingResponse):
    """A StreamingResponse for SSE whose every write has a deadline."""

    media_type = "text/event-stream"

    def __init__(
        self, frames: AsyncIterator[str], on_close: Callable[[], None], write_timeout: float = WRITE_TIMEOUT
    ) -> None:
        # no-cache: a proxy must not keep the stream; X-Accel-Buffering: nginx must not buffer it.
        super().__init__(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close
        self.write_timeout = write_timeout

    async def stream_response(self, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            await asyncio.wait_for(send(message), self.write_timeout)

        try:
            await super().stream_response(send_in_time)
        except TimeoutError:
            # Returning without finishing the response makes the server close the connection.
            limited.warning(
                "sse stuck", "closed a live view whose client took no data for %.0f s", self.write_timeout
            )
        finally:
            self.on_close()


async def frames(
    sub: Subscription, heartbeat: float, first: list[JobChange] | None = None, until: float | None = None
) -> AsyncIterator[str]:
    """The frames of one subscription: `first` (a snapshot), then each change; a per-job
    subscription (`sub.job_id`) ends after a terminal change, every one at `until` (epoch
    seconds: when the caller's token expires)."""
    yield f"retry: {RETRY_MS}\n: connected\n\n"  # the comment flushes the headers at once
    last: JobChange | None = None
    pending = list(first or ())
    while True:
        left = heartbeat if until is None else until - time.time()
        if left <= 0:
            yield frame("end", {"reason": EXPIRED})
            return
        change = pending.pop(0) if pending else await sub.next(min(heartbeat, left))
        if change is None:
            if sub.ended is not None:
                yield frame("end", {"reason": sub.ended})
                return
            if until is None or time.time() < until:
                yield ": heartbeat\n\n"
            continue
        if (
            sub.job_id is not None
            and last is not None
            and change.status == last.status
            and change.progress <= last.progress
        ):
            continue  # a change from before the snapshot, or a repeat
        last = change
        yield frame("job", change.as_dict())
        if sub.job_id is not None and change.terminal:
            yield frame("end", {"reason": TERMINAL})
            return


def stream(
    feed: ChangeFeed,
    sub: Subscription,
    heartbeat: float,
    first: list[JobChange] | None = None,
    until: float | None = None,
) -> EventStream:
    return EventStream(frames(sub, heartbeat, first, until), on_close=lambda: feed.unsubscribe(sub))
