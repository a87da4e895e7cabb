"""Outputs that remote workers sent, waiting beside the job folders until their job completes.

`<storage>/staging/<job_id>/<attempt>/` holds `parts/` (files being received, under random
names) and `files/` (files whose SHA-256 matched their manifest, at their job-relative paths).
Nothing here shows in `GET /jobs/{id}/files` or downloads: those read the job folder only.

When the job's completion is persisted, `promote` moves the files of the completing attempt
into the job folder, each with one rename on the same file system (a file appears whole or not
at all), and removes the job's staging. It is safe to call again and from several places: the
ingest after its commit (before the completion is announced or confirmed), the file routes
before they list or serve a completed job's files (so whoever saw `completed` finds every
output, even when the worker wrote its result to the database itself), and the staging sweep
after a restart. Staging of attempts that can no longer complete is discarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

from compute.beneath import move_into, open_file, opened_folder, parts_of
from compute.files.wire import CHUNK, ChunkReader, FileEntry, IntegrityMismatch, StreamEnded
from compute.storage import JobStorage, valid_job_id

log = logging.getLogger(__name__)

_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputStaging:
    def __init__(self, storage: JobStorage) -> None:
        self.storage = storage
        #: One promotion at a time in this process (another process's is tolerated: see promote).
        self._promoting = threading.Lock()

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.storage.staging_dir(job_id) / str(attempt)

    # -- receiving (PUT /jobs/{id}/claim/outputs) ------------------------------------------------

    def prepare(self, job_id: str, attempt: int) -> None:
        """Make the attempt's folders; drop earlier attempts' (their claims can never complete)."""
        self.discard(job_id, below=attempt)
        base = self.attempt_dir(job_id, attempt)
        (base / "parts").mkdir(parents=True, exist_ok=True)
        (base / "files").mkdir(parents=True, exist_ok=True)

    async def receive(self, job_id: str, attempt: int, reader: ChunkReader, entries: list[FileEntry]) -> int:
        """Read each entry's bytes from `reader` into staging, checking its SHA-256; returns the
        bytes stored. A file whose digest differs is dropped (IntegrityMismatch); a stream that
        ends early leaves the files before it staged and nothing of the one it cut."""
        base = self.attempt_dir(job_id, attempt)
        stored = 0
        with opened_folder(base / "parts") as parts_fd, opened_folder(base / "files") as files_fd:
            for entry in entries:
                name = f"{uuid.uuid4().hex}.part"
                try:
                    digest = await _write_part(parts_fd, name, reader, entry.size)
                except BaseException:
                    _unlink(name, parts_fd)
                    raise
                if digest != entry.sha256:
                    _unlink(name, parts_fd)
                    raise IntegrityMismatch(f"{entry.path}: its SHA-256 is not the one in the manifest")
                move_into(parts_fd, name, files_fd, parts_of(entry.path))
                stored += entry.size
        return stored

    def has(self, job_id: str, attempt: int, entry: FileEntry) -> bool:
        """Whether `entry` is staged already with its size and digest (a resumed upload skips it)."""
        try:
            with opened_folder(self.attempt_dir(job_id, attempt) / "files") as files_fd:
                fd = open_file(files_fd, parts_of(entry.path), os.O_RDONLY)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as file:
            if os.fstat(file.fileno()).st_size != entry.size:
                return False
            digest = hashlib.sha256()
            while chunk := file.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == entry.sha256

    # -- promotion and clean-up ----------------------------------------------------------------

    def promote(self, job_id: str, attempt: int) -> int:
        """Move attempt `attempt`'s staged files into the job folder; returns how many moved.

        Call it only once the database says the job completed under that attempt. Files
        another process moved first are skipped, so concurrent promotions end with every file
        in place. The job's staging is removed afterwards.
        """
        staging = self.storage.staging_dir(job_id)
        if not staging.is_dir():
            return 0
        moved = 0
        with self._promoting:
            staged = self.attempt_dir(job_id, attempt) / "files"
            job_dir = self.storage.job_dir(job_id)
            if staged.is_dir() and job_dir.is_dir():
                with opened_folder(job_dir) as job_fd:
                    for dirpath, _dirs, names, dir_fd in os.fwalk(staged, follow_symlinks=False):
                        folder = os.path.relpath(dirpath, staged)
                        base = () if folder == "." else tuple(folder.split(os.sep))
                        for name in names:
                            try:
                                moved += move_into(dir_fd, name, job_fd, (*base, name))
                            except OSError as exc:  # a folder where the file should go ...
                                log.warning("job %s: output %s not promoted: %s", job_id, name, exc.strerror)
            shutil.rmtree(staging, ignore_errors=True)
        if moved:
            log.info("job %s: %d output file(s) of attempt %d promoted", job_id, moved, attempt)
        return moved

    def promote_if_staged(self, job_id: str, attempt: int) -> int:
        """`promote` when something waits in staging for the job (a look at one folder otherwise)."""
        return self.promote(job_id, attempt) if self.storage.staging_dir(job_id).is_dir() else 0

    def discard(self, job_id: str, *, below: int | None = None, keep: int | None = None) -> None:
        """Remove the job's staging: every attempt's, or those below `below`, or all but `keep`."""
        staging = self.storage.staging_dir(job_id)
        if below is None and keep is None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        for attempt in self._attempts(staging):
            if (below is not None and attempt < below) or (keep is not None and attempt != keep):
                shutil.rmtree(staging / str(attempt), ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when nothing is left

    def staged(self) -> dict[str, list[int]]:
        """Every job with something in staging, and its attempts."""
        found: dict[str, list[int]] = {}
        try:
            entries = list(os.scandir(self.storage.staging_root))
        except FileNotFoundError:
            return found
        for entry in entries:
            if valid_job_id(entry.name) and entry.is_dir(follow_symlinks=False):
                found[entry.name] = self._attempts(Path(entry.path))
        return found

    @staticmethod
    def _attempts(staging: Path) -> list[int]:
        try:
            return sorted(int(e.name) for e in os.scandir(staging) if e.name.isdigit())
        except OSError:
            return []


async def _write_part(parts_fd: int, name: str, reader: ChunkReader, size: int) -> str:
    """Write `size` bytes from `reader` to the new file `name`; their hex SHA-256.

    Plain writes on the event loop, as uploads are stored (storage.save_input_file): local
    disk, a chunk at a time, so the loop is never held for long.
    """
    digest = hashlib.sha256()
    fd = os.open(name, _PART_FLAGS, 0o644, dir_fd=parts_fd)
    with os.fdopen(fd, "wb") as out:
        left = size
        while left:
            piece = await reader.read(min(left, CHUNK))
            if not piece:
                raise StreamEnded(f"the stream ended {left} bytes into a file early")
            digest.update(piece)
            out.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def _unlink(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):  # gone with its folder already
        os.unlink(name, dir_fd=dir_fd)
