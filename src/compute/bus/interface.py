"""What the server and workers need from a message bus."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

#: Called with (topic, payload, retained) for each message on a subscribed filter.
MessageHandler = Callable[[str, bytes, bool], None]
#: Called after each (re)connect, once subscriptions are restored.
ConnectHook = Callable[[], Awaitable[None] | None]


class Bus(Protocol):
    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        """Send now if connected; return False (and send nothing) otherwise."""
        ...

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None: ...

    def on_connect(self, hook: ConnectHook) -> None: ...


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with + and # wildcards."""
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or (part != "+" and part != t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)
