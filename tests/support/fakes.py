"""Stand-ins for unit tests and for tests that must hold a job at a known point.

`FakeBus` records what the parts publish and delivers what a test feeds it, in the calling
thread, with no broker; `GatedNoop` is the benchmark's no-op plugin held at its start until
the test opens its gate; `no_staging` is the ingest's staging where no remote worker sends
anything.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from compute.bus.interface import MessageHandler, topic_matches
from compute.files.staging import OutputStaging
from compute.storage import JobStorage
from compute_bench.noop import BenchNoopTask


def no_staging() -> OutputStaging:
    """Staging over a storage folder nothing is written to: for an ingest no remote worker uses."""
    return OutputStaging(JobStorage(Path(tempfile.gettempdir()) / "compute-unused-storage", 1))


class FakeBus:
    """The bus interface, recording: `sent` holds (topic, payload, retain) of every publish."""

    def __init__(self, connected: bool = True) -> None:
        self.is_connected = connected
        self.sent: list[tuple[str, bytes, bool]] = []
        self.subs: list[tuple[str, MessageHandler]] = []
        self.hooks: list[Callable[[], Awaitable[None] | None]] = []

    @property
    def connected(self) -> bool:
        return self.is_connected

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> bool:
        if not self.is_connected:
            return False
        self.sent.append((topic, payload.encode() if isinstance(payload, str) else payload, retain))
        return True

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        self.subs.append((topic_filter, handler))

    def on_connect(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        self.hooks.append(hook)

    def deliver(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Hand `payload` to every handler subscribed to a filter that matches `topic`."""
        for topic_filter, handler in self.subs:
            if topic_matches(topic_filter, topic):
                handler(topic, payload, retained)

    def on(self, topic: str) -> list[Any]:
        """The JSON payloads published on `topic` (an empty payload as it was), oldest first."""
        return [json.loads(p) if p else p for t, p, _ in self.sent if t == topic]


class GatedNoop(BenchNoopTask):
    """bench_noop, held at its start until the test opens the gate; counts its runs.

    It shares threading events with the test, so it runs on the worker's plugin thread
    (PLUGIN_ISOLATION=thread), never in a plugin process.
    """

    def __init__(self) -> None:
        self.runs = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def execute(self, job: Any, params: Any, progress_callback: Any = None) -> dict[str, Any]:
        self.runs += 1
        self.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        return await super().execute(job, params, progress_callback)
