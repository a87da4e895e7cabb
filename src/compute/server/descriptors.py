"""File descriptors: the server's open-file limit raised at start, and its share-out.

Every connection, spooled upload, stored file, database file and broker socket is a file
descriptor, and the common soft limit is 1,024. When they ran out, whatever asked next failed:
another user's live view got 503, an upload 500 (`EMFILE` writing it), and new connections were
not accepted at all, health checks included. So `compute-server` raises its soft limit to the
hard one at start (`raise_open_file_limit`), and shares the limit out (`DescriptorBudget`) so
that no kind of client can take the descriptors every other one needs: past its share, a new
connection, upload or live view is answered 503 with `Retry-After` at once, and the reserve
stays free for the database, the broker and the files a job writes.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Descriptors kept for everything that is not a client's: database files (SQLite opens three
#: per connection), broker sockets, the listening socket, the event loop, logs, a job's files.
FIXED_RESERVE = 64


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE now (a large number when there is none)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (before, after), and a log line saying so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "open files: could not raise the soft limit %d to the hard limit %d (%s)", soft, hard, exc
            )
            return soft, soft
        log.info("open files: soft limit raised from %d to the hard limit %d", soft, hard)
        return soft, hard
    log.info("open files: limit %d (soft = hard)", soft)
    return soft, soft


@dataclass(frozen=True)
class DescriptorBudget:
    """How many descriptors each kind of client may hold at most, out of `limit`.

    - `reserve`: never handed to clients (FIXED_RESERVE, or an eighth of the limit if larger);
    - `uploads`: requests whose body is arriving or being stored, an eighth of the rest: each
      may hold two files besides its connection (the spooled body, the stored upload);
    - `connections`: open HTTP connections, what is left after the reserve and the uploads'
      files;
    - `streams`: live views (SSE), half of the connections, so that streams alone can never
      take the connections health checks, uploads and job reads need.
    """

    limit: int
    reserve: int
    connections: int
    uploads: int
    streams: int

    @classmethod
    def of(cls, limit: int) -> DescriptorBudget:
        reserve = max(FIXED_RESERVE, limit // 8)
        usable = max(limit - reserve, 8)
        uploads = max(usable // 8, 1)
        connections = max(usable - 2 * uploads, 4)
        return cls(limit, reserve, connections, uploads, max(connections // 2, 1))

    @classmethod
    def for_process(cls) -> DescriptorBudget:
        return cls.of(open_file_limit())

    def describe(self) -> str:
        return (
            f"{self.limit} open files: at most {self.connections} connections, {self.uploads} uploads "
            f"at once, {self.streams} live views; {self.reserve} kept in reserve"
        )
