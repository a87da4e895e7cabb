"""The live map of workers behind GET /capabilities: only what the database can confirm.

A worker registers each run in `worker_sessions` (with a random secret) before it speaks on the
bus, and signs its retained `info` messages and its Last Will with that secret. The registry
believes a message only when the session is in the database, belongs to the worker the topic
names, is not stopped, and the signature verifies; anything else is counted and dropped (and
logged at a limited rate), so ghosts never enter memory. Bounds: an `info` is at most
`MAX_INFO_BYTES` with at most `MAX_TASKS` task types (topics.py); at most `MAX_WORKERS` workers
are tracked (the longest silent one makes room); database look-ups of sessions not seen before
are rate-limited (`LOOKUPS_PER_SECOND`), with a short negative cache.

Each worker run has a session id, carried by its `info` message and by its Last Will (`info`
with state "offline"). A verified offline for the current session (or for a worker not in the
map: a Will retained while no server listened) removes the worker, clears its CL Server
capability and hands the session to the rescue (which takes back only claims whose lease
stopped renewing); one for an older session only does the latter. An empty retained `info` (a
clean shutdown) removes the worker once the database says its session stopped. Every
`refresh_interval` the map is checked against the database: sessions stopped, or silent
(`last_seen`) for longer than `stale_after` by the database's clock, leave it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict

from compute.bus.interface import Bus
from compute.db.worker_sessions import WorkerSession, WorkerSessions
from compute.logs import LogLimiter
from compute.ratelimit import TokenBucket
from compute.server.flow.rescue import Rescuer
from compute.signing import verify_info
from compute.topics import OFFLINE, MalformedMessage, Topics, WorkerInfo, parse_worker_info

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Most workers tracked at once.
MAX_WORKERS = 1024
#: Session look-ups in the database for sessions not cached, per second (burst: twice that).
LOOKUPS_PER_SECOND = 500.0
#: An unknown session is not looked up again for this long (seconds); at most this many kept.
NEGATIVE_TTL, NEGATIVE_MAX = 10.0, 4096


class WorkerRegistry:
    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        sessions: WorkerSessions,
        rescuer: Rescuer,
        *,
        listen: Bus | None = None,
        heartbeat_interval: float = 30.0,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        """`bus` publishes (clearing a lost worker's CL Server capability); `listen` (default
        `bus`) carries the `info` subscription, so that a flood there cannot delay job events.
        A verified Will goes to `rescuer.worker_lost`."""
        self.bus = bus
        self.topics = topics
        self.sessions = sessions
        self.rescuer = rescuer
        self.max_workers = max_workers
        #: A session silent for this long (ms) is gone: three missed heartbeats and 30 s.
        self.stale_after_ms = int((3 * heartbeat_interval + 30) * 1000)
        self.refresh_interval = heartbeat_interval
        self.workers: dict[str, WorkerInfo] = {}
        self._heard: dict[str, float] = {}
        self._known: OrderedDict[str, WorkerSession] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._budget = TokenBucket(LOOKUPS_PER_SECOND, 2 * LOOKUPS_PER_SECOND)
        #: Dropped messages by reason ("malformed", "unknown session", "bad signature" ...).
        self.rejected: Counter[str] = Counter()
        (listen or bus).subscribe(topics.all_worker_info, self._on_info, qos=1)

    @property
    def dropped(self) -> int:
        return sum(self.rejected.values())

    @property
    def cached_sessions(self) -> dict[str, int]:
        """Sessions held in memory: `known` (verified, at most twice max_workers) and `unknown`
        (the negative cache, at most NEGATIVE_MAX): what a flood of ghosts can cost."""
        return {"known": len(self._known), "unknown": len(self._unknown)}

    def _reject(self, reason: str, topic: str) -> None:
        self.rejected[reason] += 1
        limited.warning(reason, "dropped worker info on %s: %s", topic[:200], reason)

    # -- messages ----------------------------------------------------------------------------

    def _on_info(self, topic: str, payload: bytes, _retained: bool) -> None:
        worker_id = self.topics.worker_of(topic)
        if worker_id is None:
            return
        if not payload:
            self._cleared(worker_id, topic)
            return
        try:
            info = parse_worker_info(payload)
        except MalformedMessage as exc:
            self.rejected["malformed"] += 1
            limited.warning("malformed", "dropped worker info on %s: %s", topic[:200], str(exc)[:200])
            return
        if info["worker_id"] != worker_id:
            self._reject("names another worker", topic)
            return
        row = self._session(info["session"], topic)
        if row is None:
            return
        if row.worker_id != worker_id:
            self._reject("session of another worker", topic)
            return
        if not verify_info(row.secret, info):
            self._reject("bad signature", topic)
            return
        if info["state"] == OFFLINE:
            self._offline(worker_id, info)
            return
        current = self.workers.get(worker_id)
        if row.stopped_at is not None:
            self._reject("session stopped", topic)
        elif row.silent_ms > self.stale_after_ms:
            # Judged by the database's clock (the session's heartbeat), never by the info's
            # timestamp against this host's: the worker's clock may be seconds off.
            self._reject("stale info", topic)
        elif (
            current is not None
            and current["session"] == info["session"]
            and info["timestamp"] < current["timestamp"]
        ):
            # Two times of one worker's clock: an older info replayed (or overtaken) changes nothing.
            self._reject("older info", topic)
        elif not set(info["tasks"]) <= set(row.tasks):
            self._reject("tasks not registered", topic)
        else:
            self._online(worker_id, info)

    def _online(self, worker_id: str, info: WorkerInfo) -> None:
        if worker_id not in self.workers and len(self.workers) >= self.max_workers:
            quietest = min(self._heard, key=self._heard.__getitem__)
            limited.warning(
                "full", "tracking %d workers: forgetting %s, the longest silent", self.max_workers, quietest
            )
            self._forget(quietest)
        self.workers[worker_id] = info
        self._heard[worker_id] = time.monotonic()

    def _offline(self, worker_id: str, info: WorkerInfo) -> None:
        current = self.workers.get(worker_id)
        stale = current is not None and current["session"] != info["session"]
        if not stale:
            self._forget(worker_id)
            # A connection has one Last Will; clear the worker's CL Server capability for it.
            # Also when the worker is not in the map: a Will retained while no server listened
            # (it was stopping, or down) arrives when this one subscribes, and nobody else would
            # clear it. A run under that id that this server has not heard yet repairs its own.
            self.bus.publish(self.topics.legacy_worker(worker_id), b"", qos=1, retain=True)
        limited.info(
            "offline",
            "worker %s session %s went offline%s",
            worker_id,
            info["session"],
            " (an older session; the current one stays)" if stale else "",
        )
        self.rescuer.worker_lost(worker_id, info["session"])

    def _cleared(self, worker_id: str, topic: str) -> None:
        """An empty retained info: a clean shutdown, if the database agrees."""
        current = self.workers.get(worker_id)
        if current is None:
            return
        row = self._session(current["session"], topic, fresh=True)
        if row is not None and row.stopped_at is None:
            self._reject("cleared while its session runs", topic)
            return
        self._forget(worker_id)

    def _forget(self, worker_id: str) -> None:
        info = self.workers.pop(worker_id, None)
        self._heard.pop(worker_id, None)
        if info is not None:
            self._known.pop(info["session"], None)

    # -- the database's word -----------------------------------------------------------------

    def _session(self, session: str, topic: str, fresh: bool = False) -> WorkerSession | None:
        if not fresh and session in self._known:
            self._known.move_to_end(session)
            return self._known[session]
        now = time.monotonic()
        if self._unknown.get(session, 0.0) > now:
            self._reject("unknown session", topic)
            return None
        if not self._budget.take():
            self._reject("too many look-ups", topic)
            return None
        try:
            row = self.sessions.get(session)
        except Exception:
            limited.exception("lookup", "could not look up a worker session")
            self.rejected["database error"] += 1
            return None
        if row is None:
            self._unknown[session] = now + NEGATIVE_TTL
            self._unknown.move_to_end(session)
            while len(self._unknown) > NEGATIVE_MAX:
                self._unknown.popitem(last=False)
            self._reject("unknown session", topic)
            return None
        self._known[session] = row
        while len(self._known) > 2 * self.max_workers:
            self._known.popitem(last=False)
        return row

    def refresh(self) -> None:
        """Drop workers whose session the database says stopped, or which fell silent."""
        listed = self._listed()
        self._refreshed(listed, self.sessions.get_many(list(listed.values())))

    def _listed(self) -> dict[str, str]:
        return {worker_id: info["session"] for worker_id, info in self.workers.items()}

    def _refreshed(self, listed: dict[str, str], rows: dict[str, WorkerSession]) -> None:
        # Read before messages that came meanwhile: judge only workers whose session is unchanged.
        listed = {w: s for w, s in listed.items() if w in self.workers and self.workers[w]["session"] == s}
        for worker_id, session in listed.items():
            row = rows.get(session)
            if row is not None and row.stopped_at is None and row.silent_ms <= self.stale_after_ms:
                self._known[session] = row
                continue
            log.info(
                "worker %s session %s is gone (%s)",
                worker_id,
                session,
                "stopped" if row is not None and row.stopped_at else "no heartbeat in the database",
            )
            self._forget(worker_id)
            self.bus.publish(self.topics.legacy_worker(worker_id), b"", qos=1, retain=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                # Read on a thread: a stalled database must not stall the event loop.
                listed = self._listed()
                rows = await asyncio.to_thread(self.sessions.get_many, list(listed.values()))
                self._refreshed(listed, rows)
            except Exception:
                limited.exception("refresh", "could not check worker sessions; trying again later")
            limited.flush()

    def capabilities(self) -> dict[str, object]:
        """CL Server's shape: number of live workers, idle workers per task type."""
        idle: dict[str, int] = {}
        for info in self.workers.values():
            for task in info["tasks"]:
                idle[task] = idle.get(task, 0) + (1 if info["idle"] else 0)
        return {"num_workers": len(self.workers), "capabilities": idle}
