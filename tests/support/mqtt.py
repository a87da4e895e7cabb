"""An MQTT client of the test's own that records what it hears, and the clean-up of what a test
left retained on a shared broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from compute.bus.interface import topic_matches


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retained: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttProbe:
    """A plain gmqtt client that records every message it receives on its subscriptions, for
    assertions. Only those: amqtt 0.12 also sends a client that connects every retained message
    that matches anyone's subscription (a server's on its own status topic, say)."""

    def __init__(
        self, host: str, port: int, username: str | None = None, password: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.messages: list[Message] = []
        self.filters: list[str] = []
        self._new = asyncio.Event()
        self._subacks: dict[int, asyncio.Event] = {}
        self.client = gmqtt.Client(f"probe-{uuid.uuid4().hex[:12]}")
        self.client.set_config({"reconnect_retries": 0})
        if username is not None:
            self.client.set_auth_credentials(username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    async def __aenter__(self) -> Self:
        await asyncio.wait_for(self.client.connect(self.host, self.port, version=MQTTv311), 10)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        try:
            await asyncio.wait_for(self.client.disconnect(), 2)
        except Exception:
            pass

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, props: Any) -> int:
        if not any(topic_matches(f, topic) for f in self.filters):
            return 0
        self.messages.append(Message(topic, bytes(payload), bool(props.get("retain"))))
        self._new.set()
        return 0

    def _on_subscribe(self, _client: Any, mid: int, _qos: Any, _props: Any) -> None:
        event = self._subacks.get(mid)
        if event is not None:
            event.set()

    async def subscribe(self, topic_filter: str, timeout: float = 10.0) -> None:
        """Subscribe and return once the broker acknowledged it."""
        event = asyncio.Event()
        self.filters.append(topic_filter)
        mid = self.client.subscribe(topic_filter, qos=1)
        self._subacks[mid] = event
        await asyncio.wait_for(event.wait(), timeout)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    async def expect(
        self, predicate: Callable[[Message], bool], timeout: float = 10.0, what: str = "message"
    ) -> Message:
        """The first message so far (or to come) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            self._new.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = [(m.topic, m.payload[:200]) for m in self.messages]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {got}")
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass

    async def sync(self, topic: str, timeout: float = 10.0) -> None:
        """Round-trip a unique marker on `topic` (which must be subscribed).

        On Mosquitto, retained messages of an earlier subscription arrive before it.
        """
        marker = uuid.uuid4().hex.encode()
        self.publish(topic, marker)
        await self.expect(lambda m: m.topic == topic and m.payload == marker, timeout, "sync marker")

    def on_topic(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic == topic]


async def clear_retained(host: str, port: int, prefix: str) -> None:
    """Remove the retained messages a test left under its topic prefix on a shared broker."""
    async with MqttProbe(host, port) as probe:
        await probe.subscribe(f"{prefix}/#")
        await probe.sync(f"{prefix}/_sync")
        for topic in {m.topic for m in probe.messages if m.retained and m.payload}:
            probe.publish(topic, b"", retain=True)
        await probe.sync(f"{prefix}/_sync")
