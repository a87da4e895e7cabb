"""Absolute media paths (`input_absolute_path`, `output_absolute_path`): checked and opened in one
step, inside COMPUTE_MEDIA_ROOTS, so that what was checked is what gets used.

Media roots are other people's folders (a family share): between a check of a path string and a
later open of the same string, a user who can write there can swap a folder for a symlink and
have a tool read another user's file, or write outside the roots. So nothing here checks a
string: a path is walked one component at a time from an open descriptor of its root
(`openat` with O_NOFOLLOW), `..` goes back up the walk (never above the root), and a symlink
is read (`readlinkat`) and followed by the same walk, so one that stays inside the roots still
works and one that leads out is refused. What the caller gets is a descriptor of the checked
file or folder: tools are handed `/dev/fd/N` (ffmpeg opens the same file again by it), outputs
are placed through the folder's descriptor. The route checks with the same code (early 403/404
for the client); the worker's open is the one that counts, on its own disk.

Every failure is a MediaPathError with the HTTP status it means for the client and a reason that
names no server folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from compute.errors import ComputeError
from compute.plugins.environment import current

#: Symlinks followed in one path at most (the kernel's own limit).
MAX_LINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: In the walk, a folder that does not exist (check_folder goes on with names only).
_ABSENT = -1
#: O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused: not a file).
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class MediaPathError(ComputeError):
    """An absolute media path that cannot be used."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        #: What the client gets for it: 400 (not a path), 403 (outside the roots), 404 (missing).
        self.status = status


@dataclass
class Opened:
    """A checked file or folder, open. Close it (or use it as a context manager)."""

    fd: int
    #: Where it is, every symlink resolved (inside a media root).
    path: Path

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_file(raw: str, what: str) -> Opened:
    """The regular file `raw` names inside the media roots, open for reading."""
    return _walk(raw, what, want="file", create=False)


def open_folder(raw: str, what: str, *, create: bool) -> Opened:
    """The folder `raw` names inside the media roots, open; made (with its parents) if `create`."""
    return _walk(raw, what, want="folder", create=create)


def check_folder(raw: str, what: str) -> Path:
    """Where the folder `raw` names is or would be, inside the media roots; nothing is made.

    The folders of it that exist are walked as `open_folder` walks them; the rest are names."""
    try:
        with _walk(raw, what, want="folder", create=False) as found:
            return found.path
    except _Missing as missing:
        return missing.path


def _syntax(raw: str, what: str) -> PurePosixPath:
    if "\x00" in raw:
        raise MediaPathError(400, f"{what} contains a NUL character")
    path = PurePosixPath(raw)
    if not path.is_absolute():
        raise MediaPathError(400, f"{what} must be an absolute path")
    if any(len(part.encode()) > 255 for part in path.parts):
        raise MediaPathError(400, f"{what} has a name longer than 255 bytes")
    return path


def _outside(what: str) -> MediaPathError:
    return MediaPathError(
        403, f"{what} is outside the media roots this machine may use (COMPUTE_MEDIA_ROOTS)"
    )


class _Missing(MediaPathError):
    """A folder of the path does not exist (check_folder wants to know where it would be)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(404, message)
        self.path = path


def _root_of(path: PurePosixPath, what: str) -> tuple[Path, list[str]]:
    """The media root `path` lies in and the names after it. A path spelled through another
    name of a root (a symlink or bind mount above it) is matched by the root's identity."""
    roots = current().media_roots
    for root in roots:
        if path == PurePosixPath(root) or PurePosixPath(root) in path.parents:
            return root, list(path.parts[len(root.parts) :])
    identities = {}
    for root in roots:
        with contextlib.suppress(OSError):
            info = os.stat(root)
            identities[(info.st_dev, info.st_ino)] = root
    for depth in range(len(path.parts) - 1, 0, -1):
        try:
            info = os.stat(PurePosixPath(*path.parts[:depth]))
        except (OSError, ValueError):
            continue
        found = identities.get((info.st_dev, info.st_ino))
        if found is not None:
            return found, list(path.parts[depth:])
    raise _outside(what)


