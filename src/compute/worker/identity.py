"""The default worker id: the same after a restart, different for workers running side by side.

It used to be `worker-<host>-<pid>`, so every restart left one more worker's retained topics on
the broker for good. Now a worker without `--worker-id` takes the first free slot `n` on its host
and is `worker-<host>-<n>` (compute/slots.py: a lock file in `CL_SERVER_DIR/worker-slots/`, held
while the process lives). A restarted worker finds its old slot free again and comes back under
the same id.
"""

from __future__ import annotations

from pathlib import Path

from compute.slots import Slot, host_part
from compute.slots import claim_slot as _claim

__all__ = ["MAX_SLOTS", "SLOTS_FOLDER", "WorkerSlot", "claim_slot", "host_part"]

SLOTS_FOLDER = "worker-slots"
#: More workers than this on one host need explicit ids.
MAX_SLOTS = 256

#: A worker's slot: `ident` is its worker id.
WorkerSlot = Slot


def claim_slot(cl_server_dir: Path, hostname: str) -> WorkerSlot:
    """Hold the first free slot of this host and return it (its id: `slot.ident`)."""
    return _claim(cl_server_dir / SLOTS_FOLDER, "worker", hostname, "pass --worker-id", MAX_SLOTS)
