"""Changes committed by the deployment's other processes, onto this server's live views.

Every job write on PostgreSQL notifies `db/notices.CHANNEL` in its own transaction (whoever
made it: this server, another one, or a worker that wrote its result itself). `ChangeNotices`
keeps one connection of its own listening there, on a thread (a blocking wait, off the event
loop), and hands each notice's changes to `show` on the event loop: the announcer's step 4
(server/flow/announcer.py), i.e. the change feed behind SSE and the queue summaries. Notices
arrive in commit order, so every server's live views show every job's changes in the order they
were made, this server's own included.

The connection is the database's, so nothing on the broker can reach this path. If it breaks,
the thread connects again with backoff; notices sent meanwhile are lost, so every live view is
then ended as if it fell behind (`on_gap`), and its client reads the state again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine

from compute.db.notices import CHANNEL, BadNotice, parse
from compute.db.session import make_engine
from compute.jobs import JobChange
from compute.logs import LogLimiter
from compute.server.loopsafe import LoopHop

log = logging.getLogger(__name__)
limited = LogLimiter(log)

#: Seconds a wait for notices lasts before the thread looks whether it should stop.
POLL = 0.5
#: Reconnection backoff, seconds.
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0


def listens(database_url: str) -> bool:
    """Whether the database tells its clients about changes (PostgreSQL does, SQLite does not)."""
    return database_url.startswith("postgresql")


class ChangeNotices:
    def __init__(
        self,
        database_url: str,
        show: Callable[[list[JobChange]], None],
        hop: LoopHop,
        on_gap: Callable[[], None],
        wait: float = 5.0,
    ) -> None:
        """`wait`: how long a connection attempt or a silent network may take before it counts
        as broken."""
        self.database_url = database_url
        self.show = show
        self.hop = hop
        self.on_gap = on_gap
        self.wait = wait
        #: Counters: notices received, changes shown, notices that did not parse.
        self.notices = 0
        self.shown = 0
        self.bad = 0
        self.connects = 0
        self._listening = threading.Event()
        self._stop = threading.Event()

    @property
    def listening(self) -> bool:
        """True while the connection listens (changes committed from now on will come)."""
        return self._listening.is_set()

    async def ready(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until the connection listens: what commits from then
        on will show."""
        return await asyncio.to_thread(self._listening.wait, timeout)

    async def run(self) -> None:
        """Listen on a thread of its own until cancelled."""
        thread = threading.Thread(target=self._listen, name="change-notices", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            await asyncio.to_thread(thread.join, POLL * 4)

    def _listen(self) -> None:
        engine = make_engine(self.database_url, wait=self.wait)
        backoff = BACKOFF_MIN
        try:
            while not self._stop.is_set():
                try:
                    self._listen_once(engine)
                except Exception as exc:
                    limited.warning(
                        "notices",
                        "lost the database's change notices (%s); listening again",
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    )
                if self._listening.is_set():
                    self._listening.clear()
                    backoff = BACKOFF_MIN
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            engine.dispose()

    def _listen_once(self, engine: Engine) -> None:
        raw = engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            self.connects += 1
            if self.connects > 1:
                self.hop.call(self.on_gap)  # what was committed while we were away is not coming
            self._listening.set()
            while not self._stop.is_set():
                for notice in conn.notifies(timeout=POLL):
                    self._received(notice.payload)
        finally:
            raw.invalidate()  # a connection that listened never goes back to a pool

    def _received(self, payload: str) -> None:
        self.notices += 1
        try:
            _origin, changes = parse(payload)
        except BadNotice as exc:
            self.bad += 1
            limited.warning("bad notice", "ignored a change notice that does not parse: %s", exc)
            return
        if not changes:
            return
        self.shown += len(changes)
        self.hop.call(self.show, changes)
