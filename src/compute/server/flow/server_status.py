"""`<root>/server/status`: `online` while any server of the deployment is connected.

Each server publishes `online` (retained) on every connect and `offline` when it stops, and its
Last Will says `offline` when it dies. With several servers, one that stops or dies would leave
`offline` retained while the others serve; so every server also listens to the topic and puts
`online` back when it reads `offline` while it is itself connected and not leaving. Anyone may
publish on the topic (it is advisory, unsigned), so a repair happens at most once per
`REPAIR_INTERVAL`: a flood of `offline` costs one publish a second, and the last one is always
answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from compute.bus.interface import Bus
from compute.topics import OFFLINE, ONLINE, Topics

#: Seconds between two repairs at most.
REPAIR_INTERVAL = 1.0


class ServerStatus:
    def __init__(self, bus: Bus, topics: Topics, clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.topic = topics.server_status
        self.clock = clock
        self.leaving = False
        #: `online` published again after another server (or anyone) left `offline` there.
        self.repairs = 0
        self._last_repair = -REPAIR_INTERVAL
        self._deferred: asyncio.TimerHandle | None = None
        bus.on_connect(self.announce)
        bus.subscribe(self.topic, self._on_status, qos=1)

    def announce(self) -> None:
        if not self.leaving:
            self.bus.publish(self.topic, ONLINE, qos=1, retain=True)

    def leave(self) -> None:
        """This server stops: `offline`, unless another one is still there to repair it."""
        self.leaving = True
        if self._deferred is not None:
            self._deferred.cancel()
        self.bus.publish(self.topic, OFFLINE, qos=1, retain=True)

    def _on_status(self, _topic: str, payload: bytes, _retained: bool) -> None:
        if self.leaving or payload.strip() != OFFLINE.encode() or not self.bus.connected:
            return
        wait = self._last_repair + REPAIR_INTERVAL - self.clock()
        if wait <= 0:
            self._repair()
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._repair)

    def _repair(self) -> None:
        self._deferred = None
        self._last_repair = self.clock()
        if not self.leaving and self.bus.connected:
            self.repairs += 1
            self.announce()
