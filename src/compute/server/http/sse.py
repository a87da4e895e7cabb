"""Server-Sent Events: a Subscription written as `text/event-stream`.

Frames: `event: job` with a `JobChange` as JSON; a comment line every heartbeat (keeps proxies
and idle timeouts from closing a quiet stream, and finds clients that went away); a last
`event: end` saying why the stream ended (`overflow`: the client fell behind, reconnect and
re-read; `shutdown`: the server stops; `terminal`: the job finished; `expired`: the token the
stream was opened with expired, reconnect with a fresh one; `revoked`: the right to watch ended,
guest mode was turned off). Changes that wait together go out in one write.

A client that takes no data is the connection's business, not the stream's: compute-server's
HTTP protocol cuts a connection whose client acknowledged nothing of what waits for it for
`HTTP_SEND_TIMEOUT` (serving.py). A deadline here could only end the response, and uvicorn then
closes the connection gracefully: it waits for the unsent data to drain, which it never does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Send

from compute.jobs import JobChange
from compute.server.live.changes import ChangeFeed, Subscription, job_frame, sse_frame

#: Milliseconds an EventSource waits before reconnecting after the stream ends.
RETRY_MS = 3000
TERMINAL, EXPIRED = "terminal", "expired"


def frame(event: str, data: dict[str, Any]) -> str:
    return sse_frame(event, data)


class EventStream(StreamingResponse):
    """A StreamingResponse for SSE that lets its subscription go however it ends."""

    media_type = "text/event-stream"

    def __init__(self, frames: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        # no-cache: a proxy must not keep the stream; X-Accel-Buffering: nginx must not buffer it.
        super().__init__(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
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
    pending = [(change, job_frame(change)) for change in first or ()]
    while True:
        left = heartbeat if until is None else until - time.time()
        if left <= 0:
            yield frame("end", {"reason": EXPIRED})
            return
        changes, pending = (pending, []) if pending else (await sub.take(min(heartbeat, left)), [])
        if not changes:
            if sub.ended is not None:
                yield frame("end", {"reason": sub.ended})
                return
            if until is None or time.time() < until:
                yield ": heartbeat\n\n"
            continue
        out: list[str] = []
        for change, text in changes:
            if (
                sub.job_id is not None
                and last is not None
                and change.status == last.status
                and change.progress <= last.progress
            ):
                continue  # a change from before the snapshot, or a repeat
            last = change
            out.append(text)
            if sub.job_id is not None and change.terminal:
                out.append(frame("end", {"reason": TERMINAL}))
                yield "".join(out)
                return
        if out:
            yield "".join(out)


def stream(
    feed: ChangeFeed,
    sub: Subscription,
    heartbeat: float,
    first: list[JobChange] | None = None,
    until: float | None = None,
) -> EventStream:
    return EventStream(frames(sub, heartbeat, first, until), on_close=lambda: feed.unsubscribe(sub))
