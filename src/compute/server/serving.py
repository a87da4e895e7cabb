"""The uvicorn server compute-server runs: it ends live views before shutting down."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn


class StreamClosingServer(uvicorn.Server):
    """uvicorn waits for every open response before it shuts down (and only then runs the app's
    lifespan shutdown), and a live view (SSE) never ends by itself: end them all first."""

    def __init__(self, config: uvicorn.Config, end_streams: Callable[[], None]) -> None:
        super().__init__(config)
        self.end_streams = end_streams

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.end_streams()
        await super().shutdown(sockets)
