"""The default worker id: the same after a restart, different for workers running side by side.

It used to be `worker-<host>-<pid>`, so every restart left one more worker's retained topics on
the broker for good. Now a worker without `--worker-id` takes the first free slot `n` on its host
and is `worker-<host>-<n>`: a slot is a lock file in `CL_SERVER_DIR/worker-slots/`, held (flock)
while the process lives and released by the kernel when it ends, however it ends. A restarted
worker finds its old slot free again and comes back under the same id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from compute.errors import ConfigError

SLOTS_FOLDER = "worker-slots"
#: More workers than this on one host need explicit ids.
MAX_SLOTS = 256


@dataclass
class WorkerSlot:
    worker_id: str
    #: The open lock file; the slot is held as long as it stays open.
    lock: IO[str]

    def release(self) -> None:
        self.lock.close()


def host_part(hostname: str) -> str:
    """The host name as a topic segment: anything but letters, digits, `_ . -` becomes `-`."""
    return (re.sub(r"[^A-Za-z0-9_.-]", "-", hostname).strip("-") or "host")[:64]


def claim_slot(cl_server_dir: Path, hostname: str) -> WorkerSlot:
    """Hold the first free slot of this host and return its worker id."""
    import fcntl  # POSIX; imported here so the module loads everywhere

    host = host_part(hostname)
    folder = cl_server_dir / SLOTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_SLOTS + 1):
        lock = (folder / f"{host}-{n}.lock").open("a", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another running worker holds it
            lock.close()
            continue
        return WorkerSlot(f"worker-{host}-{n}", lock)
    raise ConfigError(f"all {MAX_SLOTS} worker slots of {host} in {folder} are taken: pass --worker-id")
