"""The storage id: how a worker tells whether it sees the server's job folders.

The server draws a random id once for the deployment (kept in `server_preferences`) and writes
it into a marker file at the top of its storage folder (storage.py). A worker reads the id from
the database, which it already trusts, and looks for the marker in its own storage folder: the
same id there means the same disk (worker/disk_sharing.py).
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine

from compute.db.preferences import drawn_once, read_text

#: server_preferences key of the storage id.
STORAGE_ID_KEY = "storage_id"


def server_storage_id(engine: Engine) -> str:
    """The deployment's storage id, drawn on the first server start (128 random bits)."""
    return drawn_once(engine, STORAGE_ID_KEY, lambda: secrets.token_hex(16))


def recorded_storage_id(engine: Engine) -> str | None:
    """The storage id a server recorded, or None before any server started."""
    return read_text(engine, STORAGE_ID_KEY)
