"""The file plane's wire format: how a job's files travel between the server and a remote worker.

Both directions carry many files in one streamed HTTP body, so a job with hundreds of HLS
segments costs one round trip, not one per file, and nothing is held in memory:

    header = MAGIC (4 bytes) + length of the manifest (4 bytes, big-endian) + manifest (JSON)

* **outputs** (worker -> server, `PUT /jobs/{id}/claim/outputs`): the header, then each file's
  bytes in manifest order. The manifest names every file's `path` (relative to the job folder),
  `size` and `sha256`; the request's signature covers the manifest, so the bytes are bound to
  the claim too, and the server checks each file's digest as it arrives.
* **inputs** (server -> worker, the answer to `POST /jobs/{id}/claim/inputs`): the header, then
  per file its bytes from `offset` (what the worker said it holds already) to `size`, followed
  by the SHA-256 of the whole file (32 bytes); after the last file, a seal: the HMAC of every
  file's path, size and digest keyed by the claim's lease token (64 hex characters), so the
  worker knows the answer came whole from the server.

Every request is signed with the claim's lease token (signing.file_request_signature) over its
kind, the job, the attempt and the SHA-256 of what it sends (its JSON body, or for outputs the
manifest); the headers that carry it are named here.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from compute.beneath import BadRelativePath, parts_of
from compute.errors import ComputeError

MAGIC = b"CFP1"
_HEADER = struct.Struct(">4sI")
#: Largest manifest, bytes (about 80,000 files of HLS segment names).
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
#: Most files in one manifest.
MAX_FILES = 50_000
#: Bytes of a SHA-256 digest after each input file; characters of the seal after the last one.
DIGEST_BYTES = 32
SEAL_CHARS = 64
#: Bytes read or written at a time.
CHUNK = 1024 * 1024

#: Request headers: the claim's attempt number, and the signature keyed by its lease token.
ATTEMPT_HEADER = "X-Compute-Attempt"
SIGNATURE_HEADER = "X-Compute-Signature"
#: Response header of the inputs answer: the largest request body the server takes (MAX_UPLOAD_BYTES).
MAX_REQUEST_HEADER = "X-Compute-Max-Request-Bytes"

#: Request kinds, each signed under its own name.
INPUTS, PLAN, OUTPUTS = "inputs", "plan", "outputs"


class BadTransfer(ComputeError):
    """The transfer's framing or manifest is not valid."""


class StreamEnded(BadTransfer):
    """The stream ended before the transfer was complete."""


class IntegrityMismatch(ComputeError):
    """A file's SHA-256 is not the one sent with it."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest."""

    path: str
    size: int
    #: Hex SHA-256 of the whole file (outputs; an input's digest follows its bytes instead).
    sha256: str = ""
    #: Inputs: the byte the data starts from (what the worker holds already).
    offset: int = 0

    @property
    def sent(self) -> int:
        """Bytes of this file the stream carries."""
        return self.size - self.offset


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_header(manifest: bytes) -> bytes:
    return _HEADER.pack(MAGIC, len(manifest)) + manifest


def outputs_manifest(entries: Iterable[FileEntry]) -> bytes:
    return _dumps({"files": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in entries]})


def inputs_manifest(entries: Iterable[FileEntry]) -> bytes:
    return _dumps({"files": [{"path": e.path, "size": e.size, "offset": e.offset} for e in entries]})


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadTransfer(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadTransfer(f"{what} must be a JSON object")
    return value


def _size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 2**53:
        raise BadTransfer(f"{what} must be a whole number of bytes")
    return value


def parse_files(data: bytes, *, with_sha: bool, with_offset: bool) -> list[FileEntry]:
    """The entries of a manifest (`{"files": [...]}`), every path checked, no path twice."""
    raw = _load_object(data, "the manifest").get("files")
    if not isinstance(raw, list):
        raise BadTransfer("the manifest must list its files under 'files'")
    if len(raw) > MAX_FILES:
        raise BadTransfer(f"the manifest lists more than {MAX_FILES} files")
    entries: list[FileEntry] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise BadTransfer("each file of the manifest must be an object")
        path = item.get("path")
        try:
            parts_of(path)
        except BadRelativePath as exc:
            raise BadTransfer(str(exc)) from None
        assert isinstance(path, str)
        if path in seen:
            raise BadTransfer(f"the manifest names {path[:100]!r} twice")
        seen.add(path)
        size = _size(item.get("size"), f"the size of {path[:100]!r}")
        sha = item.get("sha256", "")
        if with_sha and not (isinstance(sha, str) and len(sha) == 64 and _is_hex(sha)):
            raise BadTransfer(f"the sha256 of {path[:100]!r} must be 64 hex characters")
        offset = _size(item.get("offset", 0), f"the offset of {path[:100]!r}") if with_offset else 0
        if offset > size:
            raise BadTransfer(f"the offset of {path[:100]!r} is past its end")
        entries.append(FileEntry(path, size, sha if with_sha else "", offset))
    _no_file_under_another(seen)
    return entries


def _no_file_under_another(paths: set[str]) -> None:
    """A path cannot be a file and a folder of another file at once (`a` and `a/b`)."""
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent:
            if parent in paths:
                raise BadTransfer(f"{parent[:100]!r} is a file and a folder in the manifest")
            parent = parent.rpartition("/")[0]


def parse_have(data: bytes) -> dict[str, int]:
    """The inputs request: how many bytes of each file the worker holds already."""
    raw = _load_object(data, "the request").get("have", {})
    if not isinstance(raw, dict) or len(raw) > MAX_FILES:
        raise BadTransfer(f"'have' must map at most {MAX_FILES} paths to byte counts")
    return {str(path): _size(count, "a byte count") for path, count in raw.items()}


def have_request(have: dict[str, int]) -> bytes:
    return _dumps({"have": have})


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


class ChunkReader:
    """Exact reads over a stream of chunks of any size (an HTTP body as it arrives)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._ended = False
        #: Bytes taken from the stream so far.
        self.consumed = 0

    async def _fill(self) -> bool:
        while not self._buffer and not self._ended:
            try:
                self._buffer = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
        return bool(self._buffer)

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes (at least one), or b"" at the end of the stream."""
        if limit <= 0 or not await self._fill():
            return b""
        piece, self._buffer = self._buffer[:limit], self._buffer[limit:]
        self.consumed += len(piece)
        return piece

    async def exactly(self, count: int) -> bytes:
        parts = []
        left = count
        while left:
            piece = await self.read(left)
            if not piece:
                raise StreamEnded(f"the stream ended {left} bytes early")
            parts.append(piece)
            left -= len(piece)
        return b"".join(parts)

    async def header(self) -> bytes:
        """The manifest of a framed stream."""
        magic, length = _HEADER.unpack(await self.exactly(_HEADER.size))
        if magic != MAGIC:
            raise BadTransfer("not a file transfer stream")
        if length > MAX_MANIFEST_BYTES:
            raise BadTransfer(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        return await self.exactly(length)

    async def at_end(self) -> bool:
        return not await self._fill()
