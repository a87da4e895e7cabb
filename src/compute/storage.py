"""Job folders on local disk: cl_ml_tools' FileStorage protocol, plus safe path lookup.

Nothing a client sends becomes a file name: uploads are stored as `upload[.<ext>]` (the name
the client gave is returned as data), job ids and paths are checked before they reach the file
system, and what the file system refuses for a client's path (NUL, a name too long) is a
`BadPath`, the client's fault, never an unexplained OSError.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from compute.errors import ComputeError

CHUNK = 1024 * 1024
#: Longest job id that can have a folder (uuid4 strings are 36 characters).
MAX_JOB_ID = 128
#: Job ids are names the server or a plugin made up: letters, digits and a few separators.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
#: An extension kept from the client's name only when it is this plain.
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}")
STORED_STEM = "upload"
#: File at the top of the storage folder that holds the deployment's storage id (db/storage_id.py).
MARKER_NAME = ".compute-storage-id"
#: Folder beside `jobs/` where outputs sent by remote workers wait for their job's completion.
STAGING_NAME = "staging"


class UploadTooLarge(ComputeError):
    """The uploaded file is larger than MAX_UPLOAD_BYTES."""


class PathOutsideJob(ComputeError):
    """That path is not inside the job's folder."""


class BadPath(ComputeError):
    """That path cannot name a file (a NUL character, or a name too long)."""


def valid_job_id(job_id: str) -> bool:
    """Whether `job_id` could name a job folder: a plain name of at most MAX_JOB_ID characters."""
    return 0 < len(job_id) <= MAX_JOB_ID and _JOB_ID.fullmatch(job_id) is not None


def write_storage_marker(storage_dir: Path, storage_id: str) -> None:
    """Put the storage id in `storage_dir`'s marker file (replaced atomically: a worker reading it
    meanwhile sees the old content or the new, never half of it)."""
    storage_dir.mkdir(parents=True, exist_ok=True)
    marker = storage_dir / MARKER_NAME
    if read_storage_marker(storage_dir) == storage_id:
        return
    temporary = storage_dir / f"{MARKER_NAME}.{os.getpid()}.tmp"
    temporary.write_text(storage_id + "\n", encoding="ascii")
    os.replace(temporary, marker)


def read_storage_marker(storage_dir: Path) -> str | None:
    """The storage id in `storage_dir`'s marker file, or None (no marker, or not readable)."""
    try:
        with open(storage_dir / MARKER_NAME, "rb") as file:
            text = file.read(200).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


