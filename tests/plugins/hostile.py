"""What the plugins' hostile-input tests share: a pixel bomb, a submit that returns the status,
and the job folders a refused request must not leave behind."""

from __future__ import annotations

import struct
import zlib

from tests.conftest import Server


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height`: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def jobs_left(server: Server) -> list[str]:
    """Job folders on disk: a refused request must leave none."""
    folder = server.settings.storage_dir / "jobs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def submit(
    server: Server,
    task: str,
    content: bytes | None,
    data: dict[str, str] | None = None,
    filename: str = "x.jpg",
) -> tuple[int, str]:
    """POST /jobs/<task> as the SDK does (multipart `file`, string fields); (status, body text)."""
    files = None if content is None else {"file": (filename, content, "application/octet-stream")}
    response = await server.client.post(f"/jobs/{task}", data={"priority": "5", **(data or {})}, files=files)
    return response.status_code, response.text
