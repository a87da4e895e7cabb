"""Worker presence on the bus.

Two connections, because a connection has only one Last Will:

* the main bus's Will is the retained `info` message with state "offline" and this run's
  session id, so the server can tell a dead session from a restarted one;
* a small presence connection's Will sets the plain `status` topic to "offline", the
  availability form dashboards expect.

The worker also watches its own retained topics and puts them right when an older session's
Will (or the server clearing a capability after it) overwrote them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

from compute.bus.base import Bus
from compute.jobs import now_ms
from compute.topics import OFFLINE, ONLINE, LegacyCapability, Topics, WorkerInfo, encode


def new_session() -> str:
    return uuid.uuid4().hex[:12]


def offline_will(worker_id: str, session: str) -> bytes:
    """The main connection's Last Will: this session is gone."""
    return encode({"worker_id": worker_id, "session": session, "state": OFFLINE,
                   "timestamp": now_ms()})


class Announcer:
    def __init__(self, bus: Bus, presence: Bus | None, topics: Topics, worker_id: str,
                 tasks: list[str], session: str) -> None:
        self.bus = bus
        self.presence = presence
        self.topics = topics
        self.worker_id = worker_id
        self.tasks = tasks
        self.session = session
        self.started_at = now_ms()
        self.idle = True
        self.closing = False
        bus.on_connect(self.publish_info)
        # The watch on its own retained topics rides the idle presence connection: echoes of
        # every busy/idle change on the main connection could hold a hint back behind a
        # broker's Nagle delay (Mosquitto without set_tcp_nodelay).
        watcher = presence or bus
        watcher.subscribe(topics.worker_info(worker_id), self._on_own_info, qos=1)
        watcher.subscribe(topics.legacy_worker(worker_id), self._on_own_legacy, qos=1)
        if presence is not None:
            presence.on_connect(self.publish_online)
            presence.subscribe(topics.worker_status(worker_id), self._on_own_status, qos=1)

    def set_idle(self, idle: bool) -> None:
        self.idle = idle
        self.publish_info()

    def publish_online(self) -> None:
        if self.presence is not None and not self.closing:
            self.presence.publish(self.topics.worker_status(self.worker_id), ONLINE, qos=1, retain=True)

    def publish_info(self) -> None:
        if self.closing:
            return
        now = now_ms()
        info = WorkerInfo(worker_id=self.worker_id, session=self.session, state=ONLINE,
                          tasks=self.tasks, idle=self.idle, hostname=socket.gethostname(),
                          pid=os.getpid(), started_at=self.started_at, timestamp=now)
        self.bus.publish(self.topics.worker_info(self.worker_id), encode(info), qos=1, retain=True)
        legacy = LegacyCapability(worker_id=self.worker_id, id=self.worker_id, capabilities=self.tasks,
                                  idle_count=1 if self.idle else 0, timestamp=now)
        self.bus.publish(self.topics.legacy_worker(self.worker_id), encode(legacy), qos=1, retain=True)

    def publish_offline(self) -> None:
        """Clean shutdown: clear the retained info and capability, then say offline."""
        self.closing = True
        self.bus.publish(self.topics.legacy_worker(self.worker_id), b"", qos=1, retain=True)
        self.bus.publish(self.topics.worker_info(self.worker_id), b"", qos=1, retain=True)
        if self.presence is not None:
            self.presence.publish(self.topics.worker_status(self.worker_id), OFFLINE, qos=1, retain=True)

    # -- self-healing: an older session's Will must not leave this one looking gone ----------

    def _on_own_status(self, _topic: str, payload: bytes, _retained: bool) -> None:
        if payload != ONLINE.encode() and not self.closing:
            self.publish_online()

    def _on_own_info(self, _topic: str, payload: bytes, _retained: bool) -> None:
        if not self.closing and self.session.encode() not in payload:
            self.publish_info()

    def _on_own_legacy(self, _topic: str, payload: bytes, _retained: bool) -> None:
        if not payload and not self.closing:
            self.publish_info()

    async def heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.publish_info()