def _walk(raw: str, what: str, *, want: str, create: bool) -> Opened:
    root, names = _root_of(_syntax(raw, what), what)
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError:
        raise MediaPathError(404, f"{what}: its media root cannot be opened") from None
    # The walk so far: (name, descriptor) from the root down; a descriptor is always of a
    # folder reached by this walk, so `..` is the previous entry and never the kernel's.
    walk: list[tuple[str, int]] = [("", root_fd)]
    todo = names
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if len(walk) == 1:
                    raise _outside(what)
                _close(walk.pop()[1])
                continue
            last = not todo
            as_folder = not last or want == "folder"
            parent = walk[-1][1]
            if parent == _ABSENT:  # below a folder that does not exist: names only
                if not as_folder:
                    raise MediaPathError(404, f"{what}: no file at that path")
                walk.append((name, _ABSENT))
                continue
            try:
                fd = os.open(name, _DIR_FLAGS if as_folder else _FILE_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not as_folder:
                    raise MediaPathError(404, f"{what}: no file at that path") from None
                if not create:
                    walk.append((name, _ABSENT))
                    continue
                with contextlib.suppress(FileExistsError):  # made meanwhile: opened as it is
                    os.mkdir(name, dir_fd=parent)
                todo.insert(0, name)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    reason = os.strerror(exc.errno or 0)
                    raise MediaPathError(403, f"{what} cannot be opened: {reason}") from None
                target = _link(name, parent)
                if target is None:  # not a symlink: a file where a folder is needed
                    where = f"{what} is" if last else f"{what}: a part of it is"
                    raise MediaPathError(400, f"{where} a file, not a folder") from None
                links += 1
                if links > MAX_LINKS:
                    raise MediaPathError(400, f"{what}: too many symlinks") from None
                if target.is_absolute():
                    root, rest = _root_of(target, what)
                    _close_all(walk)
                    walk = [("", os.open(root, _DIR_FLAGS))]
                    todo = [*rest, *todo]
                else:
                    todo = [*target.parts, *todo]
                continue
            walk.append((name, fd))
        fd = walk[-1][1]
        if fd == _ABSENT:
            raise _Missing(f"{what}: no folder at that path", _here(root, walk, []))
        info = os.fstat(fd)
        if want == "file" and not stat.S_ISREG(info.st_mode):
            raise MediaPathError(400, f"{what} is not a regular file")
        if want == "folder" and not stat.S_ISDIR(info.st_mode):
            raise MediaPathError(400, f"{what} is a file, not a folder")
        if want == "file" and len(walk) == 1:
            raise MediaPathError(400, f"{what} is not a regular file")
        opened = Opened(os.dup(fd), _here(root, walk, []))
        if want == "file":
            os.set_blocking(opened.fd, True)
        return opened
    finally:
        _close_all(walk)


def _link(name: str, parent: int) -> PurePosixPath | None:
    try:
        return PurePosixPath(os.readlink(name, dir_fd=parent))
    except OSError:
        return None


def _here(root: Path, walk: list[tuple[str, int]], rest: list[str]) -> Path:
    return root.joinpath(*(name for name, _ in walk[1:]), *rest)


def _close(fd: int) -> None:
    if fd != _ABSENT:
        os.close(fd)


def _close_all(walk: list[tuple[str, int]]) -> None:
    for _, fd in walk:
        with contextlib.suppress(OSError):
            _close(fd)
    walk.clear()


def fd_path(fd: int) -> str:
    """How a child process that inherited `fd` (subprocess `pass_fds`) opens the same file."""
    return f"/dev/fd/{fd}"


#: Bytes copied at a time when an output is placed on another file system.
COPY_CHUNK = 1024 * 1024


def place(staging: Path, names: list[str], folder_fd: int) -> None:
    """Move the files `names` of `staging` (a folder of ours) into the checked folder `folder_fd`,
    in that order, each replacing what has its name there.

    A rename through the two descriptors where both are on one file system; else a copy into a
    new file made there (O_EXCL, O_NOFOLLOW), renamed over the name. Either way a symlink someone
    left under an output's name is replaced, never written through.
    """
    with contextlib.ExitStack() as stack:
        staging_fd = os.open(staging, _DIR_FLAGS)
        stack.callback(os.close, staging_fd)
        for name in names:
            try:
                os.rename(name, name, src_dir_fd=staging_fd, dst_dir_fd=folder_fd)
                continue
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            _copy_in(name, staging_fd, folder_fd)


def _copy_in(name: str, staging_fd: int, folder_fd: int) -> None:
    partial = f".{name}.{os.getpid()}.part"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial, dir_fd=folder_fd)  # an earlier attempt's
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=staging_fd)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        target = os.open(partial, flags, 0o644, dir_fd=folder_fd)
        try:
            while chunk := os.read(source, COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(target, view) :]
        finally:
            os.close(target)
    finally:
        os.close(source)
    os.rename(partial, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
