"""The tests' toolkit: waiting with a deadline, free ports, images, an MQTT probe, signed events.

What the tests share with the benchmark (ports, blocking waits, the environment without the
caller's settings, brokers and processes of their own) comes from compute_bench.harness and is
re-exported here, so a test imports its helpers from one place.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import gmqtt
from gmqtt.mqtt.constants import MQTTv311
from PIL import Image

from compute_bench.harness import free_port, wait_until

__all__ = ["Message", "MqttProbe", "free_port", "ms_now", "png_bytes", "signed", "wait_for", "wait_until"]


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; return that value.

    The asyncio twin of wait_until (which blocks, for code outside an event loop).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)


def png_bytes(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def ms_now() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retained: bool

    def json(self) -> Any:
        import json

        return json.loads(self.payload)


class MqttProbe:
    """A plain gmqtt client that records every message it receives, for assertions."""

    def __init__(
        self, host: str, port: int, username: str | None = None, password: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.messages: list[Message] = []
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


def signed(
    job: Any,
    kind: Any,
    seq: int,
    *,
    token: str | None = None,
    worker: str | None = None,
    ts: int | None = None,
    **fields: Any,
) -> Any:
    """A worker event for `job`'s current claim, signed with its lease token (or `token`)."""
    from dataclasses import replace

    from compute.jobs import JobEvent, now_ms
    from compute.signing import signature

    unsigned = JobEvent(
        job_id=job.job_id,
        worker_id=worker or job.worker_id or "",
        event=kind,
        timestamp=now_ms() if ts is None else ts,
        attempt=job.attempt,
        seq=seq,
        **fields,
    )
    return replace(unsigned, sig=signature(token or job.lease_token or "", unsigned))
