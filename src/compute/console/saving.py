"""Saving a job's files under a folder, and nowhere else, whatever the server calls them.

The names come from the server's file listing. Each is checked first (relative, no empty, `.`
or `..` part, no control or format character), then opened one part at a time relative to the
folder's descriptor with O_NOFOLLOW: no path string is resolved again after its check, so a
`..`, an absolute name, or a symbolic link someone placed (or swaps in) below the folder cannot
send a write elsewhere; a link in the way is refused, never followed, and none is created. A
file is written under a fresh hidden name (O_EXCL) and renamed into place once it is whole.
"""

from __future__ import annotations

import errno
import os
import secrets
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Longest name part most file systems take, in bytes.
_NAME_MAX = 255


class UnsafeName(Exception):
    """The server named a file that cannot be saved inside the folder as it is named."""


class CannotSave(Exception):
    """A file could not be written here (a link or a file in the way, no space, no permission)."""


def parts_of(name: str) -> tuple[str, ...]:
    """The parts of a server-given relative file name, or UnsafeName saying why it is refused."""
    if name.startswith("/"):
        raise UnsafeName("an absolute path")
    parts = tuple(name.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeName("an empty, '.' or '..' part")
        if any(unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") for char in part):
            raise UnsafeName("a control or format character")
        if len(part.encode("utf-8", "surrogatepass")) > _NAME_MAX:
            raise UnsafeName(f"a part longer than {_NAME_MAX} bytes")
    return parts


class Folder:
    """A folder opened once; everything below it is reached through its descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)  # the folder the person named: links followed
            self._fd = os.open(path, _DIRECTORY)
        except OSError as exc:
            raise CannotSave(f"{path}: {exc.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def writing(self, name: str) -> Iterator[IO[bytes]]:
        """A new file for `name` (checked with parts_of), put in place when the block ends well."""
        parts = parts_of(name)
        directory = self._descend(parts[:-1])
        temporary = f".{parts[-1][:200]}.{secrets.token_hex(6)}.part"
        try:
            try:
                fd = os.open(temporary, _NEW_FILE, 0o666, dir_fd=directory)
            except OSError as exc:
                raise CannotSave(f"{name}: {exc.strerror}") from None
            try:
                with os.fdopen(fd, "wb") as file:
                    yield file
                os.rename(temporary, parts[-1], src_dir_fd=directory, dst_dir_fd=directory)
            except BaseException as exc:
                with suppress(OSError):
                    os.unlink(temporary, dir_fd=directory)
                if isinstance(exc, OSError):
                    raise CannotSave(f"{name}: {exc.strerror}") from None
                raise
        finally:
            os.close(directory)

    def _descend(self, parts: tuple[str, ...]) -> int:
        """A new descriptor of the folder below this one at `parts`, made where missing."""
        fd = os.dup(self._fd)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    with suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    below = os.open(part, _DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    where = "/".join(parts[:depth])
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise CannotSave(f"{where} is a symbolic link or a file, not a folder") from None
                    raise CannotSave(f"{where}: {exc.strerror}") from None
                os.close(fd)
                fd = below
        except BaseException:
            os.close(fd)
            raise
        return fd
