"""HttpMetrics: every HTTP request's duration, observed into the server's metrics (metrics.py)."""

from __future__ import annotations

import time
from typing import Any

from compute.server.metrics import ServerMetrics

#: The route label of requests that match no route.
UNMATCHED = "unmatched"


class HttpMetrics:
    """ASGI wrapper: every HTTP request's duration by method, route template and status.

    The router puts the matched route in the scope (`scope["route"]`); requests that match none
    (404s, bodies refused before routing) are labelled `unmatched`. A `text/event-stream` reply
    is observed when its headers go out: its connection lasts as long as the client listens.
    """

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "observed": False}

        def observe() -> None:
            if not state["observed"]:
                state["observed"] = True
                route = scope.get("route")
                template = getattr(route, "path", None) or UNMATCHED
                self.metrics.request_done(
                    scope["method"], template, state["status"], time.perf_counter() - start
                )

        async def send_and_time(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    observe()
            await send(message)

        try:
            await self.app(scope, receive, send_and_time)
        finally:
            observe()