class JobStorage:
    """`<root>/jobs/<job_id>/{input,output}` for every job, and `<root>/staging/<job_id>/` for the
    outputs remote workers sent for it (files/staging.py)."""

    def __init__(self, root: Path, max_upload_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.jobs_root = self.root / "jobs"
        self.staging_root = self.root / STAGING_NAME
        self.max_upload_bytes = max_upload_bytes

    def job_dir(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise PathOutsideJob(f"invalid job id {job_id[: MAX_JOB_ID + 1]!r}")
        return self.jobs_root / job_id

    # -- cl_ml_tools FileStorage protocol --------------------------------------------------

    def create_job_directory(self, job_id: str) -> Path:
        job_dir = self.job_dir(job_id)
        os.makedirs(job_dir / "input", exist_ok=True)
        os.makedirs(job_dir / "output", exist_ok=True)
        return job_dir

    def get_input_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def get_output_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    async def save_input_file(self, job_id: str, filename: str | None, file: Any) -> dict[str, Any]:
        """Stream an upload into the job's input folder, refusing it past the size limit.

        Stored as `upload` plus the client's extension when it is a plain one (`upload-2...`
        for a second file); `original_filename` is what the client sent, as data only.
        """
        folder = self.get_input_path(job_id)
        digest = hashlib.sha256()
        size = 0
        try:
            target, out = _new_file(folder, STORED_STEM + _extension(filename))
            # Plain writes on the event loop: local disk, small files; a thread hop costs more.
            with out:
                while chunk := await file.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise UploadTooLarge(f"upload exceeds the limit of {self.max_upload_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            # Too large, a client that went away, a full disk: no half-stored job stays behind.
            self.cleanup_job(job_id)
            raise
        return {
            "filename": target.name,
            "original_filename": filename,
            "path": str(target),
            "size": size,
            "hash": digest.hexdigest(),
        }

    def staging_dir(self, job_id: str) -> Path:
        """Where outputs sent for `job_id` by remote workers wait (one folder per attempt)."""
        self.job_dir(job_id)  # the same id check
        return self.staging_root / job_id

    def cleanup_job(self, job_id: str) -> bool:
        """Remove the job's folder and whatever waits in staging for it; False if it had no folder."""
        job_dir = self.job_dir(job_id)
        shutil.rmtree(self.staging_dir(job_id), ignore_errors=True)
        if not job_dir.exists():
            return False
        shutil.rmtree(job_dir, ignore_errors=True)
        return True

    # -- lookups ----------------------------------------------------------------------------

    def resolve(self, job_id: str, path: str) -> Path:
        """The file `path` (relative to the job folder, or absolute inside it), never outside.

        Raises PathOutsideJob for an escape, BadPath for a path no file can have.
        """
        job_dir = self.job_dir(job_id).resolve()
        if "\x00" in path:
            raise BadPath("the path contains a NUL character")
        candidate = Path(path)
        try:
            full = (candidate if candidate.is_absolute() else job_dir / candidate).resolve()
        except OSError as exc:  # ENAMETOOLONG, ELOOP ...
            raise BadPath(f"the path cannot name a file: {os.strerror(exc.errno or errno.EINVAL)}") from None
        if full != job_dir and job_dir not in full.parents:
            raise PathOutsideJob()
        return full

    def is_file(self, path: Path) -> bool:
        """Whether `path` (from resolve) is a file; a name the file system refuses is not one."""
        try:
            return path.is_file()
        except (OSError, ValueError):
            return False

    def job_files(self, job_id: str) -> list[tuple[str, int]]:
        """(path relative to the job folder, size) of every regular file in it, sorted.

        Links are not followed: a plugin's output could link anywhere on the server.
        """
        job_dir = self.job_dir(job_id)
        found: list[tuple[str, int]] = []
        for dirpath, dirs, files in os.walk(job_dir):
            dirs.sort()
            for name in sorted(files):
                path = Path(dirpath) / name
                try:
                    info = path.lstat()
                except OSError:  # removed while walking
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append((path.relative_to(job_dir).as_posix(), info.st_size))
        return found

    def job_folders(self) -> Iterator[tuple[str, float]]:
        """(job id, seconds since its folder last changed) of every job folder."""
        if not self.jobs_root.exists():
            return
        now = time.time()
        for entry in os.scandir(self.jobs_root):
            try:
                if not entry.is_dir(follow_symlinks=False) or not valid_job_id(entry.name):
                    continue
                # The folder and its input/ change while an upload is stored: the newer counts.
                changed = max(entry.stat(follow_symlinks=False).st_mtime, _mtime(Path(entry.path) / "input"))
            except OSError:  # removed meanwhile
                continue
            yield entry.name, now - changed

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.jobs_root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # removed while walking
                    pass
        return total


def _extension(filename: str | None) -> str:
    """The client's extension, lower-cased, when it is plain (`.png`); otherwise none."""
    suffix = os.path.splitext(filename or "")[1]
    return suffix.lower() if _EXTENSION.fullmatch(suffix) else ""


#: A new file, never one that is there (nor what a symlink of that name points to).
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _new_file(folder: Path, name: str) -> tuple[Path, BinaryIO]:
    """`folder/name` made and open for writing, or `upload-2.png`, `upload-3.png` ... when that
    name is taken. Made in the same call that checks the name: nothing can take it in between."""
    stem, suffix = os.path.splitext(name)
    n = 1
    while True:
        target = folder / (name if n == 1 else f"{stem}-{n}{suffix}")
        try:
            return target, os.fdopen(os.open(target, _NEW_FILE, 0o644), "wb")
        except FileExistsError:
            n += 1


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
