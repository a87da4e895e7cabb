"""Worker presence on the bus.

Two connections, because a connection has only one Last Will:

* the main bus's Will is the retained `info` message with state "offline" and this run's
  session id, so the server can tell a dead session from a restarted one;
* a small presence connection's Will sets the plain `status` topic to "offline", the
  availability form dashboards expect.

Every `info` (and the Will) is signed with the session's secret, which the worker registered in
`worker_sessions` and which never travels over MQTT: the server lists only workers whose messages
verify. Client ids carry a random part drawn per run (`new_client_suffix`), never published, so
nobody can connect under a worker's id to cut it off and fire its Will.

The worker also watches its own retained topics and puts them right (at most once a second) when
something else overwrote them: an older session's Will, a forged message, or the server clearing
a capability after a Will.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
import uuid

from compute.bus.interface import Bus
from compute.jobs import now_ms
from compute.signing import info_signature
from compute.topics import OFFLINE, ONLINE, LegacyCapability, Topics, WorkerInfo, WorkerWill, encode

#: Repairs of the worker's own retained topics at most this often (seconds).
REPAIR_INTERVAL = 1.0


def new_session() -> str:
    return uuid.uuid4().hex[:12]


def new_client_suffix() -> str:
    """The random part of this run's MQTT client ids: 64 bits, published nowhere."""
    return secrets.token_hex(8)


def offline_will(worker_id: str, session: str, secret: str) -> bytes:
    """The main connection's Last Will: this session is gone. Signed like an `info`."""
    will = WorkerInfo(
        worker_id=worker_id,
        session=session,
        state=OFFLINE,
        tasks=[],
        idle=False,
        hostname="",
        pid=0,
        started_at=0,
        timestamp=now_ms(),
        sig="",
    )
    return encode(
        WorkerWill(
            worker_id=worker_id,
            session=session,
            state=OFFLINE,
            timestamp=will["timestamp"],
            sig=info_signature(secret, will),
        )
    )


class Announcer:
    def __init__(
        self,
        bus: Bus,
        presence: Bus | None,
        topics: Topics,
        worker_id: str,
        tasks: list[str],
        session: str,
        secret: str,
    ) -> None:
        self.bus = bus
        self.presence = presence
        self.topics = topics
        self.worker_id = worker_id
        self.tasks = tasks
        self.session = session
        self.secret = secret
        self.started_at = now_ms()
        self.idle = True
        self.closing = False
        self._last_repair = 0.0
        self._repair_pending = False
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

    def info(self) -> WorkerInfo:
        """This run's signed `info` as of now."""
        info = WorkerInfo(
            worker_id=self.worker_id,
            session=self.session,
            state=ONLINE,
            tasks=self.tasks,
            idle=self.idle,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
            timestamp=now_ms(),
            sig="",
        )
        info["sig"] = info_signature(self.secret, info)
        return info

    def publish_info(self) -> None:
        if self.closing:
            return
        info = self.info()
        self.bus.publish(self.topics.worker_info(self.worker_id), encode(info), qos=1, retain=True)
        legacy = LegacyCapability(
            worker_id=self.worker_id,
            id=self.worker_id,
            capabilities=self.tasks,
            idle_count=1 if self.idle else 0,
            timestamp=info["timestamp"],
        )
        self.bus.publish(self.topics.legacy_worker(self.worker_id), encode(legacy), qos=1, retain=True)

    def withdraw_capability(self) -> None:
        """Clear the CL Server capability (no Will covers it) and publish nothing more."""
        self.closing = True
        self.bus.publish(self.topics.legacy_worker(self.worker_id), b"", qos=1, retain=True)

    def publish_offline(self) -> None:
        """Clean shutdown: clear the retained capability and info, then say offline."""
        self.withdraw_capability()
        self.bus.publish(self.topics.worker_info(self.worker_id), b"", qos=1, retain=True)
        if self.presence is not None:
            self.presence.publish(self.topics.worker_status(self.worker_id), OFFLINE, qos=1, retain=True)

    # -- self-healing: nothing else may leave this run looking gone -----------------------------

    def _is_own_info(self, payload: bytes) -> bool:
        try:
            data = json.loads(payload)
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("session") == self.session and data.get("state") == ONLINE

    def _on_own_status(self, _topic: str, payload: bytes, _retained: bool) -> None:
        if payload != ONLINE.encode() and not self.closing:
            self._repair()

    def _on_own_info(self, _topic: str, payload: bytes, _retained: bool) -> None:
        if not self.closing and not self._is_own_info(payload):
            self._repair()

    def _on_own_legacy(self, _topic: str, payload: bytes, _retained: bool) -> None:
        if not payload and not self.closing:
            self._repair()

    def _repair(self) -> None:
        """Re-publish presence now, or once when REPAIR_INTERVAL has passed since the last time:
        a flood of forged messages on its topics costs the worker one publish a second."""
        wait = self._last_repair + REPAIR_INTERVAL - time.monotonic()
        if wait <= 0:
            self._republish()
            return
        if self._repair_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests): the next heartbeat repairs it
            return
        self._repair_pending = True
        loop.call_later(wait, self._republish)

    def _republish(self) -> None:
        self._repair_pending = False
        self._last_repair = time.monotonic()
        if not self.closing:
            self.publish_online()
            self.publish_info()
