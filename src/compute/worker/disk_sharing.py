"""Does this worker see the server's job folders? Decided once, at start.

WORKER_FILES=shared or remote decides it outright. With `auto` (the default) the worker asks
the database, which it trusts already, for the storage id the server recorded
(db/storage_id.py), and reads the marker file in its own storage folder: the same id there
means the same disk (the same folder, a mount of it, a shared file system). Anything else (no
marker, another deployment's, a copy the server no longer writes to under a new id) means it
does not, and the worker fetches inputs and sends outputs over HTTP. A database where no server
ever recorded an id (a server older than this) means the shared disk every deployment had.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from compute.config import Settings
from compute.db.storage_id import recorded_storage_id
from compute.storage import MARKER_NAME, read_storage_marker


@dataclass(frozen=True)
class DiskSharing:
    shared: bool
    #: Why, for the worker's start-up log line.
    reason: str


def decide(settings: Settings, engine: Engine) -> DiskSharing:
    if settings.worker_files == "shared":
        return DiskSharing(True, "WORKER_FILES=shared")
    if settings.worker_files == "remote":
        return DiskSharing(False, "WORKER_FILES=remote")
    server_id = recorded_storage_id(engine)
    if server_id is None:
        return DiskSharing(
            True, "no storage id in the database yet (an older server): assuming a shared disk"
        )
    marker = settings.storage_dir / MARKER_NAME
    local = read_storage_marker(settings.storage_dir)
    if local == server_id:
        return DiskSharing(True, f"{marker} holds the server's storage id")
    found = "is missing" if local is None else "holds another storage id"
    return DiskSharing(False, f"{marker} {found}: the server's job folders are not on this disk")
