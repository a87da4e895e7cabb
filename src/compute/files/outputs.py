"""A job's outputs from a remote worker's scratch folder to the server: the worker's end.

The outputs are what the plugin left in the job folder beyond the inputs as they arrived:
every regular file that is new or changed (links are not sent; a plugin on the server's disk
could not have published one either). Each gets its SHA-256 up front, because the manifest that
names the digests is what the request's signature covers. The server's end is files/staging.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path

from compute.beneath import BadRelativePath, open_file, opened_folder, parts_of, regular_files
from compute.files.wire import CHUNK, BadTransfer, FileEntry, encode_header, outputs_manifest

#: What the worker remembers of an input after fetching it: (size, modification time in ns).
Fingerprint = tuple[int, int]


def fingerprints(job_root: Path) -> dict[str, Fingerprint]:
    """Every file of the job folder as it is now (taken once the inputs arrived)."""
    return {path: (info.st_size, info.st_mtime_ns) for path, info in regular_files(job_root)}


def collect_outputs(job_root: Path, inputs: Mapping[str, Fingerprint]) -> list[FileEntry]:
    """The files the plugin wrote (new, or an input it changed), each with its SHA-256. Blocking.

    Raises BadTransfer for a file whose name cannot travel (the server would refuse it too).
    """
    entries = []
    for path, info in regular_files(job_root):
        if inputs.get(path) == (info.st_size, info.st_mtime_ns):
            continue
        try:
            parts_of(path)
        except BadRelativePath as exc:
            raise BadTransfer(f"output {path[:100]!r} cannot be sent: {exc}") from None
        entries.append(FileEntry(path, info.st_size, _sha256(job_root, path)))
    return entries


def _sha256(job_root: Path, path: str) -> str:
    digest = hashlib.sha256()
    with opened_folder(job_root) as root, os.fdopen(open_file(root, parts_of(path), os.O_RDONLY), "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def batches(entries: Iterable[FileEntry], max_bytes: int) -> Iterator[list[FileEntry]]:
    """The entries in requests of at most `max_bytes` of file data each (a file over it alone)."""
    batch: list[FileEntry] = []
    size = 0
    for entry in entries:
        if batch and size + entry.size > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch


def body_length(manifest: bytes, entries: Iterable[FileEntry]) -> int:
    return len(encode_header(manifest)) + sum(e.size for e in entries)


async def outputs_body(job_root: Path, manifest: bytes, entries: list[FileEntry]) -> AsyncIterator[bytes]:
    """The outputs request's body (files/wire.py): the header, then each file's bytes.

    A file that changed since its digest was taken ends the body early: the server refuses
    it, and the next try takes the digests again.
    """
    assert manifest == outputs_manifest(entries)
    yield encode_header(manifest)
    with opened_folder(job_root) as root:
        for entry in entries:
            with os.fdopen(open_file(root, parts_of(entry.path), os.O_RDONLY), "rb") as file:
                left = entry.size
                while left:
                    chunk = await asyncio.to_thread(file.read, min(CHUNK, left))
                    if not chunk:
                        raise BadTransfer(f"output {entry.path} got shorter while it was being sent")
                    left -= len(chunk)
                    yield chunk
