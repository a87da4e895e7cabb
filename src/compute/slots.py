"""Default identities that stay the same across restarts and differ for processes side by side.

A process without an explicit id takes the first free slot `n` of its kind on its host and is
`<kind>-<host>-<n>`: a slot is a lock file in a folder of CL_SERVER_DIR, held (flock) while the
process lives and released by the kernel when it ends, however it ends. A restarted process finds
its old slot free again and comes back under the same id. Workers (`worker/identity.py`) and
servers (`COMPUTE_SERVER_ID`) take theirs here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from compute.errors import ConfigError

#: More processes of one kind than this on one host need explicit ids.
MAX_SLOTS = 256


@dataclass
class Slot:
    ident: str
    #: The open lock file; the slot is held as long as it stays open.
    lock: IO[str]

    def release(self) -> None:
        self.lock.close()


def host_part(hostname: str) -> str:
    """The host name as a topic segment: anything but letters, digits, `_ . -` becomes `-`."""
    return (re.sub(r"[^A-Za-z0-9_.-]", "-", hostname).strip("-") or "host")[:64]


def claim_slot(folder: Path, kind: str, hostname: str, flag: str, max_slots: int = MAX_SLOTS) -> Slot:
    """Hold the first free `kind` slot of this host in `folder`; `flag` names the option that
    sets an explicit id instead (for the error when every slot is taken)."""
    import fcntl  # POSIX; imported here so the module loads everywhere

    host = host_part(hostname)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, max_slots + 1):
        lock = (folder / f"{host}-{n}.lock").open("a", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another running process holds it
            lock.close()
            continue
        return Slot(f"{kind}-{host}-{n}", lock)
    raise ConfigError(f"all {max_slots} {kind} slots of {host} in {folder} are taken: {flag}")
