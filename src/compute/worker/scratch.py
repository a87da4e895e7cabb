"""A remote worker's scratch folders: where a job's inputs land and its plugin writes.

`<WORKER_SCRATCH_DIR>/<worker id>/jobs/<job id>`: the same layout as the server's storage, so a
plugin finds its job folder the way it always does (plugins/environment.job_dir). The worker's
folder is held with a lock file while the worker lives, so a second worker under the same id
cannot sweep it; at start the worker removes whatever a crash left, and after each job that
job's folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from compute.errors import ConfigError
from compute.storage import valid_job_id

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class Scratch:
    def __init__(self, root: Path, worker_id: str) -> None:
        #: What plugins take for the storage folder: jobs live in `<storage_dir>/jobs/<job id>`.
        self.storage_dir = Path(root).expanduser().resolve() / worker_id
        self.jobs_root = self.storage_dir / "jobs"
        self._lock: IO[str] | None = None

    def open(self) -> int:
        """Hold this worker's scratch folder and empty it; returns the job folders a crash left.

        ConfigError when a running worker with the same id holds it.
        """
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        lock = (self.storage_dir / LOCK_NAME).open("a", encoding="utf-8")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise ConfigError(
                f"another running worker uses the scratch folder {self.storage_dir}: give each worker "
                "its own --worker-id (or WORKER_SCRATCH_DIR)"
            ) from None
        self._lock = lock
        left = 0
        for entry in os.scandir(self.jobs_root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            left += 1
        if left:
            log.info("removed %d scratch job folder(s) an earlier run left in %s", left, self.jobs_root)
        return left

    def job_dir(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise ValueError(f"invalid job id {job_id[:130]!r}")
        return self.jobs_root / job_id

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
