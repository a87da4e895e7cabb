"""Files beneath a folder, reached without following a link: how a path from a manifest, or a
client's path in a job folder, is opened.

A path that comes from the other end of a transfer (a worker's manifest on the server, the
server's on a worker) is checked first (`parts_of`: relative, no `..`, no empty or odd names) and
then walked one folder at a time from an open folder with `openat(O_NOFOLLOW)`. What is opened is
what is checked: a link planted anywhere on the way, in a job folder or a scratch folder, ends
the walk with an error instead of leading outside. The server's downloads and listings of job
folders go the same way (storage.py), so this sits below both `storage` and `files/`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from compute.errors import ComputeError

#: Longest relative path a manifest may name, in characters.
MAX_PATH = 1024
#: Longest name of one component, in bytes (the usual file-system limit).
MAX_NAME = 255

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BadRelativePath(ComputeError):
    """That path cannot name a file inside a job folder."""


def parts_of(path: object) -> tuple[str, ...]:
    """The components of `path`, a relative POSIX path to a file inside a job folder.

    Refused (BadRelativePath): anything not a string, empty, absolute, over MAX_PATH, with an
    empty, `.` or `..` component, a component over MAX_NAME bytes, a control character or a
    backslash (names our plugins never write, and the forms traversal tricks take).
    """
    if not isinstance(path, str) or not path:
        raise BadRelativePath("a path must be a non-empty string")
    if len(path) > MAX_PATH:
        raise BadRelativePath(f"path longer than {MAX_PATH} characters")
    if any(ord(c) < 32 or c in "\\\x7f" for c in path):
        raise BadRelativePath(f"path {path[:100]!r} has a control character or a backslash")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise BadRelativePath(f"path {path[:100]!r} is not a plain relative path")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise BadRelativePath(f"a name in {path[:100]!r} is longer than {MAX_NAME} bytes")
    return parts


@contextlib.contextmanager
def opened_folder(path: Path, *, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder `path` (created first when `create`), closed after the block."""
    if create:
        path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def open_dir(root_fd: int, parts: tuple[str, ...], *, create: bool = False) -> int:
    """A new descriptor of the folder `parts` beneath `root_fd`, made as needed when `create`.

    Raises OSError (ELOOP/ENOTDIR for a link or a file on the way, ENOENT without `create`).
    """
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root_fd: int, parts: tuple[str, ...], flags: int, *, create_dirs: bool = False) -> int:
    """A descriptor of the file `parts` beneath `root_fd`, opened with `flags` (plus O_NOFOLLOW)."""
    parent = open_dir(root_fd, parts[:-1], create=create_dirs)
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
    finally:
        os.close(parent)


def remove_file(root_fd: int, parts: tuple[str, ...]) -> None:
    """Remove the file `parts` beneath `root_fd`, if it is there."""
    with contextlib.suppress(FileNotFoundError):
        parent = open_dir(root_fd, parts[:-1])
        try:
            os.unlink(parts[-1], dir_fd=parent)
        finally:
            os.close(parent)


def move_into(src_dir_fd: int, name: str, root_fd: int, parts: tuple[str, ...]) -> bool:
    """Rename `name` (in `src_dir_fd`) to `parts` beneath `root_fd`, replacing a file there.

    One rename(2): the file appears whole or not at all. False when `name` is gone already
    (another process moved it first).
    """
    parent = open_dir(root_fd, parts[:-1], create=True)
    try:
        os.replace(name, parts[-1], src_dir_fd=src_dir_fd, dst_dir_fd=parent)
    except FileNotFoundError:
        return False
    finally:
        os.close(parent)
    return True


def regular_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """(path relative to `root`, lstat) of every regular file beneath it, links not followed."""
    found: list[tuple[str, os.stat_result]] = []
    try:
        walk = os.fwalk(root, follow_symlinks=False)
        for dirpath, dirs, files, dirfd in walk:
            dirs.sort()
            relative = os.path.relpath(dirpath, root)
            for name in sorted(files):
                try:
                    info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:  # removed meanwhile
                    continue
                if stat.S_ISREG(info.st_mode):
                    found.append((name if relative == "." else f"{relative}/{name}", info))
    except FileNotFoundError:
        return []
    return found


def gone(exc: OSError) -> bool:
    """Whether `exc` says a path is missing (or a link or file stood where a folder should)."""
    return exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
