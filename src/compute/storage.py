"""Job folders on local disk: cl_ml_tools' FileStorage protocol, plus safe path lookup.

Nothing a client sends becomes a file name: uploads are stored as `upload[.<ext>]` (the name
the client gave is returned as data), job ids and paths are checked before they reach the file
system, and what the file system refuses for a client's path (NUL, a name too long) is a
`BadPath`, the client's fault, never an unexplained OSError.

Job folders are ours, but what is in them comes from plugins and from remote workers' uploads,
so nothing here follows a link in one: a file is opened by descriptor, one folder at a time
from the job folder with O_NOFOLLOW (beneath.py), and served from that descriptor;
listings and sizes walk with `os.fwalk(follow_symlinks=False)`, which also notices a folder
swapped for a link while it walks; removal is `shutil.rmtree`, which on Linux works by
descriptor and removes a link rather than what it points to.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from compute import beneath
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


class NotAJobFile(ComputeError):
    """No regular file of the job's folder is at that path (nothing, a folder, or a link there or
    on the way: links in a job folder are not followed)."""


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

    def open_file(self, job_id: str, path: str) -> tuple[int, str]:
        """(a descriptor open for reading, its name) of the regular file `path` names in the job's
        folder (relative to it, or absolute inside it). The caller closes the descriptor.

        The path is checked as text (PathOutsideJob for `..` above the folder or an absolute path
        elsewhere, BadPath for one no file can have), then walked from the job folder's
        descriptor one name at a time with O_NOFOLLOW: a link anywhere on the way, or a folder,
        FIFO or nothing at the end, is NotAJobFile. Read the file from the descriptor only: its
        path may lead elsewhere a moment later.
        """
        parts = self._parts(job_id, path)
        if not parts:
            raise NotAJobFile()  # the job folder itself
        try:
            with beneath.opened_folder(self.job_dir(job_id)) as root:
                # O_NONBLOCK: a FIFO must not hold the open until a writer comes (it is refused).
                fd = beneath.open_file(root, parts, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if beneath.gone(exc):
                raise NotAJobFile() from None
            if exc.errno == errno.ENAMETOOLONG:
                raise BadPath(f"the path cannot name a file: {os.strerror(exc.errno)}") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotAJobFile()
        os.set_blocking(fd, True)
        return fd, parts[-1]

    def _parts(self, job_id: str, path: str) -> tuple[str, ...]:
        """The names of `path` below the job folder, `..` and `.` taken as text."""
        job_dir = PurePosixPath(self.job_dir(job_id))
        if "\x00" in path:
            raise BadPath("the path contains a NUL character")
        candidate = PurePosixPath(path)
        if candidate.is_absolute():
            if not candidate.is_relative_to(job_dir):
                raise PathOutsideJob()
            candidate = candidate.relative_to(job_dir)
        normal = posixpath.normpath(candidate)
        if normal == ".." or normal.startswith("../"):
            raise PathOutsideJob()
        parts = tuple(part for part in normal.split("/") if part not in ("", "."))
        if any(len(os.fsencode(part)) > beneath.MAX_NAME for part in parts):
            raise BadPath(f"the path cannot name a file: {os.strerror(errno.ENAMETOOLONG)}")
        return parts

    def job_files(self, job_id: str) -> list[tuple[str, int]]:
        """(path relative to the job folder, size) of every regular file in it, sorted by folder.

        Links are not followed (a plugin's output could link anywhere on the server), nor is a
        folder that became a link while the walk went on.
        """
        return [(path, info.st_size) for path, info in beneath.regular_files(self.job_dir(job_id))]

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
        """Bytes in the regular files of every job folder (links not followed)."""
        return sum(info.st_size for _, info in beneath.regular_files(self.jobs_root))

    def job_bytes(self, job_id: str) -> int:
        """Bytes in the regular files of the job's folder (links not followed)."""
        return sum(size for _, size in self.job_files(job_id))


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
        return path.lstat().st_mtime
    except OSError:
        return 0.0
