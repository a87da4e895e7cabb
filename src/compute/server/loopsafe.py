"""Bus calls from the routes' database threads, run on the event loop where the bus lives.

Code that runs on those threads (RouteDatabase.call: the cancel route's Canceller, the submit
path's JobSubmitter) publishes through a `LoopSafeBus` and marks the queue summary through a
`LoopHop`; both hand the call to the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from compute.bus.interface import Bus, ConnectHook, MessageHandler


class LoopHop:
    """Runs callables on the server's event loop, from whichever thread they are called."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """`fn(*args)` now when on the loop (or before it runs), else as soon as the loop can."""
        if self.loop is None or self.on_loop() or self.loop.is_closed():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)


class LoopSafeBus:
    """A Bus whose `publish` may be called from a database thread (the rest is the loop's)."""

    def __init__(self, bus: Bus, hop: LoopHop) -> None:
        self._bus = bus
        self._hop = hop

    @property
    def connected(self) -> bool:
        return self._bus.connected

    async def start(self) -> None:
        await self._bus.start()

    async def close(self) -> None:
        await self._bus.close()

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        if self._hop.loop is None or self._hop.on_loop():
            return self._bus.publish(topic, payload, qos=qos, retain=retain)
        self._hop.call(functools.partial(self._bus.publish, topic, payload, qos=qos, retain=retain))
        return self._bus.connected  # what publish would have said, give or take a moment

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        self._bus.subscribe(topic_filter, handler, qos)

    def on_connect(self, hook: ConnectHook) -> None:
        self._bus.on_connect(hook)
