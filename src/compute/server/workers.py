"""The live map of workers, from their retained info topics (GET /capabilities).

Each worker connection has a session id, carried by its `info` message and by its Last Will
(`info` with state "offline"). An offline for an older session than the one now online is
stale: it never marks the worker offline and only rescues that older session's jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from compute.bus.base import Bus
from compute.topics import OFFLINE, MalformedMessage, Topics, WorkerInfo, parse_worker_info

log = logging.getLogger(__name__)


class WorkerRegistry:
    def __init__(self, bus: Bus, topics: Topics,
                 on_worker_lost: Callable[[str, str | None], None] | None = None) -> None:
        self.bus = bus
        self.topics = topics
        self.on_worker_lost = on_worker_lost
        self.workers: dict[str, WorkerInfo] = {}
        self.dropped = 0
        bus.subscribe(topics.all_worker_info, self._on_info, qos=1)

    def _on_info(self, topic: str, payload: bytes, _retained: bool) -> None:
        worker_id = self.topics.worker_of(topic)
        if worker_id is None:
            return
        if not payload:  # cleared on clean shutdown: the worker finished its jobs first
            self.workers.pop(worker_id, None)
            return
        try:
            info = parse_worker_info(payload)
        except MalformedMessage as exc:
            self.dropped += 1
            log.warning("dropped worker info on %s: %s", topic, exc)
            return
        if info["worker_id"] != worker_id:
            self.dropped += 1
            log.warning("dropped worker info on %s: names worker %s", topic, info["worker_id"])
            return
        current = self.workers.get(worker_id)
        if info["state"] != OFFLINE:
            self.workers[worker_id] = info
            return
        stale = current is not None and current["session"] != info["session"]
        if not stale:
            self.workers.pop(worker_id, None)
            # A connection has one Last Will; clear the worker's CL Server capability for it.
            self.bus.publish(self.topics.legacy_worker(worker_id), b"", qos=1, retain=True)
        log.info("worker %s session %s went offline%s", worker_id, info["session"],
                 " (an older session; the current one stays)" if stale else "")
        if self.on_worker_lost is not None:
            self.on_worker_lost(worker_id, info["session"])

    def capabilities(self) -> dict[str, object]:
        """CL Server's shape: number of live workers, idle workers per task type."""
        idle: dict[str, int] = {}
        for info in self.workers.values():
            for task in info["tasks"]:
                idle[task] = idle.get(task, 0) + (1 if info["idle"] else 0)
        return {"num_workers": len(self.workers), "capabilities": idle}
