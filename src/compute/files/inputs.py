"""A job's inputs from the server's job folder into a remote worker's scratch folder: both ends.

The server sends (`send_inputs`) every regular file of the job folder, as a plugin on the
server's disk would see it, resuming each file from the byte the worker says it holds; the
worker writes them (`receive_inputs`) beneath its scratch job folder, checks each file's
SHA-256 and the server's seal over all of them, and keeps what arrived whole for a retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from compute.beneath import open_file, opened_folder, parts_of, regular_files, remove_file
from compute.files.wire import (
    CHUNK,
    DIGEST_BYTES,
    SEAL_CHARS,
    BadTransfer,
    ChunkReader,
    FileEntry,
    IntegrityMismatch,
    StreamEnded,
    encode_header,
    inputs_manifest,
    parse_files,
)
from compute.signing import inputs_seal, verify_inputs_seal

# -- the server's end ----------------------------------------------------------------------------


def list_inputs(job_dir: Path) -> list[FileEntry]:
    """Every regular file of the job folder (links are not followed), with its size. Blocking."""
    return [FileEntry(path, info.st_size) for path, info in regular_files(job_dir)]


def with_offsets(entries: list[FileEntry], have: Mapping[str, int]) -> list[FileEntry]:
    """Each entry starting where the worker's copy ends (0 when the worker's copy is longer)."""
    result = []
    for e in entries:
        held = have.get(e.path, 0)
        result.append(FileEntry(e.path, e.size, offset=held if held <= e.size else 0))
    return result


async def send_inputs(
    job_dir: Path, entries: list[FileEntry], lease_token: str, job_id: str, attempt: int
) -> AsyncIterator[bytes]:
    """The inputs answer (files/wire.py): header, each file's bytes and digest, the seal.

    A file that changed size since it was listed ends the stream early, and the worker tries
    again. Reads run on a thread: a cold 2 GB file must not hold the event loop.
    """
    yield encode_header(inputs_manifest(entries))
    sent: list[tuple[str, int, str]] = []
    with opened_folder(job_dir) as root:
        for entry in entries:
            fd = open_file(root, parts_of(entry.path), os.O_RDONLY)
            with os.fdopen(fd, "rb") as file:
                if os.fstat(fd).st_size != entry.size:
                    raise BadTransfer(f"{entry.path} changed while it was being sent")
                digest = hashlib.sha256()
                async for chunk in _read(file, entry.offset):  # the part the worker holds: hashed only
                    digest.update(chunk)
                async for chunk in _read(file, entry.sent):
                    digest.update(chunk)
                    yield chunk
            sent.append((entry.path, entry.size, digest.hexdigest()))
            yield digest.digest()
    yield inputs_seal(lease_token, job_id, attempt, sent).encode("ascii")


async def _read(file: object, count: int) -> AsyncIterator[bytes]:
    read = file.read  # type: ignore[attr-defined]
    left = count
    while left:
        chunk: bytes = await asyncio.to_thread(read, min(CHUNK, left))
        if not chunk:
            raise BadTransfer("a file got shorter while it was being sent")
        left -= len(chunk)
        yield chunk


# -- the worker's end ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    files: list[FileEntry]
    #: Bytes that crossed the network (a resumed file's held part is not counted).
    transferred: int


def held(job_root: Path) -> dict[str, int]:
    """What the worker holds of each input already (after a broken transfer): path -> bytes."""
    return {path: info.st_size for path, info in regular_files(job_root)}


async def receive_inputs(
    reader: ChunkReader, job_root: Path, have: Mapping[str, int], lease_token: str, job_id: str, attempt: int
) -> Received:
    """Write the inputs answer beneath `job_root`; every digest and the seal checked.

    A file whose digest differs is deleted (IntegrityMismatch: the next try fetches it from its
    start); whatever arrived whole or in part before a broken stream stays, for the next try to
    resume.
    """
    entries = parse_files(await reader.header(), with_sha=False, with_offset=True)
    transferred = 0
    sealed: list[tuple[str, int, str]] = []
    with opened_folder(job_root, create=True) as root:
        for entry in entries:
            if entry.offset not in (0, have.get(entry.path, 0)):
                raise BadTransfer(f"the server resumed {entry.path} from a byte this worker does not hold")
            parts = parts_of(entry.path)
            digest = await _receive_file(root, parts, entry, reader)
            transferred += entry.sent
            if digest != await reader.exactly(DIGEST_BYTES):
                remove_file(root, parts)
                raise IntegrityMismatch(f"input {entry.path}: its SHA-256 is not the one the server sent")
            sealed.append((entry.path, entry.size, digest.hex()))
    seal = (await reader.exactly(SEAL_CHARS)).decode("ascii", "replace")
    if not verify_inputs_seal(lease_token, job_id, attempt, sealed, seal) or not await reader.at_end():
        raise BadTransfer("the inputs answer does not carry the server's seal for this claim")
    return Received(entries, transferred)


async def _receive_file(root: int, parts: tuple[str, ...], entry: FileEntry, reader: ChunkReader) -> bytes:
    """Append the entry's bytes to the local copy (created, or resumed from its offset); the
    SHA-256 of the whole file."""
    digest = hashlib.sha256()
    if entry.offset:
        fd = open_file(root, parts, os.O_RDWR)
        file: BinaryIO = os.fdopen(fd, "r+b")
        if os.fstat(fd).st_size < entry.offset:
            file.close()
            raise BadTransfer(f"the local part of {entry.path} is shorter than the server resumes from")
        while (done := file.tell()) < entry.offset:
            digest.update(file.read(min(CHUNK, entry.offset - done)))
        file.truncate(entry.offset)
    else:
        fd = open_file(root, parts, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create_dirs=True)
        file = os.fdopen(fd, "wb")
    with file:
        left = entry.sent
        while left:
            piece = await reader.read(min(left, CHUNK))
            if not piece:
                raise StreamEnded(f"the stream ended {left} bytes before the end of {entry.path}")
            digest.update(piece)
            file.write(piece)
            left -= len(piece)
    return digest.digest()
