"""The live map of workers, from their retained status and info topics (GET /capabilities)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from compute.bus.base import Bus
from compute.topics import (
    OFFLINE,
    ONLINE,
    MalformedMessage,
    Topics,
    WorkerInfo,
    parse_worker_info,
)

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    online: bool = False
    info: WorkerInfo | None = None


class WorkerRegistry:
    def __init__(self, bus: Bus, topics: Topics) -> None:
        self.bus = bus
        self.topics = topics
        self.workers: dict[str, WorkerState] = {}
        self.dropped = 0
        bus.subscribe(topics.all_worker_status, self._on_status, qos=1)
        bus.subscribe(topics.all_worker_info, self._on_info, qos=1)

    def _on_status(self, topic: str, payload: bytes, _retained: bool) -> None:
        worker_id = self.topics.worker_of(topic)
        if worker_id is None:
            return
        text = payload.decode("utf-8", "replace").strip()
        if text not in (ONLINE, OFFLINE, ""):
            self.dropped += 1
            log.warning("dropped status %r for worker %s: expected online/offline", text, worker_id)
            return
        state = self.workers.setdefault(worker_id, WorkerState())
        state.online = text == ONLINE
        if not state.online:
            self.workers.pop(worker_id, None)
            # The worker's Will could only clear one topic; clear its CL Server capability too.
            if text == OFFLINE:
                self.bus.publish(self.topics.legacy_worker(worker_id), b"", qos=1, retain=True)

    def _on_info(self, topic: str, payload: bytes, _retained: bool) -> None:
        worker_id = self.topics.worker_of(topic)
        if worker_id is None:
            return
        if not payload:
            self.workers.pop(worker_id, None)
            return
        try:
            info = parse_worker_info(payload)
        except MalformedMessage as exc:
            self.dropped += 1
            log.warning("dropped worker info on %s: %s", topic, exc)
            return
        self.workers.setdefault(worker_id, WorkerState(online=True)).info = info

    def capabilities(self) -> dict[str, object]:
        """CL Server's shape: number of live workers, idle workers per task type."""
        live = [s.info for s in self.workers.values() if s.online and s.info is not None]
        idle: dict[str, int] = {}
        for info in live:
            for task in info["tasks"]:
                idle[task] = idle.get(task, 0) + (1 if info["idle"] else 0)
        return {"num_workers": len(live), "capabilities": idle}
