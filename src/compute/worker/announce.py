"""Worker presence: retained status (online/offline, Last Will), info, and the CL Server capability."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

from compute.bus.base import Bus
from compute.jobs import now_ms
from compute.topics import OFFLINE, ONLINE, LegacyCapability, Topics, WorkerInfo, encode


class Announcer:
    def __init__(self, bus: Bus, topics: Topics, worker_id: str, tasks: list[str]) -> None:
        self.bus = bus
        self.topics = topics
        self.worker_id = worker_id
        self.tasks = tasks
        self.session = uuid.uuid4().hex[:12]
        self.started_at = now_ms()
        self.idle = True

    def set_idle(self, idle: bool) -> None:
        self.idle = idle
        self.publish_info()

    def publish_online(self) -> None:
        self.bus.publish(self.topics.worker_status(self.worker_id), ONLINE, qos=1, retain=True)
        self.publish_info()

    def publish_info(self) -> None:
        now = now_ms()
        idle = self.idle
        info = WorkerInfo(worker_id=self.worker_id, session=self.session, tasks=self.tasks,
                          idle=idle, hostname=socket.gethostname(),
                          pid=os.getpid(), started_at=self.started_at, timestamp=now)
        self.bus.publish(self.topics.worker_info(self.worker_id), encode(info), qos=1, retain=True)
        legacy = LegacyCapability(worker_id=self.worker_id, id=self.worker_id,
                                  capabilities=self.tasks, idle_count=1 if idle else 0, timestamp=now)
        self.bus.publish(self.topics.legacy_worker(self.worker_id), encode(legacy), qos=1, retain=True)

    def publish_offline(self) -> None:
        """Clean shutdown: clear the retained info and capability, then say offline."""
        self.bus.publish(self.topics.legacy_worker(self.worker_id), b"", qos=1, retain=True)
        self.bus.publish(self.topics.worker_info(self.worker_id), b"", qos=1, retain=True)
        self.bus.publish(self.topics.worker_status(self.worker_id), OFFLINE, qos=1, retain=True)

    async def heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.publish_info()
